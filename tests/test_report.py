"""experiments/report.py: the page generated from run records (docs/table1.md), its tables and its checks;
experiments/migrate_records.py."""
import csv
import json
import os

import numpy as np
import pytest
import scipy.stats

import artifacts
import train
from experiments import migrate_records, report
from test_evaluate import tiny_rows


def stats(attack, ended, legal, length, ret, ret_std, q_bar, q_cons):
    return {"attack_share": attack, "ended_share": ended, "legal_before_repair": legal, "length_mean": length,
            "return_mean": ret, "return_std": ret_std, "q_bar_mean": q_bar, "q_consistency": q_cons}


def test_fidelity_table_puts_each_d_syn_under_its_d_real_with_its_verdict():
    real = {**stats(0.138, 1.0, 1.0, 18.7, 4.26, 3.92, 2.84, 0.0), "damage_with_shooter": 1.0,
            "reward_matches_damage": 1.0}
    reports = [   # "a": a report older than the damage check (no key: a dash)
        {"d_syn": "b", "scenario": "3m", "quality": "poor", "lam": 0.1, "diffusion_seed": 1, "algos": ["cql", "bcq"],
         "report": {"real": real, "synthetic": {**stats(0.108, 0.965, 0.973, 18.2, 4.37, 2.41, 17.1, 13.2),
                                                "damage_with_shooter": 0.6184, "reward_matches_damage": 0.7344},
                    "action_tv_distance": 0.096,
                    "fidelity_misses": ["legal before repair 0.973 < 0.98", "damage with a shooter 0.618 < 0.9"]}},
        {"d_syn": "a", "scenario": "3m", "quality": "poor", "lam": 0.0, "diffusion_seed": 0, "algos": ["cql"],
         "report": {"real": real, "synthetic": stats(0.12, 0.95, 0.99, 18.0, 4.0, 2.2, 3.0, 1.5),
                    "action_tv_distance": 0.05, "fidelity_misses": []}},
    ]
    assert report.fidelity_markdown(reports).splitlines()[2:] == [
        "| 3m-poor D_real |  |  | 0.138 | 100.0% | 1.000 | 18.7 | 4.26 | 3.92 | 2.84 | 0.00 | 1.000 | 1.000 |  |  |",
        "| D_syn | 0 | 0 | 0.120 | 95.0% | 0.990 | 18.0 | 4.00 | 2.20 | 3.00 | 1.50 | — | — | 0.050 | meets |",
        "| D_syn | 0.1 | 1 | 0.108 | 96.5% | 0.973 | 18.2 | 4.37 | 2.41 | 17.10 | 13.20 | 0.618 | 0.734 | 0.096 | "
        "misses: legal before repair, damage with a shooter |"]


def test_a_d_syn_made_twice_with_other_numbers_gets_a_row_per_version_naming_its_learners():
    real = stats(0.17, 1.0, 1.0, 20.9, 5.31, 3.2, 3.47, 0.0)

    def run(algo, attack):
        config = {"scenario": "8m", "quality": "poor", "algo": algo, "aug": "eaq", "lam": 0.1, "seed": 2,
                  "diffusion_seed": 2, "diffusion_steps": 9000, "dim": 40, "bucket_width": 8, "ddim_steps": 20,
                  "scale": 5}
        made = {"real": real, "synthetic": stats(attack, 0.0, 0.94, 20.2, 5.0, 1.5, 17.7, 14.4),
                "action_tv_distance": 0.19, "fidelity_misses": []}
        return f"{algo}-run", {"config": config, "augmentation_report": made}, None
    shared = report.synthetic_reports([run("cql", 0.044), run("bcq", 0.044)])
    assert [e["algos"] for e in shared] == [["cql", "bcq"]], "one model shared by two learners: one version"
    assert "made" not in report.fidelity_markdown(shared)
    twice = report.synthetic_reports([run("cql", 0.044), run("bcq", 0.045)])
    assert [e["algos"] for e in twice] == [["cql"], ["bcq"]] and twice[0]["d_syn"] == twice[1]["d_syn"]
    lines = report.fidelity_markdown(twice).splitlines()
    assert [line.split(" | ")[0] for line in lines[3:5]] == ["| D_syn seen by CQL (2 made)",
                                                             "| D_syn seen by BCQ (2 made)"]
    assert [line.split(" | ")[3] for line in lines[3:5]] == ["0.044", "0.045"]
    assert "made more than once" in lines[-1]


