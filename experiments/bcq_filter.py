"""Is it BCQ's filter? QMIX+BCQ's networks played with and without their behaviour filter
(docs/bcq-starts-late.md).

    python experiments/bcq_filter.py train --dataset <D_real>.h5 --dataset runs/eaq/<run>/synthetic.h5 \
        --iters 3000 --seed 2 [--metrics <the sweep's run>/metrics.csv]
    python experiments/bcq_filter.py runs runs/results/8m-poor-*-bcq-*

On every map, QMIX+BCQ trained on D_aug = D_real ∪ D_syn starts near
nothing while it trained on D_real alone does not. Discrete BCQ (bcq.py,
§4.1) acts greedily only among the actions its behaviour network G finds
likely, allowed(o) = {a legal : G(a|o) / max G >= tau}; one reading is
that G, learnt mostly on D_syn, filters out what wins games. Both
subcommands play the same networks on the same seeded start states twice:
among the BCQ-allowed actions ("filtered", bcq.py's execution) and among all
legal actions ("greedy", OG-MARL's QMIX+BCQ, which the paper ran).

`train` trains QMIX+BCQ exactly as bcq.py / train.py do (the same flags and
seed give the networks a sweep's run had at each evaluation) and plays the
reported evaluation's batch both ways at every --eval-every. On living
agents' steps it counts how often an attack was legal, how often the filter
let at least one through, how often one was chosen, and the mean number of
allowed and of legal actions. With --metrics (that run's metrics.csv) the
run's own return is printed beside the filtered one: they agree when the
run reproduces.

`runs` loads finished train.py BCQ runs' final networks (learner.pt) and
plays each run's held-out episodes both ways (the filtered return must equal
the recorded held-out one), then prints each cell and column's mean ± std
over seeds. Nothing is trained or chosen on these numbers.
"""
import argparse
import collections
import csv
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import bcq  # noqa: E402
import data  # noqa: E402
import env as envlib  # noqa: E402
import evaluate  # noqa: E402
import fidelity  # noqa: E402
import learner  # noqa: E402
import qmix  # noqa: E402

EXECUTIONS = {"filtered": True, "greedy": False}       # act among BCQ-allowed actions, or all legal ones
SHARES = ("attack_legal", "attack_allowed", "attack_chosen")


class CountingPolicy(bcq.BCQPolicy):
    """BCQ's policy that counts, on living agents' steps, what was legal, allowed and chosen.

    With filtered=False it acts greedily over all legal actions; the
    behaviour network still runs alongside, so the allowed set is counted.
    """

    def __init__(self, qmix_bcq, filtered, first_attack):
        super().__init__(qmix_bcq)
        self.filtered, self.first_attack = filtered, first_attack
        self.counts = collections.Counter()

    def allowed(self, obs, avail):
        allowed = super().allowed(obs, avail)                           # (B, N, A); advances G's state
        self.living = torch.as_tensor(fidelity.living_agents(avail.numpy(), self.first_attack))   # (B, N)
        attacks = slice(self.first_attack, None)
        self.counts["living"] += int(self.living.sum())
        self.counts["attack_legal"] += int(avail[..., attacks].any(-1)[self.living].sum())
        self.counts["attack_allowed"] += int(allowed[..., attacks].any(-1)[self.living].sum())
        self.counts["allowed_actions"] += int(allowed[self.living].sum())
        self.counts["legal_actions"] += int(avail[self.living].sum())
        return allowed if self.filtered else avail

    def __call__(self, obs, avail):
        action = super().__call__(obs, avail)                           # (B, N) numpy
        self.counts["attack_chosen"] += int((torch.as_tensor(action) >= self.first_attack)[self.living].sum())
        return action

    def summary(self):
        """{share of living agent-steps for each of SHARES, mean allowed and legal actions per living agent-step}."""
        n = max(self.counts["living"], 1)
        return {**{key: self.counts[key] / n for key in SHARES},
                "allowed_actions": self.counts["allowed_actions"] / n,
                "legal_actions": self.counts["legal_actions"] / n}


