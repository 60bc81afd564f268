"""Docs generated from run records: Table 1 and what lies under it (docs/table1.md).

    python experiments/report.py                       # experiments/records -> docs/table1.md and its curves
    python experiments/report.py --records runs/results --out runs/table1-page.md --figures runs/figures

A record is one finished train.py run's folder (its result folder under
runs/results/, or its copy under experiments/records/ that
experiments/sweep.py keeps): results.json and metrics.csv. The page holds
Table 1 beside the paper's (`evaluate.table1_markdown`, λ chosen on the
held-out evaluation), each column against the seed spread (final and late
return, Welch's t-test against the original data), what a cell's seeds can
resolve, the fidelity of every D_syn beside its D_real, the cost, and one
learning-curve figure per cell. The same records give the same page, byte
for byte; a damaged record is refused in one line that names it.
"""
import argparse
import collections
import csv
import json
import math
import os
import re
import sys

import numpy as np
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import artifacts  # noqa: E402
import behaviour  # noqa: E402
import env as envlib  # noqa: E402
import evaluate  # noqa: E402
from evaluate import METHODS, column_label, table1_cells, table_order  # noqa: E402

# A finished run's record: the two files its table row, curve and cost are read from, under RECORDS/<its result
# folder's name>/. results.json goes last: a run counts as finished once it is there.
RECORD_FILES = ("metrics.csv", "results.json")
CONFIG_KEYS = ("scenario", "quality", "algo", "aug", "lam", "seed", "eval_episodes", "diffusion_seed",
               "diffusion_steps", "dim", "bucket_width", "ddim_steps", "scale")


def evaluation_curve(run_dir):
    """A run's evaluations during training, from its metrics.csv: (evaluations, 2) of (iteration, return)."""
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    try:
        return np.array([(float(m["iteration"]), float(m["return_mean"])) for m in rows])
    except (KeyError, TypeError, ValueError):          # a missing column, or a row cut short
        raise ValueError("metrics.csv has a row without a number for its iteration or return") from None


def read_record(record):
    """(results.json's contents, evaluation curve) of the finished run in the folder `record`; an InputError
    naming the record and the fix if either file is missing, damaged, or holds a number that is not finite."""
    fix = f"delete {record} so that the sweep trains that run again"
    try:
        with open(os.path.join(record, "results.json")) as f:
            results = json.load(f)
        curve = evaluation_curve(record)
        config, final = results["config"], results["final"]
        numbers = [final["return_mean"], final["return_std"], results["heldout"]["return_mean"]]
        missing = [key for key in CONFIG_KEYS if key not in config]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:   # missing, not JSON, wrong shape
        raise artifacts.InputError(f"{record}: not a finished run's record ({type(err).__name__}: {err}); {fix}") \
            from None
    if missing:
        raise artifacts.InputError(f"{record}: results.json's config lacks {', '.join(missing)}; {fix}")
    if not len(curve) or curve.ndim != 2 or not np.isfinite(curve).all():
        raise artifacts.InputError(f"{record}: metrics.csv has no evaluation or a return that is not a finite "
                                   f"number; {fix}")
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers):
        raise artifacts.InputError(f"{record}: results.json's final or held-out return is not a finite number "
                                   f"({numbers}); {fix}")
    return results, curve


def read_records(folder):
    """Every record in `folder`, by name: [(name, results, curve)]."""
    if not os.path.isdir(folder):
        raise artifacts.InputError(f"{folder}: no such folder of run records")
    names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n, "results.json")))
    if not names:
        raise artifacts.InputError(f"{folder}: holds no run record (a folder with results.json and metrics.csv)")
    return [(name, *read_record(os.path.join(folder, name))) for name in names]


# The late return: the mean of a run's last LATE_EVALUATIONS evaluations (every 1 000 iterations:
# 11 000-15 000 of 15 000), a check on the single final evaluation Table 1 reports.
LATE_EVALUATIONS = 5


def d_syn_name(config):
    """The D_syn an EAQ / EAQ^-Q run trained on, named by what made it ('' for any other run)."""
    if config["aug"] != "eaq":
        return ""
    return (f"{config['scenario']}-{config['quality']}-lam{float(config['lam']):g}-k{config['diffusion_steps']}"
            f"-dim{config['dim']}-b{config['bucket_width']}-ddim{config['ddim_steps']}-S{config['scale']}"
            f"-s{config['diffusion_seed']}")