def test_cost_table_counts_a_shared_diffusion_model_once_and_scales_each_learner_to_the_full_cell():
    def run(algo, learner_s, diffusion_s=0.0, d_syn="", learner_cpu_s=None, diffusion_cpu_s=None):
        return {"scenario": "3m", "quality": "poor", "algo": algo, "learner_s": learner_s,
                "diffusion_s": diffusion_s, "d_syn": d_syn, "learner_cpu_s": learner_cpu_s,
                "diffusion_cpu_s": diffusion_cpu_s}
    rows = [run("cql", 600), run("bcq", 1200), run("cql", 1560),                      # one slowed run
            run("cql", 600, 1200, "lam0.1-s0"), run("bcq", 1200, 300, "lam0.1-s0")]   # bcq loaded the model
    # full cell: 35 runs × (10 + 20) min per learner + 20 models × 20 min = 1 450 min
    assert report.cost_markdown(rows).splitlines()[2] == (
        "| 3m-poor | 5 (0) | BCQ 20.0, CQL 10.0 | 1 (0) | 20.0 | 1.8 | 24 |")
    rows[2]["learner_cpu_s"] = 600                           # the slowed run's own cost: its CPU time
    for r in rows[3:]:
        r["diffusion_cpu_s"] = 828                           # the model's whole CPU cost, in both runs sharing it
    # 35 × (10 + 20) + 20 × 13.8 = 1 326 min; a pooled median (10 min, three CQL runs of five) would give 16 h
    assert report.cost_markdown(rows).splitlines()[2] == (
        "| 3m-poor | 5 (1) | BCQ 20.0, CQL 10.0 | 1 (1) | 13.8 | 1.4 | 22 |")
    only_cql = [r for r in rows if r["algo"] == "cql"]       # a sweep of one learner: its own runs alone
    assert report.cost_markdown(only_cql).splitlines()[2].endswith("| 10 |")  # 35 × 10 + 20 × 13.8 = 626 min


