"""train.py: the end-to-end command, its stage cache keys, seeding and its flag checks."""
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

import eaq
import learner
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--scenario", "3m", "--quality", "poor", "--fraction", "0.0005", "--iters", "10",
        "--diffusion-steps", "10", "--dim", "8", "--ddim-steps", "2", "--scale", "2",
        "--eval-every", "5", "--eval-episodes", "4"]


def run_dir(out, *extra):
    return train.result_dir(train.parse_args(TINY + ["--out", str(out), *extra]))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    train.main(TINY + ["--out", str(out), "--device", "cpu"])
    return out


def test_tiny_end_to_end_run_trains_on_real_and_synthetic_episodes(tiny_run):
    results = json.loads((tiny_run / os.path.relpath(run_dir(tiny_run), tiny_run) / "results.json").read_text())
    assert results["dataset"]["episodes"] == 24                      # round(0.0005 * 48 779)
    assert results["augmentation_report"]["synthetic"]["episodes"] == 48   # S = 2
    assert results["training_episodes"] == (1 + 2) * 24, "the learner sees D_real ∪ D_syn, (1 + S) |D_real|"
    assert results["final"]["iteration"] == 10 and "return_mean" in results["heldout"]
    assert results["generator"] == "agents8-attention-head96", "the network that made D_syn, from its attrs"
    assert os.path.exists(os.path.join(run_dir(tiny_run), "metrics.csv"))
    report, cpu = results["augmentation_report"], results["cpu_seconds"]
    assert set(cpu) == set(results["seconds"]) == {"dataset", "diffusion", "learner"}
    assert min(cpu.values()) > 0
    assert cpu["diffusion"] == report["train_cpu_seconds_total"] + report["sample_cpu_seconds"]


def test_the_summary_gives_d_syn_wins_by_both_rows(tiny_run):
    results = json.loads((tiny_run / os.path.relpath(run_dir(tiny_run), tiny_run) / "results.json").read_text())
    real, syn = results["augmentation_report"]["real"], results["augmentation_report"]["synthetic"]
    syn["win_share"], syn["q0_win_share"], real["win_share"] = 0.25, 0.125, 0.5
    lines = train.summary_lines(results)
    assert "wins 25.0% (D_real 50.0%), by its Q_tot row 12.5%," in next(x for x in lines if x.startswith("D_syn:"))
    assert any(x.startswith("D_syn MISSES the fidelity bar") or x == "D_syn meets the fidelity bar" for x in lines)
    assert results["config"]["diffusion"]["steps"] == 10 and results["config"]["alpha"] == 3.0


def test_a_rerun_with_another_learner_reuses_dataset_and_diffusion(tiny_run, monkeypatch, capsys):
    def no_retraining(*args, **kwargs):
        raise AssertionError("the diffusion model was trained again")
    monkeypatch.setattr(eaq, "fit_and_sample", no_retraining)
    train.main(TINY + ["--out", str(tiny_run), "--algo", "bcq"])
    assert "reusing the diffusion model" in capsys.readouterr().out
    assert os.path.exists(os.path.join(run_dir(tiny_run, "--algo", "bcq"), "results.json"))
    first, reuser = (json.loads(open(os.path.join(run_dir(tiny_run, *extra), "results.json")).read())
                     for extra in ((), ("--algo", "bcq")))
    assert reuser["cpu_seconds"]["diffusion"] == first["cpu_seconds"]["diffusion"], \
        "a run that reuses the model reports the model's CPU cost, not its own few seconds of loading it"
    assert len(os.listdir(tiny_run / "datasets")) == 1
    train.main(TINY + ["--out", str(tiny_run)])                      # identical: only prints the stored results
    assert "reusing" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value", [
    ("--eval-episodes", "8"), ("--eval-every", "2"), ("--backend", "smac"), ("--grad-clip", "0"),
    ("--no-last-action", None), ("--lam", "0.5"), ("--diffusion-steps", "11"), ("--ddim-steps", "3"),
    ("--diffusion-seed", "3"), ("--seed", "2"), ("--dim", "16"), ("--bucket-width", "0"), ("--scale", "3"),
    ("--fraction", "0.001"), ("--iters", "11"),
])
def test_every_flag_that_changes_a_result_changes_its_cache_key(tmp_path, flag, value):
    assert run_dir(tmp_path, flag, *[value] * (value is not None)) != run_dir(tmp_path)
    assert run_dir(tmp_path) == run_dir(tmp_path), "the same flags give the same key"


