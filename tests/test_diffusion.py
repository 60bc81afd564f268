"""diffusion.py: the temporal U-Net, Eq. 5, training, checkpoints and sampling."""
import copy
import re
import shutil
import time

import numpy as np
import pytest
import torch

import artifacts
import data
import diffusion as D


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


def test_global_row_weight_scales_only_the_reward_q_tot_and_done_rows():
    layout = data.feature_layout(n_agents=2, obs_dim=3, n_actions=2)        # F = 2 * (3 + 2 + 2) + 3 = 17
    assert D.global_row_weights(layout, 1.0) is None                        # Eq. 5 as written
    w = D.global_row_weights(layout, 10.0)
    outcome = [layout.reward, layout.q_tot, layout.done]
    assert w.mean().item() == pytest.approx(1.0)
    assert w[outcome].tolist() == pytest.approx([10 * w[0].item()] * 3)
    assert (w[[i for i in range(17) if i not in outcome]] == w[0]).all()   # every agent row alike
    tau0, valid = torch.zeros(2, 17, 4), torch.ones(2, 4, dtype=torch.bool)
    for row in (layout.reward, 0):                                         # an error on one row only
        pred = tau0.clone()
        pred[:, row] = 1.0
        plain = D.eaq_loss(pred, tau0, layout.q_tot, valid, 0.0)[1]
        weighted = D.eaq_loss(pred, tau0, layout.q_tot, valid, 0.0, w)[1]
        assert weighted.item() == pytest.approx(w[row].item() * plain.item())


@pytest.mark.parametrize("T", [7, 13, 16])
def test_unet_keeps_the_shape_for_any_T(T):
    net = D.TemporalUNet(n_features=11, dim=16, dim_mults=(1, 2, 4))
    out = net(torch.randn(3, 11, T), torch.tensor([1, 50, 100]))
    assert out.shape == (3, 11, T)


def test_q_sample_follows_the_schedule():
    diff = D.Diffusion(D.TemporalUNet(4, 8, (1,)), K=10)
    tau0, noise = torch.ones(2, 4, 5), torch.full((2, 4, 5), 2.0)
    k = torch.tensor([1, 10])
    out = diff.q_sample(tau0, k, noise)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 10, dtype=torch.float64), 0).float()
    torch.testing.assert_close(out[0], torch.full((4, 5), (abar[0].sqrt() + 2 * (1 - abar[0]).sqrt()).item()))
    torch.testing.assert_close(out[1], torch.full((4, 5), (abar[9].sqrt() + 2 * (1 - abar[9]).sqrt()).item()))


def tiny_args(dataset, out, **over):
    """diffusion.py flags of a tiny model; keyword arguments override (True adds a switch)."""
    flags = {"dataset": dataset, "out": str(out), "steps": 300, "batch_size": 8, "K": 50, "dim": 16,
             "dim_mults": "1 2", "scale": 1, "checkpoint_every": 100, "lam": 0.1, **over}
    argv = []
    for key, value in flags.items():
        argv.append("--" + key.replace("_", "-"))
        if value is not True:
            argv += str(value).split()
    return D.parse_args(argv)


@pytest.fixture(scope="module")
def trained(tiny_3m, tmp_path_factory):
    """A tiny model trained for 300 steps on 24 real 3m episodes, and its report."""
    out = tmp_path_factory.mktemp("diffusion")
    report = D.fit_and_sample(tiny_args(tiny_3m[0], out), progress=False)
    return out, report


def test_tiny_model_learns_how_long_episodes_last(trained, tiny_3m):
    out, report = trained
    syn = data.load_dataset(str(out / "synthetic.h5"))           # passes the schema checks
    assert syn.n_episodes == 24 and syn.attrs["synthetic"] and syn.attrs["lam"] == 0.1
    assert syn.attrs["diffusion_steps"] == report["model_steps"] == 300
    stats, real_stats = report["synthetic"], report["real"]
    # A 300-step width-16 model places the terminal step roughly, not sharply (its done peaks are
    # often below 0.5): lengths come out within about a third of D_real's, never beyond the window.
    assert abs(stats["length_mean"] - real_stats["length_mean"]) < 0.35 * real_stats["length_mean"]
    assert syn.lengths.max() <= report["horizon"] and stats["length_min"] >= 1


