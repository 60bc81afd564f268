"""Behaviour policies: where the offline datasets come from (paper §4.3, OG-MARL's procedure).

The paper trains on OG-MARL's SMAC datasets, made like this (OG-MARL's
dataset cards): a MARL system was trained online on the map, stopped at a
target level of performance, and its policy rolled out ε-greedily with
ε = 0.05; this was repeated with 4 independently trained policies and the
episodes combined. Poor, Medium and Good are therefore different trained
policies, not noise around one good policy. This file does the same on SMAX.

The learner that makes the policies is ours to choose (the datasets need
policies of a given level, not a particular algorithm): shared-parameter
IPPO (`ippo.py`), the robust baseline on SMAX — OG-MARL used QMIX, which
JaxMARL reports as fragile on SMAX. Four training seeds run at once.

* Checkpoints: at env step 0 and every `--checkpoint-every` env steps (per
  seed), the actor's parameters (safetensors: loading one runs no code) and
  its evaluation, played exactly as the data will be collected: ε-greedy
  over legal actions with ε = 0.05, `--eval-episodes` games: mean ± std
  return (SMAC scale, best 20), win rate.
* Selection (`pick_checkpoints`): for each map, quality and training seed,
  the checkpoint whose evaluated mean return is closest to OG-MARL's mean
  for that map and quality (`OG_MARL`); where no checkpoint reaches the
  target, that is the best one, and the manifest says so (`reached`).
  The chosen actors are shipped in `policies/<map>/<quality>-seed<k>.safetensors`
  with `policies/manifest.json`; datasets.py makes datasets from them.

    python behaviour.py --scenario 3m        # train 4 seeds, pick, ship into policies/
    python behaviour.py --scenario 3m --ship-only   # pick again from runs/behaviour/3m

Shapes: obs (B, N, O), legal actions (B, N, A), actions (B, N).
"""
import argparse
import hashlib
import json
import os
import time

import numpy as np

import artifacts
import env as envlib
import ippo

EPSILON = 0.05            # OG-MARL's exploration when collecting the datasets
POLICY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "policies")
MANIFEST = "manifest.json"
QUALITIES = ("good", "medium", "poor")
# Environment steps per training seed, per map: enough to pass OG-MARL's Good
# level where our budget (about one CPU-hour per map for 4 seeds) allows.
ENV_STEPS = {"3m": 3_000_000, "8m": 3_000_000, "2s3z": 4_000_000, "5m_vs_6m": 6_000_000,
             "3s5z_vs_3s6z": 6_000_000}

# OG-MARL's SMAC v1 datasets, the paper's source: (mean return, std return,
# episode count) per map and quality, from OG-MARL's dataset statistics.
# The means are the targets the behaviour policies are picked for.
OG_MARL = {
    ("3m", "poor"): (4.69, 2.14, 48779), ("3m", "medium"): (9.96, 6.06, 41619),
    ("3m", "good"): (16.49, 5.92, 43559),
    ("8m", "poor"): (5.28, 0.56, 20629), ("8m", "medium"): (10.14, 3.34, 39208),
    ("8m", "good"): (16.86, 4.33, 30638),
    ("5m_vs_6m", "poor"): (7.45, 1.48, 45501), ("5m_vs_6m", "medium"): (12.62, 5.06, 39284),
    ("5m_vs_6m", "good"): (16.58, 4.69, 36311),
    ("2s3z", "poor"): (6.88, 2.06, 9942), ("2s3z", "medium"): (12.57, 3.14, 18605),
    ("2s3z", "good"): (18.32, 2.95, 18616),
    ("3s5z_vs_3s6z", "poor"): (5.90, 2.22, 17807), ("3s5z_vs_3s6z", "medium"): (10.69, 1.49, 18866),
    ("3s5z_vs_3s6z", "good"): (16.56, 3.72, 7315),
}


# ---------------------------------------------------------------------------
# Checkpoints (safetensors: tensors and string metadata only, no code on load)
# ---------------------------------------------------------------------------
def actor_tensors(actor):
    """Actor layers -> flat {'actor.<i>.<name>': array} (w, b; a GRU cell's u too) of float32 numpy arrays."""
    return {f"actor.{i}.{name}": np.asarray(value, dtype=np.float32)
            for i, layer in enumerate(actor) for name, value in layer.items()}


def save_policy(path, actor, metadata):
    """Write one actor and its metadata (values become strings) as a safetensors file, atomically."""
    from safetensors.numpy import save_file
    with artifacts.atomic_path(path) as tmp:
        save_file(actor_tensors(actor), tmp, metadata={k: json.dumps(v) for k, v in metadata.items()})


