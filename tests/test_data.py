"""data.py: the HDF5 schema, 3 % subsets, reward-to-go, the Eq. 4 matrix and its inverse; artifacts.py's writes."""
import errno
import itertools
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

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
    layout = data.FeatureLayout(2, 2, 3)
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


def test_real_dataset_roundtrips_through_eq4(tiny_3m):
    ep = data.load_dataset(tiny_3m[0])
    m = data.episodes_to_matrix(ep)
    norm = data.Normalizer.fit(m)
    r = data.FeatureLayout(3, 75, 8).reward
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




def test_a_write_that_runs_out_of_space_says_so_in_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(artifacts.json, "dump", no_space)
    with pytest.raises(artifacts.InputError, match=r"r.json: no space left on its device; free some space"):
        artifacts.write_json(str(tmp_path / "r.json"), {"a": 1})
    assert list(tmp_path.iterdir()) == []

    def unexpected_pos(obj, f):                        # what torch.save raises on a full device
        raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")
    monkeypatch.setattr(torch, "save", unexpected_pos)
    monkeypatch.setattr(artifacts.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))
    with pytest.raises(artifacts.InputError, match="m.pt: no space left"):
        artifacts.save_tensors(str(tmp_path / "m.pt"), {})
    monkeypatch.setattr(artifacts.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 12, 0, 10 ** 12))
    with pytest.raises(RuntimeError, match="unexpected pos"):     # with room to spare: torch's own error stands
        artifacts.save_tensors(str(tmp_path / "m.pt"), {})
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_declares_more_than_it_holds_or_than_memory_allows_is_refused_before_reading(
        tmp_path, tiny_3m, monkeypatch):
    bomb = tmp_path / "bomb.h5"                             # an 8 KB file declaring 169 GiB of observations
    E, T, N, O, A = 2_000_000, 100, 3, 75, 8
    with h5py.File(bomb, "w") as f:
        for name, shape in (("obs", (T + 1, N, O)), ("avail", (T + 1, N, A)), ("actions", (T, N)),
                            ("rewards", (T,)), ("dones", (T,)), ("lengths", ())):
            f.create_dataset(name, shape=(E,) + shape, dtype=data.DTYPES[name], chunks=(1,) + shape,
                             compression="gzip")
        f.attrs.update(data.read_attrs(tiny_3m[0]))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(artifacts.InputError, match=r"bomb.h5: obs declares shape \(2000000, 101, 3, 75\) but the "
                                                    r"file holds data for only part of it"):
        data.load_dataset(str(bomb))
    monkeypatch.setattr(artifacts, "available_memory", lambda: 200_000)     # a real file on a machine too small
    with pytest.raises(artifacts.InputError, match=r"3m-medium.h5: reading it takes .* GiB of memory free; read it "
                                                    r"in chunks"):
        data.load_dataset(tiny_3m[0])                                     # 24 episodes of ≈ 95 KB each
    assert data.load_dataset(tiny_3m[0], episodes=slice(0, 1)).n_episodes == 1          # one of them fits


def test_a_generated_episode_ends_at_its_first_done_above_the_midpoint_or_else_at_the_rows_peak():
    done_rows = np.array([[0.0, 0.45, 0.2, 0.6, 0.9],        # 0.45 is below the midpoint: it ends at step 3
                          [0.1, 0.2, 0.3, 0.1, 0.0]])        # nothing above it: the row's peak, step 2
    lengths, ended = data.episode_ends(done_rows)
    assert lengths.tolist() == [4, 3] and ended.tolist() == [True, False]


def test_the_whole_set_as_a_subset_holds_every_episode_once(tiny_3m):
    ep = data.load_dataset(tiny_3m[0])
    whole = data.subsample(ep, 1.0, seed=5)
    np.testing.assert_array_equal(whole.obs, ep.obs)          # each episode once, in the file's order
    np.testing.assert_array_equal(whole.lengths, ep.lengths)