def test_report_gives_lambda_in_the_papers_units_and_the_hinge_share(trained):
    _, report = trained
    assert report["n_features"] == 3 * (75 + 2 * 8) + 3
    assert 0.0 < report["hinge_active_share"] <= 1.0
    units = report["lam_units"]
    assert report["bucket_width"] == 8 and 8 <= report["mean_window"] < report["horizon"]
    assert units["sum_over_matrix"] == pytest.approx(0.1 * report["n_features"] * report["mean_window"])
    assert units["q_in_data_units"] > 0


def test_sampling_uses_the_ema_weights(trained, tiny_3m):
    out, _ = trained
    model = D.load_checkpoint(str(out / "model.pt"))
    real = data.load_dataset(tiny_3m[0])
    T, n_features = model.config["horizon"], model.config["n_features"]
    horizons = D.episode_horizons(real.lengths, model.config["bucket_width"], T)

    def sample(net):
        g = torch.Generator().manual_seed(model.config["seed"])
        windows = D.synthetic_windows(horizons, real.n_episodes, g)
        return np.concatenate(list(D.sample_batches(net, model.normalizer, windows, T, n_features,
                                                    ddim_steps=20, generator=g, progress=False)))
    ema, online = sample(model.ema), sample(model.diffusion)
    syn = data.load_dataset(str(out / "synthetic.h5"))
    layout = data.feature_layout(3, 75, 8)
    r = layout.reward
    decoded = data.matrix_to_episodes(ema, layout, (model.normalizer.lo[r], model.normalizer.hi[r]))
    np.testing.assert_array_equal(decoded.lengths, syn.lengths)
    np.testing.assert_array_equal(decoded.actions[:, :syn.actions.shape[1]], syn.actions)
    np.testing.assert_allclose(decoded.obs[:, :syn.obs.shape[1]], syn.obs, atol=1e-6)
    assert not np.allclose(online, ema), "the online weights would give other samples"


def test_episode_windows_round_lengths_up_to_their_bucket():
    lengths = np.array([1, 8, 9, 17, 98, 100])
    np.testing.assert_array_equal(D.episode_horizons(lengths, 8, 100), [8, 8, 16, 24, 100, 100])
    np.testing.assert_array_equal(D.episode_horizons(lengths, 0, 100), [100] * 6)   # the paper's fixed T


