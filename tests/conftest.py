"""Shared fixtures: one tiny generated 3m dataset for the whole session; a checkpoint's malicious pickle; two
hand-made 'networks' f_theta whose answers are known."""
import pytest
import torch

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


class Unscale(torch.nn.Module):
    """A 'network' that undoes the signal's scaling of tau_k: tau_k / sqrt(abar_k), tau0 up to the noise."""

    def __init__(self, abar):
        super().__init__()
        self.register_buffer("abar", abar)

    def forward(self, tau_k, k):
        return tau_k / self.abar[k - 1].sqrt()[:, None, None]


class Zeros(torch.nn.Module):
    """A 'network' that answers zeros: every row's midpoint in data units."""

    def forward(self, tau_k, k):
        return torch.zeros_like(tau_k)


def output_rank(net, n_features, agent_width=None, T=16, batch=24):
    """Numerical rank of a network's outputs before any clip, as one column per step (batch T, F), or with
    `agent_width`, one column per agent-step of the agents' rows (batch T N, W); the global rows are 3."""
    torch.manual_seed(0)
    with torch.no_grad():
        out = net(torch.randn(batch, n_features, T), torch.randint(1, 50, (batch,)))          # (B, F, T)
    if agent_width:
        n_agents = (n_features - 3) // agent_width
        agents = out[:, :n_agents * agent_width].reshape(batch, n_agents, agent_width, T)   # (B, N, W, T)
        columns = agents.permute(0, 1, 3, 2).reshape(-1, agent_width)
    else:
        columns = out.permute(0, 2, 1).reshape(-1, n_features)
    columns = columns.double()
    return int(torch.linalg.matrix_rank(columns - columns.mean(0), rtol=1e-6))
