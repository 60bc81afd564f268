"""The edges every stage shares: how files are written (datasets, checkpoints, JSON, CSV, PNG), how bad
input is refused (one line), how configurations become flags, and the time a stage spent (`Clock`).

Every file the project writes goes through `atomic_path`: it is written
under a temporary name beside its target and renamed only when complete,
so an interrupted run never leaves a half-written file that a later run
would trust. A run killed mid-write (kill -9) cannot clean up after itself;
the next write of the same target removes the orphaned temporary.

Temporary names carry the host and the process id (`<stem>.tmp-<host>-<pid><ext>`),
so a temporary is only removed when the process that wrote it is known to
be gone (same host, no such process), never one that another process or
another node is still writing.

This module sits below every other one (it imports nothing of ours).
"""
import argparse
import contextlib
import csv
import dataclasses
import errno
import glob
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import time


class InputError(ValueError):
    """A refused input (file, flag, checkpoint): the message names it, what is wrong and the fix.

    Command-line entry points print it as one line (`one_line_errors`);
    any other exception is a bug and keeps its traceback.
    """


@contextlib.contextmanager
def one_line_errors():
    """Turn an InputError raised inside the block into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


@contextlib.contextmanager
def parser_errors(parser):
    """Turn an InputError raised inside the block into the parser's one-line usage error (exit status 2)."""
    try:
        yield
    except InputError as err:
        parser.error(str(err))


SEED_MAX = 1_000_000_000   # seeds are offset (evaluation streams) and fed to JAX's 32-bit keys


def require_flags(at_least_one=None, seeds=None, finite=None):
    """Raise an InputError naming the first flag whose value cannot work: an integer below 1, a seed outside
    [0, SEED_MAX], a NaN or infinite number. Each argument maps flag names to values (None: not given)."""
    for flag, value in (at_least_one or {}).items():
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    for flag, value in (seeds or {}).items():
        if value is not None and not 0 <= value <= SEED_MAX:
            raise InputError(f"{flag} must be in [0, {SEED_MAX:,}], got {value}")
    for flag, value in (finite or {}).items():
        if not math.isfinite(value):
            raise InputError(f"{flag} must be a finite number, got {value}")


def option(default, help, choices=None):
    """A configuration dataclass's field whose command-line flag has this default, help and choices
    (`add_config_flags`)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def add_config_flags(parser, config_cls, names=None, rename=None):
    """One flag per field of the dataclass `config_cls` (those in `names`), default and help from the field.

    A field f becomes --f (underscores as dashes), or --<rename[f]> with that
    destination; a True switch becomes --no-f; a tuple takes one value or more.
    """
    for field in dataclasses.fields(config_cls):
        if names is not None and field.name not in names:
            continue
        dest = (rename or {}).get(field.name, field.name)
        flag, default, help = "--" + dest.replace("_", "-"), field.default, field.metadata["help"]
        if isinstance(default, bool):         # a switch; unless given, the field keeps its default
            parser.add_argument(flag.replace("--", "--no-") if default else flag, dest=dest, default=argparse.SUPPRESS,
                                action="store_false" if default else "store_true", help=help)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=dest, type=type(default[0]), nargs="+", default=default, help=help)
        else:
            parser.add_argument(flag, dest=dest, type=type(default), default=default, help=help,
                                choices=field.metadata["choices"])


def config_from_args(config_cls, args, rename=None, **values):
    """The dataclass `config_cls` from parsed flags (`add_config_flags`, same `rename`); `values` set fields
    directly, and fields without a flag keep their defaults."""
    for field in dataclasses.fields(config_cls):
        dest = (rename or {}).get(field.name, field.name)
        if field.name not in values and hasattr(args, dest):
            value = getattr(args, dest)
            values[field.name] = tuple(value) if isinstance(field.default, tuple) else value
    return config_cls(**values)


HOST = socket.gethostname().replace("-", "_").replace(".", "_") or "host"


def _temporary_name(path):
    root, ext = os.path.splitext(path)
    return f"{root}.tmp-{HOST}-{os.getpid()}{ext}"


def _process_is_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:          # alive, owned by another user
        return False
    return False


def remove_stale_temporaries(path):
    """Delete temporaries of `path` left by processes of this host that no longer exist; returns them."""
    root, ext = os.path.splitext(path)
    removed = []
    for tmp in glob.glob(glob.escape(root) + f".tmp-{HOST}-*{ext}"):
        pid = tmp[len(root) + len(f".tmp-{HOST}-"):len(tmp) - len(ext)]
        if pid.isdigit() and int(pid) != os.getpid() and _process_is_gone(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
                removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary name beside `path`; rename it to `path` only if the block succeeds.

    A write that fails for lack of space (`out_of_space`) ends in an InputError that says so; any other
    failure keeps its own error. Either way the temporary is removed and `path` is left as it was.
    """
    remove_stale_temporaries(path)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as err:
        if out_of_space(err, path):
            raise InputError(f"{path}: no space left on its device; free some space or write elsewhere "
                             f"(another --out)") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


