"""EAQ end to end: Algorithm 1 and the experiment of §4 in one command.

    python train.py --scenario 3m --quality poor --lam 0.1

1. D_real: the paper's "original" dataset, 3 % of OG-MARL's episode count
   for the map and quality, played by the shipped trained behaviour
   policies (`behaviour.py`, `data.py`) on first use and cached under
   runs/datasets/.
2. Augmentation (`--aug`): `eaq` trains the diffusion model on D_real
   (Eq. 5 with `--lam`; `--lam 0` is EAQ^{-Q}) and samples D_syn with
   S = `--scale` times as many episodes (`diffusion.py`), cached under
   runs/eaq/; `rad-s` / `rad-m` scale the learner's observations (`rad.py`);
   `none` is the original dataset alone.
3. The offline learner (`--algo cql|bcq`) trains for `--iters` iterations
   on D_real (∪ D_syn), evaluating in the simulator every `--eval-every`
   (the reported evaluation), and once more at the end on held-out
   evaluation episodes (another seeded stream, used only to choose λ).
4. A summary (dataset return, augmentation report, final return ± std,
   normalised return, win rate, wall time per stage) is printed and saved as
   runs/results/<configuration>/results.json beside metrics.csv and curve.png.

Every stage is cached under a name that is readable and ends in a short
hash of its whole configuration (every flag that changes its result), so a
rerun with another `--algo` reuses the dataset and the diffusion model, an
identical rerun only prints the stored results, and a run that differs in
any such flag runs anew. The whole run is a function of its seeds.
"""
import argparse
import hashlib
import json
import os
import time

import artifacts
import bcq
import cql
import data
import diffusion
import env as envlib
import qmix
import rad

ALGOS = {"cql": cql, "bcq": bcq}
LEARNERS = {"cql": cql.QmixCQL, "bcq": bcq.QmixBCQ}
AUGS = ("none", "rad-s", "rad-m", "eaq")
ALGO_FLAGS = {"cql": ("alpha", "cql_samples"), "bcq": ("tau", "bcq_execution")}


