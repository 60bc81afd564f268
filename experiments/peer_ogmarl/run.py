"""OG-MARL's own QMIX+CQL / QMIX+BCQ on our data, evaluated by our protocol (docs/ogmarl-peer.md).

    python experiments/peer_ogmarl/run.py --scenario 3m --quality poor --algo cql --seed 0 --og-marl PATH \
        [--synthetic runs/eaq/<run>/synthetic.h5 | --rad rad-s] [--iters 15000]

Runs in its own virtual environment (experiments/peer_ogmarl/requirements.txt),
never the project's: the paper's learners are TensorFlow 2 + Sonnet systems
in a checkout of instadeepai/og-marl (PATH), imported from there, not copied.

1. D_real is our 3 % dataset for the map and quality (`datasets.ensure_dataset`,
   as train.py makes it) or `--dataset`; with `--synthetic`, D_syn's
   episodes follow it in one vault (`export.py`).
2. Their buffer (`FlashbaxReplayBuffer`: 32 windows of 20 steps, cut from
   the vault's one long time axis) is filled from that vault, and their
   system is built with the defaults of its own config file
   (og_marl/baselines/tf2_systems/offline/configs/qmix_{cql,bcq}.yaml).
3. Training is their `BaseOfflineSystem.train` loop (sample, `train_step`,
   count) for `--iters` steps (with `--rad`, each sample scaled by RAD first:
   `RadSamples`), evaluated every `--eval-every` and at the end
   as ours is: their `select_actions` plays our SMAX batch of 32 games
   (`qmix.evaluate_policy`, the same seeded streams as a learner of ours
   with this `--seed`), one game's hidden state at a time.
4. results.json (and metrics.csv) in `--out`/<D_real>-ogmarl-<algo>-<data>-it<iters>-s<seed>/ carry the fields
   of train.py's (config, final, heldout, training_episodes, seconds, cpu_seconds), plus training-only
   seconds and iterations per second for the speed ratio; a finished run is only read back.

`python experiments/peer_ogmarl/run.py --table [FOLDER]` prints the table of
the finished runs kept in FOLDER (default experiments/peer_ogmarl/records/,
one folder per run holding its results.json: theirs, and ours from train.py
on the same files), the page docs/ogmarl-peer.md shows.
"""
import argparse
import importlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
import artifacts  # noqa: E402
import data  # noqa: E402
import datasets  # noqa: E402
import learner as ourlearner  # noqa: E402
import qmix  # noqa: E402
import rad  # noqa: E402
from experiments.peer_ogmarl import export  # noqa: E402

RECORDS = os.path.join(HERE, "records")          # finished runs, theirs and ours, as results.json (+ metrics.csv)
SYSTEMS = {"cql": ("qmix_cql", "QMIXCQLSystem"), "bcq": ("qmix_bcq", "QMIXBCQSystem")}
VAULT_SOURCE, VAULT_ENV = "ours", "smax"          # the vault's place: <out>/vaults/ours/smax/<map>.vlt/<uid>


class Shape:
    """What their system reads of an environment when it is built: the agents' names and the action count."""

    def __init__(self, n_agents, n_actions):
        self.agents = [f"agent_{i}" for i in range(n_agents)]
        self.num_actions = n_actions


class TheirPolicy:
    """Their `select_actions` as our evaluation's policy: a batch of B games, played one game at a time, each
    game keeping its own recurrent state in `system.rnn_states` while it is played."""

    def __init__(self, system):
        self.system = system

    def reset(self, n_envs):
        self.states = []
        for _ in range(n_envs):
            self.system.reset()
            self.states.append(self.system.rnn_states)

    def __call__(self, obs, avail):
        """obs (B, N, O), avail (B, N, A) numpy -> actions (B, N)."""
        agents = self.system.agents
        actions = np.zeros(obs.shape[:2], dtype=np.int64)
        for b in range(obs.shape[0]):
            self.system.rnn_states = self.states[b]
            chosen = self.system.select_actions({a: obs[b, i].astype(np.float32) for i, a in enumerate(agents)},
                                                {a: avail[b, i].astype(np.float32) for i, a in enumerate(agents)})
            self.states[b] = self.system.rnn_states
            actions[b] = [int(chosen[a]) for a in agents]
        return actions


