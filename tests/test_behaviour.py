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


def gru_actor(seed=0, in_dim=5, hidden=3, n_actions=4):
    import jax
    return ippo.init_actor(jax.random.PRNGKey(seed), in_dim, hidden, n_actions, "gru")


def test_the_gru_actor_remembers_within_a_game_and_forgets_at_its_start():
    """Replaying a rollout (minibatch_logits) gives the logits of stepping it, memory emptied where a game starts:
    an input changed before a start changes nothing after it, and without a start it changes what follows."""
    import jax.numpy as jnp
    actor, rng = gru_actor(), np.random.default_rng(0)
    S, B, N = 6, 2, 3
    inputs = jnp.asarray(rng.normal(size=(S, B, N, 5)), jnp.float32)
    avail = jnp.asarray(rng.random((S, B, N, 4)) < 0.8).at[..., 0].set(True)
    first = jnp.zeros((S, B), bool).at[0].set(True).at[3, 0].set(True)       # game 0 restarts at step 3
    h0 = jnp.asarray(rng.normal(size=(B, N, 3)), jnp.float32)

    def stepped(inputs):
        h, out = h0, []
        for t in range(S):
            h, logits = ippo.actor_step(actor, ippo.forget_at_start(h, first[t]), inputs[t], avail[t])
            out.append(logits)
        return np.stack(out)

    batch = {"inputs": inputs, "avail": avail, "first": first, "h0": h0}
    replayed = np.asarray(ippo.minibatch_logits(actor, batch))
    np.testing.assert_allclose(replayed, stepped(inputs), rtol=1e-5, atol=1e-5)
    assert (replayed[~np.asarray(avail)] == ippo.ILLEGAL).all()
    changed = stepped(inputs.at[1].add(1.0))                                   # step 1 of both games
    np.testing.assert_allclose(changed[3:, 0], replayed[3:, 0], rtol=1e-5, atol=1e-5)   # game 0 restarted
    assert np.abs(changed[3:, 1] - replayed[3:, 1]).max() > 1e-3                          # game 1 remembers
    assert ippo.memory_size(actor) == 3 and ippo.memory_size(tiny_actor()) == 0


@pytest.mark.parametrize("critic, actor", [("agent", "mlp"), ("central", "mlp"), ("agent", "gru")])
def test_a_short_ppo_run_beats_its_untrained_policy(critic, actor):
    """A few PPO updates on 3m, IPPO's critic or MAPPO's, an MLP actor or a GRU: the evaluated (ε-greedy)
    return rises above the initial policy's."""
    import jax
    trainer = ippo.Trainer("3m", n_envs=32, n_steps=64, lr=4e-3, clip=0.05, max_grad_norm=0.25,
                           updates_per_interval=12, intervals=1, eval_episodes=64, critic=critic, actor=actor)
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


@pytest.mark.parametrize("kind", ippo.ACTORS)
def test_a_saved_policy_loads_back_exactly(tmp_path, kind):
    path = str(tmp_path / "p.safetensors")
    actor = tiny_actor() if kind == "mlp" else gru_actor(in_dim=78, hidden=4, n_actions=8)
    behaviour.save_policy(path, actor, {**META, "return_mean": 1.5, "actor": kind})
    layers, metadata = behaviour.load_policy(path)
    assert metadata["return_mean"] == 1.5 and metadata["scenario"] == "3m"
    assert [sorted(layer) for layer in layers] == [sorted(layer) for layer in actor]
    for a, b in zip(actor, layers):
        for name in a:
            np.testing.assert_array_equal(np.asarray(a[name]), b[name])
    behaviour.save_policy(path, actor, {**META, "actor": "mlp" if kind == "gru" else "gru"})   # the wrong kind
    with pytest.raises(artifacts.InputError, match="actor shapes do not fit its metadata"):
        behaviour.load_policy(path)


def test_a_gru_policy_plays_from_an_empty_memory_after_each_reset(tmp_path):
    env = envlib.make_env("3m", "smax", n_envs=4, seed=0)
    path = str(tmp_path / "gru.safetensors")
    actor = gru_actor(in_dim=env.obs_dim + env.n_agents, hidden=8, n_actions=env.n_actions)
    behaviour.save_policy(path, actor, {**META, "actor": "gru"})
    policy = behaviour.TrainedPolicy(path, env, epsilon=0.0)
    obs, avail = env.reset()
    first = policy(obs, avail)
    after_one = np.array(policy._memory)                                  # (B, N, H)
    assert after_one.shape == (4, 3, 8) and np.abs(after_one).max() > 0
    policy(obs, avail)
    assert np.abs(np.asarray(policy._memory) - after_one).max() > 1e-4    # the memory goes on within a game
    policy.reset()
    np.testing.assert_array_equal(policy(obs, avail), first)              # greedy from an empty memory again
    np.testing.assert_allclose(np.asarray(policy._memory), after_one, rtol=1e-6)


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


def test_every_reached_level_is_within_10_percent_of_og_marls_mean():
    """A dataset mixes its four policies equally, so its level is their picks' mean (over seeds that reached it)."""
    checked = 0
    for scenario, qualities in behaviour.read_manifest().items():
        for quality, entries in qualities.items():
            reached = [e["return_mean"] for e in entries if e["reached"]]
            if reached:
                target = behaviour.OG_MARL[(scenario, quality)][0]
                assert abs(np.mean(reached) / target - 1) <= 0.1, (scenario, quality, reached, target)
                checked += 1
    assert checked >= 13                      # every map's poor, medium and good but 5m_vs_6m's unreached ones


def test_shipping_some_qualities_and_seeds_keeps_the_others(tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(behaviour.POLICY_DIR, policies)
    before = behaviour.read_manifest(str(policies))
    actor, metadata = behaviour.load_policy(os.path.join(behaviour.POLICY_DIR, before["3m"]["poor"][0]["file"]))
    run, checkpoints = tmp_path / "run", []
    (run / "checkpoints").mkdir(parents=True)
    for seed in (0, 1):
        for steps, ret in ((0, 1.0), (100, 9.0), (200, 11.0)):             # medium's target: 9.96
            name = f"checkpoints/seed{seed}-{steps:09d}.safetensors"
            behaviour.save_policy(str(run / name), actor, {**metadata, "seed": seed, "env_steps": steps})
            checkpoints.append({"seed": seed, "env_steps": steps, "return_mean": ret + seed, "return_std": 1.0,
                                "win_rate": 0.0, "file": name})
    artifacts.write_json(str(run / "log.json"), {"checkpoints": checkpoints, "command": "python behaviour.py"})
    shipped = behaviour.ship("3m", str(run), str(policies), qualities=["medium"])
    after = behaviour.read_manifest(str(policies))
    assert list(shipped) == ["medium"] and after["3m"]["medium"] == shipped["medium"]
    assert [(e["seed"], e["env_steps"], e["reached"]) for e in shipped["medium"]] == [
        (0, 100, True), (1, 100, True), *[(e["seed"], e["env_steps"], e["reached"]) for e in before["3m"]["medium"][2:]]]
    assert shipped["medium"][2:] == before["3m"]["medium"][2:]                 # seeds 2 and 3 were not retrained
    assert after["3m"]["poor"] == before["3m"]["poor"] and after["3m"]["good"] == before["3m"]["good"]
    assert list(after["3m"]) == list(behaviour.QUALITIES) and after["8m"] == before["8m"]


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
