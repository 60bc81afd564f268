"""The paper's figures of the data and the Table 1 sweep (§4.5, Fig. 1b, Fig. 3, Table 1).

* `figure_1b`, `figure_3` — focus fire (`data.focus_fire_ratio`: among
  steps where at least two agents are alive and every living agent attacks,
  the share where they all attack the same enemy) and a t-SNE of
  observations, the original data against each D_syn.
* `table1` — the sweep over maps, qualities, methods, learners and seeds
  (`train.py` runs, reused when finished, in parallel single-threaded
  workers on this machine or as Ray tasks on a cluster), and the table in
  the paper's format. Where several λ are run, λ is chosen per cell on the
  held-out evaluation (its own seeded episodes) and the chosen λ's result
  on the reported evaluation is shown; every λ stays in the CSV. Under it,
  each column against the seed spread: final and late return (the mean of
  the last evaluations), with Welch's t-test against the original data,
  and per cell the smallest gap its seeds could resolve given the final
  evaluation's own noise. With `--records DIR` each finished run's
  results.json and metrics.csv are kept in DIR (the repository's records/),
  and restored from it into a fresh --out, so a sweep that outlasts a
  machine's runs/ folder resumes without training its finished runs again.

Rollouts of a policy in the simulator live beside the policy, in
`qmix.evaluate_policy`.
"""
import argparse
import collections
import csv
import filecmp
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
from scipy import stats
from sklearn.manifold import TSNE
from tqdm import tqdm

import artifacts
import data
import env as envlib
import train


# ---------------------------------------------------------------------------
# Figures 1b and 3: what the augmentation does to the data
# ---------------------------------------------------------------------------
def living_observations(episodes, n, seed):
    """Up to n observation vectors of living agents on valid steps, (n, O)."""
    T = episodes.rewards.shape[1]
    valid = data.valid_steps(episodes.lengths, T)                              # (E, T)
    living = data.living_agents(episodes.avail[:, :T], data.first_attack_action(episodes)) & valid[..., None]   # (E, T, N)
    obs = episodes.obs[:, :T][living]                                          # (M, O)
    keep = np.random.default_rng(seed).permutation(len(obs))[:n]
    return obs[keep]


def column_label(method, lam):
    """A Table 1 column's name: the method, and for EAQ its λ ('EAQ (λ=0.1)')."""
    return f"EAQ (λ={float(lam):g})" if method == "EAQ" else method


def synthetic_label(episodes):
    """'EAQ (λ=0.1)' or 'EAQ^-Q' for a D_syn made by diffusion.py (λ in its attrs)."""
    lam = float(episodes.attrs.get("lam", 0.0))
    return column_label("EAQ", lam) if lam > 0 else "EAQ^-Q"


FIGURE_COLORS = ("tab:gray", "tab:red", "tab:orange", "tab:purple", "tab:blue")   # original, then each D_syn


def figure_labels(syns):
    """Legend labels of the original data and each D_syn, in figure order."""
    return ["original"] + [synthetic_label(ep) for ep in syns]


def figure_1b(real, syns, path):
    """Bar chart of the focus-fire ratio, original vs each D_syn; returns the ratios (original first)."""
    plt = artifacts.pyplot()
    ratios = [data.dataset_focus_fire(ep)[0] for ep in [real] + list(syns)]
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


def rows_by_cell(rows):
    """Per-run rows -> {(scenario, quality): that map and quality's rows}, in the rows' order."""
    cells = {}
    for r in rows:
        cells.setdefault((r["scenario"], r["quality"]), []).append(r)
    return cells