def record_row(name, results, curve):
    """A record's Table 1 row (`evaluate.table1_row`) with its late return, its wall and CPU time per stage
    (CPU None where the run did not record it) and its D_syn."""
    cpu = results.get("cpu_seconds", {})
    return {**evaluate.table1_row(results, name),
            "return_late": float(curve[-LATE_EVALUATIONS:, 1].mean()),
            "learner_s": results["seconds"]["learner"], "diffusion_s": results["seconds"].get("diffusion", 0.0),
            "learner_cpu_s": cpu.get("learner"), "diffusion_cpu_s": cpu.get("diffusion"),
            "d_syn": d_syn_name(results["config"])}


def rows_by_cell(rows):
    """Per-run rows -> {(scenario, quality): that map and quality's rows}, in the rows' order."""
    cells = {}
    for r in rows:
        cells.setdefault((r["scenario"], r["quality"]), []).append(r)
    return cells


def welch_p(values, baseline):
    """Two-sided p-value of Welch's t-test (unequal variances) between two lists of per-seed returns;
    None where it is undefined (fewer than two seeds in either, or no spread in both)."""
    a, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if min(len(a), len(b)) < 2:
        return None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)       # squared standard errors of the means
    if va + vb == 0:
        return None
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))   # Welch-Satterthwaite
    return float(2 * stats.t.sf(abs(t), df))


def spread_markdown(rows, algos=("cql", "bcq")):
    """Every Table 1 cell against the seed spread: final and late return per column, each with Welch's p
    against the original data's column (per-seed values; uncorrected for the columns compared).

    The EAQ column is the λ `table1_cells` chose on held-out; its every λ
    is in the CSV. The late return is the mean of each run's last
    LATE_EVALUATIONS evaluations (`table1_rows`).
    """
    cells = table1_cells(rows)
    lines = ["| cell | learner | method | final | p vs original | late | p vs original |",
             "|---|---|---|---|---|---|---|"]

    shown = sorted((k for k in cells if k[2] in algos),
                   key=lambda k: (*table_order(k[0], k[1]), algos.index(k[2]), METHODS.index(k[3])))
    for scenario, quality, algo, method in shown:
        cell = cells[(scenario, quality, algo, method)]
        original = cells.get((scenario, quality, algo, "original")) if method != "original" else None
        label = column_label(method, cell["lam"])
        out = [f"{scenario}-{quality}", algo.upper(), label]
        for key in ("return_mean", "return_late"):
            values = [float(r[key]) for r in cell["runs"]]
            p = welch_p(values, [float(r[key]) for r in original["runs"]]) if original else None
            out += [f"{np.mean(values):.2f} ± {np.std(values):.2f}", "" if p is None else f"{p:.2f}"]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def resolvable_difference(episode_std, episodes, seeds):
    """The smallest gap between two columns' mean returns that Welch's test calls significant (two-sided
    p < 0.05) when each column has `seeds` runs and no spread but the final evaluation's own noise.

    episode_std: the per-episode standard deviation of an evaluation's returns (population, as the runs
    report it), so one evaluation of `episodes` episodes has standard error episode_std / √(episodes − 1).
    With equal spreads and seeds a side, Welch's df is 2 (seeds − 1).
    """
    se = episode_std / np.sqrt(episodes - 1)
    return float(stats.t.ppf(0.975, 2 * (seeds - 1)) * se * np.sqrt(2 / seeds))


def resolution_markdown(rows):
    """Per cell: how noisy one final evaluation is, and the smallest gap its seeds could resolve."""
    lines = []
    for (scenario, quality), cell in sorted(rows_by_cell(rows).items(), key=lambda item: table_order(*item[0])):
        episode_std = float(np.mean([float(r["return_std"]) for r in cell]))
        episodes = int(cell[0]["eval_episodes"])
        seeds = max(collections.Counter((r["algo"], r["method"], r["lam"]) for r in cell).values())
        if seeds < 2:
            continue
        gap = resolvable_difference(episode_std, episodes, seeds)
        lines.append(f"{scenario}-{quality}: per-episode return std {episode_std:.2f} over {episodes} episodes, "
                     f"one evaluation's standard error {episode_std / np.sqrt(episodes - 1):.2f}; with {seeds} "
                     f"seeds a side and no other spread, Welch's p < 0.05 needs a gap of {gap:.2f} "
                     f"({100 * gap / envlib.MAX_RETURN:.1f} points of normalised return)")
    return "\n".join(lines) + "\n" if lines else ""


