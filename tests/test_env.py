"""env.py: the batched simulator interface (SMAX by default, SMAC adapter)."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import datasets
import env as envlib
from experiments import heuristic_data


def random_legal(avail, rng):
    """A uniformly random legal action per (env, agent): avail (B, N, A) -> (B, N)."""
    scores = rng.random(avail.shape) * avail
    return scores.argmax(axis=-1)


def play(env, rng):
    """Play random legal actions until every episode ends; returns per-step records."""
    obs, avail = env.reset()
    records = [(obs, avail)]
    for _ in range(env.episode_limit):
        obs, avail, reward, done, won = env.step(random_legal(avail, rng))
        records.append((obs, avail, reward, done, won))
        if done.all():
            break
    return records


@pytest.mark.parametrize("scenario, n_agents, n_enemies", [("3m", 3, 3), ("2s3z", 5, 5)])
def test_shapes_and_legal_masks(scenario, n_agents, n_enemies):
    env = envlib.make_env(scenario, n_envs=4, seed=0)
    assert (env.n_agents, env.n_actions, env.episode_limit) == (n_agents, 5 + n_enemies, 100)
    obs, avail = env.reset()
    assert obs.shape == (4, n_agents, env.obs_dim) and obs.dtype == np.float32
    assert avail.shape == (4, n_agents, env.n_actions) and avail.dtype == bool
    assert avail[..., 4].all(), "stop is always legal"
    assert avail[..., :4].all(), "every living agent may move at the start"
    assert not avail[..., 5:].any(), "nobody is in range at the start"
    obs, avail, reward, done, won = env.step(np.full((4, n_agents), 4))
    assert reward.shape == done.shape == won.shape == (4,)


def test_same_seed_same_rollout():
    a = play(envlib.make_env("3m", n_envs=3, seed=7), np.random.default_rng(1))
    b = play(envlib.make_env("3m", n_envs=3, seed=7), np.random.default_rng(1))
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for xa, xb in zip(ra, rb):
            np.testing.assert_array_equal(xa, xb)
    c = play(envlib.make_env("3m", n_envs=3, seed=8), np.random.default_rng(1))
    assert not np.array_equal(a[0][0], c[0][0]), "another seed gives other start positions"


def test_finished_episodes_stay_finished_and_dead_agents_only_stop():
    env = envlib.make_env("3m", n_envs=8, seed=0)
    records = play(env, np.random.default_rng(0))
    dones = np.stack([r[3] for r in records[1:]])          # (steps, B)
    rewards = np.stack([r[2] for r in records[1:]])
    for b in range(8):
        end = np.argmax(dones[:, b])
        assert dones[end:, b].all()
        assert (rewards[end + 1:, b] == 0).all()
    obs, avail = records[-1][0], records[-1][1]
    dead = ~avail[..., :4].any(axis=-1)                    # (B, N) agents that cannot move
    assert dead.any(), "random play kills somebody within an episode"
    assert (obs[dead] == 0).all()
    assert avail[dead][:, 4].all() and avail[dead].sum(axis=-1).max() == 1


def test_time_limit_ends_every_episode_with_a_done():
    env = envlib.make_env("3m", n_envs=4, seed=0)
    env.episode_limit = 3            # read when the step is first compiled
    obs, avail = env.reset()
    for t in range(3):
        obs, avail, reward, done, won = env.step(np.full((4, 3), 4))   # everybody stops
        assert done.all() == (t == 2)


def test_heuristic_wins_some_3m_games_and_returns_stay_on_smac_scale():
    env = envlib.make_env("3m", n_envs=32, seed=0)
    episodes, won = datasets.collect_batch(env, heuristic_data.HeuristicPolicy(env, 0.0, seed=1))
    returns = episodes.returns()
    assert won.sum() >= 5
    assert returns.max() <= envlib.MAX_RETURN + 1e-4
    assert (returns[won] > 10.0).all(), "a win carries the bonus of 10"


def test_unknown_scenario_and_backend_list_the_choices():
    with pytest.raises(ValueError, match="unknown scenario 'nope'.*3m, 5m_vs_6m"):
        envlib.make_env("nope")
    with pytest.raises(ValueError, match="unknown backend 'sc3'.*smax, smac"):
        envlib.make_env("3m", backend="sc3")


def test_the_diffusion_side_imports_no_simulator():
    """eaq.py (and the command lines' modules) import jaxmarl only when a map is first checked or built,
    so the diffusion model runs where jaxmarl is not installed (a GPU machine, say)."""
    code = ("import sys, eaq, train, evaluate; loaded = 'jaxmarl' in sys.modules; "
            "import env; env.check_scenario('3m'); print(loaded, 'jaxmarl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
    assert out.split()[-2:] == ["False", "True"]


def test_smac_backend_without_starcraft_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "smac", None)
    monkeypatch.setitem(sys.modules, "smac.env", None)
    with pytest.raises(ImportError, match="SMAC3, an unrelated optimiser"):
        envlib.make_env("3m", backend="smac")


class FakeStarCraft2Env:
    """Stands in for SMAC's StarCraft2Env: 2 agents, 2 enemies, ends after `seed + 2` steps."""

    def __init__(self, map_name, seed):
        self.limit, self.t = seed + 2, 0

    def get_env_info(self):
        return {"n_agents": 2, "n_actions": 8, "obs_shape": 3, "episode_limit": 10}

    def reset(self):
        self.t = 0

    def get_obs(self):
        return [np.full(3, self.t, dtype=np.float32)] * 2

    def get_avail_actions(self):
        return [[1] * 8, [0, 1] + [0] * 6]

    def step(self, actions):
        self.t += 1
        ended = self.t >= self.limit
        return 1.0, ended, {"battle_won": ended}

    def close(self):
        pass


def test_smac_adapter_batches_and_freezes_finished_envs(monkeypatch):
    fake = types.ModuleType("smac.env")
    fake.StarCraft2Env = FakeStarCraft2Env
    monkeypatch.setitem(sys.modules, "smac", types.ModuleType("smac"))
    monkeypatch.setitem(sys.modules, "smac.env", fake)
    env = envlib.make_env("3m", backend="smac", n_envs=2, seed=0)   # episodes of 2 and 3 steps
    assert (env.n_agents, env.n_enemies, env.obs_dim, env.n_actions) == (2, 2, 3, 8)
    obs, avail = env.reset()
    assert obs.shape == (2, 2, 3) and avail.shape == (2, 2, 8) and avail.dtype == bool
    totals, steps = np.zeros(2), 0
    while True:
        obs, avail, reward, done, won = env.step(np.ones((2, 2), dtype=int))
        totals += reward
        steps += 1
        if done.all():
            break
    assert steps == 3
    np.testing.assert_array_equal(totals, [2.0, 3.0])
    np.testing.assert_array_equal(obs[:, 0, 0], [2.0, 3.0]), "a finished env keeps its last obs"
    assert won.all()


def test_smax_observation_layout_is_read_from_its_size():
    starts, width = envlib.smax_enemy_blocks(3, 3, 75)                 # 3m: 6 unit-type bits
    assert list(starts) == [26, 39, 52] and width == 13
    assert envlib.smax_enemy_blocks(3, 3, 76) is None
    for scenario, n_enemies in (("3m", 3), ("2s3z", 5)):
        env = envlib.make_env(scenario, n_envs=2, seed=0)
        starts, width = envlib.smax_enemy_blocks(env.n_agents, n_enemies, env.obs_dim)
        assert starts[-1] + width == env.obs_dim - (width - envlib.SMAX_UNIT_FEATURES + envlib.SMAX_OWN_FEATURES)
        obs, _ = env.reset()
        own_bits = obs[..., starts[-1] + width + envlib.SMAX_OWN_FEATURES:]
        assert (own_bits.sum(-1) == 1).all(), "every living agent's own unit-type bits are one-hot"


def test_smax_legal_actions_by_hand_and_on_recorded_play():
    """SMAX's rule read off observations: by hand on 3m's layout, then every legal mask of a 2s3z rollout."""
    obs = np.zeros((3, 75), np.float32)                 # 3m: enemy blocks at 26, 39, 52; own type bits 69..74
    obs[:, 69] = 1.0                                    # every agent alive, a marine (range 5 / sight 9)
    obs[0, 26 + 7], obs[0, 27:29] = 1.0, [0.5, 0.2]     # agent 0 sees enemy 0 at |(dx, dy)| 0.54 < 5/9: in range
    obs[0, 39 + 7], obs[0, 40:42] = 1.0, [0.5, 0.4]     # and enemy 1 at 0.64 > 5/9: seen, out of range
    obs[1, 27:29] = [0.1, 0.1]                          # an offset without a type bit: not seen
    obs[2, 69] = 0.0                                    # agent 2 is dead (its own block is zeros)
    legal = envlib.smax_legal_actions(obs, 3)
    np.testing.assert_array_equal(legal, [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0],
                                          [0, 0, 0, 0, 1, 0, 0, 0]])
    env = envlib.make_env("2s3z", n_envs=8, seed=0)     # two unit types, two ranges
    obs, avail = env.reset()
    rng = np.random.default_rng(0)
    for _ in range(30):
        np.testing.assert_array_equal(envlib.smax_legal_actions(obs, 5), avail)
        actions = np.array([[rng.choice(np.flatnonzero(a)) for a in env_avail] for env_avail in avail])
        obs, avail = env.step(actions)[:2]


def test_a_restored_stream_state_replays_the_same_episodes():
    env = envlib.make_env("3m", n_envs=4, seed=0)
    first, _ = env.reset()
    state = env.stream_state()
    second, _ = env.reset()
    assert not np.array_equal(first, second), "successive batches start from other states"
    env.set_stream_state(state)
    again, _ = env.reset()
    np.testing.assert_array_equal(again, second)
    fresh = envlib.make_env("3m", n_envs=4, seed=0)
    fresh.set_stream_state(state)
    np.testing.assert_array_equal(fresh.reset()[0], second)


def test_importing_smax_leaves_the_callers_streams_in_place():
    """jaxmarl's import points sys.stdout and sys.stderr back at the process's own (which breaks pytest's
    capture and any redirect); env restores what the caller had. A fresh process, so jaxmarl is not yet imported."""
    code = ("import io, sys, env\n"
            "out, err = io.StringIO(), io.StringIO()\n"
            "sys.stdout, sys.stderr = out, err\n"
            "env.smax_scenarios()\n"
            "ok = sys.stdout is out and sys.stderr is err\n"
            "sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__\n"
            "print('kept' if ok else 'replaced')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.stdout.strip() == "kept", result.stderr[-500:]