def rebuild_hint(path):
    scenario = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return (f"restore it with `git checkout -- {path}` or retrain it with "
            f"`python behaviour.py --scenario {scenario}`")


POLICY_KEYS = ("scenario", "n_agents", "obs_dim", "n_actions", "seed", "env_steps")   # and "actor" (default mlp)


def load_policy(path):
    """-> (actor layers as numpy, metadata dict); a missing or corrupt file raises a one-line InputError."""
    from safetensors import safe_open
    if not os.path.exists(path):
        raise artifacts.InputError(f"{path}: no such behaviour-policy file; {rebuild_hint(path)}")
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:      # safetensors raises its own error types for every kind of damage
        raise artifacts.InputError(f"{path}: not a readable behaviour-policy file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); {rebuild_hint(path)}") from None
    missing = [k for k in POLICY_KEYS if k not in metadata]
    kind = metadata.get("actor", "mlp")
    if missing or "actor.0.b" not in tensors or kind not in ippo.ACTORS:
        raise artifacts.InputError(f"{path}: not a behaviour-policy file (missing {', '.join(missing) or 'actor layers'}); "
                                   f"{rebuild_hint(path)}")
    wanted = ippo.actor_shapes(kind, metadata["obs_dim"] + metadata["n_agents"], tensors["actor.0.b"].shape[0],
                               metadata["n_actions"])
    layers = [{name: tensors.get(f"actor.{i}.{name}") for name in shapes} for i, shapes in enumerate(wanted)]
    found = [{name: getattr(value, "shape", None) for name, value in layer.items()} for layer in layers]
    if len(tensors) != sum(map(len, wanted)) or found != wanted:
        raise artifacts.InputError(f"{path}: actor shapes do not fit its metadata; {rebuild_hint(path)}")
    if not all(np.isfinite(v).all() for layer in layers for v in layer.values()):
        raise artifacts.InputError(f"{path}: actor holds NaN or inf; {rebuild_hint(path)}")
    return layers, metadata


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class TrainedPolicy:
    """A saved actor as a behaviour policy for datasets.py: ε-greedy over legal actions, all agents at once.

    The interface `datasets.collect_batch` plays: `reset()` at each batch of
    episodes, `__call__(obs (B, N, O), avail (B, N, A)) -> actions (B, N)`.
    """

    def __init__(self, path, env, epsilon=EPSILON, seed=0):
        import jax
        self.actor, self.metadata = load_policy(path)
        found = tuple(self.metadata[k] for k in ("scenario", "n_agents", "obs_dim", "n_actions"))
        wanted = (env.scenario, env.n_agents, env.obs_dim, env.n_actions)
        if found != wanted:
            raise artifacts.InputError(f"{path}: a policy for {found[0]} (N, O, A = {found[1:]}), "
                             f"not for {wanted[0]} (N, O, A = {wanted[1:]})")
        self.epsilon, self.path = float(epsilon), path
        self._key = jax.random.PRNGKey(seed)
        self._act = jax.jit(act)
        self._memory = None

    def reset(self):
        """New games: the actor's memory empties (a GRU's; the MLP's has width 0)."""
        self._memory = None

    def __call__(self, obs, avail):
        import jax
        if self._memory is None:
            self._memory = np.zeros(obs.shape[:-1] + (ippo.memory_size(self.actor),), np.float32)   # (B, N, H)
        self._key, key = jax.random.split(self._key)
        self._memory, actions = self._act(self.actor, key, self._memory, obs, avail, self.epsilon)
        return np.asarray(actions, dtype=np.int64)


def act(actor, key, memory, obs, avail, epsilon):
    """One ε-greedy step of every agent: (memory (B, N, H), obs (B, N, O), avail (B, N, A)) -> (memory', actions)."""
    memory, logits = ippo.actor_step(actor, memory, ippo.agent_inputs(obs), avail)
    return memory, ippo.epsilon_greedy(key, logits, avail, epsilon)


# ---------------------------------------------------------------------------
# Picking and shipping the policies
# ---------------------------------------------------------------------------
def pick_checkpoints(records, target):
    """For each training seed, the checkpoint whose mean return is closest to `target`.

    records: dicts with seed, env_steps, return_mean (any order). Ties go to
    the earlier checkpoint. Returns {seed: record + {'reached': bool}}, where
    `reached` says whether any checkpoint of that seed scored >= target
    (if not, the pick is simply the seed's best checkpoint).
    """
    picks = {}
    for seed in sorted({r["seed"] for r in records}):
        mine = sorted((r for r in records if r["seed"] == seed), key=lambda r: r["env_steps"])
        best = min(mine, key=lambda r: abs(r["return_mean"] - target))
        picks[seed] = {**best, "reached": max(r["return_mean"] for r in mine) >= target}
    return picks


