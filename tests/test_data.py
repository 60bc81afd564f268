"""data.py: datasets (HDF5 schema), reward-to-go, the Eq. 4 matrix and its inverse; artifacts.py's writes."""
import dataclasses
import itertools
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import artifacts
import data


def hand_episode():
    """Two agents, O = 2, A = 3, padded to T = 3; the episode lasts 2 steps."""
    obs = np.zeros((1, 4, 2, 2), dtype=np.float32)
    obs[0, 0] = [[0.1, 0.2], [0.3, 0.4]]
    obs[0, 1] = [[0.5, 0.6], [0.7, 0.8]]
    obs[0, 2] = [[0.9, 1.0], [0.0, 0.0]]        # after the last step: not in Eq. 4
    avail = np.zeros((1, 4, 2, 3), dtype=bool)
    avail[0, 0] = [[1, 1, 0], [1, 0, 1]]
    avail[0, 1] = [[1, 1, 1], [1, 0, 0]]
    avail[0, 2] = [[1, 0, 0], [1, 0, 0]]
    actions = np.array([[[1, 2], [0, 0], [0, 0]]])
    rewards = np.array([[1.5, 4.0, 0.0]], dtype=np.float32)
    dones = np.array([[False, True, False]])
    return data.Episodes(obs, avail, actions, rewards, dones, np.array([2], dtype=np.int32),
                         attrs={"scenario": "hand"})