FULL = 1 << 20      # bytes: a device with less than this free is full


def out_of_space(err, path):
    """Whether writing `path` failed for lack of space: ENOSPC, or an error that hides it (torch.save's
    "unexpected pos", h5py's "file write failed") while the device is full."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC or "No space left" in str(err):
        return True
    try:
        return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < FULL
    except OSError:
        return False


def write_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)


def copy_file(source, path):
    """Copy the file `source` to `path`, atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def write_csv(path, rows):
    """Write a list of dicts (same keys) as CSV with a header row, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


def file_digest(path):
    """sha256 of a file's bytes (identifies a dataset's contents in checkpoints and cache keys)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_tensors(path, state):
    """torch.save a dict of tensors and plain values, atomically (torch is imported here: the
    data-making modules, which use JAX only, import this one too)."""
    import torch
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_tensors(path, what, fix, keys):
    """A checkpoint written by `save_tensors` (a dict with at least `keys`), loaded without running any code
    (`weights_only`).

    Anything else — a pickle that would run code, a damaged or foreign file —
    is refused with one InputError naming `path`, `what` it should be and the `fix`.
    """
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:       # torch raises several types (UnpicklingError, RuntimeError, EOFError...)
        raise InputError(f"{path}: not a readable {what} (refused: {refusal_reason(err)}); {fix}") from None
    if not isinstance(state, dict) or not set(keys) <= state.keys():
        raise InputError(f"{path}: not a whole {what}; {fix}")
    return state


def refusal_reason(err):
    """torch.load's refusal in a few words: what a pickle would have called, or the error's first line.

    (torch's own message spans several lines and explains how to load the file unsafely.)
    """
    text = str(err)
    called = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if called:
        return f"loading it would call {called.group(1)}; a checkpoint holds tensors and plain values only"
    if "WeightsUnpickler error" in text:
        return "not a torch file of tensors and plain values"
    if "PytorchStreamReader" in text:
        return "a damaged or truncated torch file"
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else type(err).__name__
    return first if len(first) <= 160 else first[:first.rfind(" ", 0, 157)] + " ..."


def torch_threads():
    """Torch threads per process: 1, unless the environment variable EAQ_TORCH_THREADS sets another count.

    Measured on a 2-core machine (docs/reliability.md): with two threads a
    learner runs 1.6x and the diffusion model 1.5x faster alone, but two such
    processes side by side fall 5x (barrier-synchronised threads wait for
    each other's descheduled partner); with one thread each, a second process
    costs nothing. One thread also makes results independent of the core count.
    """
    value = os.environ.get("EAQ_TORCH_THREADS", "1")
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"EAQ_TORCH_THREADS={value!r}: must be a positive integer (torch threads per process)")
    return int(value)


def available_memory():
    """Bytes of memory this machine can give a process now (Linux's MemAvailable; else all of it)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class Clock:
    """Wall and CPU seconds a stage has spent, over every session of it that saved its counts.

    CPU seconds are `time.process_time()`: every thread of this process,
    none of another's, none while the process is paused (SIGSTOP) or waits
    for a core — so on a shared or paused machine they stay the stage's own
    cost where wall time reads long (docs/cost.md). They miss what a GPU computes.
    """

    def __init__(self, wall_before=0.0, cpu_before=0.0):
        self.wall_before, self.cpu_before = wall_before, cpu_before
        self.wall_start, self.cpu_start = time.time(), time.process_time()

    def wall(self):
        return self.wall_before + time.time() - self.wall_start

    def cpu(self):
        return self.cpu_before + time.process_time() - self.cpu_start

    def add_before(self, wall, cpu):
        """Count an earlier session's seconds (read from a checkpoint)."""
        self.wall_before += wall
        self.cpu_before += cpu


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no screen needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi=110):
    """Save a matplotlib figure as PNG, atomically, and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)


def prepare_output_dir(path, flag="--out"):
    """Create the folder `path` and check it is writable, before any work; raise an InputError if not."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{flag} {path}: exists and is not a folder; choose another {flag}")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{HOST}-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise InputError(f"{flag} {path}: cannot write there ({err.strerror}); choose another {flag}") from None
    return path
