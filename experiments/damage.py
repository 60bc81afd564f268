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


def file_shares(path, threshold):
    """(episodes, `attacks.damage_shares`) of one dataset file, read chunk by chunk."""
    totals, episodes = collections.Counter(), 0
    for chunk in data.dataset_chunks(path):
        episodes += chunk.n_episodes
        totals.update(attacks.damage_counts(chunk, threshold))
    return episodes, attacks.damage_shares(totals)


def projections(real, ranks):
    """For each R in `ranks`: (R, D_real with every valid step's normalised Eq. 4 column replaced by its
    projection onto the top R principal directions of those columns (done row kept), decoded back to
    Episodes, the share of the columns' variance those directions keep). One SVD for all R."""
    layout = data.layout_of(real)
    matrix = data.episodes_to_matrix(real)                                   # (E, F, T) data units
    normalizer = data.Normalizer.fit(matrix)
    x = normalizer.normalize(matrix).transpose(0, 2, 1)                      # (E, T, F) as the model sees it
    valid = data.valid_steps(real.lengths, matrix.shape[-1])                 # (E, T)
    columns = x[valid]                                                       # (steps, F)
    mean = columns.mean(axis=0)
    _, singular, directions = np.linalg.svd(columns - mean, full_matrices=False)   # rows: directions (F, F)
    variance = singular ** 2
    r = layout.reward
    reward_range = (float(normalizer.lo[r]), float(normalizer.hi[r]))
    for rank in ranks:
        top = directions[:rank]                                              # (R, F)
        x[valid] = mean + (columns - mean) @ top.T @ top
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
    args = p.parse_args(argv)
    with artifacts.one_line_errors():                       # a missing or malformed file: one line
        real = data.load_dataset(args.real)
        threshold = attacks.damage_threshold(real)
        if threshold != threshold:                          # NaN
            raise artifacts.InputError(f"{args.real}: no enemy health drop in SMAX's observation layout; "
                                       "this check needs SMAX data (backend smax)")
        real_width = data.layout_of(real).n_features
        bad = [r for r in args.rank if not 1 <= r <= real_width]
        if bad:
            p.error(f"--rank {bad[0]}: must be between 1 and the matrix's {real_width} rows")
        lines = [table_line("D_real", real.n_episodes, attacks.damage_shares(attacks.damage_counts(real, threshold)))]
        for rank, episodes, kept in projections(real, args.rank):
            lines.append(table_line(f"D_real, top {rank} of {real_width} directions per step ({kept:.1%} of "
                                    f"the variance)", real.n_episodes,
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