def table1_cells(rows):
    """Per-run rows -> {(scenario, quality, algo, method): cell dict}, choosing λ for EAQ on held-out returns.

    rows: dicts with scenario, quality, algo, method, lam, seed, return_mean
    (the run's reported final evaluation) and heldout_return (its held-out
    evaluation). A cell holds the mean and std over seeds of the reported
    returns; for EAQ, of the λ whose mean held-out return is highest (ties:
    the smaller λ), with that λ, its runs (by seed), its held-out mean and
    every λ's held-out mean and reported (mean, std, seeds). While a sweep is
    still running, a λ may have fewer seeds than another; only the λ with
    the most seeds compete, so none wins on a smaller (easier) set.
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
    """Table 1 in the paper's format from per-run rows (see `table1_cells`), beside the paper's rows.

    Each cell is mean ± std over seeds of the reported evaluation; the EAQ
    cell names its λ, chosen on the held-out evaluation. Best cell per row
    and learner in bold. Under each of our rows, the paper's row for the
    same map and quality (`PAPER_TABLE1`, where the paper has it).
    AVG-<quality> rows average the cell means over our scenarios, and the
    paper's AVG over the same scenarios follows. Then EAQ's improvement over
    original in points of normalised return (return / MAX_RETURN), per
    quality, averaged over the learners, beside the paper's by the same
    definition; then, per EAQ cell, the λ selection (held-out mean of every λ).
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
    """Runs that share a diffusion model (train.eaq_dir) in one group, to run one after another in
    one worker; every other run alone.

    Groups go map by map and quality by quality (in the order of `runs`), and
    within a cell seed by seed, so a sweep cut short leaves whole seeds of
    every method rather than every seed of a few; within one seed the largest
    groups go first, so the workers finish together.
    """
    groups, place, cells = {}, {}, {}
    for method, flags in runs:
        targs = train.parse_args(flags)
        key = train.eaq_dir(targs) if targs.aug == "eaq" else train.result_dir(targs)
        groups.setdefault(key, []).append((method, flags))
        place[key] = (cells.setdefault((targs.scenario, targs.quality), len(cells)), targs.seed)
    return [groups[k] for k in sorted(groups, key=lambda k: (*place[k], -len(groups[k])))]


# One thread each for torch (OMP/MKL) and XLA: on this 2-core machine two
# single-threaded learners run as fast each as one two-threaded learner,
# while two two-threaded processes thrash. tqdm refreshes every 30 s in logs.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_MININTERVAL": "30",
                     "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def run_group_in_subprocess(group, log_dir):
    """`python train.py FLAGS` for each run of one group, single-threaded, logged to log_dir; returns len(group).

    Raises RuntimeError naming the run and its log if one fails. A run killed
    half-way leaves no results.json (it is written last, atomically), so a
    later sweep runs it again, from its last checkpoint (train.py resumes
    its diffusion model and its learner by itself).
    """
    train_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
    for _, flags in group:
        log = os.path.join(log_dir, os.path.basename(train.result_dir(train.parse_args(flags))) + ".log")
        with open(log, "a") as f:                  # a resumed run's log keeps its earlier sessions
            done = subprocess.run([sys.executable, train_py] + flags, stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, **SINGLE_THREAD_ENV})
        if done.returncode:
            raise RuntimeError(f"train.py {' '.join(flags)} failed (exit {done.returncode}); see {log}")
    return len(group)


def finished(flags):
    """Whether the train.py run with these flags has written its results.json."""
    return os.path.exists(os.path.join(train.result_dir(train.parse_args(flags)), "results.json"))


# A finished run's record: the two files its table row, curve and cost are read from (`read_runs`), under
# RECORDS/<its result folder's name>/. results.json goes last: a run counts as finished once it is there.
RECORD_FILES = ("metrics.csv", "results.json")


def check_record(record):
    """Raise an InputError unless the folder `record` holds a finished run's metrics.csv and results.json."""
    fix = f"delete {record} so that the sweep trains that run again"
    try:
        with open(os.path.join(record, "results.json")) as f:
            final = json.load(f).get("final")
        curve = evaluation_curve(record)
    except (OSError, ValueError, KeyError, AttributeError) as err:   # missing, not JSON, not the metrics' columns
        raise artifacts.InputError(f"{record}: not a finished run's record ({type(err).__name__}: {err}); {fix}") \
            from None
    if not isinstance(final, dict) or "return_mean" not in final or not len(curve):
        raise artifacts.InputError(f"{record}: results.json has no final evaluation or metrics.csv no "
                                   f"evaluation; {fix}")


def record_folder(flags, records):
    """(result folder under --out, its record's folder under `records`) of the train.py run with these flags."""
    run_dir = train.result_dir(train.parse_args(flags))
    return run_dir, os.path.join(records, os.path.basename(run_dir))


