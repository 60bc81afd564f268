"""datasets.py: datasets played by the shipped behaviour policies, their cache and command line."""
import numpy as np
import pytest

import data
import datasets


def test_generated_dataset_roundtrips_through_hdf5(tiny_3m):
    path, attrs = tiny_3m
    ep = data.load_dataset(path, scenario="3m", quality="medium")
    assert ep.n_episodes == 24 and (ep.n_agents, ep.obs_dim, ep.n_actions) == (3, 75, 8)
    T = ep.rewards.shape[1]
    assert T == ep.lengths.max() and ep.obs.shape == (24, T + 1, 3, 75)
    assert ep.attrs["epsilon"] == 0.05
    assert ep.attrs["return_mean"] == pytest.approx(ep.returns().mean(), rel=1e-5)
    pad = ~data.valid_steps(ep.lengths, T)
    assert (ep.rewards[pad] == 0).all() and (ep.actions[pad] == 0).all()
    taken_legal = np.take_along_axis(ep.avail[:, :T], ep.actions[..., None], axis=-1)[..., 0]
    assert taken_legal[~pad].all(), "the behaviour policy only takes legal actions"


def test_generation_is_deterministic(tmp_path, tiny_3m):
    path = tmp_path / "again.h5"
    datasets.generate_dataset("3m", "medium", 24, seed=0, path=str(path), n_envs=12, progress=False)
    a, b = data.load_dataset(tiny_3m[0]), data.load_dataset(str(path))
    for field in ("obs", "avail", "actions", "rewards", "dones", "lengths"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_cli_refuses_to_overwrite(tiny_3m, capsys):
    with pytest.raises(SystemExit):
        datasets.main(["--scenario", "3m", "--episodes", "2", "--out", tiny_3m[0]])
    assert "pass --overwrite" in capsys.readouterr().err


def test_a_damaged_cached_dataset_is_made_again(tmp_path, capsys):
    path = datasets.ensure_dataset("3m", "poor", 0.0002, 0, root=str(tmp_path))
    good = data.load_dataset(path)
    with open(path, "r+b") as f:                                  # truncate the cache
        f.truncate(1000)
    assert datasets.ensure_dataset("3m", "poor", 0.0002, 0, root=str(tmp_path)) == path
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
        datasets.main(["--scenario", "3m", flag, value, "--out", str(out)])
    assert message in capsys.readouterr().err
    assert not out.exists()
