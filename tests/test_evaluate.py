"""evaluate.py: the Table 1 writer, the sweep (local workers and Ray) and the figures."""
import csv
import os
import shutil

import numpy as np
import pytest
import scipy.stats

import data
import evaluate
import train


def tiny_rows():
    """Two seeds per cell, CQL only; EAQ at two λ in 3m-medium, where the held-out evaluation
    prefers λ = 0.5 although λ = 0.1 reports more: the table must show λ = 0.5."""
    returns = {   # (quality, method, λ): [(reported, held-out) per seed]
        ("medium", "original", 0.0): [(2, 0), (4, 0)], ("medium", "RAD-s", 0.0): [(5, 0), (5, 0)],
        ("medium", "RAD-m", 0.0): [(1, 0), (3, 0)], ("medium", "EAQ^-Q", 0.0): [(6, 0), (8, 0)],
        ("medium", "EAQ", 0.1): [(8, 3), (10, 3)], ("medium", "EAQ", 0.5): [(4, 5), (4, 6)],
        ("poor", "original", 0.0): [(1, 0), (1, 0)], ("poor", "RAD-s", 0.0): [(2, 0), (2, 0)],
        ("poor", "RAD-m", 0.0): [(0, 0), (2, 0)], ("poor", "EAQ^-Q", 0.0): [(3, 0), (3, 0)],
        ("poor", "EAQ", 0.01): [(2, 1), (4, 1)],
    }
    return [{"scenario": "3m", "quality": q, "algo": "cql", "method": m, "lam": lam, "seed": seed,
             "return_mean": r, "heldout_return": h}
            for (q, m, lam), values in returns.items() for seed, (r, h) in enumerate(values)]


def test_table1_markdown_matches_the_papers_format_and_picks_lambda_on_heldout_episodes():
    expected = (
        "| scenario | CQL original | CQL RAD-s | CQL RAD-m | CQL EAQ^-Q | CQL EAQ |\n"
        "|---|---|---|---|---|---|\n"
        "| 3m-medium | 3.00 ± 1.00 | 5.00 ± 0.00 | 2.00 ± 1.00 | **7.00 ± 1.00** | 4.00 ± 0.00 (λ=0.5) |\n"
        "| 3m-medium (paper) | 7.47 ± 6.35 | **16.90 ± 2.75** | 15.05 ± 3.11 | 8.22 ± 5.77 | 13.70 ± 7.43 |\n"
        "| 3m-poor | 1.00 ± 0.00 | 2.00 ± 0.00 | 1.00 ± 1.00 | **3.00 ± 0.00** | **3.00 ± 1.00 (λ=0.01)** |\n"
        "| 3m-poor (paper) | 3.81 ± 1.59 | 2.83 ± 0.85 | 7.87 ± 6.36 | 6.95 ± 3.46 | **10.60 ± 6.25** |\n"
        "| AVG-medium | 3.00 | 5.00 | 2.00 | **7.00** | 4.00 |\n"
        "| AVG-medium (paper) | 7.47 | **16.90** | 15.05 | 8.22 | 13.70 |\n"
        "| AVG-poor | 1.00 | 2.00 | 1.00 | **3.00** | **3.00** |\n"
        "| AVG-poor (paper) | 3.81 | 2.83 | 7.87 | 6.95 | **10.60** |\n"
        "\n"
        "EAQ over original, medium: +5.0 points of normalised return (mean over CQL); the paper, same learners: "
        "+31.1 on the same maps, +21.2 on its five (it states +17.3 %)\n"
        "EAQ over original, poor: +10.0 points of normalised return (mean over CQL); the paper, same learners: "
        "+33.9 on the same maps, +13.5 on its five (it states +12.9 %)\n"
        "\n"
        "λ for 3m-medium CQL: 0.5 (λ=0.1: held-out 3.00, reported 9.00 ± 1.00; "
        "λ=0.5: held-out 5.50, reported 4.00 ± 0.00)\n"
        "λ for 3m-poor CQL: 0.01 (λ=0.01: held-out 1.00, reported 3.00 ± 1.00)\n")
    assert evaluate.table1_markdown(tiny_rows(), algos=("cql",)) == expected


