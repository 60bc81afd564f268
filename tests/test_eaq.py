"""eaq.py: Algorithm 1 on a dataset file — training, checkpoints and resuming, D_syn and its report, the flags."""
import dataclasses
import re
import shutil
import time

import numpy as np
import pytest
import torch

import artifacts
import data
import diffusion as D
import eaq


def tiny_config(**over):
    """The configuration of a tiny model; keyword arguments override it."""
    return eaq.DiffusionConfig(**{"steps": 300, "batch_size": 8, "K": 50, "dim": 16, "dim_mults": (1, 2),
                                  "scale": 1, "lam": 0.1, **over})


def fit(dataset, out, resume=False, checkpoint_every=100, **over):
    """eaq.fit_and_sample on a tiny model (keyword arguments override its configuration)."""
    return eaq.fit_and_sample(tiny_config(**over), dataset, str(out), resume, checkpoint_every, progress=False)


@pytest.fixture(scope="module")
def trained(tiny_3m, tmp_path_factory):
    """A tiny model trained for 300 steps on 24 real 3m episodes, and its report."""
    out = tmp_path_factory.mktemp("diffusion")
    return out, fit(tiny_3m[0], out)


def test_tiny_model_learns_how_long_episodes_last(trained, tiny_3m):
    out, report = trained
    syn = data.load_dataset(str(out / "synthetic.h5"))           # passes the schema checks
    assert syn.n_episodes == 24 and syn.attrs["synthetic"] and syn.attrs["lam"] == 0.1
    assert syn.attrs["diffusion_steps"] == report["model_steps"] == 300
    assert syn.attrs["generator"] == "agents16-x1x2-attention-head96"   # 3m: an agent's 91 rows, rounded up to 8
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
    layout = data.FeatureLayout(3, 75, 8)
    r = layout.reward
    decoded = data.matrix_to_episodes(ema, layout, (model.normalizer.lo[r], model.normalizer.hi[r]))
    np.testing.assert_array_equal(decoded.lengths, syn.lengths)
    np.testing.assert_array_equal(decoded.actions[:, :syn.actions.shape[1]], syn.actions)
    np.testing.assert_allclose(decoded.obs[:, :syn.obs.shape[1]], syn.obs, atol=1e-6)
    assert not np.allclose(online, ema), "the online weights would give other samples"


def test_the_q_hinge_raises_the_generated_q_bar(tiny_3m, tmp_path):
    q = {}
    for lam in (0.0, 1.0):
        report = fit(tiny_3m[0], tmp_path / f"lam{lam}", lam=lam, steps=400, scale=2)
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
    fit(tiny_3m[0], straight, steps=20, checkpoint_every=10)
    split = tmp_path / "split"
    fit(tiny_3m[0], split, steps=10, checkpoint_every=10)
    saved = torch.load(split / "model.pt", weights_only=True)
    saved["train_cpu_seconds"] = 1e6                          # the first session's count, made unmistakable
    torch.save(saved, split / "model.pt")
    cpu = time.process_time()
    report = fit(tiny_3m[0], split, steps=20, checkpoint_every=10, resume=True)
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
    fit(tiny_3m[0], tmp_path, steps=20, checkpoint_every=10)
    before = (tmp_path / "model.pt").stat().st_mtime_ns
    report = fit(tiny_3m[0], tmp_path, steps=10, resume=True)
    assert report["trained_steps"] == 0 and report["model_steps"] == 20
    assert (tmp_path / "model.pt").stat().st_mtime_ns == before
    assert data.load_dataset(str(tmp_path / "synthetic.h5")).attrs["diffusion_steps"] == 20


@pytest.mark.parametrize("change, message", [
    ({"dim": 8}, "--dim 16, not 8"),
    ({"dim_mults": (1,)}, "--dim-mults [1, 2], not [1]"),
    ({"K": 40}, "--K 50, not 40"),
    ({"seed": 3}, "--seed 0, not 3"),
    ({"lam": 0.5}, "--lam 0.1, not 0.5"),
    ({"lr": 2e-4}, "--lr 0.001, not 0.0002"),
    ({"batch_size": 4}, "--batch-size 8, not 4"),
    ({"bucket_width": 0}, "--bucket-width 8, not 0"),
    ({"ema_decay": 0.9}, "--ema-decay 0.995, not 0.9"),
])
def test_resume_refuses_another_configuration(tiny_3m, tmp_path, change, message):
    fit(tiny_3m[0], tmp_path, steps=5)
    with pytest.raises(artifacts.InputError, match=re.escape(message)):
        fit(tiny_3m[0], tmp_path, steps=10, resume=True, **change)


def test_resume_refuses_a_dataset_with_other_contents(tiny_3m, tmp_path):
    copy = tmp_path / "real.h5"
    shutil.copy(tiny_3m[0], copy)
    fit(str(copy), tmp_path / "out", steps=5)
    data.save_dataset(data.load_dataset(str(copy)).select(np.arange(20)), str(copy))
    with pytest.raises(artifacts.InputError, match=r"--dataset \(its contents\)"):
        fit(str(copy), tmp_path / "out", steps=10, resume=True)


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
            eaq.parse_args(["--dataset", tiny_3m[0], "--out", str(tmp_path), flag, value])
        assert message in capsys.readouterr().err
    with pytest.raises(artifacts.InputError, match="nothing to resume"):
        fit(tiny_3m[0], tmp_path / "empty", resume=True)


def test_an_automatic_resume_starts_afresh_from_a_checkpoint_of_another_configuration(tiny_3m, tmp_path, capsys):
    fit(tiny_3m[0], tmp_path, steps=5)
    report = fit(tiny_3m[0], tmp_path, steps=5, resume="auto", lam=0.5)       # train.py's cache: another λ
    assert "training the diffusion model from scratch" in capsys.readouterr().out
    assert report["trained_steps"] == 5 and report["lam"] == 0.5
    report = fit(tiny_3m[0], tmp_path, steps=8, resume="auto", lam=0.5)       # this one fits: it goes on
    assert report["trained_steps"] == 3 and report["model_steps"] == 8


def test_a_refused_dataset_leaves_no_output_folder(tmp_path):
    with pytest.raises(artifacts.InputError, match="no such dataset file"):
        fit(str(tmp_path / "missing.h5"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_truncated_checkpoint_is_refused_in_the_projects_own_words(trained, tmp_path):
    out, _ = trained
    cut = tmp_path / "model.pt"
    cut.write_bytes((out / "model.pt").read_bytes()[:200])
    with pytest.raises(artifacts.InputError) as refused:
        D.load_checkpoint(str(cut))
    assert str(refused.value) == (f"{cut}: not a readable EAQ checkpoint (refused: a damaged or truncated torch file); "
                                  f"delete it to train again")


def test_a_generator_is_named_by_its_network_levels_mixing_and_head():
    def name(**over):
        return eaq.generator_name(dataclasses.asdict(eaq.DiffusionConfig(**over)), 91)
    assert name() == "agents32-attention-head96"
    assert name(head_width=32) == "agents32-attention"
    assert name(dim=128, mixing="mean") == "agents128-mean", "a trunk wider than an agent's rows is its own head"
    assert name(dim=96, dim_mults=(1, 1, 1)) == "agents96-x1x1x1-attention"
    assert name(network="flat", dim=40) == "flat40"
    assert name(network="flat", dim=40, head_width=280) == "flat40-head280"