class ShapeSpy(torch.nn.Module):
    """A one-weight 'network' that records the windows and episodes it is trained on."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, tau_k, k):
        self.seen.append((tau_k.shape[-1], tau_k[:, 0, 0].tolist()))
        return tau_k * self.w


def test_minibatches_come_from_one_bucket_cut_to_its_window():
    E, T = 6, 16
    tau0 = torch.zeros(E, 2, T)
    tau0[:, 0, 0] = torch.arange(E).float()                     # row 0, step 0 names the episode
    horizons = np.array([4, 4, 4, 4, 8, 16])                    # bucket sizes 4, 1, 1
    spy = ShapeSpy()
    diff = D.Diffusion(spy, K=10)
    diff.abar.fill_(1.0)                                        # tau_k = tau0: the spy sees the episodes
    ema = D.build({"n_features": 2, "dim": 8, "dim_mults": [1], "K": 10})[1]
    D.train(diff, ema, torch.optim.SGD(diff.parameters(), lr=0.0), tau0, torch.ones(E, T, dtype=torch.bool),
            1, 0.0, 600, horizons, batch_size=3, progress=False)
    windows = [w for w, _ in spy.seen]
    for w, episodes in spy.seen:
        assert {int(e) for e in episodes} <= set(np.flatnonzero(horizons == w)), (w, episodes)
    share = {w: windows.count(w) / len(windows) for w in (4, 8, 16)}
    assert share[4] == pytest.approx(4 / 6, abs=0.06) and share[8] == pytest.approx(1 / 6, abs=0.05)


def real_matrix(path):
    """(Episodes, layout, Eq. 4 matrix in data units, reward range) of a dataset file."""
    real = data.load_dataset(path)
    matrix = data.episodes_to_matrix(real)
    r = data.layout_of(real).reward
    return real, data.layout_of(real), matrix, (float(matrix[:, r].min()), float(matrix[:, r].max()))


def test_statistics_fed_batch_by_batch_equal_the_whole(tiny_3m):
    real, layout, matrix, reward_range = real_matrix(tiny_3m[0])
    threshold = data.damage_threshold(real)
    whole, parts = D.MatrixStats(layout, reward_range, "smax", threshold), D.MatrixStats(layout, reward_range,
                                                                                         "smax", threshold)
    whole.add(matrix)
    for chunk in np.array_split(matrix, 3):
        parts.add(chunk)
    a, b = whole.summary(), parts.summary()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True), key
    np.testing.assert_array_equal(whole.action_counts, parts.action_counts)
    assert a["attack_share"] == pytest.approx(data.attack_share(real))
    assert a["return_mean"] == pytest.approx(float(real.returns().mean()), abs=1e-4)
    assert a["win_share"] == pytest.approx(float(np.mean(real.returns() >= 18.0))) and a["win_share"] > 0
    assert data.win_share([20.0, 18.0, 17.9, 5.0]) == 0.5                  # a win's level: 90 % of 20
    assert a["q0_win_share"] == a["win_share"]                             # D_real: Q_tot at step 0 is the return
    assert a["q0_std"] == pytest.approx(a["return_std"], rel=1e-4)
    assert (a["damage_with_shooter"], a["health_gain_share"]) == (1.0, 0.0)   # decoded from Eq. 4 as recorded
    assert a["reward_matches_damage"] == 1.0 and abs(a["reward_minus_damage"]) < 1e-4
    assert a["reward_below_damage"] == 0.0
    assert a["attacks_that_damage"] == pytest.approx(
        data.damage_shares(data.damage_counts(real, threshold))["attacks_that_damage"])


def test_wins_are_counted_from_the_reward_row_and_from_q_tot_at_step_0_apart(tiny_3m):
    real, layout, matrix, reward_range = real_matrix(tiny_3m[0])
    wins = float(np.mean(real.returns() >= data.WIN_RETURN))
    no_rewards, no_q = matrix.copy(), matrix.copy()
    no_rewards[:, layout.reward] = 0.0                  # the reward row loses every win; the Q row keeps them
    no_q[:, layout.q_tot] = 0.0                         # and the other way round
    for m, reward_wins, q_wins in ((no_rewards, 0.0, wins), (no_q, wins, 0.0)):
        stats = D.MatrixStats(layout, reward_range)
        stats.add(m)
        s = stats.summary()
        assert (s["win_share"], s["q0_win_share"]) == pytest.approx((reward_wins, q_wins))
    assert wins > 0


def test_hinge_active_steps_are_counted():
    diff, ema = D.build({"n_features": 3, "dim": 8, "dim_mults": [1], "K": 10})
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


def test_the_q_hinge_raises_the_generated_q_bar(tiny_3m, tmp_path):
    q = {}
    for lam in (0.0, 1.0):
        report = D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path / f"lam{lam}", lam=lam, steps=400, scale=2),
                                  progress=False)
        q[lam] = report["synthetic"]["q_bar_mean"]
    assert q[1.0] > q[0.0] + 1.0, q


def test_checkpoint_reload_gives_identical_samples(trained):
    out, _ = trained
    model = D.load_checkpoint(str(out / "model.pt"))
    again = D.load_checkpoint(str(out / "model.pt"))
    F_, T = model.config["n_features"], model.config["horizon"]

    def sample(m):
        return np.concatenate(list(D.sample_batches(m.ema, m.normalizer, np.full(3, T), T, F_, 5,
                                                    generator=torch.Generator().manual_seed(4), progress=False)))
    a, b = sample(model), sample(again)
    np.testing.assert_array_equal(a, b)
    assert model.step == 300


def test_resume_continues_from_the_saved_step(tiny_3m, tmp_path):
    straight = tmp_path / "straight"
    D.fit_and_sample(tiny_args(tiny_3m[0], straight, steps=20, checkpoint_every=10), progress=False)
    split = tmp_path / "split"
    D.fit_and_sample(tiny_args(tiny_3m[0], split, steps=10, checkpoint_every=10), progress=False)
    saved = torch.load(split / "model.pt", weights_only=True)
    saved["train_cpu_seconds"] = 1e6                          # the first session's count, made unmistakable
    torch.save(saved, split / "model.pt")
    cpu = time.process_time()
    report = D.fit_and_sample(tiny_args(tiny_3m[0], split, steps=20, checkpoint_every=10, resume=True),
                              progress=False)
    cpu = time.process_time() - cpu
    assert report["trained_steps"] == 10 and report["model_steps"] == 20
    assert report["train_seconds_total"] >= report["train_seconds"] > 0
    assert 1e6 < report["train_cpu_seconds_total"] <= 1e6 + cpu and 0 < report["sample_cpu_seconds"] <= cpu
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    assert a["step"] == b["step"] == 20
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value)


def test_a_finished_model_asked_for_fewer_steps_is_reused_and_reported_truthfully(tiny_3m, tmp_path):
    D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path, steps=20, checkpoint_every=10), progress=False)
    before = (tmp_path / "model.pt").stat().st_mtime_ns
    report = D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path, steps=10, resume=True), progress=False)
    assert report["trained_steps"] == 0 and report["model_steps"] == 20
    assert (tmp_path / "model.pt").stat().st_mtime_ns == before
    assert data.load_dataset(str(tmp_path / "synthetic.h5")).attrs["diffusion_steps"] == 20


@pytest.mark.parametrize("change, message", [
    ({"dim": 8}, "--dim 16, not 8"),
    ({"dim_mults": "1"}, "--dim-mults [1, 2], not [1]"),
    ({"K": 40}, "--K 50, not 40"),
    ({"seed": 3}, "--seed 0, not 3"),
    ({"lam": 0.5}, "--lam 0.1, not 0.5"),
    ({"lr": 2e-4}, "--lr 0.001, not 0.0002"),
    ({"batch_size": 4}, "--batch-size 8, not 4"),
    ({"bucket_width": 0}, "--bucket-width 8, not 0"),
    ({"global_row_weight": 10.0}, "--global-row-weight 1.0, not 10.0"),
    ({"head_width": 64}, "--head-width 0, not 64"),
    ({"x0_skip": True}, "--x0-skip False, not True"),
])
def test_resume_refuses_another_configuration(tiny_3m, tmp_path, change, message):
    D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path, steps=5), progress=False)
    with pytest.raises(artifacts.InputError, match=re.escape(message)):
        D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path, steps=10, resume=True, **change), progress=False)


def test_the_global_row_weight_reaches_training_and_older_checkpoints_resume_as_weight_1(tiny_3m, tmp_path):
    models = {}
    for weight in (1.0, 10.0):
        report = D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path / str(weight), steps=5, global_row_weight=weight),
                                  progress=False)
        assert report["global_row_weight"] == weight
        models[weight] = torch.load(tmp_path / str(weight) / "model.pt", weights_only=True)["model"]
    assert any(not torch.equal(models[1.0][k], models[10.0][k]) for k in models[1.0])
    path = tmp_path / "1.0" / "model.pt"                # as written before the flag existed
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["global_row_weight"]
    torch.save(ckpt, path)
    report = D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path / "1.0", steps=10, resume=True), progress=False)
    assert report["trained_steps"] == 5 and report["global_row_weight"] == 1.0


def per_step_rank(net, n_features, T=16, batch=24):
    """Numerical rank of the network's outputs as per-step columns: (batch T, F) before any clip."""
    torch.manual_seed(0)
    with torch.no_grad():
        out = net(torch.randn(batch, n_features, T), torch.randint(1, 50, (batch,)))      # (B, F, T)
    columns = out.permute(0, 2, 1).reshape(-1, n_features).double()
    return int(torch.linalg.matrix_rank(columns - columns.mean(0), rtol=1e-6))