def stage_cost(row, stage):
    """(seconds, whether CPU-timed) of one run's stage ('learner' or 'diffusion'): its CPU time where
    recorded, else its wall time."""
    cpu = row.get(f"{stage}_cpu_s")
    return (row[f"{stage}_s"], False) if cpu is None else (cpu, True)


def cost_markdown(rows, seeds=5, lams=3):
    """Per map and quality: the sweep's measured cost and what the paper's full cell would take.

    A stage's cost is its CPU time where the run recorded it (since
    2026-11-27), else its wall time: each run is single-threaded, so the two
    agree on a core of its own, but wall time also counts pauses and the
    waits beside other work. The counts in brackets say how many were
    CPU-timed. Medians, because a slowed run reads long. A model's cost is
    the largest among the runs sharing it (the others load it from the
    cache). The full cell: each learner's median × `seeds` × (4 + `lams`)
    columns, summed over the learners the sweep ran (the paper's cell has
    both), and `seeds` × (1 + `lams`) diffusion models. Each learner its own
    median, because BCQ runs cost more than CQL's and a pooled median moves
    with whichever learner has more runs finished.
    """
    lines = ["| map-quality | learner runs (CPU-timed) | min per learner run (median of each learner) | diffusion models (CPU-timed) | "
             "min per model (median) | run-hours so far | CPU-h, full cell |", "|---|---|---|---|---|---|---|"]
    for (scenario, quality), cell in sorted(rows_by_cell(rows).items(), key=lambda item: item[0]):
        learner = [stage_cost(r, "learner") for r in cell]                 # [(seconds, CPU-timed)] per run
        models = {}                                                        # D_syn -> (seconds, CPU-timed)
        for r in cell:
            if r["d_syn"]:
                models[r["d_syn"]] = max(models.get(r["d_syn"], (0.0, False)), stage_cost(r, "diffusion"))
        learner_s, model_s = [c for c, _ in learner], [c for c, _ in models.values()]
        algo_median = {algo: float(np.median([c for c, r in zip(learner_s, cell) if r["algo"] == algo]))
                       for algo in sorted({r["algo"] for r in cell})}   # seconds per run, per learner
        per_algo = ", ".join(f"{algo.upper()} {median / 60:.1f}" for algo, median in algo_median.items())
        model = float(np.median(model_s)) if models else None
        full = seeds * (4 + lams) * sum(algo_median.values()) + (seeds * (1 + lams) * model if models else 0.0)
        lines.append(f"| {scenario}-{quality} | {len(cell)} ({sum(t for _, t in learner)}) | "
                     f"{per_algo} | "
                     f"{len(models)} ({sum(t for _, t in models.values())}) | "
                     + (f"{model / 60:.1f}" if models else "—") + " | "
                     f"{(sum(learner_s) + sum(model_s)) / 3600:.1f} | "
                     + (f"{full / 3600:.0f}" if models else "— (no diffusion model run)") + " |")
    return "\n".join(lines) + "\n"


# The fidelity numbers of a D_syn beside its D_real's (fidelity.MatrixStats; docs/fidelity-default-budget.md).
FIDELITY_COLUMNS = (("attack_share", "attack share", "{:.3f}"), ("ended_share", "confident dones", "{:.1%}"),
                    ("legal_before_repair", "legal", "{:.3f}"), ("length_mean", "mean length", "{:.1f}"),
                    ("return_mean", "return", "{:.2f}"), ("return_std", "return std", "{:.2f}"),
                    ("q_bar_mean", "Q̄", "{:.2f}"),
                    ("q_consistency", "Q-consistency", "{:.2f}"),
                    ("damage_with_shooter", "damage with a shooter", "{:.3f}"),
                    ("reward_matches_damage", "reward matches damage", "{:.3f}"))


