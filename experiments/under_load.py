"""Speed of a learner and of the diffusion model alone and beside a second copy of itself (docs/reliability.md).

    python experiments/under_load.py --dataset runs/datasets/<3m-poor D_real>.h5

Runs experiments/learners.py (QMIX+CQL iterations/s) and experiments/diffusion_speed.py
(training steps/s) first alone, then two copies at once, each as its own
process with the thread counts the project's code chooses by itself (no
environment variables set), and prints the four numbers and the slowdown.
On a 2-core machine a second process should cost at most about 2x.
"""
import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")}


def command(kind, dataset):
    if kind == "learner":
        return [sys.executable, os.path.join(HERE, "learners.py"), "--dataset", dataset, "--iters", "400",
                "--algos", "cql"]
    return [sys.executable, os.path.join(HERE, "diffusion_speed.py"), "--dataset", dataset, "--train-steps", "60",
            "--no-sampling"]


def rate(output, kind):
    """The iterations/s (learner) or training steps/s (diffusion) a speed script printed."""
    pattern = r"([\d.]+) iterations/s" if kind == "learner" else r"training ([\d.]+) steps/s"
    return float(re.search(pattern, output).group(1))


def run_together(kind, dataset, copies):
    procs = [subprocess.Popen(command(kind, dataset), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=CLEAN_ENV) for _ in range(copies)]
    outputs = [p.communicate()[0] for p in procs]
    for p, out in zip(procs, outputs):
        if p.returncode:
            raise SystemExit(f"{' '.join(command(kind, dataset))} failed:\n{out}")
    return [rate(out, kind) for out in outputs]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="HDF5 dataset (D_real)")
    args = p.parse_args()
    for kind, unit in (("learner", "iterations/s"), ("diffusion", "training steps/s")):
        alone = run_together(kind, args.dataset, 1)[0]
        pair = run_together(kind, args.dataset, 2)
        print(f"{kind}: alone {alone:.1f} {unit}; two at once {pair[0]:.1f} and {pair[1]:.1f} "
              f"(slowdown {alone / min(pair):.2f}x)", flush=True)


if __name__ == "__main__":
    main()
