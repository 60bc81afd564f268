"""The paper's figures of the data and its Table 1 (§4.5, Fig. 1b, Fig. 3, Table 1).

* `figure_1b`, `figure_3` — focus fire (`fidelity.focus_fire_counts`: among
  steps where at least two agents are alive and every living agent attacks,
  the share where they all attack the same enemy) and a t-SNE of
  observations, the original data against each D_syn.
* `table1_markdown` — Table 1 in the paper's format beside the paper's own
  rows, λ chosen per cell on the held-out evaluation (`table1_cells`); every
  λ stays in the CSV.
* `evaluate.py table1` — the sweep over maps, qualities, methods, learners
  and seeds: `train.py` runs, reused when finished, one after another
  (experiments/sweep.py: in parallel or on Ray, with run records).

Rollouts of a policy in the simulator live beside it, in `qmix.evaluate_policy`.
"""
import argparse
import json
import os

import numpy as np
from sklearn.manifold import TSNE

import artifacts
import data
import datasets
import env as envlib
import fidelity
import train


# ---------------------------------------------------------------------------
# Figures 1b and 3: what the augmentation does to the data
# ---------------------------------------------------------------------------
def living_observations(episodes, n, seed):
    """Up to n observation vectors of living agents on valid steps, (n, O)."""
    T = episodes.rewards.shape[1]
    valid = data.valid_steps(episodes.lengths, T)                              # (E, T)
    living = fidelity.living_agents(episodes.avail[:, :T], fidelity.first_attack_action(episodes))   # (E, T, N)
    living &= valid[..., None]
    obs = episodes.obs[:, :T][living]                                          # (M, O)
    keep = np.random.default_rng(seed).permutation(len(obs))[:n]
    return obs[keep]


def column_label(method, lam):
    """A Table 1 column's name: the method, and for EAQ its λ ('EAQ (λ=0.1)')."""
    return f"EAQ (λ={float(lam):g})" if method == "EAQ" else method


FIGURE_COLORS = ("tab:gray", "tab:red", "tab:orange", "tab:purple", "tab:blue")   # original, then each D_syn


def figure_labels(syns):
    """Legend labels of the original data and each D_syn (EAQ's λ, or EAQ^-Q, from its attrs), in figure order."""
    return ["original"] + [column_label("EAQ", ep.attrs["lam"]) if ep.attrs.get("lam", 0) > 0 else "EAQ^-Q"
                           for ep in syns]


def figure_1b(real, syns, path):
    """Bar chart of the focus-fire ratio, original vs each D_syn; returns the ratios (original first)."""
    plt = artifacts.pyplot()
    ratios = [fidelity.dataset_focus_fire(ep)[0] for ep in [real] + list(syns)]
    labels = figure_labels(syns)
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(labels), 3))
    ax.bar(labels, ratios, color=FIGURE_COLORS[:len(labels)])
    ax.set(ylabel="focus-fire share of all-attack steps", ylim=(0, 1),
           title=f"Fig. 1b, {real.attrs['scenario']}-{real.attrs['quality']}")
    fig.tight_layout()
    artifacts.save_figure(fig, path)
    return ratios


def figure_3(real, syns, path, n=1500, seed=0):
    """t-SNE of living agents' observations, original vs each D_syn (scikit-learn)."""
    plt = artifacts.pyplot()
    sets = [living_observations(ep, n, seed) for ep in [real] + list(syns)]
    xy = TSNE(n_components=2, init="pca", random_state=seed).fit_transform(np.concatenate(sets))
    bounds = np.cumsum([0] + [len(x) for x in sets])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    labels = figure_labels(syns)
    for i in list(range(1, len(sets))) + [0]:                 # original drawn last, on top
        ax.scatter(*xy[bounds[i]:bounds[i + 1]].T, s=3, alpha=0.5, label=labels[i], color=FIGURE_COLORS[i])
    ax.set(title=f"Fig. 3, t-SNE of observations, {real.attrs['scenario']}-{real.attrs['quality']}",
           xticks=[], yticks=[])
    ax.legend(markerscale=4)
    fig.tight_layout()
    artifacts.save_figure(fig, path)


# ---------------------------------------------------------------------------
# Table 1
# ---------------------------------------------------------------------------
METHODS = ("original", "RAD-s", "RAD-m", "EAQ^-Q", "EAQ")

