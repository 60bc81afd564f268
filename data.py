"""Offline multi-agent datasets and the episode matrix of Eq. 4 (paper §3.1, §4.3).

A dataset is one HDF5 file per scenario x quality x seed, episodes padded to
the longest episode T (E episodes, N agents, O observation features, A actions):

    attrs    scenario, quality, backend, n_agents, obs_dim, n_actions, behaviour, epsilon, seed,
             return_mean, return_std, win_rate, length_mean, synthetic, format_version, ...
    obs      float32 (E, T+1, N, O)   includes the observation after the last step
    avail    bool    (E, T+1, N, A)   legal actions (all False on padded steps)
    actions  int64   (E, T, N)
    rewards  float32 (E, T)           team reward, SMAC scale (episode return <= 20)
    dones    bool    (E, T)           True at the terminal step only
    lengths  int32   (E,)

`datasets.py` makes them with the shipped behaviour policies and `ogmarl.py`
converts OG-MARL's; `subsample` draws the paper's 3 % "original" set.

The episode matrix (Eq. 4): a dataset as one float tensor tau0 (E, F, T),
time along the last axis; the rows are, for each agent, its O observation
rows, A one-hot action rows and (our one extension) A legal-action rows, then
the global reward, Q_tot (reward-to-go, §3.2) and done rows: F = N (O + 2A) + 3,
zeros after each episode's end. `Normalizer` maps every row to [-1, 1] with
D_real's statistics; `matrix_to_episodes` inverts `episodes_to_matrix` (the
observation after the last step, not in Eq. 4, decodes as zeros: no learner
reads it, since the done flag stops bootstrapping).
"""
import dataclasses
import math
import os

import h5py
import numpy as np

import artifacts

FORMAT_VERSION = 1
QUALITIES = ("good", "medium", "poor")


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


def subsample(episodes, fraction, seed):
    """A random subset of whole episodes, round(fraction * E) of them (at least one).

    The paper's "original" dataset is the 3 % subset (fraction = 0.03).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = max(1, int(round(fraction * episodes.n_episodes)))
    index = np.sort(np.random.default_rng(seed).choice(episodes.n_episodes, n, replace=False))
    subset = episodes.select(index)
    returns = subset.returns()
    subset.attrs.update(return_mean=float(returns.mean()), return_std=float(returns.std()),
                        length_mean=float(subset.lengths.mean()), fraction=fraction, subsample_seed=seed)
    return subset


# ---------------------------------------------------------------------------
# The HDF5 schema: writing, reading, validating
# ---------------------------------------------------------------------------
DTYPES = {"obs": np.float32, "avail": bool, "actions": np.int64, "rewards": np.float32, "dones": bool,
          "lengths": np.int32}
ARRAYS = tuple(DTYPES)
REQUIRED_ATTRS = ("scenario", "quality", "backend", "n_agents", "obs_dim", "n_actions",
                  "epsilon", "seed", "return_mean", "return_std", "format_version")


class EpisodeWriter:
    """Appends padded episode batches to resizable, compressed HDF5 datasets."""

    def __init__(self, f, limit, n_agents, obs_dim, n_actions):
        self.count = 0
        shapes = {"obs": (limit + 1, n_agents, obs_dim), "avail": (limit + 1, n_agents, n_actions),
                  "actions": (limit, n_agents), "rewards": (limit,), "dones": (limit,), "lengths": ()}
        self.sets = {}
        for name, shape in shapes.items():
            dtype = DTYPES[name]
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


def open_dataset(path):
    """(the HDF5 file at `path`, opened for reading, its attrs); refuses a missing, unreadable or foreign file."""
    if not os.path.exists(path):
        raise artifacts.InputError(f"{path}: no such dataset file; make one with "
                                   f"`python datasets.py --scenario ... --quality ... --out {path}`")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise artifacts.InputError(f"{path}: not a readable HDF5 dataset ({err})") from None
    attrs = {k: _plain(v) for k, v in f.attrs.items()}
    missing = [k for k in REQUIRED_ATTRS if k not in attrs] + [k for k in ARRAYS if k not in f]
    if missing:
        f.close()
        raise artifacts.InputError(f"{path}: not an EAQ dataset, missing {', '.join(missing)}")
    return f, attrs


def read_attrs(path):
    """A dataset file's attrs alone (cheap: no arrays read)."""
    f, attrs = open_dataset(path)
    f.close()
    return attrs