def copy_record(source_dir, target_dir):
    """Copy a run's RECORD_FILES from one folder to another (created if need be), results.json last."""
    os.makedirs(target_dir, exist_ok=True)
    for name in RECORD_FILES:
        artifacts.copy_file(os.path.join(source_dir, name), os.path.join(target_dir, name))


def restore_records(runs, records):
    """Copy the record of each run not finished under --out from the folder `records` into its result folder
    (then the sweep reuses it instead of training the run); returns how many were restored.

    Every record is checked before any is copied, so a damaged one stops the sweep before it starts.
    """
    todo = []
    for _, flags in runs:
        run_dir, record = record_folder(flags, records)
        if not finished(flags) and os.path.isdir(record):
            check_record(record)
            todo.append((record, run_dir))
    for record, run_dir in todo:
        copy_record(record, run_dir)
    return len(todo)


def save_records(runs, records):
    """Copy every finished run's metrics.csv and results.json into `records` (kept in git, the records
    outlive a machine's runs/ folder); returns how many records were new or changed."""
    saved = 0
    for _, flags in runs:
        run_dir, record = record_folder(flags, records)
        if all(os.path.exists(os.path.join(record, name))
               and filecmp.cmp(os.path.join(run_dir, name), os.path.join(record, name), shallow=False)
               for name in RECORD_FILES):
            continue
        copy_record(run_dir, record)
        saved += 1
    return saved


def run_with_workers(groups, jobs, log_dir, progress):
    """Each group in one of `jobs` local single-threaded workers; returns the failures' messages."""
    failures = []
    with ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(run_group_in_subprocess, g, log_dir): len(g) for g in groups}
        for future in as_completed(futures):
            try:
                future.result()
            except RuntimeError as err:
                failures.append(str(err))
            progress.update(futures[future])
            progress.set_postfix(failures=len(failures))
    return failures


RAY_RETRIES = 3     # a task whose worker or node dies is started again this many times


def ray_address(value):
    """argparse type of --ray: 'local', 'auto' or HOST:PORT, checked before anything starts."""
    if value in ("local", "auto"):
        return value
    host, _, port = value.rpartition(":")
    if host and port.isdigit() and 0 < int(port) < 65536 and " " not in host:
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not local, auto or HOST:PORT (e.g. 10.0.0.1:6379)")


def run_with_ray(groups, address, log_dir, progress):
    """Each group as one Ray task (1 CPU, single-threaded inside); returns the failures' messages.

    'local' starts a Ray instance on this machine with all its cores; 'auto'
    or HOST:PORT joins a running cluster. Tasks run train.py from this
    repository's path and write under --out, so both must be on storage every
    node sees. A task whose worker or node dies is retried by Ray; a run that
    fails is reported and its cell left out of the table.
    """
    import ray
    repo = os.path.dirname(os.path.abspath(__file__))
    runtime_env = {"env_vars": {"PYTHONPATH": repo, **SINGLE_THREAD_ENV}}
    if address == "local":
        ray.init(runtime_env=runtime_env, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=RAY_RETRIES)(run_group_in_subprocess)
        pending = {task.remote(g, log_dir): len(g) for g in groups}
        failures = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            try:
                ray.get(done[0])
            except ray.exceptions.RayError as err:     # the run failed, or its worker died RAY_RETRIES + 1 times
                cause = getattr(err, "cause", None)
                failures.append(str(cause) if cause is not None else str(err).strip().splitlines()[0])
            progress.update(pending.pop(done[0]))
            progress.set_postfix(failures=len(failures))
        return failures
    finally:
        ray.shutdown()


def run_sweep(runs, jobs, out, ray=None):
    """Every run that has no results.json yet: in this process (jobs=1), in `jobs` single-threaded local
    workers, or as Ray tasks (`ray` = local, auto or HOST:PORT). Returns the failed runs' messages."""
    todo = [(m, f) for m, f in runs if not finished(f)]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to go", flush=True)
    if not todo:
        return []
    groups = sharing_groups(todo)
    if jobs == 1 and ray is None:
        for i, (method, flags) in enumerate(run for group in groups for run in group):
            print(f"[{i + 1}/{len(todo)}] {method}: {' '.join(flags)}", flush=True)
            train.run(train.parse_args(flags))
        return []
    log_dir = os.path.join(out, "logs")
    os.makedirs(log_dir, exist_ok=True)
    with tqdm(total=len(todo), desc="runs", unit="run") as progress:
        if ray is None:
            return run_with_workers(groups, jobs, log_dir, progress)
        return run_with_ray(groups, ray, log_dir, progress)


