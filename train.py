"""EAQ end to end: Algorithm 1 and the experiment of §4 in one command.

    python train.py --scenario 3m --quality poor --lam 0.1

1. D_real: the paper's "original" dataset, 3 % of OG-MARL's episode count
   for the map and quality, played by the shipped trained behaviour
   policies (`datasets.py`) on first use and cached under runs/datasets/.
2. Augmentation (`--aug`): `eaq` trains the diffusion model on D_real
   (Eq. 5 with `--lam`; `--lam 0` is EAQ^{-Q}) and samples D_syn with
   S = `--scale` times as many episodes (`eaq.py`), cached under runs/eaq/;
   `rad-s` / `rad-m` scale the learner's observations (`rad.py`); `none` is
   the original dataset alone.
3. The offline learner (`--algo cql|bcq`) trains for `--iters` iterations
   on D_real (∪ D_syn), evaluating in the simulator every `--eval-every`
   (the reported evaluation), and once more at the end on held-out
   evaluation episodes (another seeded stream, used only to choose λ).
4. A summary (dataset return, D_syn beside D_real with the fidelity verdict,
   final return ± std, normalised return, win rate, time per stage) is
   printed and saved as runs/results/<run>/results.json beside metrics.csv
   and curve.png.

The flags build three configuration objects, checked once: the diffusion
stage's (`eaq.DiffusionConfig`), the learner's (`learner.LearnerConfig`) and
the learner's own (`cql.CQLConfig` / `bcq.BCQConfig`); what train.py has no
flag for keeps the paper's or OG-MARL's default (cql.py, bcq.py and eaq.py
take every one). Each stage is cached under a readable name ending in a
hash of its whole configuration, so a rerun with another `--algo` reuses
the dataset and the diffusion model, an identical rerun only prints the
stored results, and a run that differs in anything runs anew. The whole
run is a function of its seeds.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import time

import artifacts
import bcq
import cql
import data
import datasets
import eaq
import env as envlib
import fidelity
import learner
import rad

# each learner: its class, its own configuration, and how that becomes the class's keyword arguments
LEARNERS = {"cql": (cql.QmixCQL, cql.CQLConfig, cql.learner_kwargs),
            "bcq": (bcq.QmixBCQ, bcq.BCQConfig, bcq.learner_kwargs)}
AUGS = ("none", "rad-s", "rad-m", "eaq")
DATA_SEED = 0             # one D_real per map and quality, shared by every run (datasets.py makes others)
# train.py's names for two diffusion fields (the learner has its own --seed and no --steps)
DIFFUSION_FLAGS = {"steps": "diffusion_steps", "seed": "diffusion_seed"}


def build_parser():
    p = argparse.ArgumentParser(description="EAQ: augment an offline SMAX dataset with the diffusion model and train "
                                            "an offline MARL learner on it (Alg. 1, §4).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenario", default="3m", help="map (paper: 3m, 5m_vs_6m, 8m, 2s3z, 3s5z_vs_3s6z)")
    p.add_argument("--quality", default="poor", choices=data.QUALITIES, help="behaviour policy quality")
    p.add_argument("--algo", default="cql", choices=sorted(LEARNERS), help="offline learner (§4.1)")
    p.add_argument("--aug", default="eaq", choices=AUGS, help="augmentation (§4.2); eaq with --lam 0 is EAQ^{-Q}")
    p.add_argument("--fraction", type=float, default=0.03,
                   help="D_real as a share of OG-MARL's episode count (paper: 3 %%)")
    p.add_argument("--dataset", default=None,
                   help="use this HDF5 file as D_real instead of generating one (e.g. OG-MARL data converted by "
                        "ogmarl.py; evaluate SMAC data with --backend smac); its map and quality come from the file")
    p.add_argument("--out", default="runs", help="root folder of every cached stage")
    g = p.add_argument_group("diffusion model (eaq.py; its defaults)")
    artifacts.add_config_flags(g, eaq.DiffusionConfig, ("lam", "scale", "steps", "ddim_steps", "network", "dim",
                                                        "bucket_width", "device"), rename=DIFFUSION_FLAGS)
    g.add_argument("--diffusion-seed", type=int, default=None,
                   help="seed of the diffusion model and D_syn; None = --seed; one fixed value lets learner "
                        "seeds share one D_syn")
    g = p.add_argument_group("learner (learner.py, cql.py, bcq.py; their defaults)")
    artifacts.add_config_flags(g, learner.LearnerConfig, ("iters", "grad_clip", "last_action", "eval_every",
                                                          "eval_episodes", "backend", "seed"))
    artifacts.add_config_flags(g, bcq.BCQConfig, ("bcq_execution",))
    return p


def parse_args(argv=None):
    """The run's flags, every value checked (a bad one is a one-line usage error before any work)."""
    p = build_parser()
    args = p.parse_args(argv)
    with artifacts.parser_errors(p):
        if args.dataset is not None:
            attrs = data.read_attrs(args.dataset)
            args.scenario, args.quality = attrs["scenario"], attrs["quality"]
        envlib.require_scenario(p, args.scenario, args.backend)
        if not 0.0 < args.fraction <= 1.0:
            raise artifacts.InputError(f"--fraction must be in (0, 1], got {args.fraction}")
        artifacts.require_flags(seeds={"--diffusion-seed": args.diffusion_seed})
        if args.diffusion_seed is None:
            args.diffusion_seed = args.seed
        learner.check_config(learner_config(args))
        eaq.check_config(diffusion_config(args), flags={k: "--" + v.replace("_", "-")
                                                        for k, v in DIFFUSION_FLAGS.items()})
    return args


