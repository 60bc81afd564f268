"""diffusion.py and unet.py: Eq. 5, the schedule, the samplers, Algorithm 1's training loop, the U-Net."""
import copy

import numpy as np
import pytest
import torch

import diffusion as D
import unet


def hand_batch():
    """B = 2 episodes, F = 3 rows (row 1 is Q_tot), T = 3; the first episode lasts 2 steps."""
    tau0 = torch.zeros(2, 3, 3)
    tau0[0, 1] = torch.tensor([4.0, 2.0, 0.0])     # Qbar = 3 over its 2 valid steps
    tau0[1, 1] = torch.tensor([1.0, 1.0, 1.0])     # Qbar = 1
    valid = torch.tensor([[True, True, False], [True, True, True]])
    return tau0, valid


def test_hinge_is_zero_when_every_prediction_reaches_the_batch_max():
    tau0, valid = hand_batch()
    pred = tau0.clone()
    pred[:, 1, :] = 3.5
    total, diffusion_term, q_term = D.eaq_loss(pred, tau0, 1, valid, lam=0.5)
    assert q_term.item() == 0.0
    assert total.item() == pytest.approx(diffusion_term.item())


def test_hinge_equals_lam_times_the_gap_to_the_batch_max():
    tau0, valid = hand_batch()
    pred = tau0.clone()
    pred[0, 1] = torch.tensor([3.0, 3.0, 99.0])    # Qbar 3: reaches the max (99 is padding)
    pred[1, 1] = torch.tensor([0.0, 0.0, 3.0])     # Qbar 1: 2 below the max
    total, diffusion_term, q_term = D.eaq_loss(pred, tau0, 1, valid, lam=0.1)
    assert q_term.item() == pytest.approx((0.0 + 2.0) / 2)
    expected_mse = ((pred - tau0) ** 2).mean().item()
    assert diffusion_term.item() == pytest.approx(expected_mse)
    assert total.item() == pytest.approx(expected_mse + 0.1 * 1.0)


def test_padded_steps_do_not_enter_qbar():
    tau0, valid = hand_batch()
    pred = tau0.clone()
    pred[0, 1, 2] = -1000.0
    tau0_padded = tau0.clone()
    tau0_padded[0, 1, 2] = 1000.0
    _, _, q_a = D.eaq_loss(pred, tau0, 1, valid, lam=1.0)
    _, _, q_b = D.eaq_loss(tau0.clone(), tau0_padded, 1, valid, lam=1.0)
    assert q_a.item() == pytest.approx(1.0)      # (0 + (3 - 1)) / 2, the -1000 is ignored
    assert q_b.item() == pytest.approx(1.0)      # the 1000 does not raise the max


def test_hinge_gradient_flows_only_through_the_prediction():
    tau0, valid = hand_batch()
    tau0.requires_grad_(True)
    pred = torch.zeros(2, 3, 3, requires_grad=True)
    _, _, q_term = D.eaq_loss(pred, tau0, 1, valid, lam=1.0)
    q_term.backward()
    assert tau0.grad is None or (tau0.grad == 0).all()
    expected = torch.zeros(2, 3, 3)
    expected[0, 1, :2] = -1.0 / 2 / 2            # -(1/B) * (1/valid steps)
    expected[1, 1, :] = -1.0 / 2 / 3
    torch.testing.assert_close(pred.grad, expected)


@pytest.mark.parametrize("T", [7, 13, 16])
def test_unet_keeps_the_shape_for_any_T(T):
    net = unet.TemporalUNet(n_features=11, dim=16, dim_mults=(1, 2, 4))
    out = net(torch.randn(3, 11, T), torch.tensor([1, 50, 100]))
    assert out.shape == (3, 11, T)


@pytest.mark.parametrize("mixing", unet.MIXINGS)
@pytest.mark.parametrize("T", [7, 16])
def test_agent_unet_keeps_the_shape_for_any_T(T, mixing):
    net = unet.AgentUNet(n_agents=3, agent_width=6, n_global=3, dim=16, dim_mults=(1, 2, 4), mixing=mixing)
    assert net(torch.randn(2, 21, T), torch.tensor([1, 50])).shape == (2, 21, T)