def import_system(og_marl, algo):
    """Their system class from the checkout at `og_marl`, and the defaults of its config file."""
    if not os.path.isdir(os.path.join(og_marl, "og_marl", "baselines", "tf2_systems")):
        raise artifacts.InputError(f"--og-marl {og_marl}: not a checkout of instadeepai/og-marl "
                                   "(no og_marl/baselines/tf2_systems); clone it and pass its folder")
    sys.path.insert(0, og_marl)
    from omegaconf import OmegaConf                 # their venv's (hydra's) config reader
    module_name, class_name = SYSTEMS[algo]
    module = importlib.import_module(f"og_marl.baselines.tf2_systems.offline.{module_name}")
    config = OmegaConf.load(os.path.join(og_marl, "og_marl", "baselines", "tf2_systems", "offline", "configs",
                                         f"{module_name}.yaml"))
    return getattr(module, class_name), OmegaConf.to_container(config, resolve=True)


def checkout_commit(og_marl):
    """The commit of their checkout (recorded with each run), or 'unknown' outside git."""
    try:
        return subprocess.run(["git", "-C", og_marl, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class NullLogger:
    """Their logger interface (`write`), keeping nothing: our loop records what it reports."""

    def write(self, logs, force=False):
        return None

    def close(self):
        return None


def run_name(real_path, algo, synthetic, iters, seed, rad_mode="none"):
    stem = os.path.splitext(os.path.basename(real_path))[0]
    data_label = rad_mode if synthetic is None else "syn-" + artifacts.file_digest(synthetic)[:8]
    return f"{stem}-ogmarl-{algo}-{data_label}-it{iters}-s{seed}"


def augmentation_of(synthetic, rad_mode="none"):
    """(aug, lam, generator) as train.py names them: 'none' or RAD's mode, or 'eaq' with D_syn's λ and the
    network that made it (its attrs)."""
    if synthetic is None:
        return rad_mode, 0.0, None
    attrs = data.read_attrs(synthetic)
    return "eaq", float(attrs["lam"]), attrs.get("generator")


class RadSamples:
    """Their buffer with RAD on every minibatch it hands out, fresh factors each time, as our learner's (rad.py):
    the agents' observations scaled, and the mixer's state with them — export.py writes the state as the agents'
    joint observation, which is what our mixer reads."""

    def __init__(self, buffer, mode, seed):
        self.buffer, self.mode = buffer, mode
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self):
        experience = self.buffer.sample()
        obs = np.asarray(experience["observations"])                                     # (B, T, N, O)
        obs = obs * rad.rad_factors(obs.shape, self.mode, self.generator).numpy()
        infos = {**experience["infos"], "state": obs.reshape(*obs.shape[:2], -1)}        # (B, T, N * O)
        return {**experience, "observations": obs, "infos": infos}


def train_and_evaluate(system, buffer, iters, eval_every, envs, clock):
    """Their training loop with our evaluations; returns (metrics rows, heldout summary, training seconds)."""
    policy, rows, train_seconds = TheirPolicy(system), [], 0.0
    for it in range(1, iters + 1):
        start = time.process_time()
        logs = system.train_step(buffer.sample())
        system.training_step_ctr += 1
        train_seconds += time.process_time() - start
        if it % eval_every == 0 or it == iters:
            row = {"iteration": it, **{k: float(v) for k, v in logs.items()},
                   **qmix.evaluate_policy(policy, envs["reported"])}
            rows.append(row)
            losses = ", ".join(f"{k} {float(v):.3f}" for k, v in logs.items() if "loss" in k)   # each system's own
            print(f"it {it}: return {row['return_mean']:.2f}, win rate {row['win_rate']:.2f}, {losses}, "
                  f"{it / train_seconds:.1f} it/s (training CPU), {clock.wall():.0f}s", flush=True)
    return rows, qmix.evaluate_policy(policy, envs["heldout"]), train_seconds


def run(args):
    real_path = args.dataset or datasets.ensure_dataset(args.scenario, args.quality, args.fraction, 0,  # train.py's
                                                        root=os.path.join(args.out, "datasets"))      # data seed
    attrs = data.read_attrs(real_path)
    out = os.path.join(args.out, "ogmarl", run_name(real_path, args.algo, args.synthetic, args.iters, args.seed,
                                                    args.rad))
    results_path = os.path.join(out, "results.json")
    if os.path.exists(results_path):
        print(f"reusing {results_path}")
        with open(results_path) as f:
            return json.load(f)
    system_cls, config = import_system(args.og_marl, args.algo)
    import tensorflow as tf                         # only in the peer's venv: imported here, after the checks
    from og_marl.replay_buffers import FlashbaxReplayBuffer
    tf.config.threading.set_intra_op_parallelism_threads(artifacts.torch_threads())    # one thread, as ours
    tf.config.threading.set_inter_op_parallelism_threads(artifacts.torch_threads())
    clock = artifacts.Clock()
    paths = [real_path] + ([args.synthetic] if args.synthetic else [])
    uid = os.path.basename(out)
    vault = os.path.join(args.out, "vaults", VAULT_SOURCE, VAULT_ENV, f"{args.scenario}.vlt", uid)
    episodes, vault_rows = export.export(paths, vault)
    buffer = FlashbaxReplayBuffer(sequence_length=config["replay"]["sequence_length"],
                                  sample_period=config["replay"]["sample_period"], seed=args.seed)
    buffer.populate_from_vault(VAULT_SOURCE, VAULT_ENV, args.scenario, uid, rel_dir=os.path.join(args.out, "vaults"))
    if args.rad != "none":
        buffer = RadSamples(buffer, args.rad, args.seed)
    tf.random.set_seed(args.seed)
    system = system_cls(Shape(attrs["n_agents"], attrs["n_actions"]), NullLogger(), **config["system"])
    envs = qmix.make_eval_envs(attrs["scenario"], "smax", args.eval_episodes, args.seed)
    artifacts.prepare_output_dir(out)
    rows, heldout, train_seconds = train_and_evaluate(system, buffer, args.iters, args.eval_every, envs, clock)
    aug, lam, generator = augmentation_of(args.synthetic, args.rad)
    results = {"config": {"scenario": attrs["scenario"], "quality": attrs["quality"], "algo": args.algo, "aug": aug,
                          "lam": lam, "seed": args.seed, "iters": args.iters, "eval_episodes": args.eval_episodes,
                          "learner": "og-marl", "og_marl_commit": checkout_commit(args.og_marl),
                          "og_marl_config": config, "datasets": paths},
               "algo": args.algo, "aug": f"eaq (λ={lam:g})" if aug == "eaq" else aug,
               "dataset": {"path": real_path, "episodes": data.load_dataset(real_path).n_episodes,
                           **{k: attrs[k] for k in ("return_mean", "return_std", "behaviour", "epsilon")}},
               "augmentation_report": None, "generator": generator, "final": rows[-1], "heldout": heldout,
               "training_episodes": episodes,
               "vault_rows": vault_rows, "train_cpu_seconds": train_seconds,
               "iterations_per_cpu_second": args.iters / train_seconds,
               "seconds": {"learner": clock.wall()}, "cpu_seconds": {"learner": clock.cpu()}}
    ourlearner.write_metrics(rows, os.path.join(out, "metrics.csv"), os.path.join(out, "curve.png"),
                             f"OG-MARL {args.algo.upper()} {attrs['scenario']}-{attrs['quality']}, {results['aug']}, "
                             f"seed={args.seed}")
    artifacts.write_json(results_path, results)
    return results


def learner_label(config):
    """Whose learner a run's config names: OG-MARL's, or ours with whichever of OG-MARL's ways it was run with
    (greedy BCQ execution, experiments/windows.py's windows, no last action, no gradient clipping)."""
    if config.get("learner") == "og-marl":
        return "OG-MARL"
    ways = [name for name, used in (("greedy execution", config["algo"] == "bcq"
                                     and config.get("bcq_execution") == "greedy"),
                                    (f"{config.get('window')}-step windows", bool(config.get("window"))),
                                    ("no last action", config.get("last_action") is False),
                                    ("no gradient clipping", config.get("grad_clip") == 0)) if used]
    return "ours" + (f" ({', '.join(ways)})" if ways else "")


# every D_syn made before D_syn's attrs named their generator came from this one (the 32-channel head)
FORMER_GENERATOR = "agents32-attention"


def augmentation_label(results):
    """A run's augmentation as the table shows it: "none", or "eaq (λ=0.1), <the network that made D_syn>"."""
    if results["config"]["aug"] != "eaq":
        return results["aug"]
    return f"{results['aug']}, {results.get('generator') or FORMER_GENERATOR}"


def run_lam(config):
    """The λ a run's D_syn was made with (train.py keeps --lam's value for every run: 0 unless --aug eaq)."""
    return float(config["lam"]) if config["aug"] == "eaq" else 0.0


def table(records):
    """The markdown table of finished runs, {name: results.json dict}, ours (train.py) and theirs side by side."""
    lines = ["| data | learner | algo | augmentation | seed | return ± std | win rate | D_real mean | "
             "return / D_real mean | held-out | training it / CPU-s |", "|---" * 11 + "|"]

    def key(item):
        c = item[1]["config"]
        return (c["scenario"], c["quality"], c["algo"], c["aug"] != "none", c["aug"], run_lam(c),
                augmentation_label(item[1]), c["seed"], c.get("learner") == "og-marl", learner_label(c), item[0])
    for name, r in sorted(records.items(), key=key):
        c, final, mean = r["config"], r["final"], r["dataset"]["return_mean"]
        speed = r.get("iterations_per_cpu_second")
        lines.append(f"| {c['scenario']}-{c['quality']} | {learner_label(c)} | "
                     f"{c['algo']} | {augmentation_label(r)} | {c['seed']} | "
                     f"{final['return_mean']:.2f} ± {final['return_std']:.2f} "
                     f"| {final['win_rate']:.2f} | {mean:.2f} | {final['return_mean'] / mean:.2f} | "
                     f"{r['heldout']['return_mean']:.2f} | {'' if speed is None else f'{speed:.1f}'} |")
    return "\n".join(lines)


def column_key(results):
    """Where a kind of data stands among the grid's columns: D_real, then each generator's D_syn (the former
    default's first), λ = 0.1 before λ = 0, then D_real with RAD's scaling."""
    c = results["config"]
    return (c["aug"] != "none", c["aug"], results.get("generator") or "", -run_lam(c))


def grid_cells(runs):
    """{(algo, learner, seed, augmentation): (return, held-out)} of one map and quality's runs, one run a cell."""
    cells = {}
    for r in runs:
        c = r["config"]
        key = (c["algo"], learner_label(c), c["seed"], augmentation_label(r))
        if key in cells:
            raise artifacts.InputError(f"two records of {key}: keep one of them in the records folder")
        cells[key] = (r["final"]["return_mean"], r["heldout"]["return_mean"])
    return cells


def grid_rows(cells, algo, who, columns):
    """One learner's rows: a row per seed, then (with two seeds or more) its means over the seeds each column holds."""
    seeds = sorted({k[2] for k in cells if k[:2] == (algo, who)})
    rows = [[str(seed)] + ["" if (algo, who, seed, col) not in cells else "%.2f (%.2f)" % cells[(algo, who, seed, col)]
                           for col in columns] for seed in seeds]
    if len(seeds) > 1:
        means = ["mean"]
        for col in columns:
            vs = np.array([cells[(algo, who, s, col)] for s in seeds if (algo, who, s, col) in cells]).reshape(-1, 2)
            means.append("" if len(vs) < 2 else f"**{vs[:, 0].mean():.2f} ({vs[:, 1].mean():.2f})**, {len(vs)} seeds")
        rows.append(means)
    return [f"| {who} {algo.upper()} | " + " | ".join(row) + " |" for row in rows]


def grid(records):
    """Per map and quality, the markdown table of the plain learners (theirs, and ours without OG-MARL's ways):
    a row per learner, algo and seed, and a row of each learner's means over the seeds shown; a column per kind
    of data (D_real, each D_syn); each cell "return (held-out)", a mean cell with its seed count."""
    runs = [r for r in records.values() if learner_label(r["config"]) in ("OG-MARL", "ours")]
    blocks = []
    for where in sorted({(r["config"]["scenario"], r["config"]["quality"]) for r in runs}):
        here = [r for r in runs if (r["config"]["scenario"], r["config"]["quality"]) == where]
        columns = [label for label, _ in sorted({augmentation_label(r): column_key(r) for r in here}.items(),
                                                key=lambda kv: kv[1])]
        heads = ["D_real" if col == "none" else f"D_real, {col}" if col in rad.AUGMENTATIONS else f"∪ D_syn: {col}"
                 for col in columns]
        lines = [f"| {where[0]}-{where[1]} | seed | " + " | ".join(heads) + " |", "|---" * (len(columns) + 2) + "|"]
        cells = grid_cells(here)
        for algo in sorted({k[0] for k in cells}):
            for who in ("OG-MARL", "ours"):
                lines += grid_rows(cells, algo, who, columns)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def read_records(folder):
    """{run name: results.json} of every run folder in `folder`."""
    records = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name, "results.json")
        if os.path.exists(path):
            with open(path) as f:
                records[name] = json.load(f)
    return records


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--table", nargs="?", const=RECORDS, help="print the table of the runs in this folder and stop")
    p.add_argument("--grid", nargs="?", const=RECORDS,
                   help="print, per map and quality, each plain learner's return on each kind of data, a row per "
                        "seed, of the runs in this folder, and stop")
    p.add_argument("--og-marl", help="a checkout of instadeepai/og-marl (their source; needed to train)")
    p.add_argument("--scenario", default="3m", help="map")
    p.add_argument("--quality", default="poor", choices=data.QUALITIES, help="behaviour policy quality")
    p.add_argument("--fraction", type=float, default=0.03, help="D_real as a share of OG-MARL's episode count")
    p.add_argument("--dataset", default=None, help="this HDF5 file as D_real instead of our 3 %% set")
    p.add_argument("--synthetic", default=None, help="a D_syn file (runs/eaq/<run>/synthetic.h5) added to D_real")
    p.add_argument("--rad", default="none", choices=rad.AUGMENTATIONS,
                   help="RAD's scaling of each of their minibatches (rad.py; the paper's RAD-s / RAD-m baselines)")
    p.add_argument("--algo", default="cql", choices=sorted(SYSTEMS), help="their QMIX+CQL or QMIX+BCQ")
    p.add_argument("--iters", type=int, default=15000, help="training steps (paper: 15 000; their config: 1e5)")
    p.add_argument("--eval-every", type=int, default=1000, help="iterations between evaluations (as ours)")
    p.add_argument("--eval-episodes", type=int, default=32, help="games per evaluation, played as ours")
    p.add_argument("--seed", type=int, default=0, help="their seed (buffer, TensorFlow) and our evaluation streams'")
    p.add_argument("--out", default="runs", help="root of datasets/, vaults/ and ogmarl/<run>/")
    args = p.parse_args(argv)
    if args.table:
        print(table(read_records(args.table)))
        return
    if args.grid:
        with artifacts.one_line_errors():
            print(grid(read_records(args.grid)))
        return
    if args.synthetic and args.rad != "none":
        p.error("--synthetic and --rad are two augmentations; give one of them (Table 1 runs each alone)")
    if not args.og_marl:
        p.error("--og-marl PATH is needed to train (a checkout of instadeepai/og-marl)")
    with artifacts.one_line_errors():
        results = run(args)
    final = results["final"]
    print(f"OG-MARL {args.algo.upper()} on {results['training_episodes']} episodes: return "
          f"{final['return_mean']:.2f} ± {final['return_std']:.2f}, win rate {final['win_rate']:.2f}; held-out "
          f"{results['heldout']['return_mean']:.2f}; {results['iterations_per_cpu_second']:.1f} training it/s")


if __name__ == "__main__":
    main()
