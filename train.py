"""EAQ end to end: Algorithm 1 and the experiment of §4 in one command.

    python train.py --scenario 3m --quality poor --lam 0.1

1. D_real: the paper's "original" dataset, 3 % of OG-MARL's episode count
   for the map and quality, generated with the calibrated behaviour policy
   (`data.py`) on first use and cached under runs/datasets/.
2. Augmentation (`--aug`): `eaq` trains the diffusion model on D_real
   (Eq. 5 with `--lam`; `--lam 0` is EAQ^{-Q}) and samples D_syn with
   S = `--scale` times as many episodes (`diffusion.py`), cached under
   runs/eaq/; `rad-s` / `rad-m` scale the learner's observations (`rad.py`);
   `none` is the original dataset alone.
3. The offline learner (`--algo cql|bcq`) trains for `--iters` iterations
   on D_real (∪ D_syn), evaluating in the simulator every `--eval-every`.
4. A summary (dataset return, augmentation report, final return ± std,
   normalised return, win rate, wall time per stage) is printed and saved as
   runs/results/<configuration>/results.json beside metrics.csv and curve.png.

Every stage is cached by its configuration, so a rerun with another
`--algo` reuses the dataset and the diffusion model, and an identical rerun
only prints the stored results.
"""
import argparse
import json
import os
import time

import bcq
import cql
import data
import diffusion
import env as envlib
import qmix
import rad

ALGOS = {"cql": cql.QmixCQL, "bcq": bcq.QmixBCQ}
AUGS = ("none", "rad-s", "rad-m", "eaq")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="EAQ: augment an offline SMAX dataset with the diffusion "
                                            "model and train an offline MARL learner on it (Alg. 1, §4).")
    p.add_argument("--scenario", default="3m", help="map (paper: 3m, 5m_vs_6m, 8m, 2s3z, 3s5z_vs_3s6z)")
    p.add_argument("--quality", default="poor", choices=data.QUALITIES, help="behaviour policy quality")
    p.add_argument("--algo", default="cql", choices=sorted(ALGOS), help="offline learner (§4.1)")
    p.add_argument("--aug", default="eaq", choices=AUGS, help="augmentation (§4.2); eaq with --lam 0 is EAQ^{-Q}")
    p.add_argument("--lam", type=float, default=0.1, help="λ of Eq. 5 (paper tunes among 0.5, 0.1, 0.01)")
    p.add_argument("--scale", type=int, default=5, help="upsampling scale S: |D_syn| = S |D_real| (paper: 5)")
    p.add_argument("--fraction", type=float, default=0.03,
                   help="D_real as a share of OG-MARL's episode count (paper: 3 %%)")
    p.add_argument("--iters", type=int, default=15000, help="learner iterations (paper: 15 000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the learner (and of the diffusion model, "
                                                       "unless --diffusion-seed is given)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the dataset (shared by all runs)")
    p.add_argument("--backend", default="smax", choices=envlib.BACKENDS, help="simulator for evaluation")
    p.add_argument("--out", default="runs", help="root folder of every cached stage")
    g = p.add_argument_group("diffusion model (diffusion.py)")
    g.add_argument("--diffusion-steps", type=int, default=3000, help="training steps (paper: silent)")
    g.add_argument("--ddim-steps", type=int, default=20,
                   help="DDIM sampling steps; 0 = ancestral DDPM with all K = 1000 steps (≈ 1 h for 3m on a CPU)")
    g.add_argument("--dim", type=int, default=32, help="U-Net base width")
    g.add_argument("--diffusion-seed", type=int, default=None,
                   help="seed of the diffusion model and D_syn (default: --seed); one fixed value lets "
                        "learner seeds share one D_syn")
    g.add_argument("--device", default="cpu",
                   help="torch device of the diffusion model (cpu, cuda, ...); the learners and the "
                        "simulator run on the CPU")
    g = p.add_argument_group("learner (cql.py / bcq.py)")
    g.add_argument("--eval-every", type=int, default=1000, help="iterations between evaluations")
    g.add_argument("--eval-episodes", type=int, default=32, help="episodes per evaluation")
    args = p.parse_args(argv)
    try:
        envlib.check_scenario(args.scenario, args.backend)
    except ValueError as err:
        p.error(str(err))
    if args.lam < 0:
        p.error(f"--lam must be >= 0 (the hinge pushes Q_tot up; 0 is EAQ^{{-Q}}), got {args.lam}")
    if not 0.0 < args.fraction <= 1.0:
        p.error(f"--fraction must be in (0, 1], got {args.fraction}")
    data.require_at_least_one(p, args, ("scale", "iters", "diffusion_steps", "eval_every", "eval_episodes"))
    if args.ddim_steps < 0:
        p.error(f"--ddim-steps must be >= 0, got {args.ddim_steps}")
    if args.dim < 8 or args.dim % 8:
        p.error(f"--dim must be a positive multiple of 8, got {args.dim}")
    diffusion.check_device(p, args.device)
    if args.diffusion_seed is None:
        args.diffusion_seed = args.seed
    return args


