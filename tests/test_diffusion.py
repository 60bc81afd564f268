"""diffusion.py: the temporal U-Net, Eq. 5, training, checkpoints and sampling."""
import os

import numpy as np
import pytest
import torch

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
    argv = ["--dataset", dataset, "--out", str(out), "--steps", "300", "--batch-size", "8",
            "--K", "50", "--dim", "16", "--dim-mults", "1", "2", "--scale", "1",
            "--checkpoint-every", "100", "--lam", "0.1"]
    for key, value in over.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif flag in argv:
            argv[argv.index(flag) + 1] = str(value)
        else:
            argv += [flag, str(value)]
    return D.parse_args(argv)


@pytest.fixture(scope="module")
def trained(tiny_3m, tmp_path_factory):
    """A tiny model trained for 300 steps on 24 real 3m episodes, and its report."""
    out = tmp_path_factory.mktemp("diffusion")
    report = D.fit_and_sample(tiny_args(tiny_3m[0], out), progress=False)
    return out, report


def test_tiny_model_samples_valid_episodes(trained, tiny_3m):
    out, report = trained
    syn = data.load_dataset(str(out / "synthetic.h5"))           # passes the schema checks
    real = data.load_dataset(tiny_3m[0])
    assert syn.n_episodes == real.n_episodes and syn.attrs["synthetic"] and syn.attrs["lam"] == 0.1
    T = syn.rewards.shape[1]
    assert T == real.rewards.shape[1]
    valid = data.valid_steps(syn.lengths, T)
    legal = np.take_along_axis(syn.avail[:, :T], syn.actions[..., None], axis=-1)[..., 0]
    assert legal[valid].all()
    assert (syn.dones.sum(axis=1) == 1).all() and (syn.lengths >= 1).all() and (syn.lengths <= T).all()
    stats, real_stats = report["synthetic"], report["real"]
    assert stats["ended_share"] > 0.5, "the model learned that episodes end"
    assert abs(stats["length_mean"] - real_stats["length_mean"]) < 3.0, "... and when they end"


def test_checkpoint_reload_gives_identical_samples(trained):
    out, _ = trained
    _, ema, ckpt = D.load_checkpoint(str(out / "model.pt"))
    _, ema_again, _ = D.load_checkpoint(str(out / "model.pt"))
    norm = data.Normalizer.from_state_dict(ckpt["normalizer"])
    shape = (ckpt["config"]["n_features"], ckpt["config"]["horizon"])
    a = D.sample_matrices(ema, norm, 3, shape, ddim_steps=5, seed=4, progress=False)
    b = D.sample_matrices(ema_again, norm, 3, shape, ddim_steps=5, seed=4, progress=False)
    np.testing.assert_array_equal(a, b)
    assert ckpt["step"] == 300


def test_resume_continues_from_the_saved_step(tiny_3m, tmp_path):
    straight = tmp_path / "straight"
    D.fit_and_sample(tiny_args(tiny_3m[0], straight, steps=20, checkpoint_every=10), progress=False)
    split = tmp_path / "split"
    D.fit_and_sample(tiny_args(tiny_3m[0], split, steps=10, checkpoint_every=10), progress=False)
    report = D.fit_and_sample(tiny_args(tiny_3m[0], split, steps=20, checkpoint_every=10, resume=True),
                              progress=False)
    assert report["trained_steps"] == 10
    a = torch.load(straight / "model.pt", weights_only=False)
    b = torch.load(split / "model.pt", weights_only=False)
    assert a["step"] == b["step"] == 20
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value)


def test_bad_flags_fail_with_a_message(tiny_3m, tmp_path, capsys):
    with pytest.raises(SystemExit):
        D.parse_args(["--dataset", tiny_3m[0], "--out", str(tmp_path), "--lam", "-1"])
    assert "--lam must be >= 0" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
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
    assert not os.path.exists("model.pt")
