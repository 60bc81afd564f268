"""train.py: the end-to-end command, its stage cache and its flag checks."""
import json
import math
import os

import pytest
import torch

import diffusion
import train

TINY = ["--scenario", "3m", "--quality", "poor", "--fraction", "0.0005", "--iters", "10",
        "--diffusion-steps", "10", "--dim", "8", "--ddim-steps", "2", "--scale", "2",
        "--eval-every", "5", "--eval-episodes", "4"]
EAQ_TINY = "eaq-lam0.1-k10-dim8-ddim2-S2-s0"                        # λ, steps, width, sampler, S, seed


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    train.main(TINY + ["--out", str(out), "--device", "cpu"])
    return out


def test_tiny_end_to_end_run_writes_finite_results(tiny_run):
    path = tiny_run / "results" / f"3m-poor-eps0.5-n24-s0-cql-{EAQ_TINY}-it10-s0" / "results.json"
    results = json.loads(path.read_text())
    final = results["final"]
    for key in ("return_mean", "return_std", "normalised_return", "win_rate"):
        assert math.isfinite(final[key])
    assert final["normalised_return"] == pytest.approx(final["return_mean"] / 20)
    assert results["dataset"]["episodes"] == 24                      # round(0.0005 * 48 779)
    assert results["augmentation_report"]["synthetic"]["episodes"] == 48   # S = 2
    assert (path.parent / "metrics.csv").exists() and (path.parent / "curve.png").exists()


def test_a_rerun_with_another_learner_reuses_dataset_and_diffusion(tiny_run, monkeypatch, capsys):
    def no_retraining(*args, **kwargs):
        raise AssertionError("the diffusion model was trained again")
    monkeypatch.setattr(diffusion, "fit_and_sample", no_retraining)
    train.main(TINY + ["--out", str(tiny_run), "--algo", "bcq"])
    assert "reusing the diffusion model" in capsys.readouterr().out
    assert (tiny_run / "results" / f"3m-poor-eps0.5-n24-s0-bcq-{EAQ_TINY}-it10-s0" / "results.json").exists()
    assert len(os.listdir(tiny_run / "datasets")) == 1


@pytest.mark.parametrize("flag, value, message", [
    ("--lam", "-1", "--lam must be >= 0"),
    ("--scenario", "4m", "unknown scenario '4m'"),
    ("--fraction", "0", "--fraction must be in (0, 1]"),
    ("--iters", "0", "--iters must be at least 1"),
    ("--device", "tpu9", "--device 'tpu9' is not a torch device"),
    pytest.param("--device", "cuda", "--device cuda: CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_flags_fail_before_any_work(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit):
        train.main([flag, value, "--out", str(tmp_path / "runs")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
