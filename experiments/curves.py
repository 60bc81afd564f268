"""A sweep's learning curves as numbers: each column's evaluation return at chosen iterations
(docs/where-the-wins-went.md).

    python experiments/curves.py --table runs/table1/table1.csv [--table W10=other/table1/table1.csv] \
        [--at 1000 2000 5000 15000]

For every table1.csv (`evaluate.py table1` writes one; prefix a label and
`=` to tell several apart) and every cell, learner and column (EAQ once per
λ), the mean ± std over seeds of the evaluation return at each `--at`
iteration, read from each run's metrics.csv — the numbers behind
curves-<map>-<quality>.png.
"""
import argparse
import csv
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import evaluate  # noqa: E402
from experiments.report import evaluation_curve  # noqa: E402


def column_curves(table_path):
    """{(map-quality, learner, column): [evaluation curve (evaluations, 2) per seed]} of one table1.csv."""
    columns = {}
    try:
        with open(table_path) as f:
            for row in csv.DictReader(f):
                key = (f"{row['scenario']}-{row['quality']}", row["algo"].upper(),
                       evaluate.column_label(row["method"], row["lam"]))
                columns.setdefault(key, []).append(evaluation_curve(row["run_dir"]))
    except OSError as err:
        raise artifacts.InputError(f"{err.filename}: {err.strerror}; pass a table1.csv written by "
                                   "`evaluate.py table1` whose runs are still on disk") from None
    except KeyError as err:
        raise artifacts.InputError(f"{table_path}: no column {err} — not a table1.csv from `evaluate.py table1`") \
            from None
    return columns


def at_iterations(curves, iterations):
    """'mean ± std' over seeds of the return at each iteration (— where a run has no evaluation there)."""
    cells = []
    for it in iterations:
        values = [c[c[:, 0] == it, 1] for c in curves]
        if any(len(v) == 0 for v in values):
            cells.append("—")
            continue
        first = [v[0] for v in values]
        cells.append(f"{np.mean(first):.2f} ± {np.std(first):.2f}")
    return cells


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", action="append", required=True, help="[LABEL=]path of a table1.csv; repeat")
    p.add_argument("--at", type=int, nargs="+", default=[1000, 2000, 5000, 15000], help="iterations")
    args = p.parse_args(argv)
    with artifacts.one_line_errors():                       # a missing table or run folder: one line
        lines = []
        for entry in args.table:
            label, _, path = entry.rpartition("=")
            for (cell, algo, method), curves in sorted(column_curves(path).items()):
                lines.append(f"| {label or os.path.basename(os.path.dirname(os.path.abspath(path)))} | {cell} | "
                             f"{algo} | {method} | {len(curves)} | " + " | ".join(at_iterations(curves, args.at))
                             + " |")
    print("| table | cell | learner | column | seeds | " + " | ".join(f"at {it}" for it in args.at) + " |")
    print("|---" * (5 + len(args.at)) + "|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