# The paper's Table 1 (QMIX on SMAC, 5 seeds): (mean, std) per learner in
# METHODS order. Printed under our rows for the same map and quality.
PAPER_TABLE1 = {
    ("3m", "medium"): {"cql": ((7.47, 6.35), (16.90, 2.75), (15.05, 3.11), (8.22, 5.77), (13.70, 7.43)),
                       "bcq": ((5.17, 2.76), (2.56, 1.45), (4.56, 2.00), (4.16, 3.27), (16.90, 2.21))},
    ("3m", "poor"): {"cql": ((3.81, 1.59), (2.83, 0.85), (7.87, 6.36), (6.95, 3.46), (10.60, 6.25)),
                     "bcq": ((0.79, 0.83), (1.35, 1.31), (0.77, 0.32), (1.38, 0.97), (1.59, 1.59))},
    ("5m_vs_6m", "medium"): {"cql": ((0.29, 0.45), (0.05, 0.07), (0.18, 0.31), (0.77, 0.42), (3.75, 2.04)),
                             "bcq": ((3.38, 0.43), (3.00, 0.81), (3.52, 0.52), (2.62, 1.87), (1.72, 1.66))},
    ("5m_vs_6m", "poor"): {"cql": ((0.99, 1.21), (1.84, 1.83), (1.73, 1.61), (6.48, 1.39), (3.64, 2.24)),
                           "bcq": ((2.01, 1.05), (1.96, 1.27), (2.25, 1.38), (4.00, 1.53), (4.23, 0.70))},
    ("8m", "medium"): {"cql": ((1.87, 0.86), (1.24, 0.67), (1.22, 0.70), (2.95, 1.17), (3.59, 0.60)),
                       "bcq": ((1.64, 1.10), (2.32, 0.75), (1.60, 1.83), (4.91, 1.34), (5.92, 5.58))},
    ("8m", "poor"): {"cql": ((0.35, 0.25), (0.66, 0.62), (0.88, 0.92), (1.41, 0.93), (1.69, 1.69)),
                     "bcq": ((2.56, 0.48), (2.75, 0.42), (2.44, 0.41), (9.23, 2.61), (6.06, 1.79))},
    ("2s3z", "medium"): {"cql": ((3.77, 0.86), (5.98, 2.92), (5.26, 1.48), (9.74, 2.15), (9.05, 1.80)),
                         "bcq": ((6.86, 0.84), (5.41, 1.78), (6.57, 1.49), (5.65, 1.68), (7.46, 2.61))},
    ("2s3z", "poor"): {"cql": ((5.16, 2.71), (5.13, 1.68), (3.30, 1.43), (6.13, 1.26), (5.40, 3.37)),
                       "bcq": ((5.20, 1.89), (5.39, 1.33), (4.72, 0.87), (6.61, 1.38), (7.34, 3.90))},
    ("3s5z_vs_3s6z", "medium"): {"cql": ((2.69, 1.49), (2.81, 1.00), (3.34, 1.37), (6.14, 2.60), (7.17, 1.37)),
                                 "bcq": ((6.14, 1.86), (5.37, 1.21), (5.47, 0.79), (6.07, 1.22), (6.58, 2.90))},
    ("3s5z_vs_3s6z", "poor"): {"cql": ((2.87, 0.80), (2.69, 0.42), (2.00, 0.88), (5.16, 1.19), (5.35, 0.74)),
                               "bcq": ((4.69, 1.32), (5.48, 1.23), (5.75, 0.40), (5.51, 0.37), (6.37, 0.46))},
}


PAPER_STATED_GAIN = {"medium": 17.3, "poor": 12.9}   # the paper's "+17.3 % / +12.9 %" (abstract, §4.5)


def paper_cell(scenario, quality, algo, method):
    """The paper's (mean, std) for one cell of Table 1, or None where the paper has none."""
    row = PAPER_TABLE1.get((scenario, quality), {}).get(algo)
    return row[METHODS.index(method)] if row else None


def paper_averages(scenarios, quality, algos):
    """The paper's AVG row over `scenarios`: {(algo, method): mean of its cell means}."""
    return {(a, m): float(np.mean([paper_cell(s, quality, a, m)[0] for s in scenarios]))
            for a in algos for m in METHODS}