def build_parser():
    d = diffusion.build_parser()
    p = argparse.ArgumentParser(description="EAQ: augment an offline SMAX dataset with the diffusion "
                                            "model and train an offline MARL learner on it (Alg. 1, §4).")
    p.add_argument("--scenario", default="3m", help="map (paper: 3m, 5m_vs_6m, 8m, 2s3z, 3s5z_vs_3s6z)")
    p.add_argument("--quality", default="poor", choices=data.QUALITIES, help="behaviour policy quality")
    p.add_argument("--algo", default="cql", choices=sorted(ALGOS), help="offline learner (§4.1)")
    p.add_argument("--aug", default="eaq", choices=AUGS, help="augmentation (§4.2); eaq with --lam 0 is EAQ^{-Q}")
    p.add_argument("--fraction", type=float, default=0.03,
                   help="D_real as a share of OG-MARL's episode count (paper: 3 %%)")
    p.add_argument("--behaviour", default="policies", choices=data.BEHAVIOURS,
                   help="who made D_real: the shipped trained policies (OG-MARL's procedure) or the heuristic "
                        "ε-mixture (ablation)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the dataset (shared by all runs)")
    p.add_argument("--dataset", default=None,
                   help="use this HDF5 file as D_real instead of generating one (e.g. OG-MARL data converted by "
                        "ogmarl.py; evaluate SMAC data with --backend smac); its map and quality come from the file")
    p.add_argument("--out", default="runs", help="root folder of every cached stage")
    g = p.add_argument_group("diffusion model (diffusion.py; defaults are diffusion.py's)")
    g.add_argument("--lam", type=float, default=d.get_default("lam"),
                   help="λ of Eq. 5, our units (paper tunes among 0.5, 0.1, 0.01; diffusion.py explains units)")
    g.add_argument("--scale", type=int, default=d.get_default("scale"),
                   help="upsampling scale S: |D_syn| = S |D_real| (paper: 5)")
    g.add_argument("--diffusion-steps", type=int, default=d.get_default("steps"), help="training steps (paper: silent)")
    g.add_argument("--ddim-steps", type=int, default=d.get_default("ddim_steps"),
                   help="DDIM sampling steps; 0 = ancestral DDPM with all K = 1000 steps (≈ 1 h for 3m on a CPU)")
    g.add_argument("--dim", type=int, default=d.get_default("dim"), help="U-Net base width")
    g.add_argument("--bucket-width", type=int, default=d.get_default("bucket_width"),
                   help="length-aware diffusion: windows of each episode's length rounded up to a multiple "
                        "of this; 0 = the paper's fixed window (the longest episode)")
    g.add_argument("--global-row-weight", type=float, default=d.get_default("global_row_weight"),
                   help="weight of the reward, Q_tot and done rows in Eq. 5's squared error (1 = the paper's "
                        "plain mean; README \"Where the wins went\")")
    g.add_argument("--head-width", type=int, default=d.get_default("head_width"),
                   help="channels of the U-Net's last block (0 = --dim, diffuser's head; README \"Damage "
                        "without a shooter\")")
    g.add_argument("--x0-skip", action="store_true",
                   help="f_theta = the best affine estimate of tau0 from tau_k plus the U-Net's correction (a "
                        "departure; README \"What the network can copy\")")
    g.add_argument("--diffusion-seed", type=int, default=None,
                   help="seed of the diffusion model and D_syn (default: --seed); one fixed value lets "
                        "learner seeds share one D_syn")
    g.add_argument("--device", default=d.get_default("device"),
                   help="torch device of the diffusion model (cpu, cuda, ...); the learners and the "
                        "simulator run on the CPU")
    g = p.add_argument_group("learner (cql.py / bcq.py)")
    qmix.add_learner_flags(g)
    cql.add_flags(g)
    bcq.add_flags(g)
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.dataset is not None:
        try:
            attrs = data.read_attrs(args.dataset)
        except artifacts.InputError as err:
            p.error(str(err))
        args.scenario, args.quality = attrs["scenario"], attrs["quality"]
    envlib.require_scenario(p, args.scenario, args.backend)
    if not 0.0 < args.fraction <= 1.0:
        p.error(f"--fraction must be in (0, 1], got {args.fraction}")
    qmix.check_learner_args(p, args)
    cql.check_flags(p, args)
    bcq.check_flags(p, args)
    data.require_seed(p, args, ("data_seed", "diffusion_seed"))
    data.require_finite(p, args, ("lam", "global_row_weight"))
    if args.lam < 0:
        p.error(f"--lam must be >= 0 (the hinge pushes Q_tot up; 0 is EAQ^{{-Q}}), got {args.lam}")
    data.require_at_least_one(p, args, ("scale", "diffusion_steps"))
    if args.global_row_weight <= 0:
        p.error(f"--global-row-weight must be > 0 (1 = Eq. 5's plain squared error), got {args.global_row_weight}")
    defaults = diffusion.build_parser()
    K = defaults.get_default("K")
    if not 0 <= args.ddim_steps <= K:
        p.error(f"--ddim-steps must be in [0, K={K}], got {args.ddim_steps}")
    if args.dim < 8 or args.dim % 8:
        p.error(f"--dim must be a positive multiple of 8, got {args.dim}")
    diffusion.check_bucket_width(p, args.bucket_width, defaults.get_default("dim_mults"))
    diffusion.check_head_width(p, args.head_width)
    diffusion.check_device(p, args.device)
    if args.diffusion_seed is None:
        args.diffusion_seed = args.seed
    return args


def short_hash(config):
    """8 hex digits identifying a configuration dict (part of every cached stage's name)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def real_dataset_path(args):
    """The D_real file of this configuration (data.ensure_dataset makes it on first use, unless --dataset)."""
    if args.dataset is not None:
        return args.dataset
    return data.dataset_path(args.scenario, args.quality, args.fraction, args.data_seed,
                             root=os.path.join(args.out, "datasets"), behaviour=args.behaviour)


def real_dataset_stem(args):
    """D_real's name in the cached stages' names: the file's stem (plus a digest of its contents for --dataset)."""
    stem = os.path.splitext(os.path.basename(real_dataset_path(args)))[0]
    if args.dataset is not None:
        stem += "-" + artifacts.file_digest(args.dataset)[:6]
    return stem


