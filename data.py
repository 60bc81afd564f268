"""Offline multi-agent datasets and the episode matrix of Eq. 4 (paper §3.1, §4.3).

Datasets. The paper trains on OG-MARL's SMAC datasets, which cannot be
downloaded here, so we make our own the way OG-MARL made theirs: trained
behaviour policies of a given level play the simulator (`env.py`),
epsilon-greedily with epsilon = 0.05, and every step is recorded. The
policies are the ones `behaviour.py` trained and picked (four independently
trained seeds per map and quality, shipped in policies/); a dataset mixes
them equally. The paper's "original" dataset is a 3 % random subset of
whole episodes (`subsample`); since episodes are i.i.d. within each
policy's share, generating only that many episodes is equivalent.

Ablation (`behaviour="heuristic"`): the first version of this project used
SMAX's built-in heuristic (keep attacking the enemy you attacked last, else
the closest enemy in range, else advance) mixed, per agent and step, with a
uniformly random legal action with probability epsilon (`EPSILON`,
calibrated to OG-MARL's mean returns where reachable). Measured: the
heuristic's action stays the most likely one in every state, so offline
learners recover the heuristic from "poor" data; it stays available,
labelled, for comparison.

One HDF5 file per scenario x quality x seed, episodes padded to the longest
episode T (E episodes, N agents, O observation features, A actions):

    attrs    scenario, quality, backend, n_agents, obs_dim, n_actions, behaviour,
             epsilon, seed, return_mean, return_std, win_rate, length_mean,
             synthetic, format_version; trained-policy data also
             policy_files and policy_sha256 (JSON lists, one per policy)
    obs      float32 (E, T+1, N, O)   includes the observation after the last step
    avail    bool    (E, T+1, N, A)   legal actions (all False on padded steps)
    actions  int64   (E, T, N)
    rewards  float32 (E, T)           team reward, SMAC scale (episode return <= 20)
    dones    bool    (E, T)           True at the terminal step only
    lengths  int32   (E,)

The episode matrix (Eq. 4). The diffusion model sees a dataset as one float
tensor tau0 of shape (E, F, T): time runs along the last axis and the feature
rows are, for each agent n, its O observation rows, its A one-hot action rows
and (our one documented extension) its A legal-action rows, so that
synthetic episodes carry what the learners need for a max over legal
actions; then the global reward row, the Q_tot row (reward-to-go, §3.2) and
the done row: F = N (O + 2A) + 3. Steps after an episode's end are zeros, as
in the paper. `Normalizer` maps every row to [-1, 1] with statistics of
D_real, and `matrix_to_episodes` is the inverse of `episodes_to_matrix`.
The observation after the last step is not part of Eq. 4: decoded episodes
hold zeros (and no legal action) there, which no learner reads, because the
done flag stops bootstrapping.
"""
import argparse
import dataclasses
import hashlib
import json
import math
import os
import time

import h5py
import numpy as np
from tqdm import tqdm

import artifacts
import behaviour as behaviourlib
import env as envlib

FORMAT_VERSION = 1
QUALITIES = ("good", "medium", "poor")

OG_MARL = behaviourlib.OG_MARL   # (mean return, std, episode count) per map and quality
DEFAULT_EPISODES = 20000  # full-dataset size for maps OG-MARL does not cover

BEHAVIOURS = ("policies", "heuristic")
TRAINED = "trained-policies+epsilon-greedy"
HEURISTIC = "smax-heuristic+epsilon-random-legal"

# The heuristic ablation: probability of a uniformly random legal action per
# agent and step, per map and quality. Calibrated with `python bench/datasets.py --calibrate` (mean
# return for epsilon in 0, 0.1, ..., 1; README "Datasets"): where OG-MARL's
# mean return is within the heuristic's reach, epsilon is interpolated to
# match it; 'good' is out of reach on every map (heuristic best ~13.8), so it
# is the heuristic itself (epsilon 0). On 5m_vs_6m and 3s5z_vs_3s6z the
# heuristic never wins (best ~5.8 and ~6.2), so no band is reachable; there
# medium and poor keep OG-MARL's ratio of their return to 'good' instead.
# Maps not listed use DEFAULT_EPSILON.
DEFAULT_EPSILON = {"good": 0.0, "medium": 0.1, "poor": 0.4}
EPSILON = {
    ("3m", "good"): 0.0, ("3m", "medium"): 0.13, ("3m", "poor"): 0.5,
    ("8m", "good"): 0.0, ("8m", "medium"): 0.09, ("8m", "poor"): 0.35,
    ("2s3z", "good"): 0.0, ("2s3z", "medium"): 0.05, ("2s3z", "poor"): 0.37,
    ("5m_vs_6m", "good"): 0.0, ("5m_vs_6m", "medium"): 0.2, ("5m_vs_6m", "poor"): 0.6,
    ("3s5z_vs_3s6z", "good"): 0.0, ("3s5z_vs_3s6z", "medium"): 0.6, ("3s5z_vs_3s6z", "poor"): 0.85,
}


def behaviour_epsilon(scenario, quality, behaviour="policies"):
    """Epsilon of a behaviour: OG-MARL's 0.05 for trained policies, the calibrated EPSILON for the heuristic."""
    if quality not in QUALITIES:
        raise ValueError(f"unknown quality {quality!r}; choose one of: {', '.join(QUALITIES)}")
    if behaviour == "policies":
        return behaviourlib.EPSILON
    return EPSILON.get((scenario, quality), DEFAULT_EPSILON[quality])


def full_dataset_size(scenario, quality):
    """OG-MARL's episode count for the map and quality (the paper's full dataset)."""
    return OG_MARL.get((scenario, quality), (None, None, DEFAULT_EPISODES))[2]