def read_manifest(policy_dir=POLICY_DIR):
    path = os.path.join(policy_dir, MANIFEST)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise artifacts.InputError(f"{path}: not a readable policy manifest ({err}); restore it with "
                         f"`git checkout -- {path}`") from None


def shipped_policies(scenario, quality, policy_dir=POLICY_DIR):
    """The manifest entries (one per training seed) of the shipped policies for a map and quality."""
    entries = read_manifest(policy_dir).get(scenario, {}).get(quality)
    if not entries:
        raise artifacts.InputError(f"no shipped behaviour policy for {scenario}-{quality} in {policy_dir}; "
                         f"train them with `python behaviour.py --scenario {scenario}` or use "
                         f"--behaviour heuristic")
    return entries


def ship(scenario, run_dir, policy_dir=POLICY_DIR, qualities=QUALITIES):
    """Pick the qualities' checkpoints from a training run and copy them into policy_dir with the manifest.

    Qualities not named keep the policies (and manifest entries) they have, and so do the seeds the run did
    not train: one seed can be retrained alone (`--seeds 3`) and shipped beside the others.
    """
    with open(os.path.join(run_dir, "log.json")) as f:
        log = json.load(f)
    os.makedirs(os.path.join(policy_dir, scenario), exist_ok=True)
    manifest = read_manifest(policy_dir)
    manifest.setdefault(scenario, {})
    for quality in qualities:
        target = OG_MARL[(scenario, quality)][0]
        picks = pick_checkpoints(log["checkpoints"], target)
        entries = [e for e in manifest[scenario].get(quality, []) if e["seed"] not in picks]
        for seed, pick in picks.items():
            actor, metadata = load_policy(os.path.join(run_dir, pick["file"]))
            name = f"{quality}-seed{seed}.safetensors"
            path = os.path.join(policy_dir, scenario, name)
            save_policy(path, actor, {**metadata, "quality": quality, "target_return": target})
            entries.append({"file": f"{scenario}/{name}", "seed": seed, "env_steps": pick["env_steps"],
                            "return_mean": pick["return_mean"], "return_std": pick["return_std"],
                            "win_rate": pick["win_rate"], "target_return": target, "reached": pick["reached"],
                            "sha256": file_sha256(path), "epsilon": EPSILON, "command": log["command"]})
        manifest[scenario][quality] = sorted(entries, key=lambda e: e["seed"])
    manifest[scenario] = {q: manifest[scenario][q] for q in QUALITIES if q in manifest[scenario]}
    artifacts.write_json(os.path.join(policy_dir, MANIFEST), dict(sorted(manifest.items())))
    return {q: manifest[scenario][q] for q in qualities}