# The late return: the mean of a run's last LATE_EVALUATIONS evaluations (every 1 000 iterations:
# 11 000-15 000 of 15 000), a check on the single final evaluation Table 1 reports.
LATE_EVALUATIONS = 5


def evaluation_curve(run_dir):
    """A run's evaluations during training, from its metrics.csv: (evaluations, 2) of (iteration, return)."""
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return np.array([(float(m["iteration"]), float(m["return_mean"])) for m in csv.DictReader(f)])


def read_runs(runs):
    """Finished (method, flags) runs -> (method, train.py arguments, result folder, results.json contents,
    evaluation curve), each file read once for the table, the curves, the fidelity section and the cost."""
    read = []
    for method, flags in runs:
        targs = train.parse_args(flags)
        run_dir = train.result_dir(targs)
        with open(os.path.join(run_dir, "results.json")) as f:
            read.append((method, targs, run_dir, json.load(f), evaluation_curve(run_dir)))
    return read


def d_syn_name(targs):
    """The folder name of the D_syn an EAQ / EAQ^-Q run trained on ('' for any other run)."""
    return os.path.basename(train.eaq_dir(targs)) if targs.aug == "eaq" else ""


def table1_rows(read):
    """One row per finished run (`read_runs`): its cell, seed, reported, late and held-out evaluations,
    wall and CPU time per stage (CPU None where not recorded), D_syn and folder."""
    rows = []
    for method, targs, run_dir, results, curve in read:
        final, cpu = results["final"], results.get("cpu_seconds", {})     # runs before 2026-11-27 lack CPU times
        rows.append({"scenario": targs.scenario, "quality": targs.quality, "algo": targs.algo,
                     "method": method, "lam": targs.lam if method == "EAQ" else 0.0, "seed": targs.seed,
                     **{k: final[k] for k in ("return_mean", "return_std", "normalised_return", "win_rate")},
                     "eval_episodes": targs.eval_episodes,
                     "return_late": float(curve[-LATE_EVALUATIONS:, 1].mean()),
                     "heldout_return": results["heldout"]["return_mean"],
                     "learner_s": results["seconds"]["learner"],
                     "diffusion_s": results["seconds"].get("diffusion", 0.0),
                     "learner_cpu_s": cpu.get("learner"), "diffusion_cpu_s": cpu.get("diffusion"),
                     "d_syn": d_syn_name(targs),
                     "run_dir": run_dir})
    return rows


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


# The fidelity numbers of a D_syn beside its D_real's (diffusion.MatrixStats; README "Fidelity report").
FIDELITY_COLUMNS = (("attack_share", "attack share", "{:.3f}"), ("ended_share", "confident dones", "{:.1%}"),
                    ("legal_before_repair", "legal", "{:.3f}"), ("length_mean", "mean length", "{:.1f}"),
                    ("return_mean", "return", "{:.2f}"), ("return_std", "return std", "{:.2f}"),
                    ("q_bar_mean", "Q̄", "{:.2f}"),
                    ("q_consistency", "Q-consistency", "{:.2f}"),
                    ("damage_with_shooter", "damage with a shooter", "{:.3f}"),
                    ("reward_matches_damage", "reward matches damage", "{:.3f}"))