def test_the_head_width_bounds_the_rank_of_each_generated_step():
    n_features, dim = 100, 16
    assert per_step_rank(D.TemporalUNet(n_features, dim, (1, 2)), n_features) == dim     # affine in 16 numbers
    assert per_step_rank(D.TemporalUNet(n_features, dim, (1, 2), head_width=96), n_features) == 96
    assert per_step_rank(D.TemporalUNet(n_features, dim, (1, 2), head_width=0), n_features) == dim   # 0 = dim


def test_the_head_width_reaches_the_model_and_older_checkpoints_load_with_the_plain_head(tiny_3m, tmp_path):
    report = D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path / "wide", steps=5, head_width=32), progress=False)
    assert report["head_width"] == 32 and "U-Net head 32 channels wide" in D.format_report(report)
    weights = torch.load(tmp_path / "wide" / "model.pt", weights_only=True)["model"]
    assert weights["model.out.1.weight"].shape[1] == 32                  # the 1x1 convolution reads 32 channels
    D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path / "plain", steps=5), progress=False)
    path = tmp_path / "plain" / "model.pt"                               # as written before the flag existed
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["model"]["model.out.1.weight"].shape[1] == 16            # --dim 16
    del ckpt["config"]["head_width"]
    torch.save(ckpt, path)
    report = D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path / "plain", steps=10, resume=True), progress=False)
    assert report["trained_steps"] == 5 and report["head_width"] == 0
    assert "U-Net head" not in D.format_report(report)


