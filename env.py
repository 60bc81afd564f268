"""The simulator behind one small batched interface (paper §4.3).

The paper evaluates on SMAC (StarCraft II). StarCraft II cannot be installed
on every machine, so the default backend here is SMAX from `jaxmarl`: a JAX
re-implementation of SMAC with the same maps, a heuristic enemy, legal-action
masks and `jit`/`vmap` for fast batched rollouts on a CPU. The original SMAC
(`StarCraft2Env`) is available as `backend="smac"` when that package and the
game are installed.

Both backends expose the same numpy interface, B environments at once:

    env = make_env("3m", backend="smax", n_envs=B, seed=0)
    obs, avail = env.reset()                      # (B, N, O) float32, (B, N, A) bool
    obs, avail, reward, done, won = env.step(a)   # a: (B, N) int
                                                  # reward (B,) float32, done/won (B,) bool

`won` is True once the episode has ended in a victory (all enemies dead, an
ally alive) and stays True until the next reset.

An environment whose episode has ended stays ended until the next `reset()`:
it keeps returning its last observation, reward 0 and done=True, so a batch
can be stepped until its slowest episode finishes.

Rewards are on SMAC's scale. SMAX's team reward per episode is the damage
fraction dealt (at most 1) plus a win bonus of 1; we multiply it by
`REWARD_SCALE` = 10 so that, as in SMAC, the best episode return is 20 and
"normalised return" = return / 20.

SMAX facts the rest of the code relies on: actions are 4 moves, stop (index
4), then one attack per enemy (index 5 on), there is no SMAC-style no-op;
dead agents observe all zeros and may only stop; episodes end after
`max_steps` = 100 steps at the latest (that end is a done as well); an
observation is laid out as `smax_enemy_blocks` reads it, and an enemy loses
health only when an agent shoots it (`data.damage_counts` checks datasets
against that).
"""
import contextlib
import functools
import inspect
import os
import sys

import numpy as np

BACKENDS = ("smax", "smac")
REWARD_SCALE = 10.0  # SMAX team return <= 2.0  ->  SMAC-scale return <= 20
MAX_RETURN = 20.0    # normalised return = return / MAX_RETURN
PAPER_SCENARIOS = ("3m", "5m_vs_6m", "8m", "2s3z", "3s5z_vs_3s6z")
# The first attack action of each backend's action layout: SMAX has 4 moves
# and stop before its attacks, SMAC no-op, stop and 4 moves.
FIRST_ATTACK_ACTION = {"smax": 5, "smac": 6}
# SMAX's observation of agent i (jaxmarl's `get_obs`): one block per other
# unit, allies first, then enemies, each [health, dx, dy, last move x, last
# move y, last target, weapon cooldown, unit-type one-hot (b bits)] and all
# zeros unless i sees that unit and both are alive; then i's own block
# [health, x, y, weapon cooldown, unit-type one-hot], all zeros once i is dead.
# Health is a fraction of the unit type's maximum.
SMAX_UNIT_FEATURES = 7
SMAX_OWN_FEATURES = 4


