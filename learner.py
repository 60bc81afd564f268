"""Training an offline QMIX learner on fixed datasets and evaluating it (paper §4.1, §4.5).

What `cql.py` and `bcq.py` share beyond the networks of `qmix.py`:

* `EpisodeBuffer` — the datasets' episodes (D_real, or D_real ∪ D_syn),
  stored end to end without padding and sampled as padded minibatches of
  whole episodes (OG-MARL samples 20-step windows instead; docs/learners.md).
* `train_loop` — Adam on the learner's loss, hard target updates every
  `target_every` iterations, an evaluation in the simulator every
  `eval_every`, and a checkpoint (`learner.pt`) at each evaluation from
  which a stopped run resumes to the numbers of an unstopped one.
* `run_learner` — one whole run, a function of its seed: two evaluation
  streams (the reported one and a held-out one, on which only λ is chosen),
  metrics.csv and curve.png.
* `LearnerConfig` — the run's configuration, with OG-MARL's defaults where
  the paper is silent, and the command line of cql.py / bcq.py.
"""
import argparse
import dataclasses
import os

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import artifacts
import data
import env as envlib
import rad
from qmix import evaluate_policy, make_eval_envs

option = artifacts.option


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Everything that decides a learner run beyond its datasets and loss (the cache key of train.py's runs)."""

    iters: int = option(15000, "training iterations (paper: 15 000)")
    batch_size: int = option(32, "episodes per minibatch (OG-MARL: 32)")
    lr: float = option(3e-4, "Adam learning rate (OG-MARL: 3e-4)")
    gamma: float = option(0.99, "discount (OG-MARL: 0.99)")
    target_every: int = option(200, "hard target update period (OG-MARL: 200)")
    grad_clip: float = option(10.0, "global gradient-norm clip; 0 = none (OG-MARL's 2024 code; its 2023 code: 20)")
    last_action: bool = option(True, "agent input without the last action (OG-MARL's input: observation + agent id)")
    eval_every: int = option(1000, "iterations between evaluations")
    eval_episodes: int = option(32, "episodes per evaluation, played in parallel")
    backend: str = option("smax", "simulator for evaluation", choices=envlib.BACKENDS)
    seed: int = option(0, "seed of the run: initialisation, minibatches, sampled actions, evaluation episodes")


def check_config(config):
    """Raise a one-line InputError naming the flag of the first value that cannot work."""
    artifacts.require_flags(at_least_one={"--iters": config.iters, "--batch-size": config.batch_size,
                                          "--target-every": config.target_every, "--eval-every": config.eval_every,
                                          "--eval-episodes": config.eval_episodes},
                            seeds={"--seed": config.seed},
                            finite={"--lr": config.lr, "--gamma": config.gamma, "--grad-clip": config.grad_clip})
    if config.lr <= 0:
        raise artifacts.InputError(f"--lr must be > 0, got {config.lr}")
    if not 0.0 <= config.gamma <= 1.0:
        raise artifacts.InputError(f"--gamma must be in [0, 1], got {config.gamma}")
    if config.grad_clip < 0:
        raise artifacts.InputError(f"--grad-clip must be >= 0 (0 = no clipping), got {config.grad_clip}")


# ---------------------------------------------------------------------------
# Episode minibatches
# ---------------------------------------------------------------------------
class EpisodeBuffer:
    """Episodes (one or more datasets) stored end to end without padding, sampled as padded minibatches.

    Episode e's steps live at rows offsets[e] .. offsets[e] + lengths[e] of
    the flat step arrays (its observations and legal actions one row more:
    the observation after the last step). A minibatch gathers its episodes'
    rows into (B, T_b, ...) tensors cut to its longest episode T_b and zeroes
    everything past each episode's end, exactly what slicing zero-padded
    (E, T, ...) arrays would give — at a fraction of the memory, since a
    padded layout holds every episode as long as the longest one.

    `episodes` is any iterable of Episodes (e.g. `data.dataset_chunks` of
    each file): each is packed before the next is read, so the padded
    arrays of a whole dataset are never in memory.
    """

    def __init__(self, episodes):
        names = ("obs", "avail", "actions", "rewards", "dones")
        lengths, rows = [], {name: [] for name in names}
        for ep in episodes:
            valid = np.arange(ep.obs.shape[1])[None, :] <= ep.lengths[:, None]        # (E, T+1): steps 0..length
            lengths.append(ep.lengths)
            rows["obs"].append(ep.obs[valid])
            rows["avail"].append(ep.avail[valid])
            # every array is stored with length + 1 rows per episode (actions, rewards, dones: one unused row)
            for name in ("actions", "rewards", "dones"):
                rows[name].append(step_rows(getattr(ep, name), valid))
        lengths = np.concatenate(lengths).astype(np.int64)
        self.n_episodes = len(lengths)
        self.lengths = torch.from_numpy(lengths)                                    # (E,)
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]))   # (E,)
        for name in names:
            setattr(self, name, torch.from_numpy(np.concatenate(rows.pop(name))))

    def sample(self, batch_size, generator):
        """A random minibatch of whole episodes, cut to its longest: dict of tensors (see module shapes)."""
        index = torch.randint(self.n_episodes, (batch_size,), generator=generator)
        return self.minibatch(self.offsets[index], self.lengths[index])

    def minibatch(self, first_rows, lengths):
        """The minibatch of the (B,) stretches of steps that start at flat rows `first_rows` and last `lengths`
        steps (each within one episode; the observation after the last step is the row after it)."""
        T = int(lengths.max())
        steps = torch.arange(T + 1)
        inside = steps[None, :] <= lengths[:, None]                                 # (B, T+1)
        rows = (first_rows[:, None] + steps[None, :]).clamp(max=len(self.obs) - 1)   # (B, T+1)

        def gather(flat, n_steps):
            x = flat[rows[:, :n_steps]]                                             # (B, n_steps, ...)
            keep = inside[:, :n_steps].reshape(inside.shape[0], n_steps, *([1] * (x.dim() - 2)))
            return x * keep if x.dtype != torch.bool else x & keep
        valid = steps[None, :T] < lengths[:, None]                                  # (B, T)
        return {"obs": gather(self.obs, T + 1), "avail": gather(self.avail, T + 1),
                "actions": gather(self.actions, T), "rewards": gather(self.rewards, T),
                "dones": gather(self.dones, T).float(), "valid": valid.float()}


