"""Learning curves of the offline learners with and without RAD (paper §4.1-4.2; README "Learners").

    python bench/curves.py --scenario 3m --quality medium --seeds 0 1 2

Builds (or reuses) the paper-sized 3 % dataset, then trains QMIX+CQL and
QMIX+BCQ with --aug none / rad-s / rad-m for every seed, each run writing
runs/curves/<scenario>-<quality>/<learner>-<aug>-s<seed>/metrics.csv (a
finished run is skipped, so the sweep can be resumed), and finally draws
curves.png (mean ± std over seeds of the evaluation return) beside them.
"""
import argparse
import csv
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bcq  # noqa: E402
import cql  # noqa: E402
import data  # noqa: E402

LEARNERS = {"cql": cql, "bcq": bcq}


def read_curve(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([float(r["iteration"]) for r in rows]), np.array([float(r["return_mean"]) for r in rows])


def plot(out, learners, augs, seeds):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(learners), figsize=(5 * len(learners), 3.5), squeeze=False)
    for ax, name in zip(axes[0], learners):
        for aug in augs:
            curves = [read_curve(os.path.join(out, f"{name}-{aug}-s{s}", "metrics.csv")) for s in seeds
                      if os.path.exists(os.path.join(out, f"{name}-{aug}-s{s}", "metrics.csv"))]
            if not curves:
                continue
            its = curves[0][0]
            returns = np.stack([c[1] for c in curves])
            ax.plot(its, returns.mean(0), label=f"{aug} ({len(curves)} seeds)")
            ax.fill_between(its, returns.mean(0) - returns.std(0), returns.mean(0) + returns.std(0), alpha=0.2)
        ax.set(title=f"QMIX+{name.upper()}", xlabel="iteration", ylabel="evaluation return")
        ax.legend()
    fig.tight_layout()
    with data.atomic_path(os.path.join(out, "curves.png")) as tmp:
        fig.savefig(tmp, dpi=100)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="3m", help="map")
    p.add_argument("--quality", default="medium", help="behaviour quality")
    p.add_argument("--fraction", type=float, default=0.03, help="dataset size as a share of OG-MARL's")
    p.add_argument("--learners", nargs="+", default=["cql", "bcq"], choices=sorted(LEARNERS), help="learners")
    p.add_argument("--augs", nargs="+", default=["none", "rad-s", "rad-m"], help="augmentations")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="learner seeds")
    p.add_argument("--iters", type=int, default=15000, help="iterations per run (paper: 15 000)")
    args = p.parse_args()
    dataset = data.ensure_dataset(args.scenario, args.quality, args.fraction, seed=0)
    out = os.path.join("runs", "curves", f"{args.scenario}-{args.quality}")
    for seed in args.seeds:
        for name in args.learners:
            for aug in args.augs:
                run = os.path.join(out, f"{name}-{aug}-s{seed}")
                if os.path.exists(os.path.join(run, "metrics.csv")):
                    continue
                LEARNERS[name].main(["--dataset", dataset, "--iters", str(args.iters), "--aug", aug,
                                     "--seed", str(seed), "--out", run])
                plot(out, args.learners, args.augs, args.seeds)
    plot(out, args.learners, args.augs, args.seeds)


if __name__ == "__main__":
    main()
