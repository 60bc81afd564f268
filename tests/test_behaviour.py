"""behaviour.py and ippo.py: IPPO behaviour policies, their checkpoints, the picking rule, and datasets made
from them."""
import json
import os
import shutil

import numpy as np
import pytest

import artifacts
import behaviour
import ippo
import data
import datasets
import env as envlib


def record(seed, steps, ret):
    return {"seed": seed, "env_steps": steps, "return_mean": ret}


def test_pick_checkpoints_takes_each_seeds_closest_return_to_the_target():
    records = [record(0, 0, 1.0), record(0, 100, 4.0), record(0, 200, 6.0), record(0, 300, 15.0),
               record(1, 0, 0.5), record(1, 100, 5.5), record(1, 200, 3.5),     # tie 5.5 / 3.5: the earlier
               record(2, 100, 2.0), record(2, 0, 1.0)]                          # never reaches 4.5: its best
    picks = behaviour.pick_checkpoints(records, target=4.5)
    assert {s: p["env_steps"] for s, p in picks.items()} == {0: 100, 1: 100, 2: 100}
    assert picks[0]["reached"] and picks[1]["reached"] and not picks[2]["reached"]


def test_gae_by_hand():
    import jax.numpy as jnp
    values = jnp.array([[[1.0]], [[2.0]]])                      # (S=2, E=1, N=1)
    rewards = jnp.array([[1.0], [3.0]])
    dones = jnp.array([[False], [True]])
    adv, target = ippo.gae(values, rewards, dones, jnp.array([[10.0]]), gamma=0.5, lam=0.5)
    a1 = 3.0 - 2.0                                              # terminal: no bootstrap from 10
    a0 = (1.0 + 0.5 * 2.0 - 1.0) + 0.5 * 0.5 * a1
    np.testing.assert_allclose(np.asarray(adv)[:, 0, 0], [a0, a1], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(target)[:, 0, 0], [a0 + 1.0, a1 + 2.0], rtol=1e-6)


def test_the_central_critic_sees_every_agents_observation_and_its_own_id():
    obs = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)            # (E=2, N=3, O=2)
    central = np.asarray(ippo.critic_inputs(obs, "central"))                 # (2, 3, 3*2 + 3)
    assert central.shape == (2, 3, 9)
    for e in range(2):
        for n in range(3):
            np.testing.assert_array_equal(central[e, n], np.concatenate([obs[e].ravel(), np.eye(3)[n]]))
    np.testing.assert_array_equal(np.asarray(ippo.critic_inputs(obs, "agent")), np.asarray(ippo.agent_inputs(obs)))


@pytest.mark.parametrize("critic", ippo.CRITICS)
def test_a_short_ppo_run_beats_its_untrained_policy(critic):
    """A few PPO updates on 3m, IPPO's critic or MAPPO's: the evaluated (ε-greedy) return rises above the
    initial policy's."""
    import jax
    trainer = ippo.Trainer("3m", n_envs=32, n_steps=64, lr=4e-3, clip=0.05, max_grad_norm=0.25,
                           updates_per_interval=12, intervals=1, eval_episodes=64, critic=critic)
    state = jax.tree.map(lambda *xs: jax.numpy.stack(xs), *[trainer.init(s) for s in (0, 1)])
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    before, _ = trainer.evaluate(state["params"]["actor"], keys)
    state, losses = trainer.run_interval(state)
    after, _ = trainer.evaluate(state["params"]["actor"], keys)
    assert np.isfinite(np.asarray(losses)).all()
    assert float(np.mean(after)) > float(np.mean(before)) + 2.0, (np.mean(before, 1), np.mean(after, 1))


def tiny_actor(obs_dim=75, n_agents=3, n_actions=8, hidden=4, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [obs_dim + n_agents, hidden, hidden, n_actions]
    return [{"w": rng.normal(size=(a, b)).astype(np.float32), "b": np.zeros(b, np.float32)}
            for a, b in zip(sizes[:-1], sizes[1:])]


META = {"scenario": "3m", "n_agents": 3, "obs_dim": 75, "n_actions": 8, "seed": 0, "env_steps": 0}


def test_a_saved_policy_loads_back_exactly(tmp_path):
    path = str(tmp_path / "p.safetensors")
    actor = tiny_actor()
    behaviour.save_policy(path, actor, {**META, "return_mean": 1.5})
    layers, metadata = behaviour.load_policy(path)
    assert metadata["return_mean"] == 1.5 and metadata["scenario"] == "3m"
    for a, b in zip(actor, layers):
        np.testing.assert_array_equal(a["w"], b["w"])


@pytest.mark.parametrize("damage, message", [
    ("truncate", "not a readable behaviour-policy file"),
    ("garbage", "not a readable behaviour-policy file"),
    ("nan", "actor holds NaN or inf"),
    ("missing", "no such behaviour-policy file"),
])
def test_a_damaged_policy_file_is_refused_with_the_command_that_rebuilds_it(tmp_path, damage, message):
    folder = tmp_path / "3m"
    folder.mkdir()
    path = folder / "poor-seed0.safetensors"
    actor = tiny_actor()
    if damage == "nan":
        actor[1]["w"][0, 0] = np.nan
    behaviour.save_policy(str(path), actor, META)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:50])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "missing":
        path.unlink()
    with pytest.raises(artifacts.InputError, match=message) as err:
        behaviour.load_policy(str(path))
    assert "python behaviour.py --scenario 3m" in str(err.value) and "\n" not in str(err.value)