def step_rows(x, valid):
    """The rows of a per-step array (E, T, ...) for valid steps 0..length (one row past the data, zero)."""
    padded = np.concatenate([x, np.zeros_like(x[:, :1])], axis=1)                 # (E, T+1, ...)
    return padded[valid]


def check_datasets(paths):
    """Refuse datasets that describe different maps or shapes (attrs only); returns the first's attrs."""
    attrs = [data.read_attrs(p) for p in paths]
    for path, a in zip(paths[1:], attrs[1:]):
        for key in ("scenario", "n_agents", "obs_dim", "n_actions"):
            if a[key] != attrs[0][key]:
                raise artifacts.InputError(f"{path}: {key} {a[key]!r} differs from {paths[0]}'s {attrs[0][key]!r}")
    return attrs[0]


def load_buffer(paths, chunk_episodes=data.CHUNK_EPISODES):
    """The union of the datasets, read file by file and chunk by chunk: (first file's attrs, EpisodeBuffer)."""
    attrs = check_datasets(paths)
    return attrs, EpisodeBuffer(chunk for path in paths for chunk in data.dataset_chunks(path, chunk_episodes))


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def use_learner_threads():
    """The learner's torch thread count: artifacts.torch_threads() (1 unless EAQ_TORCH_THREADS says otherwise)."""
    torch.set_num_threads(artifacts.torch_threads())