def real_dataset_path(args):
    """The D_real file of this configuration (data.ensure_dataset makes it on first use)."""
    return data.dataset_path(args.scenario, args.quality, args.fraction, args.data_seed,
                             root=os.path.join(args.out, "datasets"))


def eaq_dir(args):
    """The folder of this configuration's diffusion model and D_syn: runs/eaq/<D_real>-<Eq. 5 and sampling>."""
    stem = os.path.splitext(os.path.basename(real_dataset_path(args)))[0]
    return os.path.join(args.out, "eaq", f"{stem}-lam{args.lam:g}-k{args.diffusion_steps}-dim{args.dim}"
                                         f"-ddim{args.ddim_steps}-S{args.scale}-s{args.diffusion_seed}")


def augment_with_eaq(args, real_path):
    """Train (or reuse) the diffusion model on D_real and sample D_syn; returns (D_syn path, report)."""
    out = eaq_dir(args)
    syn_path, report_path = os.path.join(out, "synthetic.h5"), os.path.join(out, "report.json")
    if os.path.exists(syn_path) and os.path.exists(report_path):
        print(f"reusing the diffusion model and D_syn in {out}")
        with open(report_path) as f:
            return syn_path, json.load(f)
    dargs = diffusion.parse_args(["--dataset", real_path, "--out", out, "--lam", str(args.lam),
                                  "--steps", str(args.diffusion_steps), "--dim", str(args.dim),
                                  "--ddim-steps", str(args.ddim_steps), "--scale", str(args.scale),
                                  "--seed", str(args.diffusion_seed), "--device", args.device]
                                 + (["--resume"] if os.path.exists(os.path.join(out, "model.pt")) else []))
    report = diffusion.fit_and_sample(dargs)
    print(diffusion.format_report(report))
    return syn_path, report


def result_dir(args):
    """runs/results/<D_real>-<learner>-<augmentation (with its diffusion model)>-it<iters>-s<seed>."""
    stem = os.path.splitext(os.path.basename(real_dataset_path(args)))[0]
    aug = "eaq-" + os.path.basename(eaq_dir(args))[len(stem) + 1:] if args.aug == "eaq" else args.aug
    return os.path.join(args.out, "results", f"{stem}-{args.algo}-{aug}-it{args.iters}-s{args.seed}")


def summary_lines(results):
    d, final = results["dataset"], results["final"]
    lines = [f"D_real: {d['episodes']} episodes, return {d['return_mean']:.2f} ± {d['return_std']:.2f}"]
    if results.get("augmentation_report"):
        syn = results["augmentation_report"]["synthetic"]
        lines.append(f"D_syn: {syn['episodes']} episodes, return {syn['return_mean']:.2f} ± "
                     f"{syn['return_std']:.2f}, mean Q̄ {syn['q_bar_mean']:.2f}")
    lines.append(f"{results['algo'].upper()} + {results['aug']}: return {final['return_mean']:.2f} ± "
                 f"{final['return_std']:.2f}, normalised {final['normalised_return']:.3f}, "
                 f"win rate {final['win_rate']:.2f}")
    lines.append("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in results["seconds"].items()))
    return lines


def run(args):
    """All stages for one configuration; returns the results dict (cached in results.json)."""
    out = result_dir(args)
    results_path = os.path.join(out, "results.json")
    if os.path.exists(results_path):
        print(f"reusing {results_path}")
        with open(results_path) as f:
            return json.load(f)
    seconds = {}
    start = time.time()
    real_path = data.ensure_dataset(args.scenario, args.quality, args.fraction, args.data_seed,
                                    root=os.path.join(args.out, "datasets"))
    real = data.load_dataset(real_path, scenario=args.scenario, quality=args.quality)
    print(data.describe(real.attrs))
    seconds["dataset"] = time.time() - start
    datasets, report = [real_path], None
    if args.aug == "eaq":
        start = time.time()
        syn_path, report = augment_with_eaq(args, real_path)
        datasets.append(syn_path)
        seconds["diffusion"] = time.time() - start
    start = time.time()
    learner_aug = args.aug if args.aug in rad.AUGMENTATIONS else "none"
    largs = qmix.learner_parser("").parse_args(
        sum((["--dataset", p] for p in datasets), []) +
        ["--iters", str(args.iters), "--aug", learner_aug, "--eval-every", str(args.eval_every),
         "--eval-episodes", str(args.eval_episodes), "--backend", args.backend,
         "--seed", str(args.seed), "--out", out])
    last, _ = qmix.run_learner(ALGOS[args.algo], largs, {})
    seconds["learner"] = time.time() - start
    results = {"config": vars(args), "algo": args.algo,
               "aug": f"eaq (λ={args.lam:g})" if args.aug == "eaq" else args.aug,
               "dataset": {"path": real_path, "episodes": real.n_episodes,
                           **{k: real.attrs[k] for k in ("return_mean", "return_std", "epsilon")}},
               "augmentation_report": report, "final": last, "seconds": seconds}
    data.write_json(results_path, results)
    return results


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    results = run(args)
    print("\n".join(summary_lines(results)))
    print(f"total {time.time() - start:.0f}s; results in {result_dir(args)}")


if __name__ == "__main__":
    main()
