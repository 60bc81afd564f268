"""Evaluation in the simulator and the paper's behaviour statistics (§4.5, Fig. 1b, Table 1).

* `evaluate_policy` — greedy decentralised rollouts over legal actions, many
  episodes in parallel through `env.py`: mean ± std return (SMAC scale),
  normalised return (return / 20) and win rate.
* `focus_fire_ratio` — Figure 1b: among steps where every living agent
  attacks, the share where they all attack the same enemy.

A policy is any object with `reset(n_envs)` and `__call__(obs, avail) ->
actions`, e.g. `qmix.GreedyPolicy`.
"""
import os

import numpy as np

import env as envlib


def evaluate_policy(policy, env):
    """Play one batch of `env.n_envs` episodes with `policy`; returns the summary dict.

    Build `env` once (`env.make_env(scenario, backend, n_envs, seed)`) and pass
    it to every evaluation: compiling SMAX is the slow part, and successive
    evaluations then see fresh, seeded start states.
    """
    obs, avail = env.reset()
    policy.reset(env.n_envs)
    returns = np.zeros(env.n_envs)
    for _ in range(env.episode_limit):
        obs, avail, reward, done, won = env.step(policy(obs, avail))
        returns += reward                      # finished episodes return reward 0
        if done.all():
            break
    return {"return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "normalised_return": float(returns.mean() / envlib.MAX_RETURN),
            "win_rate": float(won.mean())}


def living_agents(avail, first_attack_action=5):
    """(..., N) bool: agents that may move (dead agents may only stop; SMAX moves are 0-3, SMAC's 2-5)."""
    moves = slice(0, 4) if first_attack_action == 5 else slice(2, 6)
    return avail[..., moves].any(axis=-1)


def focus_fire_ratio(actions, avail, valid, first_attack_action):
    """Figure 1b: share of all-attack steps on which every living agent attacks the same enemy.

    actions (E, T, N), avail (E, T, N, A), valid (E, T). An agent is living
    when it may move (dead agents may only stop; SMAX and SMAC alike). Returns
    (ratio, number of all-attack steps); the ratio is NaN when there are none.
    """
    living = living_agents(avail, first_attack_action)                              # (E, T, N)
    attacking = actions >= first_attack_action                                       # (E, T, N)
    all_attack = valid & living.any(-1) & np.all(attacking | ~living, axis=-1)       # (E, T)
    target = np.where(living, actions, -1)
    first = np.take_along_axis(target, np.argmax(living, axis=-1)[..., None], axis=-1)
    same = np.all((target == first) | ~living, axis=-1)
    n = int(all_attack.sum())
    return (float((same & all_attack).sum() / n) if n else float("nan")), n


# ---------------------------------------------------------------------------
# Figures 1b and 3: what the augmentation does to the data
# ---------------------------------------------------------------------------
def dataset_focus_fire(episodes, first_attack_action=5):
    """Figure 1b's ratio for a dataset (Episodes)."""
    T = episodes.rewards.shape[1]
    valid = np.arange(T)[None, :] < episodes.lengths[:, None]
    return focus_fire_ratio(episodes.actions, episodes.avail[:, :T], valid, first_attack_action)


def living_observations(episodes, n, seed):
    """Up to n observation vectors of living agents on valid steps, (n, O)."""
    T = episodes.rewards.shape[1]
    valid = np.arange(T)[None, :] < episodes.lengths[:, None]                  # (E, T)
    living = living_agents(episodes.avail[:, :T]) & valid[..., None]             # (E, T, N)
    obs = episodes.obs[:, :T][living]                                          # (M, O)
    keep = np.random.default_rng(seed).permutation(len(obs))[:n]
    return obs[keep]


def save_figure(fig, path):
    import data
    with data.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


def synthetic_label(episodes):
    """'EAQ (λ=0.1)' or 'EAQ^-Q' for a D_syn made by diffusion.py (λ in its attrs)."""
    lam = float(episodes.attrs.get("lam", 0.0))
    return f"EAQ (λ={lam:g})" if lam > 0 else "EAQ^-Q"


