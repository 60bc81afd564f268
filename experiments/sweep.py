"""The Table 1 sweep beyond one process: parallel single-threaded workers, a Ray cluster, and run records.

    python experiments/sweep.py --scenarios 8m --qualities poor --seeds 0 1 2 --jobs 2 --records experiments/records
    python experiments/sweep.py --scenarios 8m --qualities poor --ray auto            # join a Ray cluster

Takes `evaluate.py table1`'s flags (and, like it, passes any other flag to
every train.py run) and runs the same sweep: each group of runs sharing a
diffusion model (`evaluate.sharing_groups`) as one single-threaded
`python train.py` process, `--jobs` at a time on this machine or one Ray
task each (`--ray`: 'local' starts Ray here, 'auto' or HOST:PORT joins a
cluster; --out must be on storage every node sees), then writes the same
table1.csv and table1.md.

With `--records DIR` each finished run's results.json and metrics.csv are
kept in DIR (the repository's experiments/records/), and restored from it
into a fresh --out, so a sweep that outlasts a machine's runs/ folder
resumes without training its finished runs again; `experiments/report.py`
tables the records (docs/table1.md). A run killed half-way leaves no
results.json (it is written last, atomically), so a later sweep runs it
again, from its last checkpoint.
"""
import argparse
import filecmp
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import artifacts  # noqa: E402
import evaluate  # noqa: E402
import train  # noqa: E402
from experiments.report import RECORD_FILES, read_record  # noqa: E402

# One thread each for torch (OMP/MKL) and XLA: on this 2-core machine two
# single-threaded learners run as fast each as one two-threaded learner,
# while two two-threaded processes thrash. tqdm refreshes every 30 s in logs.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_MININTERVAL": "30",
                     "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def run_group_in_subprocess(group, log_dir):
    """`python train.py FLAGS` for each run of one group, single-threaded, logged to log_dir; returns len(group).

    Raises RuntimeError naming the run and its log if one fails. A run killed
    half-way leaves no results.json (it is written last, atomically), so a
    later sweep runs it again, from its last checkpoint (train.py resumes
    its diffusion model and its learner by itself).
    """
    train_py = os.path.join(ROOT, "train.py")
    for _, flags in group:
        log = os.path.join(log_dir, os.path.basename(train.result_dir(train.parse_args(flags))) + ".log")
        with open(log, "a") as f:                  # a resumed run's log keeps its earlier sessions
            done = subprocess.run([sys.executable, train_py] + flags, stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, **SINGLE_THREAD_ENV})
        if done.returncode:
            raise RuntimeError(f"train.py {' '.join(flags)} failed (exit {done.returncode}); see {log}")
    return len(group)


def run_with_workers(groups, jobs, log_dir, progress):
    """Each group in one of `jobs` local single-threaded workers; returns the failures' messages."""
    failures = []
    with ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(run_group_in_subprocess, g, log_dir): len(g) for g in groups}
        for future in as_completed(futures):
            try:
                future.result()
            except RuntimeError as err:
                failures.append(str(err))
            progress.update(futures[future])
            progress.set_postfix(failures=len(failures))
    return failures


RAY_RETRIES = 3     # a task whose worker or node dies is started again this many times


def ray_address(value):
    """argparse type of --ray: 'local', 'auto' or HOST:PORT, checked before anything starts."""
    if value in ("local", "auto"):
        return value
    host, _, port = value.rpartition(":")
    if host and port.isdigit() and 0 < int(port) < 65536 and " " not in host:
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not local, auto or HOST:PORT (e.g. 10.0.0.1:6379)")


def check_reachable(address, timeout=5.0):
    """Refuse, in one line and before any work, a HOST:PORT where nothing answers ('local' and 'auto' are Ray's)."""
    if address in ("local", "auto"):
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise artifacts.InputError(f"--ray {address}: no Ray cluster answers there ({err.strerror or err}); start one "
                                   f"with `ray start --head` on that node, or pass --ray local") from None


def run_with_ray(groups, address, log_dir, progress):
    """Each group as one Ray task (1 CPU, single-threaded inside); returns the failures' messages.

    'local' starts a Ray instance on this machine with all its cores; 'auto'
    or HOST:PORT joins a running cluster. Tasks run train.py from this
    repository's path and write under --out, so both must be on storage every
    node sees. A task whose worker or node dies is retried by Ray; a run that
    fails is reported and its cell left out of the table.
    """
    import ray
    runtime_env = {"env_vars": {"PYTHONPATH": ROOT, **SINGLE_THREAD_ENV}}
    if address == "local":
        ray.init(runtime_env=runtime_env, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=RAY_RETRIES)(run_group_in_subprocess)
        pending = {task.remote(g, log_dir): len(g) for g in groups}
        failures = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            try:
                ray.get(done[0])
            except ray.exceptions.RayError as err:     # the run failed, or its worker died RAY_RETRIES + 1 times
                cause = getattr(err, "cause", None)
                failures.append(str(cause) if cause is not None else str(err).strip().splitlines()[0])
            progress.update(pending.pop(done[0]))
            progress.set_postfix(failures=len(failures))
        return failures
    finally:
        ray.shutdown()