# ---------------------------------------------------------------------------
# Episodes
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Episodes:
    """A batch of padded episodes, the arrays of the HDF5 schema (module docstring)."""

    obs: np.ndarray      # (E, T+1, N, O) float32
    avail: np.ndarray    # (E, T+1, N, A) bool
    actions: np.ndarray  # (E, T, N) int64
    rewards: np.ndarray  # (E, T) float32
    dones: np.ndarray    # (E, T) bool
    lengths: np.ndarray  # (E,) int32
    attrs: dict = dataclasses.field(default_factory=dict)

    @property
    def n_episodes(self):
        return self.actions.shape[0]

    @property
    def n_agents(self):
        return self.obs.shape[2]

    @property
    def obs_dim(self):
        return self.obs.shape[3]

    @property
    def n_actions(self):
        return self.avail.shape[3]

    def returns(self):
        """Undiscounted episode returns, (E,)."""
        return self.rewards.sum(axis=1)

    def select(self, index):
        """The episodes at `index` (an index array), with the same attrs."""
        arrays = {f.name: getattr(self, f.name)[index]
                  for f in dataclasses.fields(self) if f.name != "attrs"}
        return Episodes(**arrays, attrs=dict(self.attrs))


def return_stats(episodes):
    """The return statistics stored in a dataset's attrs."""
    returns = episodes.returns()
    return {"return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "length_mean": float(episodes.lengths.mean())}


def subsample(episodes, fraction, seed):
    """A random subset of whole episodes, round(fraction * E) of them (at least one).

    The paper's "original" dataset is the 3 % subset (fraction = 0.03).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = max(1, int(round(fraction * episodes.n_episodes)))
    index = np.sort(np.random.default_rng(seed).choice(episodes.n_episodes, n, replace=False))
    subset = episodes.select(index)
    subset.attrs.update(return_stats(subset), fraction=fraction, subsample_seed=seed)
    return subset


# ---------------------------------------------------------------------------
# Behaviour policy and collection (§4.3)
# ---------------------------------------------------------------------------
class HeuristicPolicy:
    """SMAX's heuristic for the allies, mixed with random legal actions (prob epsilon).

    One jitted call acts for all B x N agents. The heuristic keeps a small
    state per agent (its target, the enemy it attacked last), reset with
    every episode. If the heuristic picks an illegal action (a dead agent,
    which may only stop), a random legal action is taken instead.
    """

    def __init__(self, env, epsilon, seed):
        import jax
        import jax.numpy as jnp
        if env.backend != "smax":
            raise ValueError("dataset generation uses SMAX's heuristic; use --backend smax")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        with envlib._quiet_stdout():
            from jaxmarl.environments.smax import heuristic_enemy
        self.epsilon = float(epsilon)
        self.n_envs, self.n_agents = env.n_envs, env.n_agents
        heuristic = heuristic_enemy.create_heuristic_policy(env.smax._env, 0, shoot=True,
                                                             attack_mode="closest")
        self._initial = heuristic_enemy.get_heuristic_policy_initial_state()
        self._heuristic = jax.vmap(jax.vmap(heuristic))  # over (B, N)
        self._act = jax.jit(self._act_batch)
        self._key = jax.random.PRNGKey(seed)
        self._jnp = jnp
        self._state = None

    def _act_batch(self, key, policy_state, obs, avail, epsilon):
        import jax
        jnp = self._jnp
        B, N = avail.shape[:2]
        k_heuristic, k_random, k_explore = jax.random.split(key, 3)
        keys = jax.random.split(k_heuristic, B * N).reshape(B, N, -1)
        heuristic_action, policy_state = self._heuristic(keys, policy_state, obs)    # (B, N)
        random_action = jax.random.categorical(k_random, jnp.where(avail, 0.0, -jnp.inf))
        legal = jnp.take_along_axis(avail, heuristic_action[..., None], axis=-1)[..., 0]
        explore = jax.random.uniform(k_explore, (B, N)) < epsilon
        return jnp.where(explore | ~legal, random_action, heuristic_action), policy_state

    def reset(self):
        """Fresh heuristic state for B new episodes."""
        import jax
        shape = (self.n_envs, self.n_agents)
        self._state = jax.tree.map(
            lambda x: self._jnp.broadcast_to(self._jnp.asarray(x), shape + self._jnp.shape(x)),
            self._initial)

    def __call__(self, obs, avail):
        """Actions (B, N) int64 for observations (B, N, O) and legal actions (B, N, A)."""
        import jax
        self._key, key = jax.random.split(self._key)
        action, self._state = self._act(key, self._state, obs, avail, self.epsilon)
        return np.asarray(action, dtype=np.int64)


def collect_batch(env, policy):
    """Play one batch of B episodes to the end; returns Episodes padded to the episode limit."""
    B, N, L = env.n_envs, env.n_agents, env.episode_limit
    obs_buf = np.zeros((B, L + 1, N, env.obs_dim), dtype=np.float32)
    avail_buf = np.zeros((B, L + 1, N, env.n_actions), dtype=bool)
    actions = np.zeros((B, L, N), dtype=np.int64)
    rewards = np.zeros((B, L), dtype=np.float32)
    dones = np.zeros((B, L), dtype=bool)
    won = np.zeros(B, dtype=bool)
    obs, avail = env.reset()
    policy.reset()
    obs_buf[:, 0], avail_buf[:, 0] = obs, avail
    finished = np.zeros(B, dtype=bool)
    for t in range(L):
        action = policy(obs, avail)                            # (B, N)
        obs, avail, reward, done, won = env.step(action)
        active = ~finished                                     # (B,) still playing at step t
        actions[active, t] = action[active]
        rewards[active, t] = reward[active]
        dones[active, t] = done[active]
        obs_buf[active, t + 1], avail_buf[active, t + 1] = obs[active], avail[active]
        finished = done
        if finished.all():
            break
    lengths = actions.shape[1] - np.argmax(dones[:, ::-1], axis=1)  # terminal step + 1
    episodes = Episodes(obs_buf, avail_buf, actions, rewards, dones, lengths.astype(np.int32))
    return episodes, won


def behaviour_sources(env, scenario, quality, behaviour, epsilon, seed, n_episodes, policy_dir):
    """The policies that play a dataset and how many episodes each plays: [(policy, count)], attrs.

    Trained policies: the shipped policies of the map and quality (one per
    training seed), each checked against the manifest's sha256, sharing the
    episodes equally (the first n % K play one more). The heuristic: one
    source playing all of them.
    """
    if behaviour == "heuristic":
        return [(HeuristicPolicy(env, epsilon, seed=seed + 1), n_episodes)], {"behaviour": HEURISTIC}
    entries = behaviourlib.shipped_policies(scenario, quality, policy_dir)
    K = len(entries)
    sources, files, digests = [], [], []
    for k, entry in enumerate(entries):
        path = os.path.join(policy_dir, entry["file"])
        policy = behaviourlib.TrainedPolicy(path, env, epsilon, seed=seed + 1 + k)   # refuses a bad file
        if behaviourlib.file_sha256(path) != entry["sha256"]:
            raise artifacts.InputError(f"{path}: contents differ from the manifest's sha256; "
                                       f"{behaviourlib.rebuild_hint(path)}")
        sources.append((policy, n_episodes // K + (k < n_episodes % K)))
        files.append(entry["file"])
        digests.append(entry["sha256"])
    return sources, {"behaviour": TRAINED, "policy_files": json.dumps(files), "policy_sha256": json.dumps(digests)}


def generate_dataset(scenario, quality, n_episodes, seed, path, behaviour="policies", epsilon=None,
                     n_envs=256, progress=True, policy_dir=behaviourlib.POLICY_DIR):
    """Play `n_episodes` with the behaviour of `quality` and write them to `path`.

    Episodes are collected in batches of `n_envs` per behaviour policy and
    streamed into the HDF5 file, which is written under a temporary name and
    renamed at the end. Deterministic for a given (seed, n_envs). Returns the
    file's attrs.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be at least 1, got {n_episodes}")
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; choose one of: {', '.join(BEHAVIOURS)}")
    epsilon = behaviour_epsilon(scenario, quality, behaviour) if epsilon is None else float(epsilon)
    n_envs = min(n_envs, n_episodes)
    env = envlib.make_env(scenario, "smax", n_envs=n_envs, seed=seed)
    sources, behaviour_attrs = behaviour_sources(env, scenario, quality, behaviour, epsilon, seed, n_episodes,
                                                 policy_dir)
    attrs = {"scenario": scenario, "quality": quality, "backend": env.backend,
             "n_agents": env.n_agents, "obs_dim": env.obs_dim, "n_actions": env.n_actions,
             **behaviour_attrs, "epsilon": epsilon, "seed": seed, "synthetic": False,
             "format_version": FORMAT_VERSION}
    returns, lengths, wins = [], [], []
    with artifacts.atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            writer = EpisodeWriter(f, env.episode_limit, env.n_agents, env.obs_dim, env.n_actions)
            with tqdm(total=n_episodes, desc=f"{scenario}-{quality}", unit="ep",
                      disable=not progress) as bar:
                for policy, count in sources:
                    done = 0
                    while done < count:
                        batch, won = collect_batch(env, policy)
                        keep = min(n_envs, count - done)
                        batch = batch.select(np.arange(keep))
                        writer.append(batch)
                        returns.append(batch.returns())
                        lengths.append(batch.lengths)
                        wins.append(won[:keep])
                        done += keep
                        bar.update(keep)
            returns, lengths = np.concatenate(returns), np.concatenate(lengths)
            writer.finish(int(lengths.max()))
            attrs.update(return_mean=float(returns.mean()), return_std=float(returns.std()),
                         win_rate=float(np.concatenate(wins).mean()),
                         length_mean=float(lengths.mean()))
            f.attrs.update(attrs)
    return attrs


def ensure_dataset(scenario, quality, fraction, seed, root=os.path.join("runs", "datasets"),
                   behaviour="policies", epsilon=None, policy_dir=behaviourlib.POLICY_DIR):
    """Path of the dataset for this configuration, generated on first use and reused after.

    It holds round(fraction x OG-MARL's episode count) episodes (the paper's
    "original" set for fraction 0.03: the episodes are i.i.d. within each
    policy's share, so generating that many equals subsampling a full set).
    The name carries the whole configuration (for trained policies, a digest
    of their files), so a different one never reuses the wrong file. A
    cached file that no longer loads (damaged, truncated) is made again.
    """
    path = dataset_path(scenario, quality, fraction, seed, root, behaviour, epsilon, policy_dir)
    if os.path.exists(path):
        try:
            load_dataset(path, scenario=scenario, quality=quality)
            return path
        except artifacts.InputError as err:       # a damaged cache of our own: make it again
            print(f"rebuilding the cached dataset: {err}")
    os.makedirs(root, exist_ok=True)
    n, eps = dataset_size_and_epsilon(scenario, quality, fraction, behaviour, epsilon)
    generate_dataset(scenario, quality, n, seed, path, behaviour, eps, policy_dir=policy_dir)
    return path


def dataset_size_and_epsilon(scenario, quality, fraction, behaviour="policies", epsilon=None):
    """(episodes, ε) of a configuration: round(fraction x OG-MARL's count), the behaviour's ε unless given."""
    n = max(1, round(fraction * full_dataset_size(scenario, quality)))
    return n, behaviour_epsilon(scenario, quality, behaviour) if epsilon is None else float(epsilon)


def behaviour_tag(scenario, quality, behaviour, policy_dir=behaviourlib.POLICY_DIR):
    """'heur' or 'pol<6 hex digits of the shipped policies' sha256s>' (part of a dataset's name)."""
    if behaviour == "heuristic":
        return "heur"
    digests = [e["sha256"] for e in behaviourlib.shipped_policies(scenario, quality, policy_dir)]
    return "pol" + hashlib.sha1("".join(digests).encode()).hexdigest()[:6]


def dataset_path(scenario, quality, fraction, seed, root=os.path.join("runs", "datasets"), behaviour="policies",
                 epsilon=None, policy_dir=behaviourlib.POLICY_DIR):
    """Where `ensure_dataset` keeps this configuration's dataset (its name is the whole configuration)."""
    n, eps = dataset_size_and_epsilon(scenario, quality, fraction, behaviour, epsilon)
    tag = behaviour_tag(scenario, quality, behaviour, policy_dir)
    return os.path.join(root, f"{scenario}-{quality}-{tag}-eps{eps:g}-n{n}-s{seed}.h5")


class EpisodeWriter:
    """Appends padded episode batches to resizable, compressed HDF5 datasets."""

    def __init__(self, f, limit, n_agents, obs_dim, n_actions):
        self.count = 0
        shapes = {"obs": ((limit + 1, n_agents, obs_dim), np.float32),
                  "avail": ((limit + 1, n_agents, n_actions), bool),
                  "actions": ((limit, n_agents), np.int64),
                  "rewards": ((limit,), np.float32),
                  "dones": ((limit,), bool),
                  "lengths": ((), np.int32)}
        self.sets = {}
        for name, (shape, dtype) in shapes.items():
            per_episode = int(np.prod(shape)) * np.dtype(dtype).itemsize
            chunk = (int(np.clip(2 ** 18 // per_episode, 1, 1024)),) + shape  # ~256 KiB chunks
            self.sets[name] = f.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape,
                                               dtype=dtype, chunks=chunk, compression="gzip",
                                               compression_opts=1)

    def append(self, episodes):
        n = episodes.n_episodes
        for name, ds in self.sets.items():
            ds.resize(self.count + n, axis=0)
            ds[self.count:self.count + n] = getattr(episodes, name)
        self.count += n

    def finish(self, T):
        """Trim the time axis to the longest episode T."""
        for name, ds in self.sets.items():
            if ds.ndim > 1:
                ds.resize(T + 1 if name in ("obs", "avail") else T, axis=1)


def save_dataset(episodes, path):
    """Write Episodes to `path` in the HDF5 schema (temporary name, then rename)."""
    with artifacts.atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for field in ARRAYS:
            f.create_dataset(field, data=getattr(episodes, field), compression="gzip", compression_opts=1)
        f.attrs.update({**episodes.attrs, "format_version": FORMAT_VERSION})


ARRAYS = ("obs", "avail", "actions", "rewards", "dones", "lengths")
REQUIRED_ATTRS = ("scenario", "quality", "backend", "n_agents", "obs_dim", "n_actions",
                  "epsilon", "seed", "return_mean", "return_std", "format_version")


def load_dataset(path, scenario=None, quality=None, episodes=slice(None)):
    """Read and validate a dataset file; refuse a malformed or mismatched one.

    `scenario` / `quality`, when given, must match the file's attrs.
    `episodes` (a slice) reads only those episodes, e.g. one chunk of
    `dataset_chunks`. Every problem raises an artifacts.InputError whose
    message names the file, the array and, for bad contents, the first bad
    index (counted in the whole file).
    """
    if not os.path.exists(path):
        raise artifacts.InputError(f"{path}: no such dataset file; make one with "
                                   f"`python data.py --scenario ... --quality ... --out {path}`")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise artifacts.InputError(f"{path}: not a readable HDF5 dataset ({err})") from None
    with f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        missing = [k for k in REQUIRED_ATTRS if k not in attrs]
        missing += [k for k in ARRAYS if k not in f]
        if missing:
            raise artifacts.InputError(f"{path}: not an EAQ dataset, missing {', '.join(missing)}")
        if attrs["format_version"] != FORMAT_VERSION:
            raise artifacts.InputError(f"{path}: format version {attrs['format_version']}, expected "
                                       f"{FORMAT_VERSION}; regenerate it with data.py")
        for name in ("actions", "lengths"):
            if not np.issubdtype(f[name].dtype, np.integer):
                raise artifacts.InputError(f"{path}: {name} has dtype {f[name].dtype}, expected integers")
        try:
            # copy=False: no second copy of an array already stored in the wanted type (the obs are most of the file)
            chunk = Episodes(obs=f["obs"][episodes].astype(np.float32, copy=False),
                             avail=f["avail"][episodes].astype(bool, copy=False),
                             actions=f["actions"][episodes].astype(np.int64, copy=False),
                             rewards=f["rewards"][episodes].astype(np.float32, copy=False),
                             dones=f["dones"][episodes].astype(bool, copy=False),
                             lengths=f["lengths"][episodes].astype(np.int32, copy=False), attrs=attrs)
        except (OSError, ValueError) as err:
            raise artifacts.InputError(f"{path}: damaged HDF5 data ({err})") from None
    problem = schema_problem(chunk, attrs["n_agents"], attrs["obs_dim"], attrs["n_actions"],
                             first_episode=episodes.start or 0)
    if problem:
        raise artifacts.InputError(f"{path}: {problem}")
    for key, wanted in (("scenario", scenario), ("quality", quality)):
        if wanted is not None and attrs[key] != wanted:
            raise artifacts.InputError(f"{path}: holds {key} {attrs[key]!r} but {wanted!r} was requested")
    return chunk


CHUNK_EPISODES = 512  # episodes read at a time by dataset_chunks (a few MB to ~100 MB of padded arrays)


def dataset_chunks(path, chunk_episodes=CHUNK_EPISODES):
    """A dataset's episodes read and validated `chunk_episodes` at a time: yields Episodes.

    For consumers that repack episodes (the learners' `qmix.EpisodeBuffer`):
    the padded (E, T+1, ...) arrays of a whole file, most of them padding,
    are never in memory at once.
    """
    first = load_dataset(path, episodes=slice(0, chunk_episodes))
    yield first
    with h5py.File(path, "r") as f:
        total = len(f["lengths"])
    for start in range(chunk_episodes, total, chunk_episodes):
        yield load_dataset(path, episodes=slice(start, start + chunk_episodes))


def read_attrs(path):
    """A dataset file's attrs alone (cheap: no arrays read); refuses a missing or unreadable file."""
    if not os.path.exists(path):
        raise artifacts.InputError(f"{path}: no such dataset file")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
    except OSError as err:
        raise artifacts.InputError(f"{path}: not a readable HDF5 dataset ({err})") from None
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise artifacts.InputError(f"{path}: not an EAQ dataset, missing {', '.join(missing)}")
    return attrs


def _plain(value):
    """h5py attribute -> plain Python value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def schema_problem(ep, N, O, A, first_episode=0):
    """What is wrong with the shapes and contents of Episodes `ep` (N agents, O features, A actions), or None.

    Bad entries are named by their index, episodes counted from `first_episode` (a chunk's offset in its file).
    """
    E, T = ep.rewards.shape if ep.rewards.ndim == 2 else (None, None)
    if E is None:
        return f"rewards has shape {ep.rewards.shape}, expected (E, T)"
    expected = {"obs": (E, T + 1, N, O), "avail": (E, T + 1, N, A), "actions": (E, T, N),
                "dones": (E, T), "lengths": (E,)}
    for name, shape in expected.items():
        if getattr(ep, name).shape != shape:
            return f"{name} has shape {getattr(ep, name).shape}, expected {shape}"
    if E == 0:
        return "holds no episodes"
    if ep.lengths.min() < 1 or ep.lengths.max() > T:
        return f"episode lengths must lie in [1, {T}]"
    if ep.actions.min() < 0 or ep.actions.max() >= A:
        return f"actions must lie in [0, {A})" + _first(~((ep.actions >= 0) & (ep.actions < A)), first_episode)
    terminal = np.zeros_like(ep.dones)
    terminal[np.arange(E), ep.lengths - 1] = True
    if not np.array_equal(ep.dones, terminal):
        return "dones must be True exactly at each episode's last step" + _first(ep.dones != terminal, first_episode)
    for name in ("obs", "rewards"):
        values = getattr(ep, name)
        if not np.isfinite(values).all():
            return f"{name} holds NaN or inf" + _first(~np.isfinite(values), first_episode)
    valid = valid_steps(ep.lengths, T)                                        # (E, T)
    no_legal = valid[..., None] & ~ep.avail[:, :T].any(axis=-1)               # (E, T, N)
    if no_legal.any():
        return "avail has a valid step where an agent has no legal action" + _first(no_legal, first_episode)
    taken = np.take_along_axis(ep.avail[:, :T], ep.actions[..., None], axis=-1)[..., 0]   # (E, T, N)
    if (valid[..., None] & ~taken).any():
        return "actions holds an action that avail marks illegal" + _first(valid[..., None] & ~taken, first_episode)
    return None


def _first(bad, first_episode=0):
    """' at index (e, t, ...)' of the first True entry of a boolean array, e counted from first_episode."""
    index = np.argwhere(bad)[0]
    return f" at index {(int(index[0]) + first_episode, *(int(i) for i in index[1:]))}"


# A won episode's return: all the damage (1 × REWARD_SCALE) plus the win bonus (1 × REWARD_SCALE), 20 in all;
# a lost one stays at or below the damage's 10. 90 % of the maximum counts as a win's level.
WIN_RETURN = 0.9 * envlib.MAX_RETURN


def win_share(returns):
    """Share of episodes whose return reaches a win's level (`WIN_RETURN`); for recorded data, its win rate."""
    return float(np.mean(np.asarray(returns) >= WIN_RETURN))


# ---------------------------------------------------------------------------
# The episode matrix (Eq. 4)
# ---------------------------------------------------------------------------
def reward_to_go(rewards, lengths, gamma=1.0):
    """Q_tot target of §3.2: sum_{t' >= t} gamma^(t' - t) r_t', zero after the episode ends.

    rewards (E, T), lengths (E,) -> (E, T) float32.
    """
    E, T = rewards.shape
    valid = valid_steps(lengths, T)                                 # (E, T)
    r = np.where(valid, rewards, 0.0)
    rtg = np.zeros((E, T + 1), dtype=np.float64)
    for t in range(T - 1, -1, -1):
        rtg[:, t] = r[:, t] + gamma * rtg[:, t + 1]
    return np.where(valid, rtg[:, :T], 0.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
    """Row slices of the Eq. 4 matrix: per agent [obs O | action one-hot A | legal A],
    then reward, Q_tot, done."""

    n_agents: int
    obs_dim: int
    n_actions: int

    @property
    def agent_width(self):
        return self.obs_dim + 2 * self.n_actions

    def obs(self, n):
        start = n * self.agent_width
        return slice(start, start + self.obs_dim)

    def action(self, n):
        start = n * self.agent_width + self.obs_dim
        return slice(start, start + self.n_actions)

    def avail(self, n):
        start = n * self.agent_width + self.obs_dim + self.n_actions
        return slice(start, start + self.n_actions)

    @property
    def reward(self):
        return self.n_agents * self.agent_width

    @property
    def q_tot(self):
        return self.reward + 1

    @property
    def done(self):
        return self.reward + 2

    @property
    def n_features(self):
        return self.reward + 3


def feature_layout(n_agents, obs_dim, n_actions):
    """The row layout of the Eq. 4 matrix for these sizes."""
    return FeatureLayout(n_agents, obs_dim, n_actions)


def layout_of(episodes):
    return feature_layout(episodes.n_agents, episodes.obs_dim, episodes.n_actions)


def valid_steps(lengths, T):
    """(E, T) bool, True on the steps each episode actually played."""
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def episodes_to_matrix(episodes, gamma=1.0):
    """Eq. 4: episodes -> tau0 (E, F, T) float32, zero after each episode's end."""
    E, T = episodes.rewards.shape
    valid = valid_steps(episodes.lengths, T)                                   # (E, T)
    one_hot = np.eye(episodes.n_actions, dtype=np.float32)[episodes.actions]  # (E, T, N, A)
    per_agent = np.concatenate([episodes.obs[:, :T], one_hot,
                                episodes.avail[:, :T].astype(np.float32)], axis=-1)  # (E, T, N, O+2A)
    per_agent = per_agent.reshape(E, T, -1) * valid[..., None]                # (E, T, N(O+2A))
    q_tot = reward_to_go(episodes.rewards, episodes.lengths, gamma)           # (E, T)
    globals_ = np.stack([episodes.rewards, q_tot, episodes.dones.astype(np.float32)], axis=-1)
    matrix = np.concatenate([per_agent, globals_ * valid[..., None]], axis=-1)  # (E, T, F)
    return np.ascontiguousarray(matrix.transpose(0, 2, 1), dtype=np.float32)  # (E, F, T)


def episode_ends(done_row):
    """Where decoded episodes end: done_row (E, T) -> (lengths (E,), ended (E,) bool).

    An episode ends at its first step whose done value is above the midpoint
    0.5 (`ended` True). A generated done row often has no such step: the
    x0-prediction blurs the single terminal spike into a low peak at the right
    place (peaks of 0.1-0.2 on 3m), so without one the episode ends at the
    row's argmax, decoding the done row, a one-hot over time, the way the
    action one-hots are decoded (`ended` False).
    """
    above = done_row > 0.5
    ended = above.any(axis=1)
    lengths = np.where(ended, np.argmax(above, axis=1), np.argmax(done_row, axis=1)) + 1
    return lengths.astype(np.int32), ended


def agent_rows(matrix, layout):
    """The agents' rows of an Eq. 4 matrix (E, F, T), step by step: (E, T, N, agent_width), each agent's
    observation, action one-hot and legal-action rows in that order."""
    E, _, T = matrix.shape
    return matrix[:, :layout.reward].transpose(0, 2, 1).reshape(E, T, layout.n_agents, layout.agent_width)


def matrix_to_episodes(matrix, layout, reward_range, attrs=None):
    """Inverse of Eq. 4: tau0 (E, F, T) in data units -> Episodes.

    Legal actions are the legal-action rows above 0.5 (the highest one if
    none is); the action is the argmax of the one-hot rows among them; the
    episode ends at the first done above 0.5, or else at the done row's
    argmax (`episode_ends`); rewards are clipped to `reward_range` (lo, hi)
    of the real data.
    """
    E, F, T = matrix.shape
    if F != layout.n_features:
        raise ValueError(f"matrix has {F} feature rows, the layout expects {layout.n_features}")
    N, O, A = layout.n_agents, layout.obs_dim, layout.n_actions
    lengths, _ = episode_ends(matrix[:, layout.done])
    valid = valid_steps(lengths, T)                                           # (E, T)
    per_agent = agent_rows(matrix, layout)                                    # (E, T, N, O + 2A)
    obs = per_agent[..., :O] * valid[:, :, None, None]                        # (E, T, N, O)
    action_rows, avail_rows = per_agent[..., O:O + A], per_agent[..., O + A:]  # (E, T, N, A)
    avail = avail_rows > 0.5
    best = np.eye(A, dtype=bool)[avail_rows.argmax(axis=-1)]
    avail = np.where(avail.any(axis=-1, keepdims=True), avail, best) & valid[:, :, None, None]
    actions = np.where(avail, action_rows, -np.inf).argmax(axis=-1) * valid[:, :, None]
    rewards = np.clip(matrix[:, layout.reward], *reward_range) * valid
    dones = np.zeros((E, T), dtype=bool)
    dones[np.arange(E), lengths - 1] = True
    pad = np.zeros((E, 1, N), dtype=np.float32)
    return Episodes(obs=np.concatenate([obs, pad[..., None].repeat(O, -1)], axis=1).astype(np.float32),
                    avail=np.concatenate([avail, pad[..., None].repeat(A, -1).astype(bool)], axis=1),
                    actions=actions.astype(np.int64), rewards=rewards.astype(np.float32),
                    dones=dones, lengths=lengths, attrs=dict(attrs or {}))


@dataclasses.dataclass
class Normalizer:
    """Per-row affine map of the Eq. 4 matrix to [-1, 1], fitted on D_real.

    lo / hi are each row's minimum and maximum over all episodes and steps,
    padding included, so the padded zeros stay inside [-1, 1] too. A row
    that is constant in D_real (lo == hi) maps to -1, and whatever the model
    generates for it decodes back to that constant.
    """

    lo: np.ndarray  # (F,)
    hi: np.ndarray  # (F,)

    @classmethod
    def fit(cls, matrix):
        """matrix (E, F, T) -> Normalizer."""
        return cls(matrix.min(axis=(0, 2)).astype(np.float32), matrix.max(axis=(0, 2)).astype(np.float32))

    def _scale(self):
        return (self.hi - self.lo)[None, :, None]                                 # (1, F, 1)

    def normalize(self, matrix):
        """(E, F, T) data units -> [-1, 1]."""
        scale = self._scale()
        z = 2.0 * (matrix - self.lo[None, :, None]) / np.where(scale > 0, scale, 1.0) - 1.0
        return z.astype(np.float32)

    def unnormalize(self, matrix):
        """(E, F, T) in [-1, 1] -> data units (constant rows exactly their constant)."""
        return ((matrix + 1.0) * 0.5 * self._scale() + self.lo[None, :, None]).astype(np.float32)

    def state_dict(self):
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist()}

    @classmethod
    def from_state_dict(cls, state):
        return cls(np.asarray(state["lo"], dtype=np.float32), np.asarray(state["hi"], dtype=np.float32))


# ---------------------------------------------------------------------------
# Behaviour statistics of a dataset: attacks, action histograms, focus fire (Fig. 1b)
# ---------------------------------------------------------------------------
def living_agents(avail, first_attack=envlib.FIRST_ATTACK_ACTION["smax"]):
    """(..., N) bool: agents that may move (dead agents may only stop or no-op; SMAX moves are 0-3, SMAC's 2-5)."""
    moves = slice(0, 4) if first_attack == envlib.FIRST_ATTACK_ACTION["smax"] else slice(2, 6)
    return avail[..., moves].any(axis=-1)


def focus_fire_counts(actions, avail, valid, first_attack):
    """Figure 1b's counts: (all-attack steps on which every living agent attacks the same enemy,
    all-attack steps).

    actions (E, T, N), avail (E, T, N, A), valid (E, T). An agent is living
    when it may move (dead agents may only stop; SMAX and SMAC alike). An
    all-attack step has at least two living agents (a lone survivor cannot
    focus fire with anyone), all of them attacking.
    """
    living = living_agents(avail, first_attack)                                      # (E, T, N)
    attacking = actions >= first_attack                                              # (E, T, N)
    all_attack = valid & (living.sum(-1) >= 2) & np.all(attacking | ~living, axis=-1)   # (E, T)
    target = np.where(living, actions, -1)
    first = np.take_along_axis(target, np.argmax(living, axis=-1)[..., None], axis=-1)
    same = np.all((target == first) | ~living, axis=-1)
    return int((same & all_attack).sum()), int(all_attack.sum())


def focus_fire_ratio(actions, avail, valid, first_attack):
    """Figure 1b: (share of all-attack steps that focus fire, number of all-attack steps);
    the share is NaN when there are none (`focus_fire_counts` defines both)."""
    same, n = focus_fire_counts(actions, avail, valid, first_attack)
    return (same / n if n else float("nan")), n


def first_attack_action(episodes):
    """The first attack action of a dataset's action layout (SMAX: 5, SMAC: 6), from its backend attr."""
    return envlib.FIRST_ATTACK_ACTION[episodes.attrs.get("backend", "smax")]


def dataset_focus_fire(episodes, counts=False):
    """Figure 1b's ratio for a dataset (Episodes), in its backend's action layout
    (with counts=True, `focus_fire_counts` instead)."""
    T = episodes.rewards.shape[1]
    valid = valid_steps(episodes.lengths, T)
    stat = focus_fire_counts if counts else focus_fire_ratio
    return stat(episodes.actions, episodes.avail[:, :T], valid, first_attack_action(episodes))


def attack_counts(episodes):
    """(attacking valid agent-steps, valid agent-steps), in the dataset's action layout."""
    valid = valid_steps(episodes.lengths, episodes.rewards.shape[1])
    return int((episodes.actions >= first_attack_action(episodes))[valid].sum()), int(valid.sum()) * episodes.n_agents


def attack_share(episodes):
    """Share of valid agent-steps whose action is an attack."""
    attacks, agent_steps = attack_counts(episodes)
    return attacks / agent_steps


def action_counts(episodes):
    """(N, A): how often each agent took each action on its valid steps."""
    valid = valid_steps(episodes.lengths, episodes.rewards.shape[1])           # (E, T)
    return np.stack([np.bincount(episodes.actions[..., n][valid], minlength=episodes.n_actions)
                     for n in range(episodes.n_agents)]).astype(np.float64)   # (N, A)


def histogram_tv(counts_a, counts_b):
    """Total-variation distance between two (N, A) per-agent action counts, averaged over agents."""
    p = counts_a / counts_a.sum(axis=1, keepdims=True)
    q = counts_b / counts_b.sum(axis=1, keepdims=True)
    return float(0.5 * np.abs(p - q).sum(axis=1).mean())


def action_tv_distance(a, b):
    """Total-variation distance between two datasets' per-agent action histograms, averaged over agents."""
    return histogram_tv(action_counts(a), action_counts(b))


# ---------------------------------------------------------------------------
# Attack -> damage: do enemies lose health where the actions say they were shot? (SMAX)
# ---------------------------------------------------------------------------
# In the simulator an enemy loses health only when an agent shoots it, and
# never gains any back (SMAX's units do not heal). D_real therefore shows every
# health drop right after an attack on that enemy; a generated episode need
# not: nothing in Eq. 5 ties one agent's "attack k" at step t to enemy k's
# health at t+1 beyond what the network can write (README "Damage without a
# shooter"). An enemy killed by t+1 is no longer seen there and not counted.
# The reward row is tied to the same health: SMAX pays each step the enemies'
# summed health fractions lost, over K (× REWARD_SCALE), so where every enemy
# is seen at t and t+1 the observations fix r_t exactly (D_real: to 1e-6).
SEEN_BIT = 0.5   # a unit's block counts as seen when its largest unit-type bit exceeds this (D_real's are 0 or 1)


def enemy_health(episodes):
    """(E, T+1, K): each enemy's health fraction as the agents see it (the largest over the agents
    that see it), NaN where none does; None unless the data has SMAX's observation layout."""
    if episodes.attrs.get("backend", "smax") != "smax":
        return None
    n_enemies = episodes.n_actions - envlib.FIRST_ATTACK_ACTION["smax"]
    blocks = envlib.smax_enemy_blocks(episodes.n_agents, n_enemies, episodes.obs_dim)
    if blocks is None:
        return None
    starts, width = blocks
    obs = episodes.obs                                                              # (E, T+1, N, O)
    bits = np.stack([obs[..., s + envlib.SMAX_UNIT_FEATURES:s + width].max(axis=-1) for s in starts], axis=-1)
    health = np.where(bits > SEEN_BIT, obs[..., starts], -np.inf).max(axis=2)      # (E, T+1, K)
    return np.where(np.isinf(health), np.nan, health)


def enemy_health_drops(episodes):
    """(drop (E, T, K): each enemy's health at t minus at t+1, seen (E, T, K): t+1 lies inside the
    episode and some agent sees the enemy at t and at t+1), or None without SMAX's layout."""
    health = enemy_health(episodes)                                                  # (E, T+1, K)
    if health is None:
        return None
    drop = health[:, :-1] - health[:, 1:]                                            # (E, T, K)
    seen = valid_steps(episodes.lengths - 1, drop.shape[1])[..., None] & ~np.isnan(drop)
    return np.nan_to_num(drop), seen


def damage_threshold(episodes):
    """Half the smallest health drop an enemy shows in `episodes` (on D_real one shot: 0.2 of a
    marine's health on 3m, so 0.1); NaN where there is no drop or no SMAX layout."""
    drops = enemy_health_drops(episodes)
    if drops is None:
        return float("nan")
    drop, seen = drops
    hits = drop[seen & (drop > 1e-3)]                           # float noise of equal healths is not a hit
    return float(hits.min() / 2) if hits.size else float("nan")


DAMAGE_COUNT_KEYS = ("seen", "attacked", "attacked_hit", "unattacked_hit", "gains",
                     "all_seen", "reward_agrees", "reward_excess", "some_seen", "reward_short")


def damage_reward(health_lost, n_enemies):
    """SMAX's damage reward on our scale: REWARD_SCALE * (health fractions lost, summed over enemies) / K."""
    return envlib.REWARD_SCALE * health_lost / n_enemies


def reward_excess(rewards, drop):
    """(E, T): each step's reward minus the reward SMAX pays for the health the enemies lose by the next
    step (`damage_reward`; gains pay nothing). Exactly 0 in D_real wherever every enemy is seen at t and
    t+1 and the episode goes on (the win bonus comes at the end)."""
    paid = damage_reward(np.clip(drop, 0.0, None).sum(axis=-1), drop.shape[-1])       # (E, T)
    return rewards[:, :drop.shape[1]] - paid


def damage_counts(episodes, threshold):
    """The attack -> damage counts over steps t whose next observation lies inside the episode, per enemy k
    seen at t and t+1: {"seen", "attacked" (some agent attacks k at t), "attacked_hit" (and k's health
    drops by more than `threshold` by t+1), "unattacked_hit" (drops although nobody attacks k), "gains"
    (k's health rises by more than `threshold`)}; and the reward against that damage over the steps on
    which every enemy is seen at t and t+1: {"all_seen" (such steps), "reward_agrees" (r_t within half a
    shot's reward, `damage_reward(threshold, K)`, of the damage the observations show), "reward_excess"
    (the sum over them of r_t minus that damage)}; and over the steps on which at least one enemy is seen at
    t and t+1, where the enemies nobody sees may have lost more: {"some_seen" (such steps), "reward_short" (r_t
    below the reward for the damage shown by more than half a shot)}. All zero without a SMAX layout or
    threshold."""
    drops = enemy_health_drops(episodes)
    if drops is None or not np.isfinite(threshold):
        return dict.fromkeys(DAMAGE_COUNT_KEYS, 0)
    drop, seen = drops
    first = envlib.FIRST_ATTACK_ACTION["smax"]
    attacked = np.stack([(episodes.actions == first + k).any(axis=-1)
                         for k in range(drop.shape[-1])], axis=-1)                   # (E, T, K)
    hit = seen & (drop > threshold)
    excess = reward_excess(episodes.rewards, np.where(seen, drop, 0.0))            # (E, T): unseen enemies pay 0
    all_seen, some_seen = excess[seen.all(axis=-1)], excess[seen.any(axis=-1)]    # (steps,) each
    per_shot = damage_reward(threshold, drop.shape[-1])                             # half a shot's reward
    return {"seen": int(seen.sum()), "attacked": int((seen & attacked).sum()),
            "attacked_hit": int((hit & attacked).sum()), "unattacked_hit": int((hit & ~attacked).sum()),
            "gains": int((seen & (drop < -threshold)).sum()),
            "all_seen": int(all_seen.size), "reward_agrees": int((np.abs(all_seen) < per_shot).sum()),
            "reward_excess": float(all_seen.sum()),
            "some_seen": int(some_seen.size), "reward_short": int((some_seen < -per_shot).sum())}


def damage_shares(counts):
    """From `damage_counts` (summed over batches, e.g. in a collections.Counter): attacks_that_damage = P(k loses health | attacked),
    damage_with_shooter = P(some agent attacked k | k loses health), health_gain_share = P(k gains health),
    reward_matches_damage = P(r_t within half a shot's reward of the damage shown | every enemy seen),
    reward_minus_damage = the mean of r_t minus that damage, reward_below_damage = P(r_t short of the damage
    the seen enemies show by more than half a shot | some enemy seen); NaN where a share has no cases.
    D_real: damage_with_shooter and reward_matches_damage 1, the other three after them 0; its attacks that
    do not damage are weapon cooldowns."""
    def share(a, b):
        return a / b if b else float("nan")
    hits = counts["attacked_hit"] + counts["unattacked_hit"]
    return {"attacks_that_damage": share(counts["attacked_hit"], counts["attacked"]),
            "damage_with_shooter": share(counts["attacked_hit"], hits),
            "health_gain_share": share(counts["gains"], counts["seen"]),
            "reward_matches_damage": share(counts["reward_agrees"], counts["all_seen"]),
            "reward_minus_damage": share(counts["reward_excess"], counts["all_seen"]),
            "reward_below_damage": share(counts["reward_short"], counts["some_seen"])}


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def describe(attrs):
    """One line of dataset statistics, beside OG-MARL's when known."""
    line = (f"{attrs['scenario']}-{attrs['quality']} ({attrs.get('behaviour', '?')}, epsilon {attrs['epsilon']}): "
            f"return {attrs['return_mean']:.2f} ± {attrs['return_std']:.2f}, win rate "
            f"{attrs.get('win_rate', float('nan')):.2f}, mean length {attrs.get('length_mean', float('nan')):.1f}")
    og = OG_MARL.get((attrs["scenario"], attrs["quality"]))
    return line + (f" (OG-MARL: {og[0]:.2f} ± {og[1]:.2f})" if og else "")


def require_at_least_one(parser, args, names):
    """Stop with a one-line argparse error if any integer flag in `names` is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


SEED_MAX = 1_000_000_000   # seeds are offset (evaluation streams) and fed to JAX's 32-bit keys


def require_seed(parser, args, names):
    """Stop with a one-line argparse error unless every seed flag in `names` lies in [0, SEED_MAX]."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not 0 <= value <= SEED_MAX:
            parser.error(f"--{name.replace('_', '-')} must be in [0, {SEED_MAX:,}], got {value}")


def require_finite(parser, args, names):
    """Stop with a one-line argparse error if any float flag in `names` is NaN or infinite."""
    for name in names:
        if not math.isfinite(getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} must be a finite number, got {getattr(args, name)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate an offline SMAX dataset (paper §4.3).")
    parser.add_argument("--scenario", default="3m", help="map name (paper: 3m, 5m_vs_6m, 8m, 2s3z, 3s5z_vs_3s6z)")
    parser.add_argument("--quality", default="poor", choices=QUALITIES, help="behaviour policy quality")
    parser.add_argument("--episodes", type=int, default=None,
                        help="episodes to generate (default: OG-MARL's count for the map and quality "
                             "times --fraction)")
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="share of the full dataset to generate; the paper's 'original' set is 0.03")
    parser.add_argument("--behaviour", default="policies", choices=BEHAVIOURS,
                        help="who plays: the shipped trained policies (OG-MARL's procedure) or, as an "
                             "ablation, SMAX's heuristic mixed with random legal actions")
    parser.add_argument("--epsilon", type=float, default=None,
                        help="random-action probability (default: 0.05 for trained policies, OG-MARL's; the "
                             "calibrated EPSILON table for the heuristic)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--n-envs", type=int, default=256, help="episodes played in parallel")
    parser.add_argument("--out", required=True, help="output HDF5 path")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    envlib.require_scenario(parser, args.scenario)
    if not 0.0 < args.fraction <= 1.0:
        parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.episodes is not None and args.episodes < 1:
        parser.error(f"--episodes must be at least 1, got {args.episodes}")
    if args.epsilon is not None and not 0.0 <= args.epsilon <= 1.0:
        parser.error(f"--epsilon must be in [0, 1], got {args.epsilon}")
    require_seed(parser, args, ("seed",))
    require_at_least_one(parser, args, ("n_envs",))
    if os.path.exists(args.out) and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")
    n = args.episodes or max(1, round(args.fraction * full_dataset_size(args.scenario, args.quality)))
    with artifacts.one_line_errors():
        artifacts.prepare_output_dir(os.path.dirname(os.path.abspath(args.out)), "--out's folder")
        start = time.time()
        attrs = generate_dataset(args.scenario, args.quality, n, args.seed, args.out, args.behaviour,
                                 epsilon=args.epsilon, n_envs=args.n_envs)
    seconds = time.time() - start
    print(describe(attrs))
    print(f"wrote {n} episodes to {args.out} in {seconds:.1f}s ({n / seconds:.1f} episodes/s)")


if __name__ == "__main__":
    main()
