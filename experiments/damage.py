"""Do enemies lose health where the actions say they were shot? D_real against D_syn files already written
(docs/damage-without-a-shooter.md).

    python experiments/damage.py --real runs/datasets/3m-medium-...-s0.h5 \
        --synthetic runs/eaq/<run>/synthetic.h5 [LABEL=runs/eaq/<other>/synthetic.h5 ...]

In the simulator an enemy loses health only when an agent shoots it and
never gains any back (SMAX). For each file, over every step whose next
observation lies inside the episode and every enemy some agent sees at
both steps (`attacks.damage_counts`): the share of attacks on an enemy after
which it has lost health, the share of health drops that follow an attack
on that enemy ("with a shooter"; D_real: 1), and the share of steps on
which an enemy gains health (D_real: 0). A drop counts when it exceeds half
the smallest drop D_real shows (`attacks.damage_threshold`). Then the reward
row against that damage, over the steps on which every enemy is seen at
both steps: the share whose reward lies within half a shot's reward of
what SMAX pays for the health lost (D_real: 1), and the mean reward minus
that payment (D_real: 0); and over the steps on which at least one enemy
is seen at both steps, the share whose reward falls short of what SMAX
pays for the health the seen enemies lose by more than half a shot's
reward (D_real: 0; an enemy nobody sees can only add to the reward).
Reports written by eaq.py (and diffusion.py before it) since these
checks exist hold the same numbers; this script gives them for older D_syn
files. Files are read in chunks.

`--rank R ...` adds D_real itself with each step's column of the Eq. 4
matrix (normalised, as the model sees it) projected onto D_real's top R
principal directions: the closest D_real comes to an output confined to R
directions per step, as the output of a network whose last layer is a
linear map from R channels is (the U-Net's head: `--dim` channels). The
done row is kept as recorded, so only the agents' rows are judged.

`--agent-rank R ...` does the same for the agent-factored U-Net
(`--network agents`), whose head is one linear map, shared by every agent,
from `--dim` channels to an agent's W rows: each agent's W-row column of
each step is projected onto the top R principal directions of all agents'
columns pooled (one subspace for all agents, as the shared head writes),
the global rows (reward, Q_tot, done: their own head) kept as recorded.
"""
import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import attacks  # noqa: E402
import data  # noqa: E402
import fidelity  # noqa: E402


def file_shares(path, threshold):
    """(episodes, `attacks.damage_shares`) of one dataset file, read chunk by chunk."""
    totals, episodes = collections.Counter(), 0
    for chunk in data.dataset_chunks(path):
        episodes += chunk.n_episodes
        totals.update(attacks.damage_counts(chunk, threshold))
    return episodes, attacks.damage_shares(totals)


def projections(real, ranks, per_agent=False):
    """For each R in `ranks`: (R, D_real with every valid step's normalised Eq. 4 column replaced by its
    projection onto the top R principal directions of those columns (done row kept), decoded back to
    Episodes, the share of the columns' variance those directions keep). With `per_agent`, the columns are
    each agent's W rows of each step, pooled over agents, and the global rows are kept. One SVD for all R."""
    if not ranks:
        return
    layout = data.layout_of(real)
    matrix = data.episodes_to_matrix(real)                                   # (E, F, T) data units
    normalizer = data.Normalizer.fit(matrix)
    x = normalizer.normalize(matrix).transpose(0, 2, 1)                      # (E, T, F) as the model sees it
    valid = data.valid_steps(real.lengths, matrix.shape[-1])                 # (E, T)
    steps = x[valid]                                                         # (S, F)
    rows = slice(0, layout.reward) if per_agent else slice(None)             # the agents' N W rows, or all F
    width = layout.agent_width if per_agent else layout.n_features
    columns = steps[:, rows].reshape(-1, width)                              # (S N, W) or (S, F)
    mean = columns.mean(axis=0)
    _, singular, directions = np.linalg.svd(columns - mean, full_matrices=False)   # rows: directions
    variance = singular ** 2
    reward_range = fidelity.reward_range(normalizer, layout)
    for rank in ranks:
        top = directions[:rank]                                              # (R, width)
        projected = steps.copy()
        projected[:, rows] = (mean + (columns - mean) @ top.T @ top).reshape(len(steps), -1)
        x[valid] = projected
        out = normalizer.unnormalize(x.transpose(0, 2, 1))                   # (E, F, T)
        out[:, layout.done] = matrix[:, layout.done]
        yield rank, data.matrix_to_episodes(out, layout, reward_range, real.attrs), \
            float(variance[:rank].sum() / variance.sum())


def table_line(label, episodes, shares):
    return (f"| {label} | {episodes} | {shares['attacks_that_damage']:.3f} | "
            f"{shares['damage_with_shooter']:.3f} | {shares['health_gain_share']:.3f} | "
            f"{shares['reward_matches_damage']:.3f} | {shares['reward_minus_damage']:+.3f} | "
            f"{shares['reward_below_damage']:.3f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", required=True, help="D_real: the dataset the diffusion model was trained on")
    p.add_argument("--synthetic", nargs="+", default=[], help="[LABEL=]path of a synthetic.h5; several allowed")
    p.add_argument("--rank", type=int, nargs="+", default=[],
                   help="also D_real projected onto its top R principal directions per step, for each R")
    p.add_argument("--agent-rank", type=int, nargs="+", default=[],
                   help="also each agent's rows of D_real projected onto the top R principal directions of all "
                        "agents' rows per step, for each R (the agent-factored U-Net's shared head)")
    args = p.parse_args(argv)
    with artifacts.one_line_errors():                       # a missing or malformed file: one line
        real = data.load_dataset(args.real)
        threshold = attacks.damage_threshold(real)
        if threshold != threshold:                          # NaN
            raise artifacts.InputError(f"{args.real}: no enemy health drop in SMAX's observation layout; "
                                       "this check needs SMAX data (backend smax)")
        layout = data.layout_of(real)
        for flag, ranks, width, what in (("--rank", args.rank, layout.n_features, "the matrix's"),
                                         ("--agent-rank", args.agent_rank, layout.agent_width, "an agent's")):
            bad = [r for r in ranks if not 1 <= r <= width]
            if bad:
                p.error(f"{flag} {bad[0]}: must be between 1 and {what} {width} rows")
        lines = [table_line("D_real", real.n_episodes, attacks.damage_shares(attacks.damage_counts(real, threshold)))]
        for ranks, per_agent, label in ((args.rank, False, f"of {layout.n_features} directions per step"),
                                        (args.agent_rank, True, f"of {layout.agent_width} directions per agent-step")):
            for rank, episodes, kept in projections(real, ranks, per_agent):
                lines.append(table_line(f"D_real, top {rank} {label} ({kept:.1%} of the variance)", real.n_episodes,
                                        attacks.damage_shares(attacks.damage_counts(episodes, threshold))))
        for i, entry in enumerate(args.synthetic):
            label, _, path = entry.rpartition("=")
            lines.append(table_line(label or f"D_syn {i + 1}", *file_shares(path, threshold)))
    print(f"health drops count above {threshold:.3f} (half the smallest drop in D_real)")
    print("| data | episodes | attacks that damage | damage with a shooter | health gains "
          "| reward matches damage | reward − damage | reward below damage |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