def diffusion_argv(args, real_path, out):
    """The diffusion.py command line of this run's augmentation (every diffusion flag, once)."""
    return ["--dataset", real_path, "--out", out, "--lam", repr(args.lam), "--steps", str(args.diffusion_steps),
            "--dim", str(args.dim), "--ddim-steps", str(args.ddim_steps), "--scale", str(args.scale),
            "--bucket-width", str(args.bucket_width), "--global-row-weight", repr(args.global_row_weight),
            "--head-width", str(args.head_width), "--seed", str(args.diffusion_seed), "--device", args.device
            ] + (["--x0-skip"] if args.x0_skip else [])


# Diffusion flags added after the Table 1 sweep began: at these values a run keeps the cache key it had before;
# at any other, the folder name shows the flag by its tag.
KEY_NEUTRAL_FLAGS = {"global_row_weight": 1.0, "head_width": 0, "x0_skip": False}
DEPARTURE_TAGS = {"global_row_weight": "gw", "head_width": "hw", "x0_skip": "skip"}


def eaq_dir(args):
    """runs/eaq/<D_real>-lam..-k..-dim..-b..-ddim..-S..[-gw..][-hw..][-skip1]-s..-<hash of every diffusion flag>."""
    stem = real_dataset_stem(args)
    flags = vars(diffusion.build_parser().parse_args(diffusion_argv(args, stem, "")))
    key = short_hash({k: v for k, v in flags.items() if not (k in KEY_NEUTRAL_FLAGS and v == KEY_NEUTRAL_FLAGS[k])})
    departures = "".join(f"-{tag}{flags[name]:g}" for name, tag in DEPARTURE_TAGS.items()
                         if flags[name] != KEY_NEUTRAL_FLAGS[name])
    return os.path.join(args.out, "eaq", f"{stem}-lam{args.lam:g}-k{args.diffusion_steps}-dim{args.dim}"
                                         f"-b{args.bucket_width}-ddim{args.ddim_steps}-S{args.scale}{departures}"
                                         f"-s{args.diffusion_seed}-{key}")


def result_dir(args):
    """runs/results/<D_real>-<learner>-<augmentation>-it<iters>-s<seed>-<hash of the whole run>."""
    stem = real_dataset_stem(args)
    config = {name: getattr(args, name) for name in qmix.LEARNER_FLAGS + ALGO_FLAGS[args.algo]}
    config.update(algo=args.algo, aug=args.aug, dataset=stem)
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
    """Train (or reuse) the diffusion model on D_real and sample D_syn; returns (D_syn path, report)."""
    out = eaq_dir(args)
    cached = cached_augmentation(out)
    if cached:
        print(f"reusing the diffusion model and D_syn in {out}")
        return cached
    resume = []
    ckpt = os.path.join(out, "model.pt")
    if os.path.exists(ckpt):
        try:
            model = diffusion.load_checkpoint(ckpt)
            diffusion.check_resume(ckpt, model.config, diffusion.model_config(
                diffusion.parse_args(diffusion_argv(args, real_path, out)), data.layout_of(data.load_dataset(real_path))))
            resume = ["--resume"]
        except artifacts.InputError as err:       # this run's own cache: train it again
            print(f"training the diffusion model from scratch: {err}")
    dargs = diffusion.parse_args(diffusion_argv(args, real_path, out) + resume)
    report = diffusion.fit_and_sample(dargs)
    print(diffusion.format_report(report))
    return os.path.join(out, "synthetic.h5"), report


def model_cpu_seconds(report):
    """The diffusion model's whole CPU cost: its training over every session plus the sampling of D_syn,
    also when this run reused it from the cache; None where its report did not count them (before 11-27)."""
    train_cpu, sample_cpu = report.get("train_cpu_seconds_total"), report.get("sample_cpu_seconds")
    return None if train_cpu is None or sample_cpu is None else train_cpu + sample_cpu