def test_a_policy_for_another_map_is_refused(tmp_path):
    path = str(tmp_path / "p.safetensors")
    behaviour.save_policy(path, tiny_actor(obs_dim=10), {**META, "scenario": "8m", "obs_dim": 10})
    env = envlib.make_env("3m", n_envs=2, seed=0)
    with pytest.raises(artifacts.InputError, match="a policy for 8m"):
        behaviour.TrainedPolicy(path, env)


@pytest.mark.parametrize("scenario", ["3m", "5m_vs_6m", "8m", "2s3z", "3s5z_vs_3s6z"])
def test_the_shipped_policies_match_their_manifest(scenario):
    for quality in behaviour.QUALITIES:
        entries = behaviour.shipped_policies(scenario, quality)
        assert len(entries) == 4 and len({e["seed"] for e in entries}) == 4
        for e in entries:
            path = os.path.join(behaviour.POLICY_DIR, e["file"])
            assert behaviour.file_sha256(path) == e["sha256"]
            _, metadata = behaviour.load_policy(path)
            assert metadata["env_steps"] == e["env_steps"] and metadata["quality"] == quality
            assert metadata["scenario"] == scenario


def test_datasets_from_shipped_policies_are_deterministic_mix_all_seeds_and_say_so(tmp_path):
    a = datasets.generate_dataset("3m", "poor", 10, seed=3, path=str(tmp_path / "a.h5"), n_envs=4, progress=False)
    datasets.generate_dataset("3m", "poor", 10, seed=3, path=str(tmp_path / "b.h5"), n_envs=4, progress=False)
    first, again = data.load_dataset(str(tmp_path / "a.h5")), data.load_dataset(str(tmp_path / "b.h5"))
    for field in data.ARRAYS:
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    entries = behaviour.shipped_policies("3m", "poor")
    assert a["behaviour"] == datasets.TRAINED and a["epsilon"] == behaviour.EPSILON == 0.05
    assert json.loads(a["policy_files"]) == [e["file"] for e in entries]
    assert json.loads(a["policy_sha256"]) == [e["sha256"] for e in entries]
    other = datasets.generate_dataset("3m", "poor", 10, seed=4, path=str(tmp_path / "c.h5"), n_envs=4, progress=False)
    assert other["return_mean"] != a["return_mean"] or other["length_mean"] != a["length_mean"]


def test_a_policy_that_differs_from_its_manifest_is_refused(tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(behaviour.POLICY_DIR, policies)
    entry = behaviour.shipped_policies("3m", "poor", str(policies))[1]
    actor, metadata = behaviour.load_policy(str(policies / entry["file"]))
    actor[0]["b"] += 0.5                                          # a valid file, but not the shipped one
    behaviour.save_policy(str(policies / entry["file"]), actor, metadata)
    with pytest.raises(artifacts.InputError, match=r"contents differ from the manifest's sha256 .*: the file and the "
                                                    r"manifest disagree; restore both with `git checkout -- "):
        datasets.generate_dataset("3m", "poor", 4, seed=0, path=str(tmp_path / "d.h5"), n_envs=4, progress=False,
                                  policy_dir=str(policies))
    assert not (tmp_path / "d.h5").exists()


def test_a_map_without_shipped_policies_says_how_to_make_them(tmp_path):
    with pytest.raises(artifacts.InputError, match="python behaviour.py --scenario 25m"):
        datasets.generate_dataset("25m", "poor", 4, seed=0, path=str(tmp_path / "e.h5"), progress=False)


def test_bad_training_flags_are_refused(capsys):
    for argv, message in ((["--lr", "nan"], "--lr must be a finite positive number"),
                          (["--checkpoint-every", "1000"], "--checkpoint-every must be a multiple of"),
                          (["--seeds", "1", "1"], "--seeds must be distinct"),
                          (["--scenario", "4m"], "unknown scenario")):
        with pytest.raises(SystemExit):
            behaviour.parse_args(argv)
        assert message in capsys.readouterr().err