def train_loop(learner, buffer, iters, batch_size, lr, seed, evaluate=None, eval_every=1000,
               target_every=200, grad_clip=10.0, progress=True, checkpoint=None, resume_from=None):
    """Adam on `learner.loss(batch)` for `iters` iterations; returns the metrics rows.

    `learner` has `.qmix`, `.parameters()` and `.loss(batch) -> (loss, logs)`.
    Every `target_every` iterations the target networks are copied; every
    `eval_every` iterations (and at the end) `evaluate()` adds its numbers
    and `checkpoint` (a `LearnerCheckpoint`), if given, saves the run;
    `resume_from` (a state it read) continues from the iteration it holds.
    Minibatches come from a generator seeded with `seed`; everything else
    random (initialisation, CQL samples, RAD) is seeded by the caller.
    `grad_clip` <= 0 turns gradient clipping off.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    done, rows = 0, []
    if resume_from is not None:
        done, rows = checkpoint.restore(resume_from, learner, optimizer, generator)
    bar = tqdm(range(done + 1, iters + 1), desc=type(learner).__name__, disable=not progress,
               initial=done, total=iters)
    for it in bar:
        loss, logs = learner.loss(buffer.sample(batch_size, generator))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"learner loss became {loss.item()} at iteration {it}; "
                                     "lower --lr or check the dataset")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(learner.parameters(), grad_clip)
        optimizer.step()
        if it % target_every == 0:
            learner.qmix.update_targets()
        if evaluate and (it % eval_every == 0 or it == iters):
            row = {"iteration": it, **logs, **evaluate()}
            rows.append(row)
            bar.set_postfix(ret=f"{row.get('return_mean', float('nan')):.2f}")
            if checkpoint is not None:
                checkpoint.save(it, learner, optimizer, generator, rows)
    return rows


# ---------------------------------------------------------------------------
# Checkpoints: a run that stops (a session that closes, a cluster node taken back) goes on from its
# last evaluation, as if never stopped
# ---------------------------------------------------------------------------
def learner_networks(learner):
    """{attribute name: network} of a learner: QMIX (with its targets), and BCQ's behaviour network."""
    return {name: module for name, module in vars(learner).items() if isinstance(module, nn.Module)}


def learner_state(learner):
    """A learner's own state: its networks' weights and its generator (CQL's sampled actions, RAD's factors)."""
    state = {name: module.state_dict() for name, module in learner_networks(learner).items()}
    return {**state, "generator": learner.generator.get_state()}


def load_learner_state(learner, state):
    for name, module in learner_networks(learner).items():
        module.load_state_dict(state[name])
    learner.generator.set_state(state["generator"])