def record_folder(flags, records):
    """(result folder under --out, its record's folder under `records`) of the train.py run with these flags."""
    run_dir = train.result_dir(train.parse_args(flags))
    return run_dir, os.path.join(records, os.path.basename(run_dir))


def copy_record(source_dir, target_dir):
    """Copy a run's RECORD_FILES from one folder to another (created if need be), results.json last."""
    os.makedirs(target_dir, exist_ok=True)
    for name in RECORD_FILES:
        artifacts.copy_file(os.path.join(source_dir, name), os.path.join(target_dir, name))


def restore_records(runs, records):
    """Copy the record of each run not finished under --out from the folder `records` into its result folder
    (then the sweep reuses it instead of training the run); returns how many were restored.

    Every record is checked before any is copied, so a damaged one stops the sweep before it starts.
    """
    todo = []
    for _, flags in runs:
        run_dir, record = record_folder(flags, records)
        if not evaluate.finished(flags) and os.path.isdir(record):
            read_record(record)                        # refuses a damaged record in one line
            todo.append((record, run_dir))
    for record, run_dir in todo:
        copy_record(record, run_dir)
    return len(todo)


def save_records(runs, records):
    """Copy every finished run's metrics.csv and results.json into `records` (kept in git, the records
    outlive a machine's runs/ folder); returns how many records were new or changed."""
    saved = 0
    for _, flags in runs:
        run_dir, record = record_folder(flags, records)
        if all(os.path.exists(os.path.join(record, name))
               and filecmp.cmp(os.path.join(run_dir, name), os.path.join(record, name), shallow=False)
               for name in RECORD_FILES):
            continue
        copy_record(run_dir, record)
        saved += 1
    return saved


def run_in_parallel(runs, jobs, out, ray=None):
    """Every run without a results.json, as groups in `jobs` local workers or Ray tasks (`ray`: local, auto or
    HOST:PORT); returns the failed groups' messages."""
    todo = evaluate.still_to_run(runs)
    if not todo:
        return []
    groups = evaluate.sharing_groups(todo)
    log_dir = os.path.join(out, "logs")
    os.makedirs(log_dir, exist_ok=True)
    with tqdm(total=len(todo), desc="runs", unit="run") as progress:
        if ray is None:
            return run_with_workers(groups, jobs, log_dir, progress)
        return run_with_ray(groups, ray, log_dir, progress)


def main(argv=None):
    p = argparse.ArgumentParser(description="The Table 1 sweep in parallel workers or on Ray, with run records; "
                                            "any other flag is passed to every train.py run.")
    evaluate.add_sweep_flags(p)
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each single-threaded in its own process (2 on a 2-core machine)")
    p.add_argument("--ray", nargs="?", const="local", default=None, type=ray_address, metavar="ADDRESS",
                   help="run on Ray, one single-threaded task per run (per shared diffusion model): 'local' "
                        "(the default when --ray is given alone) starts Ray on this machine, 'auto' or HOST:PORT "
                        "joins a cluster; --out must be on storage every node sees")
    p.add_argument("--records", default=None, metavar="DIR",
                   help="a folder of finished runs' records (results.json, metrics.csv), e.g. experiments/records: "
                        "runs recorded there are restored under --out and not trained again, and every finished "
                        "run of the sweep is recorded there afterwards")
    args, rest = p.parse_known_args(argv)
    with artifacts.parser_errors(p):
        artifacts.require_flags(at_least_one={"--jobs": args.jobs})
    if args.ray is not None:
        try:
            import ray  # noqa: F401  (only the Ray path needs it)
        except ImportError:
            p.error("--ray needs the ray package: pip install ray==2.60.0")
    with artifacts.one_line_errors():
        if args.ray is not None:
            check_reachable(args.ray)
        if args.records:
            runs = evaluate.sweep_runs(args, rest)
            for _, flags in runs:                  # every bad flag fails before a record is restored
                train.parse_args(flags)
            print(f"{restore_records(runs, args.records)} finished run(s) restored from {args.records}")
        finished = evaluate.run_table1(args, rest, lambda runs: run_in_parallel(runs, args.jobs, args.out, args.ray))
        if args.records:
            print(f"{save_records(finished, args.records)} record(s) written to {args.records}")


if __name__ == "__main__":
    main()