@pytest.mark.parametrize("mixing, crosses", [("none", False), ("mean", True), ("attention", True)])
def test_agents_see_each_other_only_through_the_mixing(mixing, crosses):
    """With no mixing, agent 0's rows depend on its own rows and the global rows only; with mixing, on agent 1's."""
    torch.manual_seed(0)
    net = unet.AgentUNet(n_agents=3, agent_width=6, n_global=3, dim=16, dim_mults=(1, 2), mixing=mixing).eval()
    x, k = torch.randn(2, 21, 8), torch.tensor([3, 30])
    other, glob = x.clone(), x.clone()
    other[:, 6:12] += 1.0                                       # agent 1's rows
    glob[:, 18:] += 1.0                                         # reward, Q_tot, done
    with torch.no_grad():
        base, moved, moved_glob = net(x, k), net(other, k), net(glob, k)
    assert torch.allclose(base[:, :6], moved[:, :6], atol=1e-6) != crosses
    assert not torch.allclose(base[:, :6], moved_glob[:, :6], atol=1e-6)   # the global rows reach every agent
    assert not torch.allclose(base[:, 18:], moved[:, 18:], atol=1e-6)     # and every agent reaches them


def test_agents_share_one_trunk_told_apart_by_their_id():
    """Two agents with the same rows get different outputs (their ids) from the same weights."""
    torch.manual_seed(0)
    net = unet.AgentUNet(n_agents=2, agent_width=5, n_global=3, dim=8, dim_mults=(1,), mixing="none")
    x = torch.randn(1, 13, 4)
    x[:, 5:10] = x[:, :5]
    with torch.no_grad():
        out = net(x, torch.tensor([10]))
    assert not torch.allclose(out[:, :5], out[:, 5:10])
    assert net.inp.in_channels == 5 + 2 + 3                     # its rows, the one-hot id, the global rows


def test_build_makes_the_network_the_config_names():
    layout = {"n_agents": 2, "obs_dim": 3, "n_actions": 4}
    config = {"n_features": 2 * 11 + 3, "dim": 8, "dim_mults": [1, 2], "K": 10, "layout": layout,
              "mixing": "attention", "head_width": 0}
    flat, _ = D.build({**config, "network": "flat"})
    agents, ema = D.build({**config, "network": "agents"})
    assert isinstance(flat.model, unet.TemporalUNet) and isinstance(agents.model, unet.AgentUNet)
    assert agents.model.agent_width == 11 and agents.model.n_global == 3
    # the heads: the agents' as wide as an agent's 11 rows rounded up to 8, the flat one --dim (diffuser's)
    assert agents.model.agent_out[-1].in_channels == 16 and flat.model.out[-1].in_channels == 8
    for network, head in (("agents", "agent_out"), ("flat", "out")):
        assert getattr(D.build({**config, "network": network, "head_width": 24})[0].model, head)[-1].in_channels == 24
    x = torch.randn(2, 25, 6)
    assert agents.f_theta(x, torch.tensor([1, 2])).shape == ema.f_theta(x, torch.tensor([1, 2])).shape == (2, 25, 6)


def test_q_sample_follows_the_schedule():
    diff = D.Diffusion(unet.TemporalUNet(4, 8, (1,)), K=10)
    tau0, noise = torch.ones(2, 4, 5), torch.full((2, 4, 5), 2.0)
    k = torch.tensor([1, 10])
    out = diff.q_sample(tau0, k, noise)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 10, dtype=torch.float64), 0).float()
    torch.testing.assert_close(out[0], torch.full((4, 5), (abar[0].sqrt() + 2 * (1 - abar[0]).sqrt()).item()))
    torch.testing.assert_close(out[1], torch.full((4, 5), (abar[9].sqrt() + 2 * (1 - abar[9]).sqrt()).item()))


def test_episode_windows_round_lengths_up_to_their_bucket():
    lengths = np.array([1, 8, 9, 17, 98, 100])
    np.testing.assert_array_equal(D.episode_horizons(lengths, 8, 100), [8, 8, 16, 24, 100, 100])
    np.testing.assert_array_equal(D.episode_horizons(lengths, 0, 100), [100] * 6)   # the paper's fixed T