def smax_enemy_blocks(n_agents, n_enemies, obs_dim):
    """Where each enemy's block starts in a SMAX observation and its width:
    -> (starts (K,) int array, width), or None if obs_dim fits no SMAX layout.

    The number of unit-type bits b follows from
    obs_dim = (N - 1 + K)(7 + b) + 4 + b. An enemy block holds the enemy's
    health at `start` and its unit-type bits at `start + 7 : start + width`.
    """
    units = n_agents - 1 + n_enemies
    bits, rest = divmod(obs_dim - SMAX_OWN_FEATURES - SMAX_UNIT_FEATURES * units, units + 1)
    if rest or bits < 1:
        return None
    width = SMAX_UNIT_FEATURES + bits
    return (n_agents - 1 + np.arange(n_enemies)) * width, width


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1: jaxmarl prints a banner on import and resets
    `sys.stdout` while doing so, which `contextlib.redirect_stdout` cannot catch.
    Its import also sets `sys.stdout` and `sys.stderr` back to the process's own
    streams, so whatever the caller had put there (pytest's capture) is restored."""
    sys.stdout.flush()
    streams = sys.stdout, sys.stderr
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
        sys.stdout, sys.stderr = streams


def _import_smax():
    """Import jaxmarl's SMAX (quietly)."""
    with _quiet_stdout():
        from jaxmarl.environments.smax import smax_env
        from jaxmarl.environments.smax.heuristic_enemy_smax_env import HeuristicEnemySMAX
    return smax_env, HeuristicEnemySMAX


@functools.cache
def smax_scenarios():
    """SMAX's fixed-unit maps, the paper's five first; read from jaxmarl on first use, so that modules which
    only import this one (the diffusion side: eaq.py, fidelity.py) need no simulator."""
    smax_env, _ = _import_smax()
    fixed = [name for name, s in smax_env.MAP_NAME_TO_SCENARIO.items()
             if not s.smacv2_unit_type_generation]
    return tuple(PAPER_SCENARIOS) + tuple(sorted(set(fixed) - set(PAPER_SCENARIOS)))


@functools.cache
def smax_range_ratios():
    """(unit types,): each unit type's attack range over its sight range, jaxmarl's SMAX defaults. SMAX's
    observations give other units' offsets in sight ranges, so an enemy is shootable where |(dx, dy)| < this."""
    smax_env, _ = _import_smax()
    defaults = inspect.signature(smax_env.SMAX.__init__).parameters
    return (np.asarray(defaults["unit_type_attack_ranges"].default)
            / np.asarray(defaults["unit_type_sight_ranges"].default))


def smax_legal_actions(obs, n_enemies):
    """SMAX's legal actions read off its observations: obs (..., N, O) -> (..., N, 5 + K) bool.

    jaxmarl's rule: stop is always legal; an agent that is alive (its own
    block's unit-type bit set; the block is all zeros once it dies) may move
    and may attack enemy k when k is alive and within its attack range. An
    enemy's block is non-zero only when the agent sees it alive, and its
    offset is in units of the agent's sight range, so the range test is
    |(dx, dy)| < attack range / sight range of the agent's unit type.
    """
    n_agents, obs_dim = obs.shape[-2], obs.shape[-1]
    starts, width = smax_enemy_blocks(n_agents, n_enemies, obs_dim)
    own_types = obs[..., obs_dim - (width - SMAX_UNIT_FEATURES):]               # (..., N, b)
    alive = own_types.max(axis=-1) > 0.5
    ratio = smax_range_ratios()[own_types.argmax(axis=-1)]                       # (..., N)
    blocks = np.stack([obs[..., s:s + width] for s in starts], axis=-2)          # (..., N, K, width)
    seen = blocks[..., SMAX_UNIT_FEATURES:].max(axis=-1) > 0.5
    in_range = np.linalg.norm(blocks[..., 1:3], axis=-1) < ratio[..., None]
    moves = np.repeat(alive[..., None], 4, axis=-1)
    stop = np.ones_like(alive)[..., None]
    return np.concatenate([moves, stop, alive[..., None] & seen & in_range], axis=-1)


def check_scenario(scenario, backend="smax"):
    """Raise a one-line ValueError for an unknown scenario or backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if scenario not in smax_scenarios():
        raise ValueError(f"unknown scenario {scenario!r}; choose one of: {', '.join(smax_scenarios())}")


def require_scenario(parser, scenario, backend="smax"):
    """check_scenario as a one-line argparse error (for the command lines)."""
    try:
        check_scenario(scenario, backend)
    except ValueError as err:
        parser.error(str(err))


def make_env(scenario, backend="smax", n_envs=1, seed=0):
    """Build `n_envs` copies of `scenario` on `backend` ("smax" or "smac")."""
    check_scenario(scenario, backend)
    if n_envs < 1:
        raise ValueError(f"n_envs must be at least 1, got {n_envs}")
    if backend == "smax":
        return SmaxEnv(scenario, n_envs, seed)
    return SmacEnv(scenario, n_envs, seed)


class SmaxEnv:
    """B copies of a SMAX map against SMAX's heuristic enemy, stepped in one jitted call.

    `reset` and `step` are compiled once per scenario with `jax.vmap` over the
    batch; the environment state stays on the JAX side and only the arrays of
    the interface cross to numpy, all agents stacked, once per step.
    """

    backend = "smax"
    first_attack_action = FIRST_ATTACK_ACTION["smax"]  # 4 moves, stop, then one attack per enemy

    def __init__(self, scenario, n_envs, seed):
        import jax
        smax_env, HeuristicEnemySMAX = _import_smax()
        self.scenario = scenario
        self.n_envs = n_envs
        self.smax = HeuristicEnemySMAX(scenario=smax_env.map_name_to_scenario(scenario))
        self.n_agents = self.smax.num_allies
        self.n_enemies = self.smax.num_enemies
        self.obs_dim = self.smax.obs_size
        self.n_actions = self.smax.num_ally_actions
        self.episode_limit = self.smax.max_steps
        self._key = jax.random.PRNGKey(seed)
        self._reset_batch = jax.jit(jax.vmap(self.reset_one))
        self._step_batch = jax.jit(jax.vmap(self.step_one))
        self._state = None
        self._finished = None

    # ---- one environment, pure JAX (vmapped above; behaviour.py trains on them) ----
    def _stack(self, per_agent):
        """Dict keyed by agent name -> array stacked over allies, (N, ...)."""
        import jax.numpy as jnp
        return jnp.stack([per_agent[a] for a in self.smax.agents])

    def _obs_avail(self, state):
        obs = self._stack(self.smax.get_obs(state))                           # (N, O)
        avail = self._stack(self.smax.get_avail_actions(state)).astype(bool)  # (N, A)
        return obs, avail

    def reset_one(self, key):
        """One new episode: key -> (state, obs (N, O), avail (N, A)); pure JAX."""
        _, state = self.smax.reset(key)
        obs, avail = self._obs_avail(state)
        return state, obs, avail

    def step_one(self, key, state, finished, actions):
        """One SMAX step, pure JAX: -> (state, obs, avail, reward, done, won).

        An already `finished` episode is left untouched (reward 0, done).
        """
        import jax
        import jax.numpy as jnp
        acts = {a: actions[i] for i, a in enumerate(self.smax.agents)}
        _, new_state, rewards, dones, _ = self.smax.step_env(key, state, acts)
        state = jax.tree.map(lambda old, new: jnp.where(finished, old, new), state, new_state)
        alive = state.state.unit_alive
        won = ~jnp.any(alive[self.n_agents:]) & jnp.any(alive[:self.n_agents])
        reward = jnp.where(finished, 0.0, rewards[self.smax.agents[0]] * REWARD_SCALE)
        # SMAX flags the time limit one step late (it tests the step counter before
        # incrementing it), so the limit of max_steps steps is enforced here.
        done = finished | dones["__all__"] | (state.state.step >= self.episode_limit)
        obs, avail = self._obs_avail(state)
        return state, obs, avail, reward, done, won & done

    # ---- the batched numpy interface ---------------------------------------
    def _split(self):
        import jax
        self._key, sub = jax.random.split(self._key)
        return jax.random.split(sub, self.n_envs)

    def reset(self):
        """Start B new episodes: obs (B, N, O) float32, avail (B, N, A) bool."""
        import jax.numpy as jnp
        self._state, obs, avail = self._reset_batch(self._split())
        self._finished = jnp.zeros(self.n_envs, dtype=bool)
        return np.array(obs, dtype=np.float32), np.array(avail)

    def step(self, actions):
        """Apply joint actions (B, N) -> obs, avail, reward (B,), done (B,), won (B,)."""
        import jax.numpy as jnp
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        actions = jnp.asarray(np.asarray(actions, dtype=np.int32))
        self._state, obs, avail, reward, done, won = self._step_batch(
            self._split(), self._state, self._finished, actions)
        self._finished = done
        return (np.array(obs, dtype=np.float32), np.array(avail),
                np.array(reward, dtype=np.float32), np.array(done), np.array(won))

    def stream_state(self):
        """Where this batch's seeded stream of episodes stands: the JAX key's two uint32, as Python ints.

        `set_stream_state` puts it back, so that a resumed learner's later
        evaluations see the episodes an uninterrupted run would have seen.
        """
        return [int(word) for word in np.asarray(self._key, dtype=np.uint32)]

    def set_stream_state(self, state):
        import jax.numpy as jnp
        self._key = jnp.asarray(np.array(state, dtype=np.uint32))
        self._state = self._finished = None

    def fork(self, seed):
        """A second batch of the same map with its own seeded episodes, sharing the compiled functions."""
        import copy
        import jax
        other = copy.copy(self)
        other._key, other._state, other._finished = jax.random.PRNGKey(seed), None, None
        return other

    def close(self):
        self._state = None


SMAC_INSTALL_HINT = (
    "backend 'smac' needs StarCraft II and the original SMAC package: "
    "pip install git+https://github.com/oxwhirl/smac.git, install the game and set SC2PATH "
    "(the PyPI package named 'smac' is SMAC3, an unrelated optimiser); "
    "or use --backend smax, which needs neither")


class SmacEnv:
    """B StarCraft II SMAC environments (`StarCraft2Env`) behind the same interface.

    SMAC's rewards are already on the 0..20 scale; its actions are no-op
    (0), stop (1), 4 moves, then one attack per enemy (index 6 on).
    """

    backend = "smac"
    first_attack_action = FIRST_ATTACK_ACTION["smac"]

    def __init__(self, scenario, n_envs, seed):
        try:
            from smac.env import StarCraft2Env
        except ImportError as err:
            raise ImportError(f"{SMAC_INSTALL_HINT} ({err})") from None
        self.scenario = scenario
        self.n_envs = n_envs
        self.envs = [StarCraft2Env(map_name=scenario, seed=seed + i) for i in range(n_envs)]
        info = self.envs[0].get_env_info()
        self.n_agents = info["n_agents"]
        self.n_enemies = info["n_actions"] - self.first_attack_action
        self.obs_dim = info["obs_shape"]
        self.n_actions = info["n_actions"]
        self.episode_limit = info["episode_limit"]
        self._finished = np.ones(n_envs, dtype=bool)
        self._won = np.zeros(n_envs, dtype=bool)
        self._obs = self._avail = None

    def _observe(self, env):
        obs = np.asarray(env.get_obs(), dtype=np.float32)    # (N, O)
        avail = np.asarray(env.get_avail_actions()) > 0      # (N, A)
        return obs, avail

    def reset(self):
        try:
            for env in self.envs:
                env.reset()
        except Exception as err:
            raise RuntimeError(f"StarCraft II could not start: {err}; {SMAC_INSTALL_HINT}") from None
        self._obs, self._avail = map(np.stack, zip(*(self._observe(e) for e in self.envs)))
        self._finished = np.zeros(self.n_envs, dtype=bool)
        self._won = np.zeros(self.n_envs, dtype=bool)
        return self._obs.copy(), self._avail.copy()

    def step(self, actions):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        reward = np.zeros(self.n_envs, dtype=np.float32)
        for b, env in enumerate(self.envs):
            if self._finished[b]:
                continue
            r, terminated, info = env.step(actions[b].tolist())
            reward[b] = r
            self._won[b] = bool(info.get("battle_won", False))
            self._finished[b] = terminated
            self._obs[b], self._avail[b] = self._observe(env)
        return (self._obs.copy(), self._avail.copy(), reward,
                self._finished.copy(), self._won.copy())

    def stream_state(self):
        """None: StarCraft II's random state cannot be read back, so a run evaluated here cannot resume."""
        return None

    def fork(self, seed):
        """Another batch of StarCraft II games of the same map, seeded with `seed`."""
        return SmacEnv(self.scenario, self.n_envs, seed)

    def close(self):
        for env in self.envs:
            env.close()