def normalised_gain(averages, algos):
    """Mean over learners of (EAQ − original) / MAX_RETURN, in points; averages: {(algo, method): mean}."""
    return 100 * float(np.mean([(averages[(a, "EAQ")] - averages[(a, "original")]) / envlib.MAX_RETURN
                                for a in algos]))


def table_order(scenario, quality):
    """Table 1's row order: the medium rows before the poor ones, as in the paper; maps by name."""
    return quality != "medium", scenario


def table1_cells(rows):
    """Per-run rows (`table1_row`) -> {(scenario, quality, algo, method): cell}, λ chosen on held-out returns.

    A cell holds the mean and std over seeds of the reported returns; for
    EAQ, of the λ whose mean held-out return is highest (ties: the smaller
    λ), with that λ, its runs, and every λ's held-out mean and reported
    (mean, std, seeds). Only the λ with the most seeds compete, so none wins
    on a smaller (easier) set while a sweep is still running.
    """
    groups = {}
    for r in rows:
        key = (r["scenario"], r["quality"], r["algo"], r["method"])
        groups.setdefault(key, {}).setdefault(float(r["lam"]), []).append(r)
    cells = {}
    for key, by_lam in groups.items():
        heldout = {lam: float(np.mean([r["heldout_return"] for r in runs])) for lam, runs in by_lam.items()}
        most_seeds = max(len(runs) for runs in by_lam.values())
        lam = max((x for x in sorted(heldout) if len(by_lam[x]) == most_seeds), key=lambda x: heldout[x])
        reported = {x: [float(r["return_mean"]) for r in runs] for x, runs in by_lam.items()}
        cells[key] = {"mean": float(np.mean(reported[lam])), "std": float(np.std(reported[lam])),
                      "seeds": len(reported[lam]), "lam": lam, "runs": sorted(by_lam[lam], key=lambda r: r["seed"]),
                      "heldout": heldout[lam], "heldout_by_lam": heldout,
                      "reported_by_lam": {x: (float(np.mean(v)), float(np.std(v)), len(v))
                                          for x, v in reported.items()}}
    return cells