# ---------------------------------------------------------------------------
# Command line: train, checkpoint, evaluate, pick, ship
# ---------------------------------------------------------------------------
def train(args, progress=True):
    """Train len(args.seeds) policies at once; checkpoints and log.json in args.out/<scenario>/."""
    import jax
    from tqdm import tqdm
    run_dir = os.path.join(args.out, args.scenario)
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    steps_per_update = args.n_envs * args.n_steps
    updates_per_interval = args.checkpoint_every // steps_per_update
    intervals = -(-args.env_steps // args.checkpoint_every)
    trainer = ippo.Trainer(args.scenario, args.n_envs, args.n_steps, args.epochs, args.minibatches, args.lr,
                           args.gamma, args.gae_lambda, args.clip, args.vf_coef, args.ent_coef,
                           args.max_grad_norm, args.hidden, updates_per_interval, intervals, args.eval_episodes,
                           EPSILON, args.critic, args.actor)
    states = [trainer.init(s) for s in args.seeds]
    state = jax.tree.map(lambda *xs: jax.numpy.stack(xs), *states)               # seed axis first
    eval_key = jax.random.PRNGKey(10_000 + args.seeds[0])
    log = {"scenario": args.scenario, "config": vars(args), "command": training_command(args), "checkpoints": []}
    start = time.time()
    bar = tqdm(total=intervals * args.checkpoint_every,
               desc=f"{learner_name(args.critic, args.actor)} {args.scenario} x{len(args.seeds)} seeds",
               unit="step", unit_scale=True, disable=not progress)
    for interval in range(intervals + 1):
        env_steps = interval * updates_per_interval * steps_per_update
        if interval:
            state, _ = trainer.run_interval(state)
            bar.update(updates_per_interval * steps_per_update)
        eval_key, k = jax.random.split(eval_key)
        returns, won = trainer.evaluate(state["params"]["actor"], jax.random.split(k, len(args.seeds)))
        returns, won = np.asarray(returns), np.asarray(won)                         # (seeds, G)
        for i, seed in enumerate(args.seeds):
            actor = jax.tree.map(lambda x: np.asarray(x[i]), state["params"]["actor"])
            record = {"seed": seed, "env_steps": env_steps, "return_mean": float(returns[i].mean()),
                      "return_std": float(returns[i].std()), "win_rate": float(won[i].mean()),
                      "seconds": time.time() - start, "file": f"checkpoints/seed{seed}-{env_steps:09d}.safetensors"}
            save_policy(os.path.join(run_dir, record["file"]), actor,
                        {"scenario": args.scenario, "n_agents": trainer.n_agents, "obs_dim": trainer.obs_dim,
                         "n_actions": trainer.n_actions, "seed": seed, "env_steps": env_steps,
                         "return_mean": record["return_mean"], "return_std": record["return_std"],
                         "win_rate": record["win_rate"], "epsilon": EPSILON, "actor": args.actor})
            log["checkpoints"].append(record)
        artifacts.write_json(os.path.join(run_dir, "log.json"), log)
        bar.set_postfix(ret=" ".join(f"{r.mean():.1f}" for r in returns))
    bar.close()
    log["seconds"] = time.time() - start
    artifacts.write_json(os.path.join(run_dir, "log.json"), log)
    plot_training(log, os.path.join(run_dir, "training.png"))
    return log


def learner_name(critic, actor="mlp"):
    """IPPO with each agent's own critic, MAPPO with the central one (ippo.CRITICS); "(GRU)" for a GRU actor."""
    return ("MAPPO" if critic == "central" else "IPPO") + (" (GRU)" if actor == "gru" else "")


def training_command(args):
    """The behaviour.py command line that reproduces a training run (every flag that differs from its default)."""
    defaults = vars(parse_args(["--scenario", args.scenario]))
    flags = []
    for key, value in vars(args).items():
        if key in ("out", "policies", "ship_only", "qualities", "scenario") or value == defaults[key]:
            continue
        flag = "--" + key.replace("_", "-")
        flags += [flag] + ([str(v) for v in value] if isinstance(value, list) else [str(value)])
    return " ".join(["python behaviour.py --scenario", args.scenario] + flags)


def plot_training(log, path):
    """Evaluated return vs environment steps per seed, with OG-MARL's three targets."""
    plt = artifacts.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for seed in sorted({r["seed"] for r in log["checkpoints"]}):
        mine = [r for r in log["checkpoints"] if r["seed"] == seed]
        ax.plot([r["env_steps"] for r in mine], [r["return_mean"] for r in mine], label=f"seed {seed}")
    for quality in QUALITIES:
        target = OG_MARL.get((log["scenario"], quality))
        if target:
            ax.axhline(target[0], ls="--", lw=0.8, color="gray")
            ax.text(0, target[0], f" {quality}", va="bottom", fontsize=7, color="gray")
    name = learner_name(log["config"].get("critic", "agent"), log["config"].get("actor", "mlp"))
    ax.set(xlabel="environment steps", ylabel=f"return (ε = {EPSILON})",
           title=f"{name} behaviour policies, {log['scenario']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    artifacts.save_figure(fig, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train the behaviour policies that make the offline datasets "
                                            "(OG-MARL's procedure, paper §4.3) and ship the picked checkpoints.")
    p.add_argument("--scenario", default="3m", help="SMAX map (paper: 3m, 5m_vs_6m, 8m, 2s3z, 3s5z_vs_3s6z)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3],
                   help="independent training seeds (OG-MARL: 4 policies per dataset)")
    p.add_argument("--env-steps", type=int, default=None,
                   help="environment steps per seed (default: ENV_STEPS of the map, sized to reach Good)")
    p.add_argument("--checkpoint-every", type=int, default=16_384,
                   help="environment steps between checkpoints (a multiple of n-envs x n-steps)")
    p.add_argument("--eval-episodes", type=int, default=128, help="ε-greedy games per checkpoint evaluation")
    p.add_argument("--n-envs", type=int, default=128, help="games played in parallel per seed (JaxMARL: 128)")
    p.add_argument("--n-steps", type=int, default=128, help="steps per rollout (JaxMARL: 128)")
    p.add_argument("--epochs", type=int, default=4, help="PPO epochs per rollout (JaxMARL: 4)")
    p.add_argument("--minibatches", type=int, default=4, help="PPO minibatches per epoch (JaxMARL: 4)")
    p.add_argument("--lr", type=float, default=4e-3, help="Adam learning rate, decays linearly to 0 (JaxMARL: 4e-3)")
    p.add_argument("--gamma", type=float, default=0.99, help="discount")
    p.add_argument("--gae-lambda", type=float, default=0.95, help="GAE λ")
    p.add_argument("--clip", type=float, default=0.05, help="PPO ratio and value clip (JaxMARL's SMAX: 0.05)")
    p.add_argument("--vf-coef", type=float, default=0.5, help="value loss weight")
    p.add_argument("--ent-coef", type=float, default=0.01, help="entropy bonus weight")
    p.add_argument("--max-grad-norm", type=float, default=0.25, help="global gradient-norm clip (JaxMARL: 0.25)")
    p.add_argument("--hidden", type=int, default=64, help="hidden width of actor and critic")
    p.add_argument("--critic", default="agent", choices=ippo.CRITICS,
                   help="the critic's input: the agent's observation (IPPO) or every agent's (MAPPO)")
    p.add_argument("--actor", default="mlp", choices=ippo.ACTORS,
                   help="the actor: an MLP, or with a GRU cell that remembers the game (JaxMARL's SMAX actor)")
    p.add_argument("--out", default=os.path.join("runs", "behaviour"), help="training runs: OUT/<scenario>/")
    p.add_argument("--policies", default=POLICY_DIR, help="where the picked policies are shipped")
    p.add_argument("--ship-only", action="store_true", help="do not train: pick and ship from OUT/<scenario>/")
    p.add_argument("--qualities", nargs="+", default=list(QUALITIES), choices=QUALITIES,
                   help="the qualities to pick and ship; the others keep their shipped policies")
    args = p.parse_args(argv)
    envlib.require_scenario(p, args.scenario)
    for name in ("checkpoint_every", "eval_episodes", "n_envs", "n_steps", "epochs",
                 "minibatches", "hidden"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.env_steps is None:
        args.env_steps = ENV_STEPS.get(args.scenario, 4_000_000)
    if args.checkpoint_every % (args.n_envs * args.n_steps):
        p.error(f"--checkpoint-every must be a multiple of n-envs x n-steps = {args.n_envs * args.n_steps}, "
                f"got {args.checkpoint_every}")
    if args.env_steps < 1:
        p.error(f"--env-steps must be at least 1, got {args.env_steps}")
    if (args.n_envs * args.n_steps) % args.minibatches:
        p.error(f"--minibatches must divide n-envs x n-steps = {args.n_envs * args.n_steps}")
    if args.actor == "gru" and args.n_envs % args.minibatches:
        p.error(f"--minibatches must divide --n-envs ({args.n_envs}) with --actor gru (its minibatches are games)")
    for name in ("lr", "gamma", "gae_lambda", "clip", "vf_coef", "ent_coef", "max_grad_norm"):
        value = getattr(args, name)
        if not np.isfinite(value) or value < 0 or (name in ("lr", "clip", "max_grad_norm") and value == 0):
            p.error(f"--{name.replace('_', '-')} must be a finite positive number, got {value}")
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        p.error("--seeds must be distinct non-negative integers")
    return args


def main(argv=None):
    args = parse_args(argv)
    run_dir = os.path.join(args.out, args.scenario)
    if not args.ship_only:
        log = train(args)
        steps = max(r["env_steps"] for r in log["checkpoints"])
        print(f"trained {len(args.seeds)} seeds x {steps:,} env steps in {log['seconds'] / 60:.1f} min "
              f"({len(args.seeds) * steps / log['seconds']:,.0f} env steps/s); {run_dir}/log.json")
    if (args.scenario, "poor") not in OG_MARL:
        print(f"{args.scenario} has no OG-MARL targets: nothing to ship")
        return
    with artifacts.one_line_errors():
        shipped = ship(args.scenario, run_dir, args.policies, args.qualities)
    for quality, entries in shipped.items():
        picks = ", ".join(f"seed {e['seed']}: {e['return_mean']:.2f} @ {e['env_steps']:,}"
                          + ("" if e["reached"] else " (target not reached)") for e in entries)
        print(f"{args.scenario}-{quality} (OG-MARL {OG_MARL[(args.scenario, quality)][0]:.2f}): {picks}")


if __name__ == "__main__":
    main()