# The paper's AVG-medium / AVG-poor rows as printed (CQL then BCQ, METHODS order).
PAPER_AVG = {"medium": (3.22, 5.39, 5.01, 5.56, 7.45, 4.64, 3.73, 4.34, 4.68, 7.72),
             "poor": (2.64, 2.63, 3.16, 5.23, 5.34, 3.05, 3.38, 3.19, 5.35, 5.12)}


def test_the_transcribed_paper_table_averages_to_the_papers_avg_rows():
    for quality, printed in PAPER_AVG.items():
        maps = [s for s, q in evaluate.PAPER_TABLE1 if q == quality]
        averages = evaluate.paper_averages(maps, quality, ("cql", "bcq"))
        np.testing.assert_allclose(list(averages.values()), printed, atol=0.006)
    assert len(evaluate.PAPER_TABLE1) == 10 and evaluate.paper_cell("8m", "poor", "bcq", "EAQ^-Q") == (9.23, 2.61)


def test_the_papers_gain_by_our_definition_is_18_3_and_11_9_points():
    for quality, points in (("medium", 18.3), ("poor", 11.9)):
        averages = dict(zip([(a, m) for a in ("cql", "bcq") for m in evaluate.METHODS], PAPER_AVG[quality]))
        assert round(evaluate.normalised_gain(averages, ("cql", "bcq")), 1) == points


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
    assert evaluate.fidelity_markdown(reports).splitlines()[2:] == [
        "| 3m-poor D_real |  |  | 0.138 | 100.0% | 1.000 | 18.7 | 4.26 | 3.92 | 2.84 | 0.00 | 1.000 | 1.000 |  |  |",
        "| D_syn | 0 | 0 | 0.120 | 95.0% | 0.990 | 18.0 | 4.00 | 2.20 | 3.00 | 1.50 | — | — | 0.050 | meets |",
        "| D_syn | 0.1 | 1 | 0.108 | 96.5% | 0.973 | 18.2 | 4.37 | 2.41 | 17.10 | 13.20 | 0.618 | 0.734 | 0.096 | "
        "misses: legal before repair, damage with a shooter |"]


def test_a_d_syn_made_twice_with_other_numbers_gets_a_row_per_version_naming_its_learners():
    real = stats(0.17, 1.0, 1.0, 20.9, 5.31, 3.2, 3.47, 0.0)

    def run(algo, attack):
        targs = train.parse_args(["--scenario", "8m", "--quality", "poor", "--algo", algo, "--aug", "eaq",
                                  "--lam", "0.1", "--seed", "2"])
        report = {"real": real, "synthetic": stats(attack, 0.0, 0.94, 20.2, 5.0, 1.5, 17.7, 14.4),
                  "action_tv_distance": 0.19, "fidelity_misses": []}
        return "EAQ", targs, "", {"augmentation_report": report}, None
    shared = evaluate.synthetic_reports([run("cql", 0.044), run("bcq", 0.044)])
    assert [e["algos"] for e in shared] == [["cql", "bcq"]], "one model shared by two learners: one version"
    assert "made" not in evaluate.fidelity_markdown(shared)
    twice = evaluate.synthetic_reports([run("cql", 0.044), run("bcq", 0.045)])
    assert [e["algos"] for e in twice] == [["cql"], ["bcq"]] and twice[0]["d_syn"] == twice[1]["d_syn"]
    lines = evaluate.fidelity_markdown(twice).splitlines()
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
    assert evaluate.cost_markdown(rows).splitlines()[2] == (
        "| 3m-poor | 5 (0) | BCQ 20.0, CQL 10.0 | 1 (0) | 20.0 | 1.8 | 24 |")
    rows[2]["learner_cpu_s"] = 600                           # the slowed run's own cost: its CPU time
    for r in rows[3:]:
        r["diffusion_cpu_s"] = 828                           # the model's whole CPU cost, in both runs sharing it
    # 35 × (10 + 20) + 20 × 13.8 = 1 326 min; a pooled median (10 min, three CQL runs of five) would give 16 h
    assert evaluate.cost_markdown(rows).splitlines()[2] == (
        "| 3m-poor | 5 (1) | BCQ 20.0, CQL 10.0 | 1 (1) | 13.8 | 1.4 | 22 |")
    only_cql = [r for r in rows if r["algo"] == "cql"]       # a sweep of one learner: its own runs alone
    assert evaluate.cost_markdown(only_cql).splitlines()[2].endswith("| 10 |")  # 35 × 10 + 20 × 13.8 = 626 min