def table1_markdown(rows, algos=("cql", "bcq")):
    """Table 1 in the paper's format from per-run rows (`table1_cells`), each of our rows over the paper's.

    Cells: mean ± std over seeds of the reported evaluation (EAQ's names its
    λ); the best per row and learner in bold. AVG-<quality> rows, ours and the
    paper's over the same maps; EAQ's gain over the original data in points
    of normalised return (return / MAX_RETURN) beside the paper's; then each
    EAQ cell's λ selection (every λ's held-out mean).
    """
    cells = table1_cells(rows)
    pairs = sorted({(s, q) for s, q, _, _ in cells}, key=lambda p: table_order(*p))
    header = "| scenario | " + " | ".join(f"{a.upper()} {m}" for a in algos for m in METHODS) + " |"
    lines = [header, "|---|" + "---|" * (len(algos) * len(METHODS))]

    def row(label, values):
        """values: {(algo, method): (mean, std or None, suffix)}; missing cells print as —."""
        out = []
        for algo in algos:
            present = [values[(algo, m)][0] for m in METHODS if (algo, m) in values]
            for method in METHODS:
                if (algo, method) not in values:
                    out.append("—")
                    continue
                mean, std, suffix = values[(algo, method)]
                text = (f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}") + suffix
                out.append(f"**{text}**" if mean == max(present) else text)
        return f"| {label} | " + " | ".join(out) + " |"

    def paper_values(scenario, quality):
        return {(a, m): (*paper_cell(scenario, quality, a, m), "")
                for a in algos for m in METHODS if paper_cell(scenario, quality, a, m)}

    most_seeds = max((cell["seeds"] for cell in cells.values()), default=0)
    for scenario, quality in pairs:
        values = {}
        for algo in algos:
            for method in METHODS:
                cell = cells.get((scenario, quality, algo, method))
                if cell:
                    suffix = f" (λ={cell['lam']:g})" if method == "EAQ" else ""
                    suffix += f" [{cell['seeds']} of {most_seeds} seeds]" if cell["seeds"] < most_seeds else ""
                    values[(algo, method)] = (cell["mean"], cell["std"], suffix)
        lines.append(row(f"{scenario}-{quality}", values))
        if (scenario, quality) in PAPER_TABLE1:
            lines.append(row(f"{scenario}-{quality} (paper)", paper_values(scenario, quality)))
    improvements, selections = [], []
    for quality in ("medium", "poor"):
        scenarios = [s for s, q in pairs if q == quality]
        if not scenarios:
            continue
        averages = {}
        for algo in algos:
            for method in METHODS:
                keys = [(s, quality, algo, method) for s in scenarios]
                if all(k in cells for k in keys):
                    averages[(algo, method)] = float(np.mean([cells[k]["mean"] for k in keys]))
        lines.append(row(f"AVG-{quality}", {k: (v, None, "") for k, v in averages.items()}))
        in_paper = all((s, quality) in PAPER_TABLE1 for s in scenarios)
        if in_paper:
            paper_avg = paper_averages(scenarios, quality, algos)
            lines.append(row(f"AVG-{quality} (paper)", {k: (v, None, "") for k, v in paper_avg.items()}))
        learners = [a for a in algos if (a, "EAQ") in averages and (a, "original") in averages]
        if learners:
            line = (f"EAQ over original, {quality}: {normalised_gain(averages, learners):+.1f} points of "
                    f"normalised return (mean over {', '.join(a.upper() for a in learners)})")
            if in_paper:
                five = paper_averages([s for s, q in PAPER_TABLE1 if q == quality], quality, learners)
                line += (f"; the paper, same learners: {normalised_gain(paper_avg, learners):+.1f} on the "
                         f"same maps, {normalised_gain(five, learners):+.1f} on its five "
                         f"(it states +{PAPER_STATED_GAIN[quality]} %)")
            improvements.append(line)
    for (scenario, quality, algo, method), cell in sorted(cells.items()):
        if method == "EAQ" and algo in algos:
            tried = []
            for lam, heldout in sorted(cell["heldout_by_lam"].items()):
                mean, std, seeds = cell["reported_by_lam"][lam]
                fewer = f" [{seeds} of {cell['seeds']} seeds, not chosen]" if seeds < cell["seeds"] else ""
                tried.append(f"λ={lam:g}{fewer}: held-out {heldout:.2f}, reported {mean:.2f} ± {std:.2f}")
            selections.append(f"λ for {scenario}-{quality} {algo.upper()}: {cell['lam']:g} ({'; '.join(tried)})")
    if any(cell["seeds"] < most_seeds for cell in cells.values()):
        lines.append("\n[k of n seeds]: a cell with fewer seeds than the table's others; "
                     "its sweep is not finished, so it is not comparable yet")
    return "\n".join(lines + [""] + improvements + [""] * bool(selections) + selections) + "\n"


# ---------------------------------------------------------------------------
# The sweep: every run of a table, in single-threaded workers
# ---------------------------------------------------------------------------
METHOD_FLAGS = {"original": ["--aug", "none"], "RAD-s": ["--aug", "rad-s"], "RAD-m": ["--aug", "rad-m"],
                "EAQ^-Q": ["--aug", "eaq", "--lam", "0"]}


def table1_runs(scenarios, qualities, algos, seeds, lams, methods=METHODS):
    """(method, train.py flags) for every run of the sweep; EAQ once per λ."""
    chosen = [(m, METHOD_FLAGS[m]) for m in methods if m != "EAQ"]
    if "EAQ" in methods:
        chosen += [("EAQ", ["--aug", "eaq", "--lam", str(lam)]) for lam in lams]
    for scenario in scenarios:
        for quality in qualities:
            for algo in algos:
                for seed in seeds:
                    for method, flags in chosen:
                        yield method, ["--scenario", scenario, "--quality", quality, "--algo", algo,
                                       "--seed", str(seed)] + flags


def sharing_groups(runs):
    """Runs that share a diffusion model (train.eaq_dir) in one group, to run one after another in one worker;
    every other run alone. Groups go cell by cell and seed by seed (a sweep cut short leaves whole seeds of
    every method), the largest first within a seed (so the workers finish together)."""
    groups, place, cells = {}, {}, {}
    for method, flags in runs:
        targs = train.parse_args(flags)
        key = train.eaq_dir(targs) if targs.aug == "eaq" else train.result_dir(targs)
        groups.setdefault(key, []).append((method, flags))
        place[key] = (cells.setdefault((targs.scenario, targs.quality), len(cells)), targs.seed)
    return [groups[k] for k in sorted(groups, key=lambda k: (*place[k], -len(groups[k])))]