def synthetic_reports(records):
    """Each D_syn the records' EAQ and EAQ^-Q runs trained on, once per version:
    [{d_syn, scenario, quality, lam, diffusion_seed, algos, report}] (report: `fidelity.synthetic_report`'s).

    Runs that share a diffusion model carry one report. A D_syn made twice (its model trained again,
    e.g. after `runs/` was lost, on a machine whose arithmetic differs) can come out with other numbers:
    each version is kept, with the learners (algos) that trained on it.
    """
    versions = {}                                              # {(D_syn, its numbers): entry}
    for _, results, _ in records:
        config = results["config"]
        if config["aug"] != "eaq":
            continue
        report = results["augmentation_report"]
        key = (d_syn_name(config), json.dumps(report["synthetic"], sort_keys=True))
        versions.setdefault(key, {
            "d_syn": key[0], "scenario": config["scenario"], "quality": config["quality"],
            "lam": float(config["lam"]), "diffusion_seed": config["diffusion_seed"], "algos": [],
            "report": report})["algos"].append(config["algo"])
    return list(versions.values())


def fidelity_markdown(reports):
    """Per map and quality, D_real's fidelity numbers and then each D_syn's, with its TV distance and verdict;
    a D_syn made twice gets a row per version, naming the learners that trained on it."""
    header = ["data", "λ", "diffusion seed"] + [label for _, label, _ in FIDELITY_COLUMNS] + [
        "action TV", "fidelity bar"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]

    def cells(stats):
        return [fmt.format(stats[key]) if key in stats else "—"           # reports older than the key
                for key, _, fmt in FIDELITY_COLUMNS]
    made = collections.Counter(e["d_syn"] for e in reports)
    by_data = {}
    for entry in reports:
        by_data.setdefault((entry["scenario"], entry["quality"]), []).append(entry)
    for (scenario, quality), entries in sorted(by_data.items()):
        lines.append("| " + " | ".join([f"{scenario}-{quality} D_real", "", ""]
                                       + cells(entries[0]["report"]["real"]) + ["", ""]) + " |")
        for e in sorted(entries, key=lambda e: (e["lam"], e["diffusion_seed"])):    # versions in run order
            misses = e["report"]["fidelity_misses"]
            verdict = "meets" if not misses else "misses: " + ", ".join(   # each miss by its name alone
                re.match(r"[a-z -]*[a-z]", m).group(0) for m in misses)
            label = "D_syn" if made[e["d_syn"]] == 1 else (
                f"D_syn seen by {', '.join(a.upper() for a in e['algos'])} ({made[e['d_syn']]} made)")
            lines.append("| " + " | ".join([label, f"{e['lam']:g}", str(e["diffusion_seed"])]
                                           + cells(e["report"]["synthetic"])
                                           + [f"{e['report']['action_tv_distance']:.3f}", verdict]) + " |")
    if max(made.values()) > 1:
        lines += ["", "A D_syn made more than once came from one configuration and seed, its diffusion model trained "
                      "again (e.g. after `runs/` was lost); results are bit-identical only on the same machine and "
                      "thread count, so its versions can differ: each row names the learners that trained on it."]
    return "\n".join(lines) + "\n"


def cell_curves(rows, curves, path):
    """Learning curves per Table 1 cell of one map and quality: mean ± std over seeds, a panel per learner.
    curves: {run folder: its evaluation curve} (`read_runs`)."""
    plt = artifacts.pyplot()
    algos = sorted({r["algo"] for r in rows})
    fig, axes = plt.subplots(1, len(algos), figsize=(5 * len(algos), 3.5), squeeze=False, sharey=True)
    for ax, algo in zip(axes[0], algos):
        cells = {}
        for r in rows:
            if r["algo"] == algo:
                label = column_label(r["method"], r["lam"])
                cells.setdefault(label, []).append(r["run_dir"])
        for label, dirs in cells.items():
            seeds = np.array([curves[d] for d in dirs])        # (seeds, evaluations, 2)
            mean, std = seeds[:, :, 1].mean(0), seeds[:, :, 1].std(0)
            ax.plot(seeds[0, :, 0], mean, label=f"{label} ({len(dirs)} seeds)")
            ax.fill_between(seeds[0, :, 0], mean - std, mean + std, alpha=0.15)
        ax.set(title=f"QMIX+{algo.upper()}, {rows[0]['scenario']}-{rows[0]['quality']}",
               xlabel="iteration", ylabel="evaluation return")
        ax.legend(fontsize=8)
    fig.tight_layout()
    artifacts.save_figure(fig, path)


