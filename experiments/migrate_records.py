"""Rename run records to the folder names train.py gives their runs now (a one-off migration, kept for the record).

    python experiments/migrate_records.py experiments/records [--dry-run]

A record's folder is named as its run's result folder under runs/results/
(`train.result_dir`), which experiments/sweep.py --records looks up to
restore it. When the stages' cache keys became "a readable name plus a hash
of the stage's whole configuration" (configuration objects instead of
flags), every name changed; this script reads each record's own
results.json, rebuilds its train.py flags, and renames the folder to
today's name. A record whose configuration train.py can no longer express
(a departure that moved to experiments/, another learner setting) is left
where it is and named in the output.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import train  # noqa: E402
from experiments.report import read_record  # noqa: E402

# Settings a record may hold that train.py has no flag for: the values its defaults (and the records) have.
FIXED = {"behaviour": "policies", "data_seed": 0, "dataset": None, "global_row_weight": 1.0, "head_width": 0,
         "x0_skip": False, "batch_size": 32, "lr": 3e-4, "gamma": 0.99, "target_every": 200, "alpha": 3.0,
         "cql_samples": 20, "tau": 0.4, "mixing": "attention"}
# What records made before a setting existed ran with (every record before the agent-factored U-Net: the flat one).
BEFORE = {"network": "flat", "mixing": "attention"}
FLAGS = ("scenario", "quality", "algo", "aug", "fraction", "lam", "scale", "diffusion_steps", "ddim_steps", "network",
         "dim",
         "bucket_width", "device", "diffusion_seed", "iters", "grad_clip", "eval_every", "eval_episodes", "backend",
         "seed", "bcq_execution")


def train_flags(config, out="runs"):
    """The train.py flags of a record's configuration; an InputError naming what train.py cannot express."""
    config = {**BEFORE, **config}
    other = {key: config[key] for key, value in FIXED.items() if key in config and config[key] != value}
    if other:
        raise artifacts.InputError(f"a setting train.py has no flag for: {other}")
    flags = [item for key in FLAGS for item in ("--" + key.replace("_", "-"), str(config[key]))]
    return flags + ([] if config["last_action"] else ["--no-last-action"]) + ["--out", out]


def migrate(folder, dry_run=False):
    """Rename every record in `folder`; returns [(old, new or the reason it stays)]."""
    moves = []
    for name in sorted(os.listdir(folder)):
        if not os.path.isfile(os.path.join(folder, name, "results.json")):
            continue
        results, _ = read_record(os.path.join(folder, name))
        try:
            new = os.path.basename(train.result_dir(train.parse_args(train_flags(results["config"]))))
        except artifacts.InputError as err:
            moves.append((name, f"stays: {err}"))
            continue
        if new != name and not dry_run:
            os.rename(os.path.join(folder, name), os.path.join(folder, new))
        moves.append((name, new))
    return moves


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="a folder of run records")
    p.add_argument("--dry-run", action="store_true", help="print the new names, rename nothing")
    args = p.parse_args(argv)
    with artifacts.one_line_errors():
        for old, new in migrate(args.folder, args.dry_run):
            print(f"{old} -> {new}")


if __name__ == "__main__":
    main()