def finished(flags):
    """Whether the train.py run with these flags has written its results.json."""
    return os.path.exists(os.path.join(train.result_dir(train.parse_args(flags)), "results.json"))


def still_to_run(runs):
    """The unfinished runs, counted in one printed line."""
    todo = [(m, f) for m, f in runs if not finished(f)]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to go", flush=True)
    return todo


def run_one_by_one(runs):
    """Every unfinished run in this process, those sharing a diffusion model one after another; no failures
    are returned (a failing run stops the sweep)."""
    todo = still_to_run(runs)
    for i, (method, flags) in enumerate(run for group in sharing_groups(todo) for run in group):
        print(f"[{i + 1}/{len(todo)}] {method}: {' '.join(flags)}", flush=True)
        train.run(train.parse_args(flags))
    return []


# ---------------------------------------------------------------------------
# Reading finished runs into the table
# ---------------------------------------------------------------------------
def method_of(config):
    """The Table 1 column of a run, from the configuration its results.json holds (`METHOD_FLAGS`' inverse)."""
    if config["aug"] == "eaq":
        return "EAQ" if float(config["lam"]) > 0 else "EAQ^-Q"
    return {"none": "original", "rad-s": "RAD-s", "rad-m": "RAD-m"}[config["aug"]]


def table1_row(results, run_dir):
    """A finished run's row of Table 1 (`table1_cells` reads it): its cell, λ, seed and both evaluations."""
    config, final = results["config"], results["final"]
    method = method_of(config)
    return {"scenario": config["scenario"], "quality": config["quality"], "algo": config["algo"],
            "method": method, "lam": float(config["lam"]) if method == "EAQ" else 0.0, "seed": config["seed"],
            **{k: final[k] for k in ("return_mean", "return_std", "normalised_return", "win_rate")},
            "eval_episodes": config["eval_episodes"], "heldout_return": results["heldout"]["return_mean"],
            "run_dir": run_dir}


def table1_rows(runs):
    """One row per finished (method, train.py flags) run, read from its results.json."""
    rows = []
    for _, flags in runs:
        run_dir = train.result_dir(train.parse_args(flags))
        with open(os.path.join(run_dir, "results.json")) as f:
            rows.append(table1_row(json.load(f), run_dir))
    return rows


def table_folder(out, iters, train_flags):
    """OUT/table1 at train.py's defaults, else OUT/table1-<hash of the departures, as parsed> (never the default's)."""
    sweep_sets = ("scenario", "quality", "algo", "aug", "lam", "seed", "out")          # each sweep run sets these
    parser = train.build_parser()                          # raw values: --diffusion-seed stays None unless given
    defaults = vars(parser.parse_args([]))
    chosen = vars(parser.parse_args(["--iters", str(iters)] + list(train_flags)))
    departures = {name: value for name, value in chosen.items()          # a switch given is always a departure
                  if name not in sweep_sets and (name not in defaults or value != defaults[name])}
    return os.path.join(out, "table1" + (f"-{train.short_hash(departures)}" if departures else ""))


def write_table1(rows, table_dir, algos, train_flags=()):
    """table1.csv (every run, every λ) and table1.md (`table1_markdown`) in `table_dir`; returns the markdown."""
    os.makedirs(table_dir, exist_ok=True)
    artifacts.write_csv(os.path.join(table_dir, "table1.csv"), rows)
    markdown = (f"Every run of this table was trained with `{' '.join(train_flags)}` beyond train.py's defaults.\n\n"
                if train_flags else "") + table1_markdown(rows, tuple(algos))
    with artifacts.atomic_path(os.path.join(table_dir, "table1.md")) as tmp, open(tmp, "w") as f:
        f.write(markdown)
    return markdown


def sweep_runs(args, train_flags):
    """(method, train.py flags) of every run of the sweep the `add_sweep_flags` flags ask for."""
    return [(m, f + ["--iters", str(args.iters), "--out", args.out] + list(train_flags))
            for m, f in table1_runs(args.scenarios, args.qualities, args.algos, args.seeds, args.lams, args.methods)]