def play_both(qmix_bcq, envs, first_attack):
    """One evaluation per execution, each on its own copy of the same seeded stream: {execution: numbers}."""
    out = {}
    for execution, filtered in EXECUTIONS.items():
        policy = CountingPolicy(qmix_bcq, filtered, first_attack)
        result = qmix.evaluate_policy(policy, envs[execution])
        out[execution] = {"return": result["return_mean"], "won": result["win_rate"], **policy.summary()}
    return out


def sweep_returns(path):
    """{iteration: return_mean} of a run's metrics.csv, or {} without one."""
    if path is None:
        return {}
    try:
        with open(path) as f:
            return {int(row["iteration"]): float(row["return_mean"]) for row in csv.DictReader(f)}
    except (OSError, KeyError, ValueError) as err:
        raise artifacts.InputError(f"--metrics {path}: {err}; pass a learner run's metrics.csv") from None


def report(iteration, numbers, sweep):
    """Markdown rows of one evaluation: one per execution."""
    lines = []
    for execution, n in numbers.items():
        check = f"{sweep[iteration]:.2f}" if execution == "filtered" and iteration in sweep else ""
        lines.append(f"| {iteration} | {execution} | {n['return']:.2f} | {check} | {n['won']:.0%} | "
                     + " | ".join(f"{n[key]:.3f}" for key in SHARES)
                     + f" | {n['allowed_actions']:.2f} / {n['legal_actions']:.2f} |")
    return lines


def column(config):
    """A run's Table 1 column from its results.json config, named as evaluate.py names it."""
    return evaluate.column_label(evaluate.method_of(config), config["lam"])


def finished_bcq_run(run_dir):
    """(config, results, learner checkpoint state) of a finished train.py QMIX+BCQ run; InputError otherwise."""
    fix = "pass folders of finished train.py --algo bcq runs (results.json and learner.pt)"
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            results = json.load(f)
    except (OSError, ValueError) as err:
        raise artifacts.InputError(f"{run_dir}: no readable results.json ({err}); {fix}") from None
    config = results.get("config", {})
    if config.get("algo") != "bcq":
        raise artifacts.InputError(f"{run_dir}: a {config.get('algo')!r} run, not QMIX+BCQ; {fix}")
    state = artifacts.load_tensors(os.path.join(run_dir, "learner.pt"), "learner checkpoint", fix,
                                   learner.LearnerCheckpoint.KEYS)
    if int(state["iteration"]) != config["iters"]:
        raise artifacts.InputError(f"{run_dir}: learner.pt holds iteration {state['iteration']}, "
                                   f"not the run's last ({config['iters']}); {fix}")
    return config, results, state


def replay_runs(run_dirs):
    """Each finished BCQ run's final networks, played on its held-out episodes both ways: a list of rows.

    Folders that are not finished BCQ runs (a glob over a sweep's results/
    catches CQL and unfinished runs) are skipped with the reason; none left
    is an InputError.
    """
    rows, simulators = [], {}
    for run_dir in run_dirs:
        try:
            config, results, state = finished_bcq_run(run_dir)
        except artifacts.InputError as err:
            print(f"skipped {err}", file=sys.stderr)
            continue
        a = data.read_attrs(results["dataset"]["path"])
        qmix_bcq = bcq.QmixBCQ(a["n_agents"], a["obs_dim"], a["n_actions"], tau=config["tau"],
                               last_action=config["last_action"])
        learner.load_learner_state(qmix_bcq, state["learner"])
        key = (a["scenario"], config["backend"], config["eval_episodes"])
        if key not in simulators:                   # compile each map once; fork() gives each run its episodes
            simulators[key] = envlib.make_env(*key)
        heldout_seed = config["seed"] + qmix.EVAL_SEED_OFFSET["heldout"]
        envs = {execution: simulators[key].fork(heldout_seed) for execution in EXECUTIONS}
        numbers = play_both(qmix_bcq, envs, simulators[key].first_attack_action)
        rows.append({"cell": f"{config['scenario']}-{config['quality']}", "column": column(config),
                     "seed": config["seed"], "recorded": results["heldout"]["return_mean"], **numbers})
    if not rows:
        raise artifacts.InputError("none of the folders is a finished QMIX+BCQ run; pass train.py --algo bcq "
                                   "run folders that hold results.json and learner.pt")
    return rows