def test_reward_to_go_by_hand():
    rewards = np.array([[1.0, 2.0, 3.0, 9.0], [5.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    lengths = np.array([3, 1])
    np.testing.assert_allclose(data.reward_to_go(rewards, lengths), [[6, 5, 3, 0], [5, 0, 0, 0]])
    np.testing.assert_allclose(data.reward_to_go(rewards, lengths, gamma=0.5),
                               [[2.75, 3.5, 3, 0], [5, 0, 0, 0]])


def test_eq4_matrix_row_by_row():
    m = data.episodes_to_matrix(hand_episode())
    layout = data.feature_layout(2, 2, 3)
    assert m.shape == (1, layout.n_features, 3) == (1, 2 * (2 + 6) + 3, 3)
    expected = np.array([
        # agent 0: obs (2 rows), action one-hot (3), legal (3)
        [0.1, 0.5, 0], [0.2, 0.6, 0],
        [0, 1, 0], [1, 0, 0], [0, 0, 0],
        [1, 1, 0], [1, 1, 0], [0, 1, 0],
        # agent 1
        [0.3, 0.7, 0], [0.4, 0.8, 0],
        [0, 1, 0], [0, 0, 0], [1, 0, 0],
        [1, 1, 0], [0, 0, 0], [1, 0, 0],
        # reward, Q_tot (reward-to-go), done
        [1.5, 4.0, 0], [5.5, 4.0, 0], [0, 1, 0],
    ], dtype=np.float32)
    np.testing.assert_allclose(m[0], expected)
    assert (layout.reward, layout.q_tot, layout.done) == (16, 17, 18)
    assert layout.action(1) == slice(10, 13) and layout.avail(1) == slice(13, 16)


def test_hand_episode_decodes_back():
    ep = hand_episode()
    back = data.matrix_to_episodes(data.episodes_to_matrix(ep), data.layout_of(ep), (0.0, 5.0))
    np.testing.assert_array_equal(back.actions, ep.actions)
    np.testing.assert_array_equal(back.dones, ep.dones)
    np.testing.assert_array_equal(back.lengths, ep.lengths)
    np.testing.assert_allclose(back.obs[:, :2], ep.obs[:, :2])
    assert (back.obs[:, 2:] == 0).all(), "the observation after the last step is not in Eq. 4"
    np.testing.assert_array_equal(back.avail[:, :2], ep.avail[:, :2])
    np.testing.assert_allclose(back.rewards, ep.rewards)


def test_decoding_repairs_noisy_matrices():
    ep = hand_episode()
    layout = data.layout_of(ep)
    m = data.episodes_to_matrix(ep)
    m[0, layout.action(0), 0] = [0.2, 0.1, 0.9]       # argmax is action 2, which is illegal
    m[0, layout.avail(1), 1] = [0.1, 0.2, 0.3]        # no legal action above 0.5
    m[0, layout.done] = [0.2, 0.4, 0.9]               # ends at the third step instead
    m[0, layout.reward] = [9.0, -3.0, 1.0]
    back = data.matrix_to_episodes(m, layout, (0.0, 5.0))
    assert back.actions[0, 0, 0] == 0, "the argmax among legal actions (0 and 1)"
    np.testing.assert_array_equal(back.avail[0, 1, 1], [False, False, True])
    assert back.lengths[0] == 3 and back.dones[0].tolist() == [False, False, True]
    np.testing.assert_allclose(back.rewards[0], [5.0, 0.0, 1.0])
    m[0, layout.done] = [0.1, 0.3, 0.2]               # a blurred done: no value above 0.5
    lengths, ended = data.episode_ends(m[:, layout.done])
    assert lengths[0] == 2 and not ended[0], "ends at the done row's peak"


def test_normalizer_maps_rows_to_unit_interval_and_back(tiny_3m):
    m = data.episodes_to_matrix(data.load_dataset(tiny_3m[0]))
    norm = data.Normalizer.fit(m)
    z = norm.normalize(m)
    assert z.min() >= -1.0 - 1e-6 and z.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(norm.unnormalize(z), m, atol=1e-5)
    again = data.Normalizer.from_state_dict(norm.state_dict())
    np.testing.assert_array_equal(again.normalize(m), z)


def test_generated_dataset_roundtrips_through_hdf5(tiny_3m):
    path, attrs = tiny_3m
    ep = data.load_dataset(path, scenario="3m", quality="medium")
    assert ep.n_episodes == 24 and (ep.n_agents, ep.obs_dim, ep.n_actions) == (3, 75, 8)
    T = ep.rewards.shape[1]
    assert T == ep.lengths.max() and ep.obs.shape == (24, T + 1, 3, 75)
    assert ep.attrs["epsilon"] == data.behaviour_epsilon("3m", "medium")
    assert ep.attrs["return_mean"] == pytest.approx(ep.returns().mean(), rel=1e-5)
    pad = ~data.valid_steps(ep.lengths, T)
    assert (ep.rewards[pad] == 0).all() and (ep.actions[pad] == 0).all()
    taken_legal = np.take_along_axis(ep.avail[:, :T], ep.actions[..., None], axis=-1)[..., 0]
    assert taken_legal[~pad].all(), "the behaviour policy only takes legal actions"


def test_generation_is_deterministic(tmp_path, tiny_3m):
    path = tmp_path / "again.h5"
    data.generate_dataset("3m", "medium", 24, seed=0, path=str(path), n_envs=12, progress=False)
    a, b = data.load_dataset(tiny_3m[0]), data.load_dataset(str(path))
    for field in ("obs", "avail", "actions", "rewards", "dones", "lengths"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_real_dataset_roundtrips_through_eq4(tiny_3m):
    ep = data.load_dataset(tiny_3m[0])
    m = data.episodes_to_matrix(ep)
    norm = data.Normalizer.fit(m)
    r = data.feature_layout(3, 75, 8).reward
    back = data.matrix_to_episodes(norm.unnormalize(norm.normalize(m)), data.layout_of(ep),
                                   (norm.lo[r], norm.hi[r]))
    np.testing.assert_array_equal(back.actions, ep.actions)
    np.testing.assert_array_equal(back.dones, ep.dones)
    np.testing.assert_array_equal(back.lengths, ep.lengths)
    T = ep.rewards.shape[1]
    valid = data.valid_steps(ep.lengths, T)
    np.testing.assert_array_equal(back.avail[:, :T][valid], ep.avail[:, :T][valid])
    np.testing.assert_allclose(back.obs[:, :T][valid], ep.obs[:, :T][valid], atol=1e-5)
    np.testing.assert_allclose(back.rewards, ep.rewards, atol=1e-5)


def test_subsample_keeps_whole_episodes(tiny_3m):
    ep = data.load_dataset(tiny_3m[0])
    sub = data.subsample(ep, 0.25, seed=3)
    assert sub.n_episodes == 6
    for i in range(6):
        match = [j for j in range(ep.n_episodes) if np.array_equal(ep.obs[j], sub.obs[i])]
        assert len(match) == 1
        j = match[0]
        np.testing.assert_array_equal(ep.actions[j], sub.actions[i])
        np.testing.assert_array_equal(ep.rewards[j], sub.rewards[i])
        assert ep.lengths[j] == sub.lengths[i]
    assert sub.attrs["return_mean"] == pytest.approx(sub.returns().mean(), rel=1e-5)
    assert data.subsample(ep, 0.001, seed=0).n_episodes == 1
    with pytest.raises(ValueError, match="fraction"):
        data.subsample(ep, 1.5, seed=0)


def copy_with(src, dst, edit):
    """Copy an HDF5 dataset file and apply `edit(file)` to the copy."""
    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        for key in a:
            a.copy(key, b)
        b.attrs.update(a.attrs)
        edit(b)
    return str(dst)


def test_malformed_files_are_refused(tmp_path, tiny_3m):
    src = tiny_3m[0]
    with pytest.raises(artifacts.InputError, match="no such dataset file"):
        data.load_dataset(str(tmp_path / "missing.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(ValueError, match="junk.h5: not a readable HDF5"):
        data.load_dataset(str(junk))
    no_rewards = copy_with(src, tmp_path / "a.h5", lambda f: f.__delitem__("rewards"))
    with pytest.raises(ValueError, match="a.h5: not an EAQ dataset, missing rewards"):
        data.load_dataset(no_rewards)

    def shrink_obs(f):
        obs = f["obs"][:, :, :, :10]
        del f["obs"]
        f["obs"] = obs
    with pytest.raises(ValueError, match=r"b.h5: obs has shape .* expected"):
        data.load_dataset(copy_with(src, tmp_path / "b.h5", shrink_obs))

    def early_done(f):
        dones = f["dones"][()]
        dones[:, 0] = True
        f["dones"][...] = dones
    with pytest.raises(ValueError, match="dones must be True exactly"):
        data.load_dataset(copy_with(src, tmp_path / "c.h5", early_done))
    old = copy_with(src, tmp_path / "d.h5", lambda f: f.attrs.__setitem__("format_version", 0))
    with pytest.raises(ValueError, match="format version 0"):
        data.load_dataset(old)


def test_mismatched_files_are_refused(tiny_3m):
    with pytest.raises(ValueError, match="holds scenario '3m' but '8m' was requested"):
        data.load_dataset(tiny_3m[0], scenario="8m")
    with pytest.raises(ValueError, match="holds quality 'medium' but 'poor' was requested"):
        data.load_dataset(tiny_3m[0], quality="poor")


def test_cli_refuses_to_overwrite(tiny_3m, capsys):
    with pytest.raises(SystemExit):
        data.main(["--scenario", "3m", "--episodes", "2", "--out", tiny_3m[0]])
    assert "pass --overwrite" in capsys.readouterr().err


def test_more_exploration_means_a_worse_behaviour_policy():
    import env as envlib
    env = envlib.make_env("3m", n_envs=48, seed=0)
    greedy, _ = data.collect_batch(env, data.HeuristicPolicy(env, 0.0, seed=1))
    noisy, _ = data.collect_batch(env, data.HeuristicPolicy(env, 1.0, seed=1))
    assert greedy.returns().mean() > noisy.returns().mean() + 3.0


def test_an_interrupted_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(str(target)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with artifacts.atomic_path(str(target)) as tmp:
        with open(tmp, "w") as f:
            f.write("whole")
    assert target.read_text() == "whole" and len(list(tmp_path.iterdir())) == 1


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "3m-poor.h5"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"3m-poor.tmp-{artifacts.HOST}-{int(dead.stdout)}.h5"     # left by a kill -9
    orphan.write_text("half")
    alive = tmp_path / f"3m-poor.tmp-{artifacts.HOST}-{os.getppid()}.h5"          # a live writer's: kept
    alive.write_text("busy")
    other = tmp_path / "3m-medium.tmp-x-1.h5"                                     # another target's: kept
    other.write_text("other")
    with artifacts.atomic_path(str(target)) as tmp:
        with open(tmp, "w") as f:
            f.write("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, alive.name, other.name])


def test_constant_rows_decode_to_their_constant():
    matrix = np.zeros((2, 3, 4), dtype=np.float32)
    matrix[:, 0] = 7.0                                          # constant row
    matrix[:, 1] = np.arange(4)                                 # varying row
    norm = data.Normalizer.fit(matrix)
    z = norm.normalize(matrix)
    assert (z[:, 0] == -1).all()
    generated = z + np.random.default_rng(0).uniform(-0.3, 0.3, z.shape).astype(np.float32)
    np.testing.assert_array_equal(norm.unnormalize(generated)[:, 0], 7.0)
    np.testing.assert_allclose(norm.unnormalize(z), matrix, atol=1e-6)


def edit_copy(src, tmp_path, name, edit):
    return copy_with(src, tmp_path / name, edit)


@pytest.mark.parametrize("name, edit, message", [
    ("nan_obs", lambda f: f["obs"].__setitem__((1, 2, 0, 3), np.nan), r"obs holds NaN or inf at index \(1, 2, 0, 3\)"),
    ("inf_reward", lambda f: f["rewards"].__setitem__((2, 0), np.inf), r"rewards holds NaN or inf at index \(2, 0\)"),
    ("no_legal", lambda f: f["avail"].__setitem__((0, 1, 2), False),
     r"avail has a valid step where an agent has no legal action at index \(0, 1, 2\)"),
])
def test_bad_contents_are_refused_naming_file_array_and_index(tmp_path, tiny_3m, name, edit, message):
    with pytest.raises(artifacts.InputError, match=f"{name}.h5: {message}"):
        data.load_dataset(edit_copy(tiny_3m[0], tmp_path, f"{name}.h5", edit))


def test_illegal_and_non_integer_actions_are_refused(tmp_path, tiny_3m):
    ep = data.load_dataset(tiny_3m[0])
    e, t, n = 0, 0, 1
    illegal = int(np.flatnonzero(~ep.avail[e, t, n])[0])        # an action agent n may not take at step 0

    def set_illegal(f):
        f["actions"][e, t, n] = illegal
    with pytest.raises(artifacts.InputError, match=r"actions holds an action that avail marks illegal at index \(0, 0, 1\)"):
        data.load_dataset(edit_copy(tiny_3m[0], tmp_path, "illegal.h5", set_illegal))

    def float_actions(f):
        actions = f["actions"][()].astype(np.float32) + 0.5
        del f["actions"]
        f["actions"] = actions
    with pytest.raises(artifacts.InputError, match="actions has dtype float32, expected integers"):
        data.load_dataset(edit_copy(tiny_3m[0], tmp_path, "float.h5", float_actions))


def test_a_bad_entry_in_a_later_chunk_is_named_by_its_index_in_the_file(tmp_path, tiny_3m):
    def nan_obs(f):
        f["obs"][13, 2, 0, 3] = np.nan
    path = edit_copy(tiny_3m[0], tmp_path, "chunked.h5", nan_obs)
    chunks = data.dataset_chunks(path, chunk_episodes=5)
    assert [c.n_episodes for c in itertools.islice(chunks, 2)] == [5, 5]      # episodes 0-9 are fine
    with pytest.raises(artifacts.InputError, match=r"chunked.h5: obs holds NaN or inf at index \(13, 2, 0, 3\)"):
        next(chunks)


def test_a_damaged_cached_dataset_is_made_again(tmp_path, capsys):
    path = data.ensure_dataset("3m", "poor", 0.0002, 0, root=str(tmp_path))
    good = data.load_dataset(path)
    with open(path, "r+b") as f:                                  # truncate the cache
        f.truncate(1000)
    assert data.ensure_dataset("3m", "poor", 0.0002, 0, root=str(tmp_path)) == path
    assert "rebuilding the cached dataset" in capsys.readouterr().out
    np.testing.assert_array_equal(data.load_dataset(path).actions, good.actions)


@pytest.mark.parametrize("flag, value, message", [
    ("--episodes", "0", "--episodes must be at least 1"),
    ("--epsilon", "1.5", "--epsilon must be in [0, 1]"),
    ("--epsilon", "-0.1", "--epsilon must be in [0, 1]"),
    ("--seed", "4294967296", "--seed must be in [0, 1,000,000,000]"),
    ("--scenario", "4m", "unknown scenario '4m'"),
])
def test_cli_refuses_bad_flags_before_any_work(tmp_path, capsys, flag, value, message):
    out = tmp_path / "d.h5"
    with pytest.raises(SystemExit):
        data.main(["--scenario", "3m", flag, value, "--out", str(out)])
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_attack_share_and_action_histogram_distance_by_hand():
    ep = data.Episodes(np.zeros((1, 3, 2, 2), np.float32), np.ones((1, 3, 2, 7), bool),
                       np.array([[[5, 0], [6, 4]]]), np.zeros((1, 2), np.float32), np.array([[False, True]]),
                       np.array([2], np.int32), attrs={"backend": "smax"})
    assert data.attack_share(ep) == 0.5                           # 5 and 6 attack; 0 and 4 do not
    other = data.Episodes(ep.obs, ep.avail, np.array([[[5, 0], [5, 0]]]), ep.rewards, ep.dones, ep.lengths,
                          attrs={"backend": "smax"})
    # agent 0: {5: .5, 6: .5} vs {5: 1} -> TV 0.5; agent 1: {0: .5, 4: .5} vs {0: 1} -> TV 0.5
    assert data.action_tv_distance(ep, other) == pytest.approx(0.5)
    assert data.action_tv_distance(ep, ep) == 0.0


def damage_episode(backend="smax"):
    """3m's layout (N = K = 3, O = 75, enemy blocks at 26, 39, 52, 13 wide), one episode of 3 steps:
    agent 0 sees enemy 0 at health 1.0, 0.8, 0.6 and shoots it at step 0 only (a hit, then a drop
    with no shooter); agent 1 sees enemy 1 at 0.5, then 0.7 (a gain), then no more; agent 2 shoots
    enemy 2, whom nobody sees (not counted)."""
    obs = np.zeros((1, 4, 3, 75), np.float32)
    for t, health in enumerate([1.0, 0.8, 0.6]):
        obs[0, t, 0, 26], obs[0, t, 0, 26 + 7] = health, 1.0             # health, unit-type bit 0 (marine)
    for t, health in enumerate([0.5, 0.7]):
        obs[0, t, 1, 39], obs[0, t, 1, 39 + 7] = health, 1.0
    actions = np.array([[[5, 4, 7], [4, 4, 4], [4, 4, 4]]])          # 5 + k attacks enemy k; 4 stops
    return data.Episodes(obs, np.ones((1, 4, 3, 8), bool), actions, np.zeros((1, 3), np.float32),
                         np.array([[False, False, True]]), np.array([3], np.int32), attrs={"backend": backend})


def test_attack_damage_counts_by_hand():
    ep = damage_episode()
    assert data.damage_threshold(ep) == pytest.approx(0.1)                  # half the smallest drop, 0.2
    counts = data.damage_counts(ep, 0.1)
    assert counts == {"seen": 3, "attacked": 1, "attacked_hit": 1, "unattacked_hit": 1, "gains": 1,
                      "all_seen": 0, "reward_agrees": 0, "reward_excess": 0.0,     # enemy 2 is never seen
                      "some_seen": 2, "reward_short": 2}     # both steps show enemy 0's 0.2 drop, rewards say 0
    assert data.damage_shares(counts) == pytest.approx(
        {"attacks_that_damage": 1.0, "damage_with_shooter": 0.5, "health_gain_share": 1 / 3,
         "reward_matches_damage": float("nan"), "reward_minus_damage": float("nan"),
         "reward_below_damage": 1.0}, nan_ok=True)
    paid = dataclasses.replace(ep, rewards=np.array([[0.0, 10 * 0.2 / 3 - 0.3, 0.0]], np.float32))
    assert data.damage_counts(paid, 0.1)["reward_short"] == 1     # 2/3 short is past half a shot (1/3); 0.3 not
    assert data.damage_counts(ep, 0.25)["attacked_hit"] == 0                # a 0.2 drop is below 0.25
    smac = damage_episode("smac")                                           # no SMAX layout: no numbers
    assert data.enemy_health(smac) is None and np.isnan(data.damage_threshold(smac))
    assert set(data.damage_counts(smac, 0.1).values()) == {0}
    assert all(np.isnan(v) for v in data.damage_shares(data.damage_counts(smac, 0.1)).values())


def test_reward_against_the_damage_the_observations_show_by_hand():
    """3m's layout, agent 0 sees all three enemies for 4 steps: step 0 enemy 0 loses 0.2 (SMAX pays
    10 * 0.2 / 3) and the reward says so; step 1 enemy 1 loses 0.4, enemy 2 gains 0.2 (paid nothing),
    the reward says 2.0 against 10 * 0.4 / 3; step 2 ends the episode (its reward, a win bonus, is not judged)."""
    obs = np.zeros((1, 4, 3, 75), np.float32)
    healths = [[1.0, 1.0, 0.5], [0.8, 1.0, 0.5], [0.8, 0.6, 0.7], [0.8, 0.6, 0.7]]     # (T+1, K)
    for t, row in enumerate(healths):
        for k, start in enumerate((26, 39, 52)):
            obs[0, t, 0, start], obs[0, t, 0, start + 7] = row[k], 1.0
    rewards = np.array([[10 * 0.2 / 3, 2.0, 15.0]], np.float32)
    ep = data.Episodes(obs, np.ones((1, 4, 3, 8), bool), np.full((1, 3, 3), 4), rewards,
                       np.array([[False, False, True]]), np.array([3], np.int32), attrs={"backend": "smax"})
    counts = data.damage_counts(ep, 0.1)
    assert (counts["all_seen"], counts["reward_agrees"]) == (2, 1)   # 2.0 - 4/3 is past half a shot's 1/3
    assert (counts["some_seen"], counts["reward_short"]) == (2, 0)   # overpaid is not short
    assert counts["reward_excess"] == pytest.approx(2.0 - 10 * 0.4 / 3, abs=1e-5)
    shares = data.damage_shares(counts)
    assert shares["reward_matches_damage"] == 0.5
    assert shares["reward_minus_damage"] == pytest.approx((2.0 - 10 * 0.4 / 3) / 2, abs=1e-5)


def test_in_real_data_every_health_drop_follows_an_attack_on_that_enemy(tiny_3m):
    real = data.load_dataset(tiny_3m[0])
    threshold = data.damage_threshold(real)
    assert threshold == pytest.approx(0.1)                  # a marine's shot: 9 of a marine's 45 health, halved
    shares = data.damage_shares(data.damage_counts(real, threshold))
    assert shares["damage_with_shooter"] == 1.0 and shares["health_gain_share"] == 0.0
    assert 0.6 < shares["attacks_that_damage"] < 1.0       # the misses: weapons cooling down
    assert shares["reward_matches_damage"] == 1.0 and abs(shares["reward_minus_damage"]) < 1e-5
    assert shares["reward_below_damage"] == 0.0
    counts = data.damage_counts(real, threshold)
    assert counts["some_seen"] > counts["all_seen"] > 0       # partly seen steps are judged too
    late_rewards = np.roll(real.rewards, 1, axis=1)         # every reward a step late
    late_shares = data.damage_shares(data.damage_counts(dataclasses.replace(real, rewards=late_rewards), threshold))
    assert late_shares["reward_matches_damage"] < 0.8 and late_shares["reward_below_damage"] > 0.1
    retargeted = real.actions.copy()                        # every attack moved to the next enemy
    attack = retargeted >= 5
    retargeted[attack] = 5 + (retargeted[attack] - 4) % 3
    moved = data.damage_shares(data.damage_counts(dataclasses.replace(real, actions=retargeted), threshold))
    assert moved["damage_with_shooter"] < 0.5
    late = real.actions.copy()                              # every action a step late
    late[:, 1:], late[:, 0] = real.actions[:, :-1], 4
    assert data.damage_shares(data.damage_counts(dataclasses.replace(real, actions=late), threshold))[
        "damage_with_shooter"] < 0.9
