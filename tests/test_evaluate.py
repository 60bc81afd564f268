"""evaluate.py: the Table 1 writer and the figures."""
import os

import numpy as np
import pytest

import data
import evaluate


def tiny_rows():
    """Two seeds per cell, CQL only; EAQ at two λ in 3m-medium."""
    returns = {
        ("medium", "original", 0.0): [2, 4], ("medium", "RAD-s", 0.0): [5, 5],
        ("medium", "RAD-m", 0.0): [1, 3], ("medium", "EAQ^-Q", 0.0): [6, 8],
        ("medium", "EAQ", 0.1): [8, 10], ("medium", "EAQ", 0.5): [4, 4],
        ("poor", "original", 0.0): [1, 1], ("poor", "RAD-s", 0.0): [2, 2],
        ("poor", "RAD-m", 0.0): [0, 2], ("poor", "EAQ^-Q", 0.0): [3, 3],
        ("poor", "EAQ", 0.01): [2, 4],
    }
    return [{"scenario": "3m", "quality": q, "algo": "cql", "method": m, "lam": lam, "seed": seed,
             "return_mean": r}
            for (q, m, lam), values in returns.items() for seed, r in enumerate(values)]


def test_table1_markdown_matches_the_papers_format():
    expected = (
        "| scenario | CQL original | CQL RAD-s | CQL RAD-m | CQL EAQ^-Q | CQL EAQ |\n"
        "|---|---|---|---|---|---|\n"
        "| 3m-medium | 3.00 ± 1.00 | 5.00 ± 0.00 | 2.00 ± 1.00 | 7.00 ± 1.00 | **9.00 ± 1.00 (λ=0.1)** |\n"
        "| 3m-poor | 1.00 ± 0.00 | 2.00 ± 0.00 | 1.00 ± 1.00 | **3.00 ± 0.00** | **3.00 ± 1.00 (λ=0.01)** |\n"
        "| AVG-medium | 3.00 | 5.00 | 2.00 | 7.00 | **9.00** |\n"
        "| AVG-poor | 1.00 | 2.00 | 1.00 | **3.00** | **3.00** |\n"
        "\n"
        "EAQ over original, medium: +30.0 % normalised return (mean over CQL)\n"
        "EAQ over original, poor: +10.0 % normalised return (mean over CQL)\n")
    assert evaluate.table1_markdown(tiny_rows(), algos=("cql",)) == expected


def test_table1_runs_cover_every_method_and_lambda():
    runs = list(evaluate.table1_runs(["3m"], ["poor"], ["cql", "bcq"], [0, 1], [0.5, 0.1]))
    assert len(runs) == 2 * 2 * (4 + 2)
    methods = [m for m, _ in runs]
    assert methods.count("EAQ") == 8 and methods.count("original") == 4
    eaq_q = [flags for m, flags in runs if m == "EAQ^-Q"][0]
    assert eaq_q[eaq_q.index("--lam") + 1] == "0"


def test_focus_fire_and_tsne_figures(tiny_3m, tmp_path):
    real = data.load_dataset(tiny_3m[0])
    ratio, n = evaluate.dataset_focus_fire(real)
    assert n > 0 and 0.0 <= ratio <= 1.0
    syn = real.select(np.arange(real.n_episodes)[::-1])       # stands in for D_syn
    syn.attrs["lam"] = 0.1
    assert evaluate.synthetic_label(syn) == "EAQ (λ=0.1)" and evaluate.synthetic_label(real) == "EAQ^-Q"
    ratios = evaluate.figure_1b(real, [syn, syn], str(tmp_path / "fig1b.png"))
    assert ratios[0] == ratios[1] == ratios[2] == ratio
    evaluate.figure_3(real, [syn], str(tmp_path / "fig3.png"), n=100)
    assert (tmp_path / "fig1b.png").stat().st_size > 1000 and (tmp_path / "fig3.png").stat().st_size > 1000


def test_table1_sweep_in_two_workers_writes_table_and_curves(tmp_path):
    tiny = ["--fraction", "0.0005", "--diffusion-steps", "4", "--dim", "8", "--ddim-steps", "2",
            "--scale", "1", "--eval-every", "5", "--eval-episodes", "2", "--diffusion-seed", "0"]
    argv = ["table1", "--qualities", "poor", "--algos", "cql", "--seeds", "0", "1", "--lams", "0.1",
            "--methods", "original", "EAQ", "--iters", "5", "--jobs", "2", "--out", str(tmp_path)]
    evaluate.main(argv + tiny)
    table = tmp_path / "table1"
    rows = (table / "table1.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("scenario,quality,algo,method,lam,seed,return_mean")
    assert len(os.listdir(tmp_path / "logs")) == 4
    assert len(os.listdir(tmp_path / "eaq")) == 1                # both seeds share one D_syn
    markdown = (table / "table1.md").read_text()
    assert markdown.count("| 3m-poor |") == 1 and "| — | — | — |" in markdown    # RAD-s/m, EAQ^-Q not run
    assert (table / "curves-3m-poor.png").stat().st_size > 1000
    results = tmp_path / "results" / "3m-poor-eps0.5-n24-s0-cql-none-it5-s1" / "results.json"
    stamp = results.stat().st_mtime_ns
    evaluate.main(argv + tiny)                                   # everything finished: nothing reruns
    assert results.stat().st_mtime_ns == stamp
    (table / "table1.csv").unlink()
    evaluate.main(argv + tiny + ["--table-only", "--seeds", "0", "1", "2"])    # seed 2 never ran
    assert len((table / "table1.csv").read_text().splitlines()) == 1 + 4
    assert not (tmp_path / "results" / "3m-poor-eps0.5-n24-s0-cql-none-it5-s2").exists()


def test_table1_bad_train_flag_fails_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["table1", "--seeds", "0", "--out", str(tmp_path), "--diffusion-steps", "0"])
    assert "--diffusion-steps must be at least 1, got 0" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_table1_table_only_without_finished_runs_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no finished run of this sweep"):
        evaluate.main(["table1", "--seeds", "0", "--out", str(tmp_path), "--table-only"])