def test_spread_table_tests_each_column_against_original_with_welchs_t_at_the_chosen_lambda():
    per_seed = {   # (method, λ): (final, late, held-out) per seed; λ = 0.5 is original's twin but not chosen
        ("original", 0.0): [(1, 0, 0), (3, 2, 0)], ("RAD-s", 0.0): [(2, 1, 0), (2, 1, 0)],
        ("EAQ", 0.1): [(4, 5, 3), (6, 7, 3)], ("EAQ", 0.5): [(1, 0, 1), (3, 2, 1)]}
    rows = [{"scenario": "3m", "quality": "poor", "algo": "cql", "method": m, "lam": lam, "seed": seed,
             "return_mean": final, "return_late": late, "heldout_return": h}
            for (m, lam), values in per_seed.items() for seed, (final, late, h) in enumerate(values)]
    # Welch with two seeds a side and equal variances: df = 2, p = 1 - t / sqrt(2 + t²);
    # final t = 3 / √2 -> p = 0.17, late t = 5 / √2 -> p = 0.07; RAD-s t = 0 -> p = 1.
    assert evaluate.spread_markdown(rows, algos=("cql",)) == (
        "| cell | learner | method | final | p vs original | late | p vs original |\n"
        "|---|---|---|---|---|---|---|\n"
        "| 3m-poor | CQL | original | 2.00 ± 1.00 |  | 1.00 ± 1.00 |  |\n"
        "| 3m-poor | CQL | RAD-s | 2.00 ± 0.00 | 1.00 | 1.00 ± 0.00 | 1.00 |\n"
        "| 3m-poor | CQL | EAQ (λ=0.1) | 5.00 ± 1.00 | 0.17 | 6.00 ± 1.00 | 0.07 |\n")
    assert evaluate.welch_p([1.0, 1.0], [2.0, 2.0]) is None and evaluate.welch_p([1.0], [2.0, 3.0]) is None
    a, b = [6.1, 7.9, 7.2], [4.0, 6.5, 5.1, 8.8]                # unequal seeds and spreads: scipy's Welch
    assert evaluate.welch_p(a, b) == pytest.approx(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_resolvable_gap_is_where_welchs_p_reaches_0_05_for_columns_spread_by_evaluation_noise_alone():
    episode_std, episodes = 6.0, 32                               # population std, as the runs report it
    se = 6.0 / np.sqrt(31)                                        # one evaluation's standard error
    for seeds in (2, 3, 5):
        gap = evaluate.resolvable_difference(episode_std, episodes, seeds)
        column = se * (np.arange(seeds) - (seeds - 1) / 2) / np.std(np.arange(seeds), ddof=1)   # sample std = se
        assert np.std(column, ddof=1) == pytest.approx(se)
        assert evaluate.welch_p(list(column + gap), list(column)) == pytest.approx(0.05)
    assert evaluate.resolvable_difference(episode_std, episodes, 2) == pytest.approx(4.303 * se, rel=1e-4)
    rows = [dict(r, return_std=episode_std, eval_episodes=episodes) for r in tiny_rows()]   # 2 seeds a column
    text = evaluate.resolution_markdown(rows)
    assert text.splitlines() == [
        f"3m-{q}: per-episode return std 6.00 over 32 episodes, one evaluation's standard error 1.08; with 2 "
        f"seeds a side and no other spread, Welch's p < 0.05 needs a gap of 4.64 (23.2 points of normalised return)"
        for q in ("medium", "poor")]
    assert evaluate.resolution_markdown([dict(r, seed=0) for r in rows[:1]]) == ""   # one seed: nothing to say


def test_lambda_ties_on_heldout_go_to_the_smaller_lambda():
    rows = [{"scenario": "3m", "quality": "poor", "algo": "cql", "method": "EAQ", "lam": lam, "seed": 0,
             "return_mean": r, "heldout_return": 2.0} for lam, r in ((0.5, 9.0), (0.01, 1.0))]
    assert evaluate.table1_cells(rows)[("3m", "poor", "cql", "EAQ")]["lam"] == 0.01


def test_a_sweep_half_done_marks_cells_short_of_seeds_and_a_lambda_with_fewer_seeds_cannot_win():
    rows = tiny_rows()   # two seeds everywhere; then a third seed for original and for EAQ λ = 0.5 only
    rows += [{"scenario": "3m", "quality": "medium", "algo": "cql", "method": m, "lam": lam, "seed": 2,
              "return_mean": r, "heldout_return": h} for m, lam, r, h in (("original", 0.0, 3, 0), ("EAQ", 0.5, 7, 0))]
    rows += [{"scenario": "3m", "quality": "medium", "algo": "cql", "method": "EAQ", "lam": 0.01, "seed": 0,
              "return_mean": 20, "heldout_return": 50}]   # one seed, the best held-out by far
    cell = evaluate.table1_cells(rows)[("3m", "medium", "cql", "EAQ")]
    assert (cell["lam"], cell["seeds"], cell["heldout"]) == (0.5, 3, pytest.approx(11 / 3))
    table = evaluate.table1_markdown(rows, algos=("cql",))
    assert "| 3m-medium | 3.00 ± 0.82 | 5.00 ± 0.00 [2 of 3 seeds] | 2.00 ± 1.00 [2 of 3 seeds] |" in table
    assert "| 5.00 ± 1.41 (λ=0.5) |" in table and "| 3m-poor | 1.00 ± 0.00 [2 of 3 seeds] |" in table
    assert "λ=0.01 [1 of 3 seeds, not chosen]: held-out 50.00, reported 20.00 ± 0.00; " in table
    assert "\n[k of n seeds]: a cell with fewer seeds than the table's others;" in table
    assert "seeds" not in evaluate.table1_markdown(tiny_rows(), algos=("cql",))   # a finished sweep: no marks


def test_table1_runs_cover_every_method_and_lambda():
    runs = list(evaluate.table1_runs(["3m"], ["poor"], ["cql", "bcq"], [0, 1], [0.5, 0.1]))
    assert len(runs) == 2 * 2 * (4 + 2)
    methods = [m for m, _ in runs]
    assert methods.count("EAQ") == 8 and methods.count("original") == 4
    eaq_q = [flags for m, flags in runs if m == "EAQ^-Q"][0]
    assert eaq_q[eaq_q.index("--lam") + 1] == "0"


def test_sweep_order_leaves_whole_seeds_of_each_cell_and_pairs_the_runs_sharing_a_model():
    runs = list(evaluate.table1_runs(["3m", "8m"], ["poor"], ["cql", "bcq"], [0, 1], [0.5, 0.1]))
    groups = evaluate.sharing_groups(runs)
    assert sorted(run for g in groups for run in g) == sorted(runs)

    def seed(run):
        return int(run[1][run[1].index("--seed") + 1])

    def cell(run):
        return run[1][run[1].index("--scenario") + 1]
    order = [(cell(g[0]), seed(g[0]), -len(g)) for g in groups]
    assert order == sorted(order, key=lambda o: (["3m", "8m"].index(o[0]), o[1], o[2]))
    pairs = [g for g in groups if len(g) == 2]     # EAQ^-Q and EAQ at 2 λ, per map and seed: CQL beside BCQ
    assert len(pairs) == 2 * 2 * 3 and len(groups) == len(pairs) + 2 * 2 * 2 * 3
    for cql, bcq in pairs:
        assert [f for f in cql[1] if f != "cql"] == [f for f in bcq[1] if f != "bcq"]


def test_focus_fire_ratio_by_hand():
    avail = np.ones((1, 5, 3, 8), dtype=bool)
    avail[0, 3, 1:] = [False] * 4 + [True, False, False, False]    # agents 1 and 2 dead at t = 3
    avail[0, 4, 2] = [False] * 4 + [True, False, False, False]     # agent 2 dead at t = 4
    actions = np.array([[[5, 5, 5],      # all three on enemy 0: focus fire
                         [5, 6, 5],      # split
                         [0, 5, 5],      # one moves: not an all-attack step
                         [6, 4, 4],      # a lone survivor attacking: not focus fire with anyone
                         [7, 7, 4]]])    # the two living agents on enemy 2: focus fire
    valid = np.ones((1, 5), dtype=bool)
    ratio, n = data.focus_fire_ratio(actions, avail, valid, first_attack=5)
    assert n == 3 and ratio == pytest.approx(2 / 3)


def hand_dataset(actions):
    """One 3m-shaped episode per row of `actions` (T, N), every agent alive and every action legal."""
    actions = np.asarray(actions)[None]                             # (1, T, N)
    E, T, N = actions.shape
    return data.Episodes(obs=np.zeros((E, T + 1, N, 2), np.float32), avail=np.ones((E, T + 1, N, 8), bool),
                         actions=actions, rewards=np.zeros((E, T), np.float32),
                         dones=np.eye(T, dtype=bool)[None, -1], lengths=np.array([T], np.int32),
                         attrs={"scenario": "3m", "quality": "poor"})


def test_figure_1b_bars_are_each_datasets_focus_fire_and_figure_3_is_drawn(tiny_3m, tmp_path):
    real = hand_dataset([[5, 5, 5], [5, 6, 7], [5, 6, 6], [6, 6, 6]])       # focus fire 2 of 4
    syn = hand_dataset([[5, 5, 5], [7, 7, 7], [5, 5, 6]])                  # 2 of 3
    syn.attrs["lam"] = 0.1
    assert evaluate.synthetic_label(syn) == "EAQ (λ=0.1)" and evaluate.synthetic_label(real) == "EAQ^-Q"
    ratios = evaluate.figure_1b(real, [syn], str(tmp_path / "fig1b.png"))
    assert ratios == [pytest.approx(0.5), pytest.approx(2 / 3)]
    tiny = data.load_dataset(tiny_3m[0])
    evaluate.figure_3(tiny, [tiny.select(np.arange(4))], str(tmp_path / "fig3.png"), n=100)
    assert (tmp_path / "fig1b.png").stat().st_size > 1000 and (tmp_path / "fig3.png").stat().st_size > 1000


TINY_SWEEP = ["--fraction", "0.0005", "--diffusion-steps", "4", "--dim", "8", "--ddim-steps", "2",
              "--scale", "1", "--eval-every", "5", "--eval-episodes", "2", "--diffusion-seed", "0"]
SWEEP = ["table1", "--qualities", "poor", "--algos", "cql", "--seeds", "0", "1", "--lams", "0.1",
         "--methods", "original", "EAQ", "--iters", "5"]


def sweep_table(out):
    """Where the tiny sweep's table goes: its flags depart from train.py's defaults."""
    return out / os.path.basename(evaluate.table_folder(str(out), 5, TINY_SWEEP))


def test_a_departures_table_gets_its_own_folder_named_by_the_parsed_flags():
    assert evaluate.table_folder("runs", 15000, []) == os.path.join("runs", "table1")
    assert evaluate.table_folder("runs", 15000, ["--head-width", "0", "--dim=40"]) == os.path.join("runs", "table1")
    assert evaluate.table_folder("runs", 15000, ["--x0-skip"]) == os.path.join("runs", "table1-x0-skip")
    wide = os.path.join("runs", "table1-head-width280")
    assert evaluate.table_folder("runs", 15000, ["--head-width=280"]) == wide
    assert evaluate.table_folder("runs", 15000, ["--head-width", "280", "--lam", "0.5"]) == wide   # λ: set per run
    assert evaluate.table_folder("runs", 15000, ["--diffusion-seed", "0"]) == os.path.join("runs", "table1-diffusion-seed0")
    assert evaluate.table_folder("runs", 15000, ["--head-width", "280", "--global-row-weight", "10"]) == \
        evaluate.table_folder("runs", 15000, ["--global-row-weight", "10.0", "--head-width", "280"]) == \
        os.path.join("runs", "table1-global-row-weight10-head-width280")
    assert evaluate.table_folder("runs", 5000, []) == os.path.join("runs", "table1-iters5000")
    many = [flag for width in range(8) for flag in ("--head-width", str(8 * (width + 1)))] + \
        ["--diffusion-steps", "123", "--ddim-steps", "7", "--eval-episodes", "3", "--eval-every", "11", "--lr", "0.001",
         "--batch-size", "7", "--gamma", "0.9", "--target-every", "9", "--grad-clip", "3", "--alpha", "2"]
    long = evaluate.table_folder("runs", 15000, many)
    assert len(os.path.basename(long)) <= 100 and long != evaluate.table_folder("runs", 15000, many[:-1] + ["3"])


@pytest.fixture(scope="module")
def two_worker_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    evaluate.main(SWEEP + ["--jobs", "2", "--out", str(out)] + TINY_SWEEP)
    return out


def test_table1_sweep_in_two_workers_writes_table_and_curves(two_worker_sweep):
    out = two_worker_sweep
    table = sweep_table(out)
    assert not (out / "table1").exists(), "a departure's table never lands where the default sweep's does"
    rows = (table / "table1.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("scenario,quality,algo,method,lam,seed,return_mean")
    assert "heldout_return" in rows[0]
    with open(table / "table1.csv") as f:
        for row in csv.DictReader(f):                         # the late return: mean of the last five evaluations
            with open(os.path.join(row["run_dir"], "metrics.csv")) as m:
                curve = [float(e["return_mean"]) for e in csv.DictReader(m)]
            assert float(row["return_late"]) == pytest.approx(np.mean(curve[-5:]))
    assert len(os.listdir(out / "logs")) == 4
    assert len(os.listdir(out / "eaq")) == 1                     # both seeds share one D_syn
    markdown = (table / "table1.md").read_text()
    assert markdown.startswith(f"Every run of this table was trained with `{' '.join(TINY_SWEEP)}` beyond")
    table1 = markdown.split("\nEach column against")[0]
    assert table1.count("| 3m-poor |") == 1 and "| — | — | — |" in table1     # RAD-s/m, EAQ^-Q not run
    assert markdown.count("| 3m-poor | CQL | original |") == 1                    # the seed-spread table
    assert markdown.count("| 3m-poor | CQL | EAQ (λ=0.1) |") == 1
    assert markdown.count("| 3m-poor D_real |") == 1 and markdown.count("| D_syn | 0.1 | 0 |") == 1   # one D_syn
    assert "\n3m-poor: per-episode return std " in markdown and " over 2 episodes, " in markdown   # --eval-episodes
    cost = markdown.split("\nCost per map")[1].splitlines()
    runs_and_models = [line.split(" | ")[1:4:2] for line in cost if line.startswith("| 3m-poor |")]
    assert runs_and_models == [["4 (4)", "1 (1)"]], "every run and its model CPU-timed"
    assert (table / "curves-3m-poor.png").stat().st_size > 1000
    seed1 = train.result_dir(train.parse_args(["--quality", "poor", "--algo", "cql", "--seed", "1", "--aug", "none",
                                               "--iters", "5", "--out", str(out)] + TINY_SWEEP))
    results = os.path.join(seed1, "results.json")
    stamp = os.stat(results).st_mtime_ns
    evaluate.main(SWEEP + ["--jobs", "2", "--out", str(out)] + TINY_SWEEP)    # everything finished: nothing reruns
    assert os.stat(results).st_mtime_ns == stamp
    (table / "table1.csv").unlink()
    evaluate.main(SWEEP + ["--out", str(out), "--table-only", "--seeds", "0", "1", "2"] + TINY_SWEEP)
    assert len((table / "table1.csv").read_text().splitlines()) == 1 + 4               # seed 2 never ran
    assert len(os.listdir(out / "results")) == 4


def table_without_paths(out):
    """table1.csv and table1.md without what differs between two sweeps of the same runs: paths, wall and CPU times."""
    with open(sweep_table(out) / "table1.csv") as f:
        rows = [{k: v for k, v in row.items() if k not in ("run_dir", "learner_s", "diffusion_s",
                                                                "learner_cpu_s", "diffusion_cpu_s")}
                for row in csv.DictReader(f)]
    return rows, (sweep_table(out) / "table1.md").read_text().split("\nCost per map")[0]


# ray.init starts its daemons with subprocess and a preexec_fn, which runs JAX's at-fork hook; the child only sets a
# signal mask before it execs and never touches JAX, so JAX's "os.fork() ... deadlock" warning does not apply here.
ray_starts_daemons = pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")


@ray_starts_daemons
def test_the_same_sweep_on_a_local_ray_instance_gives_the_same_table(two_worker_sweep, tmp_path):
    shutil.copytree(two_worker_sweep / "datasets", tmp_path / "datasets")     # the same D_real, not made again
    evaluate.main(SWEEP + ["--ray", "local", "--out", str(tmp_path)] + TINY_SWEEP)
    assert table_without_paths(tmp_path) == table_without_paths(two_worker_sweep)
    assert len(os.listdir(tmp_path / "eaq")) == 1, "the runs sharing a diffusion model ran in one task"


@ray_starts_daemons
def test_a_failing_ray_task_is_reported_and_its_cell_left_out(two_worker_sweep, tmp_path):
    for folder in ("datasets", "results"):                      # the original runs finished in the fixture
        shutil.copytree(two_worker_sweep / folder, tmp_path / folder)
    base = ["--quality", "poor", "--algo", "cql", "--seed", "0", "--iters", "5", "--out", str(tmp_path)] + TINY_SWEEP
    runs = [("original", base + ["--aug", "none"]),
            ("RAD-s", base + ["--aug", "rad-s", "--backend", "smac"])]      # fails: no StarCraft II here
    failures = evaluate.run_sweep(runs, jobs=1, out=str(tmp_path), ray="local")
    assert len(failures) == 1 and "--backend smac" in failures[0] and "failed (exit 2)" in failures[0]
    finished = evaluate.read_runs([r for r in runs if evaluate.finished(r[1])])
    markdown = evaluate.table1_markdown(evaluate.table1_rows(finished), algos=("cql",))
    assert "| 3m-poor | " in markdown and "| — |" in markdown


def record_sweep(two_worker_sweep, records):
    """Record the tiny sweep's finished runs in `records` (a table-only pass: nothing trains)."""
    evaluate.main(SWEEP + ["--out", str(two_worker_sweep), "--table-only", "--records", str(records)] + TINY_SWEEP)


def test_records_outlive_the_runs_folder_and_spare_the_sweep_every_recorded_run(two_worker_sweep, tmp_path, capsys):
    records = tmp_path / "records"
    record_sweep(two_worker_sweep, records)
    assert sorted(os.listdir(records)) == sorted(os.listdir(two_worker_sweep / "results"))
    for run in os.listdir(records):
        assert sorted(os.listdir(records / run)) == ["metrics.csv", "results.json"]
        assert (records / run / "results.json").read_bytes() == \
            (two_worker_sweep / "results" / run / "results.json").read_bytes()
    fresh = tmp_path / "fresh"                                   # another machine: no runs folder
    shutil.copytree(two_worker_sweep / "datasets", fresh / "datasets")     # the same D_real, not made again
    capsys.readouterr()
    evaluate.main(SWEEP + ["--jobs", "2", "--out", str(fresh), "--records", str(records)] + TINY_SWEEP)
    out = capsys.readouterr().out
    assert "4 finished run(s) restored" in out and "4 of 4 runs already finished" in out
    assert "0 record(s) written" in out                          # the records were already there, unchanged
    assert not (fresh / "eaq").exists() and not (fresh / "logs").exists(), "nothing was trained"
    assert table_without_paths(fresh) == table_without_paths(two_worker_sweep)


@pytest.mark.parametrize("damage", ["truncated results", "no metrics", "no final evaluation"])
def test_a_damaged_record_stops_the_sweep_before_it_starts(two_worker_sweep, tmp_path, capsys, damage):
    records = tmp_path / "records"
    record_sweep(two_worker_sweep, records)
    damaged = records / sorted(os.listdir(records))[-1]
    if damage == "truncated results":
        (damaged / "results.json").write_text('{"final": ')
    elif damage == "no metrics":
        (damaged / "metrics.csv").unlink()
    else:
        (damaged / "results.json").write_text('{"algo": "cql"}')
    capsys.readouterr()
    with pytest.raises(SystemExit):
        evaluate.main(SWEEP + ["--out", str(tmp_path / "fresh"), "--records", str(records)] + TINY_SWEEP)
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {damaged}: ") and f"delete {damaged} so that" in err and "\n" not in err
    assert not (tmp_path / "fresh").exists(), "no record restored and no dataset made"


@pytest.mark.parametrize("value", ["somewhere", "host:port", "host:0", "host:70000", ":6379"])
def test_bad_ray_addresses_fail_before_anything_starts(tmp_path, capsys, value):
    with pytest.raises(SystemExit):
        evaluate.main(["table1", "--seeds", "0", "--out", str(tmp_path / "runs"), "--ray", value])
    err = capsys.readouterr().err
    assert "is not local, auto or HOST:PORT" in err and len(err.strip().splitlines()[-1:]) == 1
    assert not (tmp_path / "runs").exists()


def test_table1_bad_train_flag_fails_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["table1", "--seeds", "0", "--out", str(tmp_path), "--diffusion-steps", "0"])
    assert "--diffusion-steps must be at least 1, got 0" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_table1_table_only_without_finished_runs_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no finished run of this sweep"):
        evaluate.main(["table1", "--seeds", "0", "--out", str(tmp_path), "--table-only"])


def test_figures_with_more_synthetic_sets_than_colours_fail_before_reading_any(tmp_path, capsys):
    syns = [arg for i in range(len(evaluate.FIGURE_COLORS)) for arg in ("--syn", str(tmp_path / f"s{i}.h5"))]
    with pytest.raises(SystemExit):
        evaluate.main(["figures", "--real", str(tmp_path / "missing.h5")] + syns)
    assert f"at most {len(evaluate.FIGURE_COLORS) - 1} --syn datasets" in capsys.readouterr().err