def test_spread_table_tests_each_column_against_original_with_welchs_t_at_the_chosen_lambda():
    per_seed = {   # (method, λ): (final, late, held-out) per seed; λ = 0.5 is original's twin but not chosen
        ("original", 0.0): [(1, 0, 0), (3, 2, 0)], ("RAD-s", 0.0): [(2, 1, 0), (2, 1, 0)],
        ("EAQ", 0.1): [(4, 5, 3), (6, 7, 3)], ("EAQ", 0.5): [(1, 0, 1), (3, 2, 1)]}
    rows = [{"scenario": "3m", "quality": "poor", "algo": "cql", "method": m, "lam": lam, "seed": seed,
             "return_mean": final, "return_late": late, "heldout_return": h}
            for (m, lam), values in per_seed.items() for seed, (final, late, h) in enumerate(values)]
    # Welch with two seeds a side and equal variances: df = 2, p = 1 - t / sqrt(2 + t²);
    # final t = 3 / √2 -> p = 0.17, late t = 5 / √2 -> p = 0.07; RAD-s t = 0 -> p = 1.
    assert report.spread_markdown(rows, algos=("cql",)) == (
        "| cell | learner | method | final | p vs original | late | p vs original |\n"
        "|---|---|---|---|---|---|---|\n"
        "| 3m-poor | CQL | original | 2.00 ± 1.00 |  | 1.00 ± 1.00 |  |\n"
        "| 3m-poor | CQL | RAD-s | 2.00 ± 0.00 | 1.00 | 1.00 ± 0.00 | 1.00 |\n"
        "| 3m-poor | CQL | EAQ (λ=0.1) | 5.00 ± 1.00 | 0.17 | 6.00 ± 1.00 | 0.07 |\n")
    assert report.welch_p([1.0, 1.0], [2.0, 2.0]) is None and report.welch_p([1.0], [2.0, 3.0]) is None
    a, b = [6.1, 7.9, 7.2], [4.0, 6.5, 5.1, 8.8]                # unequal seeds and spreads: scipy's Welch
    assert report.welch_p(a, b) == pytest.approx(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_resolvable_gap_is_where_welchs_p_reaches_0_05_for_columns_spread_by_evaluation_noise_alone():
    episode_std, episodes = 6.0, 32                               # population std, as the runs report it
    se = 6.0 / np.sqrt(31)                                        # one evaluation's standard error
    for seeds in (2, 3, 5):
        gap = report.resolvable_difference(episode_std, episodes, seeds)
        column = se * (np.arange(seeds) - (seeds - 1) / 2) / np.std(np.arange(seeds), ddof=1)   # sample std = se
        assert np.std(column, ddof=1) == pytest.approx(se)
        assert report.welch_p(list(column + gap), list(column)) == pytest.approx(0.05)
    assert report.resolvable_difference(episode_std, episodes, 2) == pytest.approx(4.303 * se, rel=1e-4)
    rows = [dict(r, return_std=episode_std, eval_episodes=episodes) for r in tiny_rows()]   # 2 seeds a column
    text = report.resolution_markdown(rows)
    assert text.splitlines() == [
        f"3m-{q}: per-episode return std 6.00 over 32 episodes, one evaluation's standard error 1.08; with 2 "
        f"seeds a side and no other spread, Welch's p < 0.05 needs a gap of 4.64 (23.2 points of normalised return)"
        for q in ("medium", "poor")]
    assert report.resolution_markdown([dict(r, seed=0) for r in rows[:1]]) == ""   # one seed: nothing to say


def write_record(folder, algo, aug, lam, seed, final, heldout, curve, cpu=(600.0, 0.0)):
    """A hand-made run record: results.json (as train.py writes it, the parts the page reads) and metrics.csv."""
    config = {"scenario": "3m", "quality": "poor", "algo": algo, "aug": aug, "lam": lam, "seed": seed,
              "eval_episodes": 32, "diffusion_seed": seed, "diffusion_steps": 9000, "dim": 40, "bucket_width": 8,
              "ddim_steps": 20, "scale": 5}
    real = {"attack_share": 0.138, "ended_share": 1.0, "legal_before_repair": 1.0, "length_mean": 18.7,
            "return_mean": 4.26, "return_std": 3.92, "q_bar_mean": 2.84, "q_consistency": 0.0,
            "damage_with_shooter": 1.0, "reward_matches_damage": 1.0}
    made = None
    if aug == "eaq":
        made = {"real": real, "synthetic": {**real, "attack_share": 0.1 + lam, "damage_with_shooter": 0.6},
                "action_tv_distance": 0.09, "fidelity_misses": ["damage with a shooter 0.600 < 0.9"]}
    results = {"config": config, "final": {"return_mean": final, "return_std": 4.0, "normalised_return": final / 20,
                                           "win_rate": 0.1},
               "heldout": {"return_mean": heldout}, "augmentation_report": made,
               "seconds": {"learner": cpu[0] + 5, **({"diffusion": cpu[1] + 5} if made else {})},
               "cpu_seconds": {"learner": cpu[0], **({"diffusion": cpu[1]} if made else {})}}
    name = f"3m-poor-{algo}-{aug}-lam{lam:g}-s{seed}"
    os.makedirs(folder / name)
    (folder / name / "results.json").write_text(json.dumps(results))
    with open(folder / name / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iteration", "td_loss", "return_mean"])
        writer.writerows([(1000 * (i + 1), 0.5, r) for i, r in enumerate(curve)])
    return folder / name


@pytest.fixture
def records(tmp_path):
    """Two seeds of CQL on 3m-poor: the original data, and EAQ at λ = 0.1 (chosen on held-out) and 0.5."""
    folder = tmp_path / "records"
    for seed in (0, 1):
        write_record(folder, "cql", "none", 0.0, seed, 4.0 + 2 * seed, 3.0, [1, 2, 3, 4, 5, 6])
        write_record(folder, "cql", "eaq", 0.1, seed, 7.0 + 2 * seed, 6.0, [2, 3, 4, 5, 6, 7], cpu=(600.0, 1200.0))
        write_record(folder, "cql", "eaq", 0.5, seed, 9.0, 2.0, [2, 2, 2, 2, 2, 2], cpu=(600.0, 1200.0))
    return folder


def test_the_page_is_generated_from_the_records_and_again_byte_for_byte(records, tmp_path):
    page, figures = tmp_path / "docs" / "table1.md", tmp_path / "docs" / "figures"
    report.main(["--records", str(records), "--out", str(page), "--figures", str(figures)])
    text = page.read_text()
    assert text.startswith("# Table 1 on our data\n\nGenerated by `python experiments/report.py` from 6 run records")
    assert "| 3m-poor | 5.00 ± 1.00 | — | — | — | **8.00 ± 1.00 (λ=0.1)** |" in text      # not λ = 0.5's 9.00
    assert "| 3m-poor | CQL | EAQ (λ=0.1) | 8.00 ± 1.00 | 0.17 | 5.00 ± 0.00 |" in text       # late: last five
    assert "| 3m-poor D_real |" in text and text.count("| D_syn | 0.1 |") == 2                 # one per seed
    assert "3m-poor: per-episode return std 4.00 over 32 episodes" in text
    assert "| 3m-poor | 6 (6) | CQL 10.0 | 4 (4) | 20.0 |" in text                          # two λ × two seeds
    assert "![3m-poor](figures/curves-3m-poor.png)" in text and (figures / "curves-3m-poor.png").exists()
    report.main(["--records", str(records), "--out", str(page), "--figures", str(figures)])
    assert page.read_text() == text
    assert "one-level data" not in text                               # 3m-poor's shipped policies reached poor


def test_a_cell_whose_policies_never_reached_their_level_is_named_one_level_data(records):
    entries = [{"return_mean": r, "reached": False, "target_return": 4.69} for r in (3.0, 4.0)]
    page = report.table1_page(report.read_records(str(records)), manifest={"3m": {"poor": entries}})
    assert "**3m-poor is one-level data** (an ablation beside the paper's cell): its behaviour policies never " \
           "reached OG-MARL's poor level (their picks average 3.50 against 4.69" in page
    entries[0]["reached"] = True                                      # one policy reached it: not one-level data
    assert "one-level data" not in report.table1_page(report.read_records(str(records)),
                                                      manifest={"3m": {"poor": entries}})


@pytest.mark.parametrize("damage, message", [
    ("metrics cut mid-row", "metrics.csv has a row without a number for its iteration or return"),
    ("a string return", "final or held-out return is not a finite number"),
    ("a NaN return", "final or held-out return is not a finite number"),
    ("an infinite curve", "metrics.csv has no evaluation or a return that is not a finite number"),
    ("no config", "not a finished run's record (KeyError: 'config')"),
    ("a config without its seed", "results.json's config lacks seed"),
    ("truncated results", "not a finished run's record (JSONDecodeError"),
])
def test_a_damaged_record_is_refused_in_one_line_that_names_it(records, tmp_path, capsys, damage, message):
    record = records / sorted(os.listdir(records))[0]
    results = json.loads((record / "results.json").read_text())
    if damage == "metrics cut mid-row":
        (record / "metrics.csv").write_text("iteration,td_loss,return_mean\n1000,0.5,1\n2000,0.")
    elif damage == "an infinite curve":
        (record / "metrics.csv").write_text("iteration,td_loss,return_mean\n1000,0.5,inf\n")
    elif damage == "truncated results":
        (record / "results.json").write_text('{"final": ')
    else:
        if damage == "a string return":
            results["final"]["return_mean"] = "4.0"
        elif damage == "a NaN return":
            results["heldout"]["return_mean"] = float("nan")
        elif damage == "no config":
            del results["config"]
        else:
            del results["config"]["seed"]
        (record / "results.json").write_text(json.dumps(results))
    page = tmp_path / "page.md"
    with pytest.raises(SystemExit):
        report.main(["--records", str(records), "--out", str(page), "--figures", str(tmp_path / "f")])
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {record}: ") and message in err and f"delete {record}" in err and "\n" not in err
    assert not page.exists()


def test_an_empty_or_missing_records_folder_is_refused(tmp_path, capsys):
    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(artifacts.InputError, match="no such folder of run records|holds no run record"):
            report.read_records(str(folder))


def test_records_are_renamed_to_the_folders_train_py_gives_their_runs_now(tmp_path):
    config = {"scenario": "3m", "quality": "poor", "algo": "cql", "aug": "eaq", "fraction": 0.0005, "lam": 0.1,
              "scale": 2, "diffusion_steps": 10, "ddim_steps": 2, "dim": 8, "bucket_width": 8, "device": "cpu",
              "diffusion_seed": 0, "iters": 10, "grad_clip": 10.0, "last_action": True, "eval_every": 5,
              "eval_episodes": 4, "backend": "smax", "seed": 0, "bcq_execution": "filtered", "behaviour": "policies",
              "data_seed": 0, "global_row_weight": 1.0, "head_width": 0, "x0_skip": False, "lr": 0.0003}
    flags = migrate_records.train_flags(config, out=str(tmp_path))
    expected = os.path.basename(train.result_dir(train.parse_args(flags)))
    for name, settings in (("old-name", {}), ("a-departure", {"head_width": 280})):
        os.makedirs(tmp_path / "records" / name)
        results = {"config": {**config, **settings}, "final": {"return_mean": 1.0, "return_std": 0.0},
                   "heldout": {"return_mean": 1.0}}
        (tmp_path / "records" / name / "results.json").write_text(json.dumps(results))
        (tmp_path / "records" / name / "metrics.csv").write_text("iteration,return_mean\n10,1.0\n")
    moves = dict(migrate_records.migrate(str(tmp_path / "records")))
    assert moves["old-name"] == expected and "head_width" in moves["a-departure"]
    assert sorted(os.listdir(tmp_path / "records")) == sorted(["a-departure", expected])
