"""experiments/departures.py: the outcome-row weight, the wide head and the skip parametrisation."""
import copy

import pytest
import torch

import data
import diffusion as D
import eaq
import unet
from conftest import output_rank
from experiments import departures


def fit(dataset, out, resume=False, **over):
    """departures.fit_and_sample on a tiny model (keyword arguments override its configuration)."""
    config = departures.DepartureConfig(**{"steps": 300, "batch_size": 8, "K": 50, "dim": 16, "dim_mults": (1, 2),
                                           "scale": 1, "lam": 0.1, **over})
    return departures.fit_and_sample(config, dataset, str(out), resume, 100, progress=False)


def test_global_row_weight_scales_only_the_reward_q_tot_and_done_rows():
    layout = data.FeatureLayout(n_agents=2, obs_dim=3, n_actions=2)        # F = 2 * (3 + 2 + 2) + 3 = 17
    assert departures.global_row_weights(17, 1.0) is None                   # Eq. 5 as written
    w = departures.global_row_weights(17, 10.0)
    outcome = [layout.reward, layout.q_tot, layout.done]
    assert w.mean().item() == pytest.approx(1.0)
    assert w[outcome].tolist() == pytest.approx([10 * w[0].item()] * 3)
    assert (w[[i for i in range(17) if i not in outcome]] == w[0]).all()   # every agent row alike
    tau0, valid = torch.zeros(2, 17, 4), torch.ones(2, 4, dtype=torch.bool)
    noise, k = torch.zeros(2, 17, 4), torch.ones(2, dtype=torch.long)
    plain_model = departures.DepartureDiffusion(unet.TemporalUNet(17, 8, (1,)), 10)
    weighted_model = departures.DepartureDiffusion(unet.TemporalUNet(17, 8, (1,)), 10, w)
    for row in (layout.reward, 0):                                         # an error on one row only
        prediction = torch.zeros(2, 17, 4)
        prediction[:, row] = 1.0
        for m in (plain_model, weighted_model):
            m.f_theta = lambda tau_k, k, p=prediction: p
        plain = plain_model.loss(tau0, valid, layout.q_tot, 0.0, k, noise)[1]
        weighted = weighted_model.loss(tau0, valid, layout.q_tot, 0.0, k, noise)[1]
        assert plain.item() == pytest.approx(D.eaq_loss(prediction, tau0, layout.q_tot, valid, 0.0)[1].item())
        assert weighted.item() == pytest.approx(w[row].item() * plain.item())


def test_the_global_row_weight_reaches_training_and_its_checkpoint(tiny_3m, tmp_path):
    models = {}
    for weight in (1.0, 10.0):
        report = fit(tiny_3m[0], tmp_path / str(weight), steps=5, global_row_weight=weight)
        assert report["global_row_weight"] == weight
        models[weight] = torch.load(tmp_path / str(weight) / "model.pt", weights_only=True)["model"]
    assert any(not torch.equal(models[1.0][k], models[10.0][k]) for k in models[1.0] if k != "row_weights")
    report = fit(tiny_3m[0], tmp_path / "10.0", steps=10, resume=True, global_row_weight=10.0)
    assert report["trained_steps"] == 5
    with pytest.raises(eaq.artifacts.InputError, match="--global-row-weight 10.0, not 1.0"):
        fit(tiny_3m[0], tmp_path / "10.0", steps=12, resume=True)


def test_the_head_width_bounds_the_rank_of_each_generated_step():
    n_features, dim = 100, 16
    assert output_rank(unet.TemporalUNet(n_features, dim, (1, 2)), n_features) == dim     # affine in 16 numbers
    assert output_rank(unet.TemporalUNet(n_features, dim, (1, 2), head_width=96), n_features) == 96


def test_the_head_width_reaches_the_model_and_its_checkpoint_loads_back(tiny_3m, tmp_path):
    report = fit(tiny_3m[0], tmp_path / "wide", steps=5, head_width=32)
    assert report["head_width"] == 32
    weights = torch.load(tmp_path / "wide" / "model.pt", weights_only=True)["model"]
    assert weights["model.out.1.weight"].shape[1] == 32                  # the 1x1 convolution reads 32 channels
    model = D.load_checkpoint(str(tmp_path / "wide" / "model.pt"), departures.any_build)
    assert model.ema.model.out[1].weight.shape[1] == 32
    eaq.fit_and_sample(eaq.DiffusionConfig(steps=5, batch_size=8, K=50, dim=16, dim_mults=(1, 2), scale=1,
                                           network="flat"), tiny_3m[0], str(tmp_path / "plain"), progress=False)
    plain = D.load_checkpoint(str(tmp_path / "plain" / "model.pt"), departures.any_build)   # the paper's model
    assert type(plain.ema) is D.Diffusion and plain.ema.model.out[1].weight.shape[1] == 16


def skip_model(n_features, K=1000, dim_mults=(1,)):
    """A skip-parametrised Diffusion whose U-Net outputs 0 (its last convolution zeroed): f_theta is the
    rows' affine estimate alone."""
    diff = departures.DepartureDiffusion(unet.TemporalUNet(n_features, 8, dim_mults), K, x0_skip=True)
    with torch.no_grad():
        diff.model.out[1].weight.zero_(), diff.model.out[1].bias.zero_()
    return diff


