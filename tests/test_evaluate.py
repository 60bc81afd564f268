"""evaluate.py: Table 1 (the paper's format, λ on held-out episodes), its sweep, and Figures 1b and 3."""
import os

import numpy as np
import pytest

import data
import evaluate
import fidelity


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
    ratio, n = fidelity.focus_fire_ratio(actions, avail, valid, first_attack=5)
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
    assert evaluate.figure_labels([syn, real]) == ["original", "EAQ (λ=0.1)", "EAQ^-Q"]
    ratios = evaluate.figure_1b(real, [syn], str(tmp_path / "fig1b.png"))
    assert ratios == [pytest.approx(0.5), pytest.approx(2 / 3)]
    tiny = data.load_dataset(tiny_3m[0])
    evaluate.figure_3(tiny, [tiny.select(np.arange(4))], str(tmp_path / "fig3.png"), n=100)
    assert (tmp_path / "fig1b.png").stat().st_size > 1000 and (tmp_path / "fig3.png").stat().st_size > 1000


def test_a_departures_table_gets_its_own_folder_named_by_the_parsed_flags():
    assert evaluate.table_folder("runs", 15000, []) == os.path.join("runs", "table1")
    assert evaluate.table_folder("runs", 15000, ["--dim", "32", "--lam", "0.5"]) == os.path.join("runs", "table1")
    wide = evaluate.table_folder("runs", 15000, ["--dim=48"])
    assert wide.startswith(os.path.join("runs", "table1-")) and wide == evaluate.table_folder("runs", 15000,
                                                                                              ["--dim", "48"])
    assert evaluate.table_folder("runs", 5000, []) not in (wide, os.path.join("runs", "table1"))
    assert evaluate.table_folder("runs", 15000, ["--dim", "48", "--no-last-action"]) != wide


TINY_SWEEP = ["--fraction", "0.0005", "--diffusion-steps", "4", "--dim", "8", "--ddim-steps", "2",
              "--scale", "1", "--eval-every", "5", "--eval-episodes", "2", "--diffusion-seed", "0"]


def test_a_sweep_in_one_process_runs_each_run_once_and_tables_it(tmp_path, capsys):
    sweep = ["table1", "--qualities", "poor", "--algos", "cql", "--seeds", "0", "--lams", "0.1",
             "--methods", "original", "EAQ", "--iters", "5", "--out", str(tmp_path)] + TINY_SWEEP
    evaluate.main(sweep)
    table = tmp_path / os.path.basename(evaluate.table_folder(str(tmp_path), 5, TINY_SWEEP))
    assert len((table / "table1.csv").read_text().splitlines()) == 1 + 2
    markdown = (table / "table1.md").read_text()
    assert "| 3m-poor |" in markdown and "λ for 3m-poor CQL: 0.1" in markdown
    capsys.readouterr()
    evaluate.main(sweep)
    assert "2 of 2 runs already finished; 0 to go" in capsys.readouterr().out


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
