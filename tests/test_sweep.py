"""experiments/sweep.py: the Table 1 sweep in parallel workers and on Ray, and the run records it keeps."""
import csv
import os
import shutil

import pytest

import evaluate
import train
from experiments import report, sweep


TINY_SWEEP = ["--fraction", "0.0005", "--diffusion-steps", "4", "--dim", "8", "--ddim-steps", "2",
              "--scale", "1", "--eval-every", "5", "--eval-episodes", "2", "--diffusion-seed", "0"]


SWEEP = ["--qualities", "poor", "--algos", "cql", "--seeds", "0", "1", "--lams", "0.1",
         "--methods", "original", "EAQ", "--iters", "5"]


def sweep_table(out):
    """Where the tiny sweep's table goes: its flags depart from train.py's defaults."""
    return out / os.path.basename(evaluate.table_folder(str(out), 5, TINY_SWEEP))


@pytest.fixture(scope="module")
def two_worker_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    sweep.main(SWEEP + ["--jobs", "2", "--out", str(out)] + TINY_SWEEP)
    return out


def test_table1_sweep_in_two_workers_writes_the_table_and_the_report_reads_its_runs(two_worker_sweep, tmp_path):
    out = two_worker_sweep
    table = sweep_table(out)
    assert not (out / "table1").exists(), "a departure's table never lands where the default sweep's does"
    rows = (table / "table1.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("scenario,quality,algo,method,lam,seed,return_mean")
    assert "heldout_return" in rows[0]
    assert len(os.listdir(out / "logs")) == 4
    assert len(os.listdir(out / "eaq")) == 1                     # both seeds share one D_syn
    markdown = (table / "table1.md").read_text()
    assert markdown.startswith(f"Every run of this table was trained with `{' '.join(TINY_SWEEP)}` beyond")
    assert markdown.count("| 3m-poor |") == 1 and "| — | — | — |" in markdown     # RAD-s/m, EAQ^-Q not run
    page = tmp_path / "page.md"
    report.main(["--records", str(out / "results"), "--out", str(page), "--figures", str(tmp_path / "figures")])
    page = page.read_text()
    assert page.count("| 3m-poor | CQL | original |") == 1 and page.count("| 3m-poor | CQL | EAQ (λ=0.1) |") == 1
    assert page.count("| 3m-poor D_real |") == 1 and page.count("| D_syn | 0.1 | 0 |") == 1   # one D_syn
    assert "\n3m-poor: per-episode return std " in page and " over 2 episodes, " in page   # --eval-episodes
    cost = page.split("\n## Cost")[1].splitlines()
    runs_and_models = [line.split(" | ")[1:4:2] for line in cost if line.startswith("| 3m-poor |")]
    assert runs_and_models == [["4 (4)", "1 (1)"]], "every run and its model CPU-timed"
    assert (tmp_path / "figures" / "curves-3m-poor.png").stat().st_size > 1000
    assert "](figures/curves-3m-poor.png)" in page
    seed1 = train.result_dir(train.parse_args(["--quality", "poor", "--algo", "cql", "--seed", "1", "--aug", "none",
                                               "--iters", "5", "--out", str(out)] + TINY_SWEEP))
    results = os.path.join(seed1, "results.json")
    stamp = os.stat(results).st_mtime_ns
    sweep.main(SWEEP + ["--jobs", "2", "--out", str(out)] + TINY_SWEEP)        # everything finished: nothing reruns
    assert os.stat(results).st_mtime_ns == stamp
    (table / "table1.csv").unlink()
    evaluate.main(["table1"] + SWEEP + ["--out", str(out), "--table-only", "--seeds", "0", "1", "2"] + TINY_SWEEP)
    assert len((table / "table1.csv").read_text().splitlines()) == 1 + 4               # seed 2 never ran
    assert len(os.listdir(out / "results")) == 4


def table_without_paths(out):
    """table1.csv and table1.md without what differs between two sweeps of the same runs: the folders."""
    with open(sweep_table(out) / "table1.csv") as f:
        rows = [{k: v for k, v in row.items() if k != "run_dir"} for row in csv.DictReader(f)]
    return rows, (sweep_table(out) / "table1.md").read_text()


# ray.init starts its daemons with subprocess and a preexec_fn, which runs JAX's at-fork hook; the child only sets a
# signal mask before it execs and never touches JAX, so JAX's "os.fork() ... deadlock" warning does not apply here.
ray_starts_daemons = pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")


@ray_starts_daemons
def test_the_same_sweep_on_a_local_ray_instance_gives_the_same_table(two_worker_sweep, tmp_path):
    shutil.copytree(two_worker_sweep / "datasets", tmp_path / "datasets")     # the same D_real, not made again
    sweep.main(SWEEP + ["--ray", "local", "--out", str(tmp_path)] + TINY_SWEEP)
    assert table_without_paths(tmp_path) == table_without_paths(two_worker_sweep)
    assert len(os.listdir(tmp_path / "eaq")) == 1, "the runs sharing a diffusion model ran in one task"


@ray_starts_daemons
def test_a_failing_ray_task_is_reported_and_its_cell_left_out(two_worker_sweep, tmp_path):
    for folder in ("datasets", "results"):                      # the original runs finished in the fixture
        shutil.copytree(two_worker_sweep / folder, tmp_path / folder)
    base = ["--quality", "poor", "--algo", "cql", "--seed", "0", "--iters", "5", "--out", str(tmp_path)] + TINY_SWEEP
    runs = [("original", base + ["--aug", "none"]),
            ("RAD-s", base + ["--aug", "rad-s", "--backend", "smac"])]      # fails: no StarCraft II here
    failures = sweep.run_in_parallel(runs, jobs=1, out=str(tmp_path), ray="local")
    assert len(failures) == 1 and "--backend smac" in failures[0] and "failed (exit 2)" in failures[0]
    finished = [r for r in runs if evaluate.finished(r[1])]
    markdown = evaluate.table1_markdown(evaluate.table1_rows(finished), algos=("cql",))
    assert "| 3m-poor | " in markdown and "| — |" in markdown


def record_sweep(two_worker_sweep, records):
    """Record the tiny sweep's finished runs in `records` (a table-only pass: nothing trains)."""
    sweep.main(SWEEP + ["--out", str(two_worker_sweep), "--table-only", "--records", str(records)] + TINY_SWEEP)


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
    sweep.main(SWEEP + ["--jobs", "2", "--out", str(fresh), "--records", str(records)] + TINY_SWEEP)
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
        sweep.main(SWEEP + ["--out", str(tmp_path / "fresh"), "--records", str(records)] + TINY_SWEEP)
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {damaged}: ") and f"delete {damaged} so that" in err and "\n" not in err
    assert not (tmp_path / "fresh").exists(), "no record restored and no dataset made"


@pytest.mark.parametrize("value", ["somewhere", "host:port", "host:0", "host:70000", ":6379"])
def test_bad_ray_addresses_fail_before_anything_starts(tmp_path, capsys, value):
    with pytest.raises(SystemExit):
        sweep.main(["--seeds", "0", "--out", str(tmp_path / "runs"), "--ray", value])
    err = capsys.readouterr().err
    assert "is not local, auto or HOST:PORT" in err and len(err.strip().splitlines()[-1:]) == 1
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_ray_cluster_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        sweep.main(["--seeds", "0", "--out", str(tmp_path / "runs"), "--ray", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith("error: --ray 127.0.0.1:1: no Ray cluster answers there")
    assert "\n" not in err and not (tmp_path / "runs").exists()
