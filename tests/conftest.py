"""Shared fixtures: one tiny generated 3m dataset for the whole session."""
import pytest

import data


@pytest.fixture(scope="session")
def tiny_3m(tmp_path_factory):
    """24 episodes of 3m with the medium behaviour policy, written and read back."""
    path = tmp_path_factory.mktemp("datasets") / "3m-medium.h5"
    attrs = data.generate_dataset("3m", "medium", 24, seed=0, path=str(path), n_envs=12, progress=False)
    return str(path), attrs