def one_level_notes(rows, manifest):
    """A sentence for each cell of `rows` whose shipped behaviour policies (`manifest`, behaviour.read_manifest's)
    never reached their quality's level: its data is the level below again, so the row is an ablation."""
    notes = []
    for scenario, quality in sorted(rows_by_cell(rows), key=lambda cell: table_order(*cell)):
        entries = manifest.get(scenario, {}).get(quality, [])
        if entries and not any(e["reached"] for e in entries):
            picks = np.mean([e["return_mean"] for e in entries])
            notes.append(f"**{scenario}-{quality} is one-level data** (an ablation beside the paper's cell): its "
                         f"behaviour policies never reached OG-MARL's {quality} level (their picks average "
                         f"{picks:.2f} against {entries[0]['target_return']:.2f}; docs/datasets.md).")
    return "\n\n".join(notes)


def table1_page(records, algos=("cql", "bcq"), figures=None, command="python experiments/report.py",
                manifest=None):
    """The Markdown page of `records` (`read_records`); with `figures` (a path relative to the page, and its
    files' names) one learning-curve figure per cell is linked: [(scenario, quality, path)]. Cells whose
    policies in `manifest` (default: the shipped one) never reached their level are named one-level data."""
    rows = [record_row(*record) for record in records]
    page = [f"# Table 1 on our data\n\nGenerated by `{command}` from {len(rows)} run records; rerun it rather "
            f"than editing this page. Cells are mean ± std over seeds of the final evaluation (32 games); EAQ's λ "
            f"is chosen per cell on a held-out evaluation.\n", evaluate.table1_markdown(rows, algos)]
    notes = one_level_notes(rows, behaviour.read_manifest() if manifest is None else manifest)
    if notes:
        page.append(notes + "\n")
    page.append(f"## Each column against the seed spread\n\nFinal evaluation and late return (mean of the last "
                f"{LATE_EVALUATIONS} evaluations), mean ± std over seeds, and Welch's p against original "
                f"(uncorrected):\n\n" + spread_markdown(rows, algos))
    resolution = resolution_markdown(rows)
    if resolution:
        page.append("## What a column's seeds can resolve\n\nFrom the final evaluations' own noise:\n\n"
                    + resolution)
    reports = synthetic_reports(records)
    if reports:
        page.append("## Fidelity of each D_syn beside its D_real\n\n(`fidelity.synthetic_report`, printed by "
                    "train.py)\n\n" + fidelity_markdown(reports))
    page.append("## Cost\n\nPer map and quality (CPU time where a run recorded it, else wall time; each run "
                "single-threaded, beside the sweep's other workers), and the CPU-hours of the paper's full cell "
                "(5 seeds, 3 λ):\n\n" + cost_markdown(rows))
    if figures:
        page.append("## Learning curves\n\n" + "".join(f"![{s}-{q}]({path})\n" for s, q, path in figures))
    return "\n".join(page)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", default=os.path.join(ROOT, "experiments", "records"), help="folder of run records")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "table1.md"), help="the page to write")
    p.add_argument("--figures", default=os.path.join(ROOT, "docs", "figures", "table1"),
                   help="folder of the learning-curve figures (curves-<map>-<quality>.png)")
    p.add_argument("--algos", nargs="+", default=["cql", "bcq"], help="learners, in column order")
    args = p.parse_args(argv)
    with artifacts.one_line_errors():
        records = read_records(args.records)
        rows = [record_row(*record) for record in records]
        curves = {name: curve for name, _, curve in records}
        figures = []
        os.makedirs(args.figures, exist_ok=True)
        for (scenario, quality), cell in rows_by_cell(rows).items():
            path = os.path.join(args.figures, f"curves-{scenario}-{quality}.png")
            cell_curves(cell, curves, path)
            figures.append((scenario, quality, os.path.relpath(path, os.path.dirname(os.path.abspath(args.out)))))
        page = table1_page(records, tuple(args.algos), figures)
        with artifacts.atomic_path(args.out) as tmp, open(tmp, "w") as f:
            f.write(page)
    print(f"wrote {args.out} from {len(records)} records in {args.records}")


if __name__ == "__main__":
    main()
