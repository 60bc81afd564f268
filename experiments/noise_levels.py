"""Where along the noise axis a trained model loses SMAX's health bookkeeping (docs/fidelity.md).

    python experiments/noise_levels.py --real R.h5 --checkpoint model.pt [--ks 1 50 100 200 400 700 1000] \
        [--json experiments/records-noise-levels/<name>.json]
    python experiments/noise_levels.py --table experiments/records-noise-levels/*.json    # the tables again

D_real's episodes are noised to tau_k (Eq. 5's forward process) at each
step k and handed back two ways:

* **read**: f_theta(tau_k, k) in one call — the copy test's reading
  (`fidelity.copy_test`), here judged by the whole fidelity report, not by
  the actions alone;
* **denoised**: DDIM (eta = 0) from tau_k down to tau0 at DDIM-20's spacing
  (SDEdit, Meng et al. 2022): what the sampler makes of an episode whose
  structure above noise level k is the real one. At k = K this is
  generation from noise, on D_real's windows.

If the damage checks (damage with a shooter, health gained, the agents'
disagreement on an enemy's health, reward–damage agreement) hold at small k
and break as k grows, the network writes health right when it is shown it
and cannot invent it consistently: the bookkeeping is lost in generation.
If they fail at k = 1 already, the network cannot even hand health back.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import data  # noqa: E402
import diffusion  # noqa: E402
import fidelity  # noqa: E402
from experiments import frontier  # noqa: E402

HOWS = ("read", "denoised")
# the report's numbers the table shows
COLUMNS = ("action_accuracy", "legal_before_repair", "attack_share", "damage_with_shooter", "health_gain_share",
           "health_disagreement", "reward_matches_damage", "win_share")


def handed_back_batches(ema, normalizer, prepared, horizons, k, how, ddim_steps=20, batch_size=256, seed=0):
    """D_real (`prepared`: diffusion.prepare's (tau0, valid, _, matrix) of it) noised to step k and handed back
    `how` ("read" or "denoised"), batch by batch: yields (index of the batch's episodes, the handed-back matrix
    (b, F, h) in data units). The noise depends only on `seed`, so "read" and "denoised" start from the same
    tau_k."""
    tau0, device = prepared[0], ema.abar.device                                       # (E, F, T)
    g = torch.Generator().manual_seed(seed)
    n_steps = max(1, round(ddim_steps * k / ema.K))             # DDIM-20's spacing from k down
    for h, index in fidelity.window_batches(horizons, batch_size):
        x0 = tau0[index, :, :h]                                                       # (b, F, h)
        steps = torch.full((len(index),), k, dtype=torch.long)
        tau_k = ema.q_sample(x0, steps, torch.randn(x0.shape, generator=g)).to(device)
        with torch.no_grad():
            pred = ema.predict_tau0(tau_k, steps.to(device)) if how == "read" else ema.ddim_from(tau_k, k, n_steps)
        yield index, normalizer.unnormalize(pred.cpu().numpy())


def handed_back(ema, normalizer, real, prepared, horizons, k, how, ddim_steps=20, batch_size=256, seed=0):
    """`handed_back_batches` judged: the MatrixStats summary of the handed-back episodes, plus "action_accuracy"
    (share of D_real's valid agent-steps whose handed-back action is the one taken)."""
    layout = data.layout_of(real)
    _, valid, _, matrix = prepared                                                    # (E, T), (E, F, T)
    stats = fidelity.matrix_stats(real, fidelity.reward_range(normalizer, layout))
    right = total = 0
    T = matrix.shape[-1]
    for index, out in handed_back_batches(ema, normalizer, prepared, horizons, k, how, ddim_steps, batch_size,
                                          seed):
        h, v = out.shape[-1], valid[index, :out.shape[-1]].numpy()                   # (b, h)
        act, _ = fidelity.action_and_legal(matrix[index, :, :h], layout, v)
        pred_act, _ = fidelity.action_and_legal(out, layout, v)
        right += int((pred_act.argmax(-1) == act.argmax(-1)).sum())
        total += act.shape[0] * act.shape[1]
        stats.add(np.pad(out, [(0, 0), (0, 0), (0, T - h)]))
    return {**stats.summary(), "action_accuracy": right / total}


def noise_level_report(path, real, ks, ddim_steps=20, seed=0, device="cpu", build=diffusion.build):
    """The model in checkpoint `path` (trained on D_real; `build`: diffusion.load_checkpoint's) handed D_real
    back from each step of `ks`, both ways: {"real": D_real's summary, "levels": [{"k", "how", **summary}, ...]}."""
    model, horizons = fidelity.load_for_judging(path, real, device, build)
    prepared = diffusion.prepare(real, model.normalizer)
    real_stats = fidelity.matrix_stats(real, fidelity.reward_range(model.normalizer, data.layout_of(real)))
    real_stats.add(prepared[3])
    levels = [{"k": k, "how": how,
               **handed_back(model.ema, model.normalizer, real, prepared, horizons, k, how, ddim_steps, seed=seed)}
              for k in sorted({min(k, model.ema.K) for k in ks}) for how in HOWS]        # a step above K is read at K
    return {"checkpoint": path, "model_steps": model.step, "real": {**real_stats.summary(), "action_accuracy": 1.0},
            "levels": levels}


def read_record(path, what="noise-level"):
    """A --json record of this script (or of `what` other script), refused in one line if unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise artifacts.InputError(f"{path}: not a readable {what} record ({err}); write one with --json")


def format_table(report):
    """The report as a markdown table: D_real's row, then one row per (k, how)."""
    lines = ["| k | handed back | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 2) + "|",
             "| — | D_real | " + " | ".join(f"{report['real'][c]:.3f}" for c in COLUMNS) + " |"]
    for level in report["levels"]:
        lines.append(f"| {level['k']} | {level['how']} | " + " | ".join(f"{level[c]:.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def add_f_theta_flags(p):
    """--skip, --learned-skip and --self-cond: how the checkpoint's f_theta was written (frontier.py's levers of
    the network)."""
    p.add_argument("--skip", type=float, default=0.0,
                   help="the checkpoint's f_theta is preconditioned with this sigma_data (frontier.py --skip)")
    p.add_argument("--learned-skip", type=float, default=0.0,
                   help="the checkpoint's f_theta has the learned skip started at this sigma_data "
                        "(frontier.py --learned-skip)")
    p.add_argument("--self-cond", action="store_true",
                   help="the checkpoint's f_theta is self-conditioned (frontier.py --self-cond)")


def f_theta_build(args):
    """The build that loads the checkpoint with the f_theta its `add_f_theta_flags` name."""
    return frontier.Levers(skip=args.skip, learned_skip=args.learned_skip, self_cond=args.self_cond).build()


def checkpoint_parser(description):
    """The parser of a script that judges one trained model: --real and --checkpoint, how its f_theta was
    written (`add_f_theta_flags`), --json to keep the record and --table to print records back."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--real", help="D_real: the HDF5 dataset the model was trained on")
    p.add_argument("--checkpoint", help="a model.pt (eaq.py's or experiments/frontier.py's)")
    add_f_theta_flags(p)
    p.add_argument("--json", help="also write the record here")
    p.add_argument("--table", nargs="+", metavar="RECORD", help="print these --json records as tables and stop")
    return p


def main(argv=None):
    p = checkpoint_parser("Where along the noise axis a model loses the health bookkeeping.")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 50, 100, 200, 400, 700, 1000],
                   help="the diffusion steps D_real is noised to")
    p.add_argument("--ddim-steps", type=int, default=20, help="DDIM steps over all K (the spacing of 'denoised')")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    args = p.parse_args(argv)
    if args.table:
        with artifacts.one_line_errors():
            for path in args.table:
                report = read_record(path)
                print(f"{report['checkpoint']} ({report['model_steps']} steps)\n{format_table(report)}\n")
        return
    with artifacts.parser_errors(p):
        if not (args.real and args.checkpoint):
            raise artifacts.InputError("give --real R.h5 and --checkpoint model.pt (or --table records)")
        artifacts.require_flags(at_least_one={"--ks": min(args.ks), "--ddim-steps": args.ddim_steps},
                                seeds={"--seed": args.seed})
        build = f_theta_build(args)
    with artifacts.one_line_errors():
        report = noise_level_report(args.checkpoint, data.load_dataset(args.real), args.ks, args.ddim_steps,
                                    args.seed, build=build)
        if args.json:
            artifacts.write_json(args.json, report)
    print(format_table(report))


if __name__ == "__main__":
    main()