def test_a_stage_is_named_by_a_hash_of_its_whole_configuration(tmp_path, monkeypatch):
    args = train.parse_args(TINY + ["--out", str(tmp_path)])
    name, result = train.eaq_dir(args), train.result_dir(args)
    assert "/3m-poor-" in name and "-lam0.1-k10-agents-dim8-b8-ddim2-S2-s0-" in name
    config, learner_config = train.diffusion_config(args), train.learner_config(args)
    monkeypatch.setattr(train, "diffusion_config", lambda a: dataclasses.replace(config, ema_decay=0.9))  # no flag
    assert train.eaq_dir(args) != name and train.result_dir(args) != result      # the EAQ run's data changed too
    monkeypatch.setattr(train, "diffusion_config", lambda a: config)
    monkeypatch.setattr(train, "learner_config", lambda a: dataclasses.replace(learner_config, lr=1e-3))
    assert train.eaq_dir(args) == name and train.result_dir(args) != result


def test_diffusion_flags_key_the_diffusion_stage_and_learner_flags_do_not(tmp_path):
    base = train.parse_args(TINY + ["--out", str(tmp_path)])
    for extra in (["--lam", "0.5"], ["--dim", "16"], ["--scale", "3"], ["--diffusion-seed", "4"],
                  ["--device", "cpu:0"]):
        assert train.eaq_dir(train.parse_args(TINY + ["--out", str(tmp_path)] + extra)) != train.eaq_dir(base)
    for extra in (["--algo", "bcq"], ["--seed", "3", "--diffusion-seed", "0"], ["--grad-clip", "1"]):
        assert train.eaq_dir(train.parse_args(TINY + ["--out", str(tmp_path)] + extra)) == train.eaq_dir(base)


def test_the_help_shows_at_most_25_flags_each_with_its_default(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    flags = [line.split()[0] for line in text.splitlines() if line.startswith("  -")]
    assert len(flags) <= 25 and "--lam" in text and "--diffusion-steps" in text
    assert text.count("(default:") == len(flags) - 2              # all but -h and the switch --no-last-action


def metrics_of(out, *extra):
    subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *TINY, "--out", str(out), *extra],
                   check=True, capture_output=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    with open(os.path.join(run_dir(out, *extra), "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_the_same_command_in_two_processes_gives_the_same_numbers(tiny_run, tmp_path):
    shutil.copytree(tiny_run / "datasets", tmp_path / "a" / "datasets")
    shutil.copytree(tiny_run / "datasets", tmp_path / "b" / "datasets")
    first, again = metrics_of(tmp_path / "a"), metrics_of(tmp_path / "b")   # diffusion model, D_syn, learner
    assert first == again
    other = metrics_of(tmp_path / "b", "--seed", "1")
    assert [r["td_loss"] for r in other] != [r["td_loss"] for r in first]


@pytest.mark.parametrize("flag, value, message", [
    ("--lam", "-1", "--lam must be >= 0"),
    ("--lam", "nan", "--lam must be a finite number"),
    ("--lam", "inf", "--lam must be a finite number"),
    ("--scenario", "4m", "unknown scenario '4m'"),
    ("--fraction", "0", "--fraction must be in (0, 1]"),
    ("--iters", "0", "--iters must be at least 1"),
    ("--ddim-steps", "1001", "--ddim-steps must be in [0, K=1000]"),
    ("--seed", "99999999999", "--seed must be in [0, 1,000,000,000]"),
    ("--diffusion-steps", "0", "--diffusion-steps must be at least 1"),
    ("--dim", "12", "--dim must be a multiple of 8"),
    ("--bucket-width", "6", "--bucket-width must be 0 or a positive multiple of 4"),
    ("--eval-episodes", "0", "--eval-episodes must be at least 1"),
    ("--grad-clip", "-1", "--grad-clip must be >= 0"),
    ("--diffusion-seed", "-1", "--diffusion-seed must be in [0, 1,000,000,000]"),
    ("--device", "tpu9", "--device 'tpu9' is not a torch device"),
    pytest.param("--device", "cuda", "--device cuda: CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_flags_fail_before_any_work(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit):
        train.main([flag, value, "--out", str(tmp_path / "runs")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_unwritable_out_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    start = time.time()
    with pytest.raises(SystemExit) as stop:
        train.main(TINY + ["--out", str(blocker)])
    assert stop.value.code == 2 and time.time() - start < 5
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "cannot write there" in err and len(err.strip().splitlines()) == 1


def test_the_learning_curve_is_titled_with_the_data_the_learner_trained_on(tiny_run, tmp_path, monkeypatch):
    shutil.copytree(tiny_run / "datasets", tmp_path / "datasets")
    titles = []
    monkeypatch.setattr(learner, "write_metrics", lambda rows, csv_path, png_path, title: titles.append(title))
    for aug in ("eaq", "rad-s"):
        train.run(train.parse_args(TINY + ["--out", str(tmp_path), "--aug", aug, "--iters", "5"]))
    assert titles == ["QmixCQL 3m-poor, D_real ∪ D_syn (EAQ λ=0.1), seed=0", "QmixCQL 3m-poor, D_real, rad-s, seed=0"]
