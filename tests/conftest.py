"""Shared fixtures: one tiny generated 3m dataset for the whole session; a checkpoint's malicious pickle."""
import pytest

import datasets


@pytest.fixture(scope="session")
def tiny_3m(tmp_path_factory):
    """24 episodes of 3m with the medium behaviour policy, written and read back."""
    path = tmp_path_factory.mktemp("datasets") / "3m-medium.h5"
    attrs = datasets.generate_dataset("3m", "medium", 24, seed=0, path=str(path), n_envs=12, progress=False)
    return str(path), attrs


class Payload:
    """Unpickling this object would create a file: what a malicious checkpoint does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def malicious_pickle(tmp_path):
    """(an object whose unpickling would create a file, that file's path), for checkpoints that must refuse it."""
    target = tmp_path / "pwned"
    return Payload(str(target)), target