def summary_lines(results):
    d, final, heldout = results["dataset"], results["final"], results["heldout"]
    lines = [f"D_real: {d['episodes']} episodes, return {d['return_mean']:.2f} ± {d['return_std']:.2f}"]
    if results.get("augmentation_report"):
        real, syn = results["augmentation_report"]["real"], results["augmentation_report"]["synthetic"]
        wins = (f", wins {syn['win_share']:.1%} (D_real {real['win_share']:.1%})"
                if "win_share" in syn else "")                      # reports before 2026-11-26 lack it
        if "q0_win_share" in syn:                                   # and this, before its afternoon
            wins += f", by its Q_tot row {syn['q0_win_share']:.1%}"
        lines.append(f"D_syn: {syn['episodes']} episodes, return {syn['return_mean']:.2f} ± "
                     f"{syn['return_std']:.2f}{wins}, mean Q̄ {syn['q_bar_mean']:.2f}")
        lines.append(diffusion.fidelity_line(results["augmentation_report"]))
    lines.append(f"{results['algo'].upper()} + {results['aug']} on {results['training_episodes']} episodes: "
                 f"return {final['return_mean']:.2f} ± {final['return_std']:.2f}, normalised "
                 f"{final['normalised_return']:.3f}, win rate {final['win_rate']:.2f} "
                 f"(held-out episodes: {heldout['return_mean']:.2f})")
    lines.append("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in results["seconds"].items()))
    cpu = {k: v for k, v in results.get("cpu_seconds", {}).items() if v is not None}   # runs before 11-27 lack it
    if cpu:
        lines.append("CPU time: " + ", ".join(f"{k} {v:.0f}s" for k, v in cpu.items()))
    return lines


def run(args):
    """All stages for one configuration; returns the results dict (cached in results.json)."""
    out = result_dir(args)
    results_path = os.path.join(out, "results.json")
    cached = read_json(results_path)
    if cached is not None:
        print(f"reusing {results_path}")
        return cached
    artifacts.prepare_output_dir(out, "--out")
    seconds, cpu_seconds, clock = {}, {}, artifacts.Clock()
    real_path = args.dataset or data.ensure_dataset(args.scenario, args.quality, args.fraction, args.data_seed,
                                                    root=os.path.join(args.out, "datasets"), behaviour=args.behaviour)
    real = data.load_dataset(real_path, scenario=args.scenario, quality=args.quality)   # validates the file
    real_attrs, n_real = real.attrs, real.n_episodes
    del real                         # later stages read the file themselves; this copy would sit in memory
    qmix.check_simulator(real_path, real_attrs, args.backend)
    print("D_real " + data.describe(real_attrs))
    seconds["dataset"], cpu_seconds["dataset"] = clock.wall(), clock.cpu()
    datasets, report = [real_path], None
    if args.aug == "eaq":
        clock = artifacts.Clock()
        syn_path, report = augment_with_eaq(args, real_path)
        datasets.append(syn_path)
        seconds["diffusion"], cpu_seconds["diffusion"] = clock.wall(), model_cpu_seconds(report)
    learner_aug = args.aug if args.aug in rad.AUGMENTATIONS else "none"
    result = qmix.run_learner(LEARNERS[args.algo], datasets, args, out, learner_aug,
                              ALGOS[args.algo].learner_kwargs(args), resume="auto")
    seconds["learner"] = result.pop("seconds")          # over every session, if the learner resumed
    cpu_seconds["learner"] = result.pop("cpu_seconds")
    results = {"config": vars(args), "algo": args.algo,
               "aug": f"eaq (λ={args.lam:g})" if args.aug == "eaq" else args.aug,
               "dataset": {"path": real_path, "episodes": n_real,
                           **{k: real_attrs[k] for k in ("return_mean", "return_std", "behaviour", "epsilon")}},
               "augmentation_report": report, **result, "seconds": seconds,
               "cpu_seconds": cpu_seconds}
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