def load_dataset(path, scenario=None, quality=None, episodes=slice(None)):
    """Read and validate a dataset file (only the slice `episodes` of it, e.g. a chunk); `scenario` / `quality`,
    when given, must match its attrs. Every problem raises an artifacts.InputError naming the file, the array
    and, for bad contents, the first bad index (counted in the whole file)."""
    f, attrs = open_dataset(path)
    with f:
        if attrs["format_version"] != FORMAT_VERSION:
            raise artifacts.InputError(f"{path}: format version {attrs['format_version']}, expected "
                                       f"{FORMAT_VERSION}; regenerate it with datasets.py")
        for name in ("actions", "lengths"):
            if not np.issubdtype(f[name].dtype, np.integer):
                raise artifacts.InputError(f"{path}: {name} has dtype {f[name].dtype}, expected integers")
        problem = storage_problem(f, episodes)
        if problem:
            raise artifacts.InputError(f"{path}: {problem}")
        try:
            # copy=False: no second copy of an array already stored in the wanted type (the obs are most of the file)
            chunk = Episodes(**{name: f[name][episodes].astype(dtype, copy=False) for name, dtype in DTYPES.items()},
                             attrs=attrs)
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


def storage_problem(f, episodes):
    """Whether the open file `f` declares arrays it does not hold, or `episodes` (a slice) that would not fit in
    the memory this machine has free; None if neither (checked before anything is read)."""
    need = 0
    for name, dtype in DTYPES.items():
        ds = f[name]
        if ds.chunks and ds.id.get_num_chunks() < math.prod(-(-n // c) for n, c in zip(ds.shape, ds.chunks)):
            return f"{name} declares shape {ds.shape} but the file holds data for only part of it (damaged?)"
        need += len(range(*episodes.indices(len(ds)))) * math.prod(ds.shape[1:]) * np.dtype(dtype).itemsize
    free = artifacts.available_memory()
    if need > free:
        return (f"reading it takes {need / 2 ** 30:.1f} GiB, more than the {free / 2 ** 30:.1f} GiB of memory free; "
                f"read it in chunks (data.dataset_chunks) or on a larger machine")
    return None


CHUNK_EPISODES = 512  # episodes read at a time by dataset_chunks (a few MB to ~100 MB of padded arrays)


def dataset_chunks(path, chunk_episodes=CHUNK_EPISODES):
    """A dataset's episodes read and validated `chunk_episodes` at a time: yields Episodes. For consumers that
    repack them (`learner.EpisodeBuffer`): a whole file's padded arrays are never in memory at once."""
    first = load_dataset(path, episodes=slice(0, chunk_episodes))
    yield first
    with h5py.File(path, "r") as f:
        total = len(f["lengths"])
    for start in range(chunk_episodes, total, chunk_episodes):
        yield load_dataset(path, episodes=slice(start, start + chunk_episodes))


def _plain(value):
    """h5py attribute -> plain Python value."""
    return value.decode() if isinstance(value, bytes) else value.item() if isinstance(value, np.generic) else value


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


def layout_of(episodes):
    """The row layout of the Eq. 4 matrix of these episodes."""
    return FeatureLayout(episodes.n_agents, episodes.obs_dim, episodes.n_actions)


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

    At the first done above 0.5 (`ended` True), or else at the row's argmax
    (`ended` False): x0-prediction often blurs the terminal spike into a low
    peak at the right step, so the row is decoded as a one-hot over time.
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
    """Per-row affine map of the Eq. 4 matrix to [-1, 1], fitted on D_real: lo / hi are each row's minimum and
    maximum, padding included (so padded zeros stay inside). A row constant in D_real (lo == hi) maps to -1, and
    whatever the model generates for it decodes back to that constant."""

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