def synthetic_reports(read):
    """Each D_syn the sweep's finished EAQ and EAQ^-Q runs (`read_runs`) trained on, once per version:
    [{d_syn, scenario, quality, lam, diffusion_seed, algos, report}] (report: `diffusion.synthetic_report`'s).

    Runs that share a diffusion model carry one report. A D_syn made twice (its model trained again,
    e.g. after `runs/` was lost, on a machine whose arithmetic differs) can come out with other numbers:
    each version is kept, with the learners (algos) that trained on it.
    """
    versions = {}                                              # {(D_syn folder, its numbers): entry}
    for method, targs, _, results, _ in read:
        if method not in ("EAQ", "EAQ^-Q"):
            continue
        report = results["augmentation_report"]
        key = (d_syn_name(targs), json.dumps(report["synthetic"], sort_keys=True))
        versions.setdefault(key, {
            "d_syn": key[0], "scenario": targs.scenario, "quality": targs.quality, "lam": targs.lam,
            "diffusion_seed": targs.diffusion_seed, "algos": [], "report": report})["algos"].append(targs.algo)
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


SWEEP_SET_FIELDS = ("scenario", "quality", "algo", "aug", "lam", "seed", "out")   # each sweep run sets these


def table_folder(out, iters, train_flags):
    """OUT/table1 for a sweep at train.py's defaults, OUT/table1-<departures> otherwise.

    The departures are read from the parsed flags (so `--head-width=280` and `--head-width 280` name one
    folder, and a flag at its default names none): a departure's table, e.g. OUT/table1-head-width280,
    never overwrites the default sweep's.
    """
    parser = train.build_parser()                          # raw values: --diffusion-seed stays None unless given
    defaults = vars(parser.parse_args([]))
    chosen = vars(parser.parse_args(["--iters", str(iters)] + list(train_flags)))
    departures = {name: value for name, value in chosen.items()
                  if name not in SWEEP_SET_FIELDS and value != defaults[name]}
    def shown(value):                                     # a switch is named alone; a number by its value
        return "" if value is True else f"{value:g}" if isinstance(value, float) else str(value)
    name = "table1" + "".join(f"-{key.replace('_', '-')}{shown(value)}" for key, value in departures.items())
    name = re.sub(r"[^A-Za-z0-9.-]", "_", name)
    if len(name) > 100:                                   # many departures: keep the folder name short and unique
        name = f"{name[:90]}-{train.short_hash(departures)}"
    return os.path.join(out, name)


def run_table1(args, train_flags):
    """Run (or reuse) every cell of the sweep, then write table1.csv, table1.md and curves-<map>-<quality>.png."""
    runs = [(m, f + ["--iters", str(args.iters), "--out", args.out] + train_flags)
            for m, f in table1_runs(args.scenarios, args.qualities, args.algos, args.seeds, args.lams, args.methods)]
    parsed = [train.parse_args(flags) for _, flags in runs]   # every bad flag fails before any work
    failures = []
    if args.records:
        print(f"{restore_records(runs, args.records)} finished run(s) restored from {args.records}")
    if not args.table_only:
        for targs in {(a.scenario, a.quality): a for a in parsed}.values():   # datasets before any worker
            data.ensure_dataset(targs.scenario, targs.quality, targs.fraction, targs.data_seed,
                                root=os.path.join(args.out, "datasets"), behaviour=targs.behaviour)
        failures = run_sweep(runs, args.jobs, args.out, args.ray)
    runs = [(m, f) for m, f in runs if finished(f)]
    if not runs:
        raise SystemExit(f"no finished run of this sweep under {args.out}/results"
                         + ("" if args.table_only else "; every run failed, see the logs in OUT/logs"))
    if args.records:
        print(f"{save_records(runs, args.records)} record(s) written to {args.records}")
    read = read_runs(runs)
    rows = table1_rows(read)
    curves = {run_dir: curve for _, _, run_dir, _, curve in read}
    table_dir = table_folder(args.out, args.iters, train_flags)
    os.makedirs(table_dir, exist_ok=True)
    artifacts.write_csv(os.path.join(table_dir, "table1.csv"), rows)
    markdown = (f"Every run of this table was trained with `{' '.join(train_flags)}` beyond train.py's defaults.\n\n"
                if train_flags else "")                   # e.g. a departure such as --global-row-weight
    markdown += table1_markdown(rows, tuple(args.algos))
    markdown += (f"\nEach column against the seed spread: final evaluation and late return (mean of the last "
                 f"{LATE_EVALUATIONS} evaluations), mean ± std over seeds, and Welch's p against original:\n\n"
                 + spread_markdown(rows, tuple(args.algos)))
    resolution = resolution_markdown(rows)
    if resolution:
        markdown += "\nWhat a column's seeds can resolve, from the final evaluations' own noise:\n\n" + resolution
    reports = synthetic_reports(read)
    if reports:
        markdown += ("\nFidelity of each D_syn beside its D_real (diffusion.py's report):\n\n"
                     + fidelity_markdown(reports))
    markdown += ("\nCost per map and quality (CPU time where a run recorded it, else wall time; each run "
                 "single-threaded, beside the sweep's other workers), and the CPU-hours of the paper's full cell "
                 "(5 seeds, 3 λ):\n\n" + cost_markdown(rows))
    with artifacts.atomic_path(os.path.join(table_dir, "table1.md")) as tmp, open(tmp, "w") as f:
        f.write(markdown)
    for (scenario, quality), cell in rows_by_cell(rows).items():
        cell_curves(cell, curves, os.path.join(table_dir, f"curves-{scenario}-{quality}.png"))
    print(markdown)
    print(f"wrote {table_dir}/table1.csv, table1.md and the learning curves per map and quality")
    if failures:
        print(f"{len(failures)} group(s) of runs failed; their cells are missing (—):", *failures, sep="\n  ")
        raise SystemExit(1)