def diffusion_config(args):
    """The diffusion stage's configuration (eaq.py's defaults for what train.py has no flag for)."""
    return artifacts.config_from_args(eaq.DiffusionConfig, args, rename=DIFFUSION_FLAGS)


def learner_config(args):
    """The learner run's configuration (learner.py's defaults for what train.py has no flag for)."""
    return artifacts.config_from_args(learner.LearnerConfig, args)


def own_config(args):
    """The learner's own configuration (cql.CQLConfig or bcq.BCQConfig)."""
    return artifacts.config_from_args(LEARNERS[args.algo][1], args)


def short_hash(config):
    """8 hex digits identifying a configuration dict (part of every cached stage's name)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def real_dataset_path(args):
    """The D_real file of this configuration (datasets.ensure_dataset makes it on first use, unless --dataset)."""
    if args.dataset is not None:
        return args.dataset
    return datasets.dataset_path(args.scenario, args.quality, args.fraction, DATA_SEED,
                                 root=os.path.join(args.out, "datasets"))


def real_dataset_stem(args):
    """D_real's name in the cached stages' names: the file's stem (plus a digest of its contents for --dataset)."""
    stem = os.path.splitext(os.path.basename(real_dataset_path(args)))[0]
    if args.dataset is not None:
        stem += "-" + artifacts.file_digest(args.dataset)[:6]
    return stem


def eaq_dir(args):
    """runs/eaq/<D_real>-lam..-k..-dim..-b..-ddim..-S..-s..-<hash of D_real and the whole DiffusionConfig>."""
    stem, config = real_dataset_stem(args), diffusion_config(args)
    key = short_hash({"dataset": stem, **dataclasses.asdict(config)})
    network = "" if config.network == "flat" else f"-{config.network}"
    return os.path.join(args.out, "eaq", f"{stem}-lam{config.lam:g}-k{config.steps}{network}-dim{config.dim}"
                                         f"-b{config.bucket_width}-ddim{config.ddim_steps}-S{config.scale}"
                                         f"-s{config.seed}-{key}")


def result_dir(args):
    """runs/results/<D_real>-<learner>-<augmentation>-it<iters>-s<seed>-<hash of the learner stage's configuration>.

    That configuration: the learner's and its own, the augmentation and the data (D_real, and for EAQ the
    D_syn stage's folder, which names its own whole configuration).
    """
    stem = real_dataset_stem(args)
    config = {**dataclasses.asdict(learner_config(args)), **dataclasses.asdict(own_config(args)),
              "algo": args.algo, "aug": args.aug, "dataset": stem}
    aug = args.aug
    if args.aug == "eaq":
        config["eaq"] = os.path.basename(eaq_dir(args))
        aug = "eaq-" + config["eaq"][len(stem) + 1:].rsplit("-", 1)[0]
    return os.path.join(args.out, "results",
                        f"{stem}-{args.algo}-{aug}-it{args.iters}-s{args.seed}-{short_hash(config)}")