FIGURE_COLORS = ("tab:gray", "tab:red", "tab:orange", "tab:purple")   # original, then each D_syn


def figure_labels(syns):
    """Legend labels of the original data and each D_syn, in figure order."""
    return ["original"] + [synthetic_label(ep) for ep in syns]


def figure_1b(real, syns, path):
    """Bar chart of the focus-fire ratio, original vs each D_syn; returns the ratios (original first)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ratios = [dataset_focus_fire(ep)[0] for ep in [real] + list(syns)]
    labels = figure_labels(syns)
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(labels), 3))
    ax.bar(labels, ratios, color=FIGURE_COLORS[:len(labels)])
    ax.set(ylabel="focus-fire share of all-attack steps", ylim=(0, 1),
           title=f"Fig. 1b, {real.attrs['scenario']}-{real.attrs['quality']}")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return ratios


def figure_3(real, syns, path, n=1500, seed=0):
    """t-SNE of living agents' observations, original vs each D_syn (scikit-learn)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
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
    save_figure(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Table 1
# ---------------------------------------------------------------------------
METHODS = ("original", "RAD-s", "RAD-m", "EAQ^-Q", "EAQ")


def cell_stats(values):
    return float(np.mean(values)), float(np.std(values))


def table1_markdown(rows, algos=("cql", "bcq")):
    """Table 1 in the paper's format from per-run rows.

    rows: dicts with scenario, quality, algo, method (one of METHODS), lam,
    seed and return_mean (the run's final evaluation return). Each cell is
    mean ± std over seeds; for EAQ the λ with the best mean is shown (and
    named). Best cell per row and learner in bold; AVG-<quality> rows average
    the cell means over scenarios; the last lines give EAQ's improvement
    over original in normalised return (/20), per quality, averaged over
    the learners.
    """
    cells = {}
    for r in rows:
        key = (r["scenario"], r["quality"], r["algo"], r["method"], float(r["lam"]))
        cells.setdefault(key, []).append(float(r["return_mean"]))
    table, lams = {}, {}
    for (scenario, quality, algo, method, lam), values in cells.items():
        key = (scenario, quality, algo, method)
        mean, std = cell_stats(values)
        if key not in table or mean > table[key][0]:
            table[key], lams[key] = (mean, std), lam
    pairs = sorted({(s, q) for s, q, _, _ in table}, key=lambda p: (p[1] != "medium", p[0]))
    header = "| scenario | " + " | ".join(f"{a.upper()} {m}" for a in algos for m in METHODS) + " |"
    lines = [header, "|---|" + "---|" * (len(algos) * len(METHODS))]

    def row(label, values_by_algo):
        out = []
        for algo in algos:
            present = [v for v in values_by_algo[algo] if v is not None]
            best = max(v[0] for v in present) if present else None
            for v in values_by_algo[algo]:
                if v is None:
                    out.append("—")
                    continue
                text = f"{v[0]:.2f} ± {v[1]:.2f}" if v[1] is not None else f"{v[0]:.2f}"
                text += v[2]
                out.append(f"**{text}**" if v[0] == best else text)
        return f"| {label} | " + " | ".join(out) + " |"

    for scenario, quality in pairs:
        values = {algo: [(*table[k], f" (λ={lams[k]:g})" if m == "EAQ" else "") if k in table else None
                         for m in METHODS for k in [(scenario, quality, algo, m)]] for algo in algos}
        lines.append(row(f"{scenario}-{quality}", values))
    improvements = []
    for quality in ("medium", "poor"):
        scen = [s for s, q in pairs if q == quality]
        if not scen:
            continue
        avg = {algo: [(float(np.mean([table[(s, quality, algo, m)][0] for s in scen])), None, "")
                      if all((s, quality, algo, m) in table for s in scen) else None for m in METHODS]
               for algo in algos}
        lines.append(row(f"AVG-{quality}", avg))
        gains = [(avg[a][4][0] - avg[a][0][0]) / 20 for a in algos if avg[a][0] and avg[a][4]]
        if gains:
            improvements.append(f"EAQ over original, {quality}: {100 * np.mean(gains):+.1f} % "
                                f"normalised return (mean over {', '.join(a.upper() for a in algos)})")
    return "\n".join(lines + [""] + improvements) + "\n"


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
    one worker; every other run alone. Largest groups first, so the workers finish together."""
    import train
    groups = {}
    for method, flags in runs:
        targs = train.parse_args(flags)
        key = train.eaq_dir(targs) if targs.aug == "eaq" else train.result_dir(targs)
        groups.setdefault(key, []).append((method, flags))
    return sorted(groups.values(), key=len, reverse=True)


# One thread each for torch (OMP/MKL) and XLA: on this 2-core machine two
# single-threaded learners run as fast each as one two-threaded learner,
# while two two-threaded processes thrash. tqdm refreshes every 30 s in logs.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_MININTERVAL": "30",
                     "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def run_group_in_subprocess(group, log_dir):
    """`python train.py FLAGS` for each run of one group, single-threaded, logged to log_dir."""
    import subprocess
    import sys
    import train
    train_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
    for _, flags in group:
        log = os.path.join(log_dir, os.path.basename(train.result_dir(train.parse_args(flags))) + ".log")
        with open(log, "w") as f:
            done = subprocess.run([sys.executable, train_py] + flags, stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, **SINGLE_THREAD_ENV})
        if done.returncode:
            raise RuntimeError(f"train.py {' '.join(flags)} failed (exit {done.returncode}); see {log}")


def finished(flags):
    """Whether the train.py run with these flags has written its results.json."""
    import train
    return os.path.exists(os.path.join(train.result_dir(train.parse_args(flags)), "results.json"))


def run_sweep(runs, jobs, out):
    """Every run that has no results.json yet: in this process (jobs=1) or `jobs` single-threaded workers."""
    import train
    todo = [(m, f) for m, f in runs if not finished(f)]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to go", flush=True)
    if jobs == 1:
        for i, (method, flags) in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {method}: {' '.join(flags)}", flush=True)
            train.run(train.parse_args(flags))
        return
    from concurrent.futures import ThreadPoolExecutor
    log_dir = os.path.join(out, "logs")
    os.makedirs(log_dir, exist_ok=True)
    with ThreadPoolExecutor(jobs) as pool:
        for future in [pool.submit(run_group_in_subprocess, g, log_dir) for g in sharing_groups(todo)]:
            future.result()


def table1_rows(runs):
    """One row per finished run: its cell, seed, final evaluation and folder."""
    import json
    import train
    rows = []
    for method, flags in runs:
        targs = train.parse_args(flags)
        run_dir = train.result_dir(targs)
        with open(os.path.join(run_dir, "results.json")) as f:
            final = json.load(f)["final"]
        rows.append({"scenario": targs.scenario, "quality": targs.quality, "algo": targs.algo,
                     "method": method, "lam": targs.lam if method == "EAQ" else 0.0, "seed": targs.seed,
                     **{k: final[k] for k in ("return_mean", "return_std", "normalised_return", "win_rate")},
                     "run_dir": run_dir})
    return rows


def cell_curves(rows, path):
    """Learning curves per Table 1 cell of one map and quality: mean ± std over seeds, a panel per learner."""
    import csv
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    algos = sorted({r["algo"] for r in rows})
    fig, axes = plt.subplots(1, len(algos), figsize=(5 * len(algos), 3.5), squeeze=False, sharey=True)
    for ax, algo in zip(axes[0], algos):
        cells = {}
        for r in rows:
            if r["algo"] == algo:
                label = f"{r['method']} (λ={r['lam']:g})" if r["method"] == "EAQ" else r["method"]
                cells.setdefault(label, []).append(r["run_dir"])
        for label, dirs in cells.items():
            curves = []
            for d in dirs:
                with open(os.path.join(d, "metrics.csv")) as f:
                    curves.append([(float(m["iteration"]), float(m["return_mean"])) for m in csv.DictReader(f)])
            curves = np.array(curves)                         # (seeds, evaluations, 2)
            mean, std = curves[:, :, 1].mean(0), curves[:, :, 1].std(0)
            ax.plot(curves[0, :, 0], mean, label=f"{label} ({len(dirs)} seeds)")
            ax.fill_between(curves[0, :, 0], mean - std, mean + std, alpha=0.15)
        ax.set(title=f"QMIX+{algo.upper()}, {rows[0]['scenario']}-{rows[0]['quality']}",
               xlabel="iteration", ylabel="evaluation return")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def run_table1(args, train_flags):
    """Run (or reuse) every cell of the sweep, then write table1.csv, table1.md and curves-<map>-<quality>.png."""
    import csv
    import data
    import train
    runs = [(m, f + ["--iters", str(args.iters), "--out", args.out] + train_flags)
            for m, f in table1_runs(args.scenarios, args.qualities, args.algos, args.seeds, args.lams, args.methods)]
    parsed = [train.parse_args(flags) for _, flags in runs]   # every bad flag fails before any work
    if not args.table_only:                                   # datasets before any worker starts
        for targs in {(a.scenario, a.quality): a for a in parsed}.values():
            data.ensure_dataset(targs.scenario, targs.quality, targs.fraction, targs.data_seed,
                                root=os.path.join(args.out, "datasets"))
    if args.table_only:
        runs = [(m, f) for m, f in runs if finished(f)]
        if not runs:
            raise SystemExit(f"no finished run of this sweep under {args.out}/results; run it without --table-only")
    else:
        run_sweep(runs, args.jobs, args.out)
    rows = table1_rows(runs)
    table_dir = os.path.join(args.out, "table1")
    os.makedirs(table_dir, exist_ok=True)
    with data.atomic_path(os.path.join(table_dir, "table1.csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    markdown = table1_markdown(rows, tuple(args.algos))
    with data.atomic_path(os.path.join(table_dir, "table1.md")) as tmp, open(tmp, "w") as f:
        f.write(markdown)
    for scenario in args.scenarios:
        for quality in args.qualities:
            cell = [r for r in rows if (r["scenario"], r["quality"]) == (scenario, quality)]
            if cell:
                cell_curves(cell, os.path.join(table_dir, f"curves-{scenario}-{quality}.png"))
    print(markdown)
    print(f"wrote {table_dir}/table1.csv, table1.md and the learning curves per map and quality")


def run_figures(args):
    """Figures 1b and 3 for one real dataset and the synthetic datasets made from it."""
    import data
    real, syns = data.load_dataset(args.real), [data.load_dataset(p) for p in args.syn]
    os.makedirs(args.out, exist_ok=True)
    ratios = figure_1b(real, syns, os.path.join(args.out, "fig1b.png"))
    figure_3(real, syns, os.path.join(args.out, "fig3.png"), seed=args.seed)
    shares = ", ".join(f"{label} {r:.3f}" for label, r in zip(figure_labels(syns), ratios))
    print(f"focus-fire share: {shares}; wrote {args.out}/fig1b.png, fig3.png")


def main(argv=None):
    import argparse
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
                   help="λ values for EAQ; the table shows the best mean per cell (as the paper tuned)")
    t.add_argument("--iters", type=int, default=15000, help="learner iterations (paper: 15 000)")
    t.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each single-threaded in its own process (2 on a 2-core machine)")
    t.add_argument("--out", default="runs", help="root folder of the cached runs; the table goes to OUT/table1/")
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
        run_figures(args)
        return
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    run_table1(args, rest)


if __name__ == "__main__":
    main()
