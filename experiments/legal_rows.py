"""A lever judged by fidelity: legal-action rows read off the generated observation by SMAX's rule (docs/fidelity.md).

    python experiments/legal_rows.py --real runs/datasets/3m-poor-...-s0.h5 \
        --checkpoint runs/frontier/<setting>/model.pt

The diffusion model generates each agent's legal-action rows beside its
observation rows; decoding (`data.matrix_to_episodes`) reads legality from
them, and an action the generated rows forbid is "illegal before repair".
SMAX itself decides legality from the state the observation shows
(`env.smax_legal_actions`: alive, the enemy seen alive and within attack
range), which reproduces D_real's legal actions exactly. This script samples
`--episodes` episodes once and reports D_syn both ways: with the generated
legal rows, and with those rows replaced by the rule applied to the
generated observation. The matrix the learners read changes only in its
legal rows; the network and its samples are the same.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import data  # noqa: E402
import diffusion  # noqa: E402
import env as envlib  # noqa: E402
import fidelity  # noqa: E402

KEYS = ("legal_before_repair", "attack_share", "damage_with_shooter", "health_gain_share", "focus_fire_share",
        "ended_share", "win_share")


def legal_rows_from_obs(matrix, layout):
    """A copy of the Eq. 4 matrix (b, F, T), data units, whose legal-action rows are SMAX's rule applied to the
    observation rows beside them, on the steps before the episode's end (its done row; zeros after, as Eq. 4 pads)."""
    obs = data.agent_rows(matrix, layout)[..., :layout.obs_dim]                      # (b, T, N, O)
    legal = envlib.smax_legal_actions(obs, layout.n_actions - envlib.FIRST_ATTACK_ACTION["smax"])  # (b, T, N, A)
    valid = data.valid_steps(data.episode_ends(matrix[:, layout.done])[0], matrix.shape[-1])     # (b, T)
    legal = legal & valid[:, :, None, None]
    out = matrix.copy()
    for n in range(layout.n_agents):
        out[:, layout.avail(n)] = legal[:, :, n].transpose(0, 2, 1)
    return out


def compare(checkpoint, real, n_episodes, ddim_steps=20, seed=0):
    """{"generated": report, "from_observation": report}: one sample of `n_episodes`, decoded both ways."""
    model = diffusion.load_checkpoint(checkpoint)
    layout = data.layout_of(real)
    real_matrix = diffusion.prepare(real, model.normalizer)[3]
    pairs = {name: fidelity.stats_pair(real, real_matrix, fidelity.reward_range(model.normalizer, layout))
             for name in ("generated", "from_observation")}
    g = torch.Generator().manual_seed(seed)
    horizons = diffusion.episode_horizons(real.lengths, model.config["bucket_width"], real_matrix.shape[-1])
    windows = diffusion.synthetic_windows(horizons, n_episodes, g)
    for matrix in diffusion.sample_batches(model.ema, model.normalizer, windows, real_matrix.shape[-1],
                                           layout.n_features, ddim_steps or None, 256, g, progress=False):
        pairs["generated"][1].add(matrix)
        pairs["from_observation"][1].add(legal_rows_from_obs(matrix, layout))
    return {name: fidelity.synthetic_report(*pair) for name, pair in pairs.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", required=True, help="the D_real the model was trained on (SMAX)")
    p.add_argument("--checkpoint", required=True, help="a model.pt (eaq.py's or experiments/frontier.py's)")
    p.add_argument("--episodes", type=int, default=1000, help="episodes sampled (DDIM-20)")
    p.add_argument("--json", help="also write both reports here")
    args = p.parse_args(argv)
    with artifacts.parser_errors(p):
        artifacts.require_flags(at_least_one={"--episodes": args.episodes})
    with artifacts.one_line_errors():
        real = data.load_dataset(args.real)
        if real.attrs.get("backend", "smax") != "smax":
            raise artifacts.InputError(f"{args.real} is not SMAX data; the rule is SMAX's")
        reports = compare(args.checkpoint, real, args.episodes)
        if args.json:
            artifacts.write_json(args.json, reports)
    print(f"{'':22s}{'D_real':>10s}{'generated':>12s}{'from obs':>12s}")
    for key in KEYS:
        print(f"{key:22s}{reports['generated']['real'][key]:>10.3f}{reports['generated']['synthetic'][key]:>12.3f}"
              f"{reports['from_observation']['synthetic'][key]:>12.3f}")
    print(f"{'action TV':22s}{'':>10s}{reports['generated']['action_tv_distance']:>12.3f}"
          f"{reports['from_observation']['action_tv_distance']:>12.3f}")
    for name, report in reports.items():
        print(f"{name}: " + fidelity.fidelity_line(report))


if __name__ == "__main__":
    main()