def read_json(path):
    """A cached JSON file, or None if it is missing or damaged (then the stage runs again)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def cached_augmentation(out):
    """(D_syn path, report) of a finished diffusion stage in `out`, or None if any part is missing or damaged."""
    syn_path, report = os.path.join(out, "synthetic.h5"), read_json(os.path.join(out, "report.json"))
    if report is None or not os.path.exists(syn_path):
        return None
    try:
        data.load_dataset(syn_path)
    except artifacts.InputError as err:
        print(f"sampling D_syn again: {err}")
        return None
    return syn_path, report


def augment_with_eaq(args, real_path):
    """Train (or reuse, or resume) the diffusion model on D_real and sample D_syn; returns (D_syn path, report)."""
    out = eaq_dir(args)
    cached = cached_augmentation(out)
    if cached:
        print(f"reusing the diffusion model and D_syn in {out}")
        return cached
    report = eaq.fit_and_sample(diffusion_config(args), real_path, out, resume="auto")
    print(fidelity.format_report(report))
    return os.path.join(out, "synthetic.h5"), report


def summary_lines(results):
    d, final, heldout = results["dataset"], results["final"], results["heldout"]
    lines = [f"D_real: {d['episodes']} episodes, return {d['return_mean']:.2f} ± {d['return_std']:.2f}"]
    if results["augmentation_report"]:
        real, syn = results["augmentation_report"]["real"], results["augmentation_report"]["synthetic"]
        lines.append(f"D_syn: {syn['episodes']} episodes, return {syn['return_mean']:.2f} ± {syn['return_std']:.2f}, "
                     f"wins {syn['win_share']:.1%} (D_real {real['win_share']:.1%}), by its Q_tot row "
                     f"{syn['q0_win_share']:.1%}, mean Q̄ {syn['q_bar_mean']:.2f}; copy test at k = 1: "
                     f"{results['augmentation_report']['copy']['1']['action_accuracy']:.3f}")
        lines.append(fidelity.fidelity_line(results["augmentation_report"]))
    lines.append(f"{results['algo'].upper()} + {results['aug']} on {results['training_episodes']} episodes: "
                 f"return {final['return_mean']:.2f} ± {final['return_std']:.2f}, normalised "
                 f"{final['normalised_return']:.3f}, win rate {final['win_rate']:.2f} "
                 f"(held-out episodes: {heldout['return_mean']:.2f})")
    lines.append("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in results["seconds"].items()))
    lines.append("CPU time: " + ", ".join(f"{k} {v:.0f}s" for k, v in results["cpu_seconds"].items()))
    return lines


def run(args, out=None, make_buffer=learner.load_buffer, note=None):
    """All stages for one configuration; returns the results dict (cached in results.json). A variant in
    experiments/ gives its own results folder `out`, episode store (`make_buffer`, see learner.seeded_learner)
    and a `note` (dict) for the results' config."""
    out = out or result_dir(args)
    results_path = os.path.join(out, "results.json")
    cached = read_json(results_path)
    if cached is not None:
        print(f"reusing {results_path}")
        return cached
    artifacts.prepare_output_dir(out, "--out")
    seconds, cpu_seconds, clock = {}, {}, artifacts.Clock()
    real_path = args.dataset or datasets.ensure_dataset(args.scenario, args.quality, args.fraction, DATA_SEED,
                                                        root=os.path.join(args.out, "datasets"))
    real = data.load_dataset(real_path, scenario=args.scenario, quality=args.quality)   # validates the file
    real_attrs, n_real = real.attrs, real.n_episodes
    del real                         # later stages read the file themselves; this copy would sit in memory
    learner.check_simulator(real_path, real_attrs, args.backend)
    print("D_real " + datasets.describe(real_attrs))
    seconds["dataset"], cpu_seconds["dataset"] = clock.wall(), clock.cpu()
    paths, report, label = [real_path], None, "D_real" if args.aug == "none" else f"D_real, {args.aug}"
    generator = None
    if args.aug == "eaq":
        clock = artifacts.Clock()
        syn_path, report = augment_with_eaq(args, real_path)
        paths.append(syn_path)
        generator = data.read_attrs(syn_path).get("generator")          # the network that made D_syn
        label = f"D_real ∪ D_syn (EAQ λ={args.lam:g})"
        # the model's whole cost (training over every session, sampling), also when reused from the cache
        seconds["diffusion"] = clock.wall()
        cpu_seconds["diffusion"] = report["train_cpu_seconds_total"] + report["sample_cpu_seconds"]
    learner_cls, _, learner_kwargs = LEARNERS[args.algo]
    result = learner.run_learner(learner_cls, paths, learner_config(args), out,
                                 args.aug if args.aug in rad.AUGMENTATIONS else "none",
                                 learner_kwargs(own_config(args)), resume="auto", data_label=label,
                                 make_buffer=make_buffer)
    seconds["learner"] = result.pop("seconds")          # over every session, if the learner resumed
    cpu_seconds["learner"] = result.pop("cpu_seconds")
    config = {**vars(args), **dataclasses.asdict(learner_config(args)), **dataclasses.asdict(own_config(args)),
              "diffusion": dataclasses.asdict(diffusion_config(args)) if args.aug == "eaq" else None, **(note or {})}
    results = {"config": config, "algo": args.algo,
               "aug": f"eaq (λ={args.lam:g})" if args.aug == "eaq" else args.aug,
               "dataset": {"path": real_path, "episodes": n_real,
                           **{k: real_attrs[k] for k in ("return_mean", "return_std", "behaviour", "epsilon")}},
               "augmentation_report": report, "generator": generator, **result,
               "seconds": seconds, "cpu_seconds": cpu_seconds}
    artifacts.write_json(results_path, results)
    return results


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    with artifacts.one_line_errors():
        results = run(args)
    print("\n".join(summary_lines(results)))
    print(f"total {time.time() - start:.0f}s; results in {result_dir(args)}")


if __name__ == "__main__":
    main()