def skip_model(n_features, K=1000, dim_mults=(1,)):
    """A skip-parametrised Diffusion whose U-Net outputs 0 (its last convolution zeroed): f_theta is the
    rows' affine estimate alone."""
    diff = D.Diffusion(D.TemporalUNet(n_features, 8, dim_mults), K=K, x0_skip=True)
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
    plain = D.Diffusion(D.TemporalUNet(20, 8, (1, 2)), K=1000)
    skip = D.Diffusion(D.TemporalUNet(20, 8, (1, 2)), K=1000, x0_skip=True)
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
    diff = D.Diffusion(D.TemporalUNet(6, 8, (1,)), K=10, x0_skip=x0_skip)
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
    report = D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path / "skip", steps=5, x0_skip=True), progress=False)
    assert report["x0_skip"] and "--x0-skip" in D.format_report(report)
    model = D.load_checkpoint(tmp_path / "skip" / "model.pt")
    real = data.load_dataset(tiny_3m[0])
    tau0, valid, _, _ = D.prepare(real, model.normalizer)
    expected = (tau0 * valid[:, None]).sum(dim=(0, 2)) / valid.sum()
    torch.testing.assert_close(model.ema.row_mean, expected)               # D_real's, not the zeros it started with
    assert model.config["x0_skip"] and expected.abs().max() > 0.1
    D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path / "plain", steps=5), progress=False)
    path = tmp_path / "plain" / "model.pt"                               # as written before the flag existed
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["x0_skip"]
    torch.save(ckpt, path)
    report = D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path / "plain", steps=10, resume=True), progress=False)
    assert report["trained_steps"] == 5 and not report["x0_skip"] and "--x0-skip" not in D.format_report(report)


@pytest.mark.parametrize("width", ["-8", "12"])
def test_a_head_width_groupnorm_cannot_split_is_refused(width, capsys):
    with pytest.raises(SystemExit):
        D.parse_args(["--dataset", "x.h5", "--out", "o", "--head-width", width])
    assert f"--head-width must be 0 (= --dim) or a positive multiple of 8" in capsys.readouterr().err


def test_resume_refuses_a_dataset_with_other_contents(tiny_3m, tmp_path):
    copy = tmp_path / "real.h5"
    shutil.copy(tiny_3m[0], copy)
    D.fit_and_sample(tiny_args(str(copy), tmp_path / "out", steps=5), progress=False)
    data.save_dataset(data.load_dataset(str(copy)).select(np.arange(20)), str(copy))
    with pytest.raises(artifacts.InputError, match=r"--dataset \(its contents\)"):
        D.fit_and_sample(tiny_args(str(copy), tmp_path / "out", steps=10, resume=True), progress=False)


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, malicious_pickle):
    payload, target = malicious_pickle
    ckpt = tmp_path / "model.pt"
    torch.save({"model": payload, "ema": {}, "optimizer": {}, "step": 0, "normalizer": {},
                "config": {}}, ckpt)
    with pytest.raises(artifacts.InputError, match=r"model.pt: not a readable EAQ checkpoint \(refused: loading "
                                                    r"it would call io.open; "):
        D.load_checkpoint(str(ckpt))
    assert not target.exists()
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(artifacts.InputError, match=r"model.pt: not a readable EAQ checkpoint \(refused: not a torch "
                                                    r"file of tensors and plain values\); delete it"):
        D.load_checkpoint(str(ckpt))


def test_bad_flags_fail_with_a_message(tiny_3m, tmp_path, capsys):
    for flag, value, message in (("--lam", "-1", "--lam must be >= 0"), ("--lam", "nan", "--lam must be a finite"),
                                 ("--lr", "nan", "--lr must be a finite"), ("--lr", "0", "--lr must be > 0"),
                                 ("--ddim-steps", "2000", "--ddim-steps must be in [0, K=1000]"),
                                 ("--seed", "-1", "--seed must be in [0, "),
                                 ("--bucket-width", "6", "--bucket-width must be 0 or a positive multiple of 4")):
        with pytest.raises(SystemExit):
            D.parse_args(["--dataset", tiny_3m[0], "--out", str(tmp_path), flag, value])
        assert message in capsys.readouterr().err
    with pytest.raises(artifacts.InputError, match="nothing to resume"):
        D.fit_and_sample(tiny_args(tiny_3m[0], tmp_path / "empty", resume=True), progress=False)


