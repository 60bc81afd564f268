"""The value test of the fidelity bar: is D_syn alone worth as much to a learner as D_real alone? (docs/fidelity.md)

    python experiments/value_test.py --scenario 3m --quality medium --seed 0

trains the diffusion model as train.py does (every train.py flag is
taken and passed through: `--lam`, `--network`, `--dim`, ...) and samples
D_syn, then trains the same learner (`--algo`, `--iters`, `--seed`) twice:
on D_syn alone and on D_real alone. The fidelity bar's last item asks for
the first return to reach at least VALUE_BAR times the second. Each stage
is train.py's own, cached under `--out` by its configuration, so a rerun
reuses what is done; the verdict is written, with D_syn's whole fidelity
report, to experiments/records-value/<D_real>-<algo>-it<iters>-s<seed>-<D_syn stage>.json.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import datasets  # noqa: E402
import train  # noqa: E402

RECORDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "records-value")
VALUE_BAR = 0.9        # D_syn alone's return over D_real alone's


def learner_args(argv, dataset):
    """train.py's arguments for the learner alone (no augmentation) on `dataset`."""
    return train.parse_args([*argv, "--dataset", dataset, "--aug", "none"])


def value_ratio(syn_return, real_return):
    """D_syn alone's return over D_real alone's; a D_real return ≤ 0 leaves the ratio undefined (None)."""
    return syn_return / real_return if real_return > 0 else None


def verdict(ratio):
    return "undefined (D_real alone returns ≤ 0)" if ratio is None else (
        "meets" if ratio >= VALUE_BAR else f"misses (bar: ≥ {VALUE_BAR})")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = train.parse_args([*argv, "--aug", "eaq"])
    with artifacts.one_line_errors():
        real_path = args.dataset or datasets.ensure_dataset(args.scenario, args.quality, args.fraction,
                                                            train.DATA_SEED, root=os.path.join(args.out, "datasets"))
        syn_path, report = train.augment_with_eaq(args, real_path)
        runs = {}
        for name, path in (("syn_alone", syn_path), ("real_alone", real_path)):
            print(f"--- {args.algo.upper()} on {name.replace('_', ' ')}: {path}", flush=True)
            runs[name] = train.run(learner_args(argv, path))
    returns = {name: r["final"]["return_mean"] for name, r in runs.items()}
    ratio = value_ratio(returns["syn_alone"], returns["real_alone"])
    record = {"dataset": os.path.basename(real_path), "synthetic": os.path.basename(os.path.dirname(syn_path)),
              "algo": args.algo, "iters": args.iters, "seed": args.seed, "value_bar": VALUE_BAR,
              "ratio": ratio, "verdict": verdict(ratio), "fidelity_misses": report["fidelity_misses"],
              "fidelity_report": report,
              **{name: {"return_mean": r["final"]["return_mean"], "return_std": r["final"]["return_std"],
                        "win_rate": r["final"]["win_rate"], "episodes": r["training_episodes"],
                        "cpu_seconds": r["cpu_seconds"]["learner"]} for name, r in runs.items()}}
    stem = os.path.splitext(os.path.basename(real_path))[0]
    name = f"{stem}-{args.algo}-it{args.iters}-s{args.seed}-{record['synthetic'][len(stem) + 1:]}.json"
    path = os.path.join(RECORDS, name)
    os.makedirs(RECORDS, exist_ok=True)
    artifacts.write_json(path, record)
    print(f"{args.algo.upper()} return on D_syn alone {returns['syn_alone']:.2f}, on D_real alone "
          f"{returns['real_alone']:.2f}: ratio {'n/a' if ratio is None else f'{ratio:.3f}'}, {verdict(ratio)}; "
          f"record in {path}")


if __name__ == "__main__":
    main()