def run_table1(args, train_flags, run_all=run_one_by_one):
    """Every run of the sweep, by `run_all(runs) -> failures`, then its table1.csv and .md; -> finished runs."""
    runs = sweep_runs(args, train_flags)
    parsed = [train.parse_args(flags) for _, flags in runs]   # every bad flag fails before any work
    failures = []
    if not args.table_only:
        for targs in {(a.scenario, a.quality): a for a in parsed}.values():   # datasets before any worker
            datasets.ensure_dataset(targs.scenario, targs.quality, targs.fraction, train.DATA_SEED,
                                    root=os.path.join(args.out, "datasets"))
        failures = run_all(runs)
    runs = [(m, f) for m, f in runs if finished(f)]
    if not runs:
        raise SystemExit(f"no finished run of this sweep under {args.out}/results"
                         + ("" if args.table_only else "; every run failed, see the logs in OUT/logs"))
    table_dir = table_folder(args.out, args.iters, train_flags)
    print(write_table1(table1_rows(runs), table_dir, args.algos, train_flags))
    print(f"wrote {table_dir}/table1.csv and table1.md")
    if failures:
        print(f"{len(failures)} group(s) of runs failed; their cells are missing (—):", *failures, sep="\n  ")
        raise SystemExit(1)
    return runs


def run_figures(args):
    """Figures 1b and 3 for one real dataset and the synthetic datasets made from it."""
    real, syns = data.load_dataset(args.real), [data.load_dataset(p) for p in args.syn]
    os.makedirs(args.out, exist_ok=True)
    ratios = figure_1b(real, syns, os.path.join(args.out, "fig1b.png"))
    figure_3(real, syns, os.path.join(args.out, "fig3.png"), seed=args.seed)
    shares = ", ".join(f"{label} {r:.3f}" for label, r in zip(figure_labels(syns), ratios))
    print(f"focus-fire share: {shares}; wrote {args.out}/fig1b.png, fig3.png")


def add_sweep_flags(t):
    """The sweep's flags (`evaluate.py table1` and experiments/sweep.py)."""
    t.add_argument("--scenarios", nargs="+", default=["3m"], help="maps (paper: all five)")
    t.add_argument("--qualities", nargs="+", default=["medium", "poor"], help="dataset qualities")
    t.add_argument("--algos", nargs="+", default=["cql", "bcq"], choices=sorted(train.LEARNERS), help="learners")
    t.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="Table 1 columns to run")
    t.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="seeds (paper: 5)")
    t.add_argument("--lams", nargs="+", type=float, default=[0.5, 0.1, 0.01],
                   help="λ values for EAQ; each cell shows the λ with the best held-out evaluation")
    t.add_argument("--iters", type=int, default=15000, help="learner iterations (paper: 15 000)")
    t.add_argument("--out", default="runs", help="root folder of the cached runs; the table goes to OUT/table1/, "
                                                 "or to OUT/table1-<hash>/ when flags passed to train.py depart from "
                                                 "its defaults")
    t.add_argument("--table-only", action="store_true", help="start no run: table the runs finished so far")


def main(argv=None):
    p = argparse.ArgumentParser(description="Table 1 sweep and the paper's figures (§4.5).")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table1", help="the Table 1 sweep (resumable: finished runs are reused); "
                                      "any other flag is passed to every train.py run, e.g. --diffusion-steps")
    add_sweep_flags(t)
    f = sub.add_parser("figures", help="Figure 1b (focus fire) and Figure 3 (t-SNE)")
    f.add_argument("--real", required=True, help="the original dataset (HDF5)")
    f.add_argument("--syn", required=True, action="append",
                   help="a synthetic dataset made from it (HDF5); repeat, e.g. for EAQ^-Q and EAQ")
    f.add_argument("--out", default=os.path.join("runs", "figures"), help="output folder")
    f.add_argument("--seed", type=int, default=0, help="t-SNE seed")
    args, rest = p.parse_known_args(argv)
    if args.command == "figures":
        if rest:
            p.error(f"unrecognized arguments: {' '.join(rest)}")
        if len(args.syn) >= len(FIGURE_COLORS):
            p.error(f"at most {len(FIGURE_COLORS) - 1} --syn datasets fit one figure, got {len(args.syn)}")
        with artifacts.one_line_errors():
            run_figures(args)
        return
    with artifacts.one_line_errors():
        run_table1(args, rest)


if __name__ == "__main__":
    main()