def run_figures(args):
    """Figures 1b and 3 for one real dataset and the synthetic datasets made from it."""
    real, syns = data.load_dataset(args.real), [data.load_dataset(p) for p in args.syn]
    os.makedirs(args.out, exist_ok=True)
    ratios = figure_1b(real, syns, os.path.join(args.out, "fig1b.png"))
    figure_3(real, syns, os.path.join(args.out, "fig3.png"), seed=args.seed)
    shares = ", ".join(f"{label} {r:.3f}" for label, r in zip(figure_labels(syns), ratios))
    print(f"focus-fire share: {shares}; wrote {args.out}/fig1b.png, fig3.png")


def main(argv=None):
    p = argparse.ArgumentParser(description="Table 1 sweep and the paper's figures (§4.5).")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table1", help="the Table 1 sweep (resumable: finished runs are reused); "
                                      "any other flag is passed to every train.py run, e.g. --diffusion-steps")
    t.add_argument("--scenarios", nargs="+", default=["3m"], help="maps (paper: all five)")
    t.add_argument("--qualities", nargs="+", default=["medium", "poor"], help="dataset qualities")
    t.add_argument("--algos", nargs="+", default=["cql", "bcq"], help="learners")
    t.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="Table 1 columns to run")
    t.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="seeds (paper: 5)")
    t.add_argument("--lams", nargs="+", type=float, default=[0.5, 0.1, 0.01],
                   help="λ values for EAQ; each cell shows the λ with the best held-out evaluation")
    t.add_argument("--iters", type=int, default=15000, help="learner iterations (paper: 15 000)")
    t.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each single-threaded in its own process (2 on a 2-core machine)")
    t.add_argument("--ray", nargs="?", const="local", default=None, type=ray_address, metavar="ADDRESS",
                   help="run on Ray, one single-threaded task per run (per shared diffusion model): 'local' "
                        "(the default when --ray is given alone) starts Ray on this machine, 'auto' or HOST:PORT "
                        "joins a cluster; --out must be on storage every node sees")
    t.add_argument("--out", default="runs", help="root folder of the cached runs; the table goes to OUT/table1/, or to "
                        "OUT/table1-<departures>/ when flags passed to train.py depart from its defaults")
    t.add_argument("--records", default=None, metavar="DIR",
                   help="a folder of finished runs' records (results.json, metrics.csv), e.g. the repository's "
                        "records/: runs recorded there are restored under --out and not trained again, and every "
                        "finished run of the sweep is recorded there afterwards")
    t.add_argument("--table-only", action="store_true",
                   help="start no run: write the table and curves from the runs finished so far")
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
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.ray is not None:
        try:
            import ray  # noqa: F401  (only the Ray path needs it)
        except ImportError:
            p.error("--ray needs the ray package: pip install ray==2.60.0")
    with artifacts.one_line_errors():
        run_table1(args, rest)


if __name__ == "__main__":
    main()