def test_nan_loss_stops_training():
    diff = D.Diffusion(D.TemporalUNet(5, 8, (1,)), K=10)
    ema = D.build({"n_features": 5, "dim": 8, "dim_mults": [1], "K": 10})[1]
    tau0 = torch.zeros(4, 5, 6)
    tau0[0, 0, 0] = float("nan")
    opt = torch.optim.Adam(diff.parameters())
    with pytest.raises(FloatingPointError, match="loss became nan at step 0"):
        D.train(diff, ema, opt, tau0, torch.ones(4, 6, dtype=torch.bool), 1, 0.1, 5,
                batch_size=4, progress=False)


def test_the_fidelity_verdict_sees_a_synthetic_set_without_attacks(tiny_3m):
    real, layout, matrix, reward_range = real_matrix(tiny_3m[0])

    def report_of(syn_matrix):
        threshold = data.damage_threshold(real)
        real_stats, syn_stats = (D.MatrixStats(layout, reward_range, "smax", threshold),
                                 D.MatrixStats(layout, reward_range, "smax", threshold))
        real_stats.add(matrix), syn_stats.add(syn_matrix)
        return D.synthetic_report(real_stats, syn_stats)
    same = report_of(matrix.copy())
    assert same["fidelity_misses"] == [] and same["action_tv_distance"] == 0.0
    assert same["real"]["attack_share"] == pytest.approx(data.attack_share(real))
    assert same["real"]["attack_share"] > 0.1
    passive = matrix.copy()
    valid = data.valid_steps(real.lengths, matrix.shape[-1])
    for n in range(layout.n_agents):
        rows = passive[:, layout.action(n)]                       # (E, A, T) one-hot action rows
        rows[:] = 0.0
        rows[:, 4] = valid                                        # every agent stops, every step
    report = report_of(passive)
    assert report["synthetic"]["attack_share"] == 0.0 and report["action_tv_distance"] > 0.5
    assert any(m.startswith("attack share 0.000") for m in report["fidelity_misses"])
    assert "MISSES the fidelity bar" in D.fidelity_line(report)
    retargeted = matrix.copy()                      # each agent's attack (and legal-attack) rows rolled by one
    for n in range(layout.n_agents):
        for rows in (layout.action(n), layout.avail(n)):
            block = retargeted[:, rows]
            block[:, 5:] = np.roll(block[:, 5:], 1, axis=1)
            retargeted[:, rows] = block
    report = report_of(retargeted)
    assert report["synthetic"]["attack_share"] == pytest.approx(same["synthetic"]["attack_share"])
    assert report["synthetic"]["damage_with_shooter"] < 0.5
    assert [m for m in report["fidelity_misses"] if m.startswith("damage with a shooter")], report["fidelity_misses"]
    assert same["synthetic"]["damage_with_shooter"] == 1.0


def test_the_report_prints_the_damage_check_and_reads_reports_without_it(tiny_3m):
    real, layout, matrix, reward_range = real_matrix(tiny_3m[0])
    stats = D.MatrixStats(layout, reward_range, "smax", data.damage_threshold(real))
    stats.add(matrix)
    report = {"real": stats.summary(), "synthetic": stats.summary(), "action_tv_distance": 0.0, "lam": 0.0,
              "lam_units": {"sum_over_matrix": 0.0, "q_in_data_units": 0.0}, "hinge_active_share": 1.0}
    printed = D.format_report(report)
    assert "damage_with_shooter        1.000     1.000" in printed
    assert "reward_matches_damage      1.000     1.000" in printed and "reward_minus_damage       +0.000" in printed
    assert f"{'reward_below_damage':22s}{'0.000':>10s}{'0.000':>10s}" in printed
    older = {**report, "real": dict(report["real"]), "synthetic": dict(report["synthetic"])}
    for side in ("real", "synthetic"):
        for key in ("attacks_that_damage", "damage_with_shooter", "health_gain_share", "reward_matches_damage",
                    "reward_minus_damage", "reward_below_damage"):
            del older[side][key]
    assert "damage_with_shooter" not in D.format_report(older) and "reward_" not in D.format_report(older)
    assert D.fidelity_misses(older) == []