class LearnerCheckpoint:
    """`learner.pt` beside a run's metrics: what the rest of the run depends on, saved at each evaluation.

    It holds the iteration, the learner's networks and generator, Adam's
    moments, the minibatch generator, torch's global generator, where the
    reported evaluation's stream of episodes stands, the metrics rows so
    far, the wall and CPU seconds spent (`artifacts.Clock`), and `config` —
    the run's flags and its datasets' sha256 — against which a resume is
    checked. A resumed run computes what the uninterrupted one would have
    (tested). Tensors and plain values only: it loads with
    weights_only=True, so loading it runs no code. Once the run ends it
    holds the final networks.
    """

    KEYS = {"iteration", "learner", "optimizer", "minibatches", "torch_rng", "eval_stream", "rows", "seconds",
            "cpu_seconds", "config"}

    def __init__(self, path, config, env, clock):
        self.path, self.config, self.env = path, config, env
        self.clock = clock                   # artifacts.Clock started with this session

    def save(self, iteration, learner, optimizer, minibatches, rows):
        artifacts.save_tensors(self.path, {
            "iteration": iteration, "learner": learner_state(learner), "optimizer": optimizer.state_dict(),
            "minibatches": minibatches.get_state(), "torch_rng": torch.get_rng_state(),
            "eval_stream": self.env.stream_state(), "rows": rows, "seconds": self.clock.wall(),
            "cpu_seconds": self.clock.cpu(), "config": self.config})

    def read(self):
        """The saved state, checked against this run; an InputError naming the problem if it cannot resume."""
        fix = "run without --resume to start afresh, or choose another --out"
        if not os.path.exists(self.path):
            raise artifacts.InputError(f"{self.path}: nothing to resume; {fix}")
        state = artifacts.load_tensors(self.path, "learner checkpoint", fix, self.KEYS)
        saved = state["config"] if isinstance(state["config"], dict) else {}
        for key, wanted in self.config.items():
            if saved.get(key) != wanted:
                what = "datasets' sha256" if key == "datasets" else key
                raise artifacts.InputError(f"{self.path} was saved by a run with other {what} "
                                           f"({saved.get(key)!r}, not {wanted!r}); {fix}")
        if state["eval_stream"] is None:
            raise artifacts.InputError(f"{self.path}: its run was evaluated in StarCraft II, whose episodes cannot "
                                       f"be replayed from a saved state; {fix}")
        return state

    def restore(self, state, learner, optimizer, minibatches):
        """Put a read state back into the run; returns (iterations done, metrics rows so far)."""
        try:
            load_learner_state(learner, state["learner"])
            optimizer.load_state_dict(state["optimizer"])
            minibatches.set_state(state["minibatches"])
            torch.set_rng_state(state["torch_rng"])
            self.env.set_stream_state(state["eval_stream"])
            self.clock.add_before(float(state["seconds"]), float(state["cpu_seconds"]))
            return int(state["iteration"]), list(state["rows"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise artifacts.InputError(f"{self.path}: damaged learner checkpoint ({type(err).__name__}); "
                                       f"delete it to train the run again") from None


def resume_state(checkpoint, resume):
    """The state to resume from, or None (start afresh).

    resume: False (start afresh), True (cql.py / bcq.py --resume: a
    checkpoint of this run must be there) or "auto" (train.py, whose
    folder is named by the run's configuration: resume if a checkpoint
    loads and matches, else say why and start afresh).
    """
    if not resume:
        return None
    try:
        return checkpoint.read()
    except artifacts.InputError as err:
        if resume is True:
            raise
        if os.path.exists(checkpoint.path):
            print(f"training the learner from the start: {err}")
        return None


# ---------------------------------------------------------------------------
# One run: seeded, trained, evaluated, written
# ---------------------------------------------------------------------------
def check_simulator(path, attrs, backend):
    """Refuse, before any training, a dataset whose shapes the evaluation simulator does not share."""
    try:
        env = envlib.make_env(attrs["scenario"], backend, n_envs=1)
    except ImportError as err:
        raise artifacts.InputError(str(err)) from None
    if (env.obs_dim, env.n_actions) != (attrs["obs_dim"], attrs["n_actions"]):
        raise artifacts.InputError(f"{path}: obs_dim/n_actions {attrs['obs_dim']}/{attrs['n_actions']} do not match "
                                   f"the {backend} simulator's {env.obs_dim}/{env.n_actions}; a {attrs['backend']} "
                                   f"dataset is evaluated with --backend {attrs['backend']}")


def seeded_learner(learner_cls, dataset_paths, config, aug="none", extra=None, make_buffer=load_buffer):
    """A run's starting point, a function of config.seed: (datasets' attrs, episode store, learner, evaluation envs).
    `make_buffer(paths) -> (attrs, store)` reads the datasets (experiments/ pass other stores).

    The networks are initialised right after torch.manual_seed(seed) and
    both evaluation streams come from their own seeded simulators, so
    anything built here and trained by `train_loop` with the same flags
    follows the same run (experiments/bcq_filter.py relies on it).
    """
    use_learner_threads()
    a, buffer = make_buffer(dataset_paths)
    torch.manual_seed(config.seed)
    learner = learner_cls(a["n_agents"], a["obs_dim"], a["n_actions"], gamma=config.gamma, aug=aug,
                          seed=config.seed, last_action=config.last_action, **(extra or {}))
    check_simulator(dataset_paths[0], a, config.backend)
    return a, buffer, learner, make_eval_envs(a["scenario"], config.backend, config.eval_episodes, config.seed)


def run_learner(learner_cls, dataset_paths, config, out, aug="none", extra=None, progress=True, resume=False,
                data_label=None, make_buffer=load_buffer):
    """Train `learner_cls` on the datasets, evaluate periodically, write CSV + PNG into `out`.

    `config` is a LearnerConfig. The run is a
    function of config.seed: the networks are initialised right after
    torch.manual_seed(seed), minibatches and the learners' own draws come
    from generators seeded from it, and both evaluation streams from their
    own seeded simulators. `out`/learner.pt is saved at every evaluation
    and `resume` (see `resume_state`) continues from it. Returns a dict:
    the last metrics row ('final'), the held-out evaluation, the number of
    training episodes, the iteration it resumed from (0 if none) and the
    wall and CPU seconds the run took over all its sessions. `data_label`
    names the training data in the curve's title (default: `aug`); `make_buffer`: see `seeded_learner`.
    """
    clock = artifacts.Clock()
    a, buffer, learner, envs = seeded_learner(learner_cls, dataset_paths, config, aug, extra,   # refused before OUT
                                              make_buffer)
    artifacts.prepare_output_dir(out)
    env = envs["reported"]
    run = {"learner": learner_cls.__name__, "aug": aug, **(extra or {}), **dataclasses.asdict(config),
           "datasets": [artifacts.file_digest(p) for p in dataset_paths]}
    checkpoint = LearnerCheckpoint(os.path.join(out, "learner.pt"), run, env, clock)
    state = resume_state(checkpoint, resume)
    if state is not None:
        print(f"resuming the learner from iteration {state['iteration']} ({checkpoint.path})")

    def evaluate_now():
        return evaluate_policy(learner.policy(), env)

    rows = train_loop(learner, buffer, config.iters, config.batch_size, config.lr, config.seed, evaluate_now,
                      config.eval_every, config.target_every, config.grad_clip, progress, checkpoint, state)
    heldout = evaluate_policy(learner.policy(), envs["heldout"])
    title = f"{type(learner).__name__} {a['scenario']}-{a['quality']}, {data_label or 'aug=' + aug}, seed={config.seed}"
    write_metrics(rows, os.path.join(out, "metrics.csv"), os.path.join(out, "curve.png"), title)
    return {"final": rows[-1], "heldout": heldout, "training_episodes": int(buffer.n_episodes),
            "resumed_from": 0 if state is None else int(state["iteration"]),
            "seconds": clock.wall(), "cpu_seconds": clock.cpu()}


def write_metrics(rows, csv_path, png_path, title):
    """Metrics CSV and a learning-curve PNG (return vs iteration), both written atomically."""
    plt = artifacts.pyplot()
    artifacts.write_csv(csv_path, rows)
    its = [r["iteration"] for r in rows]
    mean = np.array([r["return_mean"] for r in rows])
    std = np.array([r["return_std"] for r in rows])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(its, mean)
    ax.fill_between(its, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="iteration", ylabel="return (SMAC scale)", title=title)
    fig.tight_layout()
    artifacts.save_figure(fig, png_path, dpi=100)


def learner_parser(description, own_config_cls):
    """cql.py / bcq.py's command line: the datasets, LearnerConfig's flags, the learner's own, RAD, the output."""
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=description)
    p.add_argument("--dataset", action="append", required=True,
                   help="HDF5 dataset; repeat to train on their union (e.g. D_real and D_syn)")
    artifacts.add_config_flags(p, LearnerConfig)
    artifacts.add_config_flags(p, own_config_cls)
    p.add_argument("--aug", default="none", choices=rad.AUGMENTATIONS,
                   help="observation augmentation of every minibatch (paper §4.2: RAD-s, RAD-m)")
    p.add_argument("--out", default=None,
                   help="folder for metrics.csv, curve.png and learner.pt (default: runs/<learner>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from OUT/learner.pt (saved at every evaluation)")
    return p


def learner_main(learner_cls, description, own_config_cls, check_own, learner_kwargs, argv=None):
    """cql.py / bcq.py: the shared flags plus the learner's own (`own_config_cls`), checked; then train,
    evaluate, report."""
    p = learner_parser(description, own_config_cls)
    args = p.parse_args(argv)
    config, own = artifacts.config_from_args(LearnerConfig, args), artifacts.config_from_args(own_config_cls, args)
    with artifacts.parser_errors(p):
        check_config(config)
        check_own(own)
    out = args.out or os.path.join("runs", learner_cls.__name__.lower())
    with artifacts.one_line_errors():
        result = run_learner(learner_cls, args.dataset, config, out, args.aug, learner_kwargs(own),
                             resume=args.resume)
    last, heldout = result["final"], result["heldout"]
    print(f"{learner_cls.__name__} after {last['iteration']} iterations: return {last['return_mean']:.2f} ± "
          f"{last['return_std']:.2f}, normalised {last['normalised_return']:.3f}, win rate "
          f"{last['win_rate']:.2f} (held-out episodes: {heldout['return_mean']:.2f}); "
          f"wrote {out}/metrics.csv and curve.png")