def print_runs(rows):
    """Per run, then per cell and column over seeds: held-out return filtered (as recorded) and greedy."""
    print("| cell | column | seed | recorded held-out | filtered | greedy | greedy won | attack allowed "
          "(filtered play) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cell']} | {r['column']} | {r['seed']} | {r['recorded']:.2f} | {r['filtered']['return']:.2f} "
              f"| {r['greedy']['return']:.2f} | {r['greedy']['won']:.0%} | {r['filtered']['attack_allowed']:.3f} |")
    groups = collections.defaultdict(list)
    for r in rows:
        groups[r["cell"], r["column"]].append(r)
    print("\n| cell | column | seeds | filtered (mean ± std) | greedy (mean ± std) | greedy − filtered |\n"
          "|---|---|---|---|---|---|")
    for (cell, name), group in groups.items():
        f, g = (np.array([r[e]["return"] for r in group]) for e in EXECUTIONS)
        print(f"| {cell} | {name} | {len(group)} | {f.mean():.2f} ± {f.std():.2f} | {g.mean():.2f} ± {g.std():.2f} "
              f"| {(g - f).mean():+.2f} |")


def learner_flags():
    """bcq.py's flags, and --metrics: the `train` subcommand's parent parser."""
    p = learner.learner_parser(__doc__.splitlines()[0], bcq.BCQConfig)
    p.add_argument("--metrics", default=None,
                   help="a sweep run's metrics.csv, whose returns are printed beside the filtered ones")
    return p


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    train = sub.add_parser("train", parents=[learner_flags()], add_help=False,
                           help="train QMIX+BCQ as bcq.py does; play every --eval-every both ways")
    runs = sub.add_parser("runs", help="play finished train.py BCQ runs' final networks both ways")
    runs.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="folders of finished train.py --algo bcq runs (results.json, learner.pt)")
    return p, train


def train_and_play(args, config, own):
    """The `train` subcommand: QMIX+BCQ trained as bcq.py does, both executions at every evaluation;
    returns the training rows (iteration, losses) as bcq.py's metrics.csv holds them."""
    sweep = sweep_returns(args.metrics)
    _, buffer, qmix_bcq, eval_envs = learner.seeded_learner(bcq.QmixBCQ, args.dataset, config, args.aug,
                                                            bcq.learner_kwargs(own))   # bcq.py's starting point
    reported = eval_envs["reported"]
    envs = {"filtered": reported, "greedy": reported.fork(config.seed + qmix.EVAL_SEED_OFFSET["reported"])}
    print("| iteration | execution | return | sweep's run | won | attack legal | attack allowed "
          "| attack chosen | allowed / legal actions |\n|---|---|---|---|---|---|---|---|---|")
    evaluations = iter(range(config.eval_every, config.iters + config.eval_every, config.eval_every))

    def evaluate_now():
        iteration = min(next(evaluations), config.iters)
        print("\n".join(report(iteration, play_both(qmix_bcq, envs, reported.first_attack_action), sweep)),
              flush=True)
        return {}

    return learner.train_loop(qmix_bcq, buffer, config.iters, config.batch_size, config.lr, config.seed,
                              evaluate_now, config.eval_every, config.target_every, config.grad_clip, progress=False)


def main(argv=None):
    parser, train = build_parser()
    args = parser.parse_args(argv)
    if args.mode == "train":
        config, own = (artifacts.config_from_args(cls, args) for cls in (learner.LearnerConfig, bcq.BCQConfig))
        with artifacts.parser_errors(train):
            learner.check_config(config)
            bcq.check_config(own)
    with artifacts.one_line_errors():
        if args.mode == "train":
            return train_and_play(args, config, own)
        learner.use_learner_threads()
        rows = replay_runs(args.run_dirs)
        print_runs(rows)
        return rows


if __name__ == "__main__":
    main()