class ShapeSpy(torch.nn.Module):
    """A one-weight 'network' that records the windows, episodes and diffusion steps it is trained on."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen, self.steps = [], []

    def forward(self, tau_k, k):
        self.seen.append((tau_k.shape[-1], tau_k[:, 0, 0].tolist()))
        self.steps += k.tolist()
        return tau_k * self.w


def test_minibatches_come_from_one_bucket_cut_to_its_window():
    E, T = 6, 16
    tau0 = torch.zeros(E, 2, T)
    tau0[:, 0, 0] = torch.arange(E).float()                     # row 0, step 0 names the episode
    horizons = np.array([4, 4, 4, 4, 8, 16])                    # bucket sizes 4, 1, 1
    spy = ShapeSpy()
    diff = D.Diffusion(spy, K=10)
    diff.abar.fill_(1.0)                                        # tau_k = tau0: the spy sees the episodes
    ema = D.build({"network": "flat", "n_features": 2, "dim": 8, "dim_mults": [1], "K": 10, "head_width": 0})[1]
    D.train(diff, ema, torch.optim.SGD(diff.parameters(), lr=0.0), tau0, torch.ones(E, T, dtype=torch.bool),
            1, 0.0, 600, horizons, batch_size=3, progress=False)
    windows = [w for w, _ in spy.seen]
    for w, episodes in spy.seen:
        assert {int(e) for e in episodes} <= set(np.flatnonzero(horizons == w)), (w, episodes)
    share = {w: windows.count(w) / len(windows) for w in (4, 8, 16)}
    assert share[4] == pytest.approx(4 / 6, abs=0.06) and share[8] == pytest.approx(1 / 6, abs=0.05)


def test_hinge_active_steps_are_counted():
    diff, ema = D.build({"network": "flat", "n_features": 3, "dim": 8, "dim_mults": [1], "K": 10, "head_width": 0})
    tau0 = torch.zeros(4, 3, 5)
    tau0[:, 1] = torch.linspace(-1, 1, 4)[:, None]              # episodes' Q̄ differ: someone is below the max
    valid = torch.ones(4, 5, dtype=torch.bool)
    opt = torch.optim.Adam(diff.parameters())
    losses = D.train(diff, ema, opt, tau0, valid, 1, 0.1, 6, batch_size=4, progress=False)
    assert losses["hinge_active_steps"] == 6, "an untrained model falls short of the batch max every step"


def test_ema_update_moves_each_weight_by_one_minus_decay():
    ema, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    D.ema_update(ema, model, decay=0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p.detach())


class Oracle(torch.nn.Module):
    """A 'network' that always predicts the same clean episode tau0."""

    def __init__(self, tau0):
        super().__init__()
        self.register_buffer("tau0", tau0)

    def forward(self, tau_k, k):
        return self.tau0.expand_as(tau_k)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_return_exactly_what_an_oracle_predicts(sampler):
    tau0 = torch.linspace(-0.9, 0.9, 12).reshape(1, 3, 4)
    diff = D.Diffusion(Oracle(tau0), K=50)
    g = torch.Generator().manual_seed(0)
    out = diff.sample((5, 3, 4), ddim_steps=7 if sampler == "ddim" else None, generator=g)
    torch.testing.assert_close(out, tau0.expand(5, 3, 4), atol=1e-5, rtol=0)


def test_nan_loss_stops_training():
    diff = D.Diffusion(unet.TemporalUNet(5, 8, (1,)), K=10)
    ema = D.build({"network": "flat", "n_features": 5, "dim": 8, "dim_mults": [1], "K": 10, "head_width": 0})[1]
    tau0 = torch.zeros(4, 5, 6)
    tau0[0, 0, 0] = float("nan")
    opt = torch.optim.Adam(diff.parameters())
    with pytest.raises(FloatingPointError, match="loss became nan at step 0"):
        D.train(diff, ema, opt, tau0, torch.ones(4, 6, dtype=torch.bool), 1, 0.1, 5,
                batch_size=4, progress=False)


def test_the_posterior_of_the_reverse_step_by_hand():
    """q(tau_{k-1} | tau_k, tau0) = N(c0 tau0 + ck tau_k, var) with DDPM's closed form (Ho et al. 2020, Eq. 7),
    here for K = 3 and step k = 2: abar_1 = 1 - b1, abar_2 = (1 - b1)(1 - b2)."""
    diff = D.Diffusion(unet.TemporalUNet(4, 8, (1,)), K=3)
    b1, b2 = 1e-4, (1e-4 + 0.02) / 2                                  # the linear schedule's first two betas
    a1, a2 = 1 - b1, (1 - b1) * (1 - b2)
    assert diff.post_c0[1].item() == pytest.approx(b2 * a1 ** 0.5 / (1 - a2), rel=1e-5)
    assert diff.post_ck[1].item() == pytest.approx((1 - a1) * (1 - b2) ** 0.5 / (1 - a2), rel=1e-5)
    assert diff.post_var[1].item() == pytest.approx(b2 * (1 - a1) / (1 - a2), rel=1e-5)
    assert diff.post_c0[0].item() == pytest.approx(1.0) and diff.post_var[0].item() == 0.0   # k = 1 gives tau0


def test_training_draws_every_diffusion_step_from_1_to_K():
    spy = ShapeSpy()
    diff = D.Diffusion(spy, K=5)
    D.train(diff, copy.deepcopy(diff), torch.optim.SGD(diff.parameters(), lr=0.0), torch.zeros(4, 2, 3),
            torch.ones(4, 3, dtype=torch.bool), 1, 0.0, 200, batch_size=4, progress=False)
    assert set(spy.steps) == {1, 2, 3, 4, 5}, "k ~ U{1..K}: never 0, never past K, each of them"