def test_the_skip_is_the_least_squares_affine_estimate_and_c_out_its_error():
    diff = skip_model(2)
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([-0.8, 0.3]), torch.tensor([0.5, 1.0])
    tau0 = torch.randn(20000, 2, 1, generator=g) * std[None, :, None] + mean[None, :, None]
    diff.set_row_moments(tau0, torch.ones(20000, 1, dtype=torch.bool))
    k = torch.full((20000,), 300)
    tau_k = diff.q_sample(tau0, k, torch.randn(tau0.shape, generator=g))
    x, y = tau_k[:, :, 0], tau0[:, :, 0]                                                # (n, F)
    slope = ((x - x.mean(0)) * (y - y.mean(0))).mean(0) / x.var(0, unbiased=False)    # least squares, per row
    c_skip, c_out = diff.skip_coefficients(k[:1])
    torch.testing.assert_close(c_skip[0, :, 0], slope, rtol=0.02, atol=0.0)
    with torch.no_grad():
        estimate = diff.f_theta(tau_k, k)[:, :, 0]
    torch.testing.assert_close(estimate.mean(0), y.mean(0), rtol=0.0, atol=0.02)        # no bias: the means count
    torch.testing.assert_close(c_out[0, :, 0], (y - estimate).pow(2).mean(0).sqrt(), rtol=0.02, atol=0.0)


def test_with_the_skip_even_an_untrained_network_hands_back_a_nearly_clean_input():
    torch.manual_seed(0)
    plain = D.Diffusion(unet.TemporalUNet(20, 8, (1, 2)), K=1000)
    skip = departures.DepartureDiffusion(unet.TemporalUNet(20, 8, (1, 2)), 1000, x0_skip=True)
    tau0 = torch.rand(4, 20, 8) * 2 - 1                                                 # (B, F, T) in [-1, 1]
    skip.set_row_moments(tau0, torch.ones(4, 8, dtype=torch.bool))
    k = torch.ones(4, dtype=torch.long)                                                 # the least noise
    tau_1 = plain.q_sample(tau0, k, torch.randn(tau0.shape))
    with torch.no_grad():
        assert (skip.predict_tau0(tau_1, k) - tau0).abs().max() < 0.05
        assert (plain.predict_tau0(tau_1, k) - tau0).abs().max() > 0.5


@pytest.mark.parametrize("x0_skip", [False, True])
def test_training_scores_f_theta_the_skip_included(x0_skip):
    torch.manual_seed(0)
    diff = departures.DepartureDiffusion(unet.TemporalUNet(6, 8, (1,)), 10, x0_skip=x0_skip)
    with torch.no_grad():
        diff.model.out[1].weight.zero_(), diff.model.out[1].bias.zero_()     # U(tau_k, k) = 0
    tau0 = torch.full((4, 6, 8), 0.5)                                       # every row constant
    valid = torch.ones(4, 8, dtype=torch.bool)
    if x0_skip:
        diff.set_row_moments(tau0, valid)
    losses = D.train(diff, copy.deepcopy(diff), torch.optim.SGD(diff.parameters(), lr=0.0), tau0, valid, 0, 0.0, 1,
                     batch_size=4, progress=False)
    # without the skip f_theta = U = 0, an error of 0.5^2; with it a constant row is generated as its mean
    assert losses["diffusion"] == pytest.approx(0.0 if x0_skip else 0.25, abs=1e-10)


def test_row_moments_count_only_valid_steps():
    diff = skip_model(2, K=10)
    tau0 = torch.tensor([[[1.0, 3.0, 9.0], [2.0, 4.0, 9.0]]])                          # (1, F=2, T=3)
    diff.set_row_moments(tau0, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(diff.row_mean, torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(diff.row_var, torch.tensor([1.0, 1.0]))


def test_the_skip_reaches_training_and_its_moments_travel_in_the_checkpoint(tiny_3m, tmp_path):
    report = fit(tiny_3m[0], tmp_path / "skip", steps=5, x0_skip=True)
    assert report["x0_skip"]
    model = D.load_checkpoint(str(tmp_path / "skip" / "model.pt"), departures.any_build)
    real = data.load_dataset(tiny_3m[0])
    tau0, valid, _, _ = D.prepare(real, model.normalizer)
    expected = (tau0 * valid[:, None]).sum(dim=(0, 2)) / valid.sum()
    torch.testing.assert_close(model.ema.row_mean, expected)               # D_real's, not the zeros it started with
    assert model.config["x0_skip"] and expected.abs().max() > 0.1
    report = fit(tiny_3m[0], tmp_path / "skip", steps=10, resume=True, x0_skip=True)
    assert report["trained_steps"] == 5
    resumed = D.load_checkpoint(str(tmp_path / "skip" / "model.pt"), departures.any_build)
    torch.testing.assert_close(resumed.diffusion.row_mean, expected)        # the moments survive the resume


@pytest.mark.parametrize("width", ["-8", "12"])
def test_a_head_width_groupnorm_cannot_split_is_refused(width, capsys):
    with pytest.raises(SystemExit):
        departures.main(["--dataset", "x.h5", "--out", "o", "--head-width", width])
    assert "--head-width must be 0 (the network's own) or a positive multiple of 8" in capsys.readouterr().err
