"""EAQ's augmentation of a dataset: train the diffusion model on D_real and sample D_syn (paper §3, Algorithm 1).

    python eaq.py --dataset runs/datasets/3m-poor.h5 --lam 0.1 --out runs/eaq/3m-poor

reads D_real, lays it out as the Eq. 4 matrix (`data.py`), trains the
diffusion model on it with Eq. 5 (`diffusion.train`, checkpointing
OUT/model.pt so that `--resume` goes on exactly), samples S = `--scale`
times as many episodes (`diffusion.sample_batches`), decodes them and
writes them to OUT/synthetic.h5 as they come, with OUT/report.json: D_real
and D_syn side by side and the model's copy test (`fidelity.py`), lam in the
paper's other units, and the time spent. `train.py` runs this stage with the same configuration
object (`DiffusionConfig`) and caches it under runs/eaq/.
"""
import argparse
import dataclasses
import os

import h5py
import torch

import artifacts
import data
import diffusion
import fidelity
import unet

option = artifacts.option


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Everything that decides the trained model and D_syn; the paper gives only lam's grid, K and S."""

    lam: float = option(0.1, "λ of Eq. 5 in our units (docs/diffusion.md; the paper tunes among 0.5, 0.1, 0.01; "
                             "0 = EAQ^{-Q})")
    steps: int = option(4000, "training steps (paper: silent; the agent-factored width-32 U-Net's 10 CPU-minutes, "
                              "docs/fidelity.md)")
    batch_size: int = option(32, "episodes per minibatch (paper: silent)")
    lr: float = option(1e-3, "Adam learning rate (paper: silent; docs/fidelity-default-budget.md)")
    K: int = option(1000, "diffusion steps (DDPM's 1000, §4.4)")
    network: str = option("agents", "the U-Net: agents (one trunk shared by the agents, on each agent's rows; "
                                    "docs/fidelity.md) or flat (the paper's: the F rows are its channels; unet.py)",
                          choices=("agents", "flat"))
    mixing: str = option("attention", "how the agent-factored U-Net's agents exchange information at each level",
                         choices=unet.MIXINGS)
    dim: int = option(32, "U-Net base width (per agent with --network agents), a multiple of 8 (paper: silent; "
                          "docs/fidelity.md)")
    dim_mults: tuple = option((1, 2, 4), "width multiplier per U-Net level (each extra level halves T)")
    head_width: int = option(0, "channels of the U-Net's head, from which each step is written (per agent with "
                                "--network agents); 0 = an agent's W rows rounded up to a multiple of 8, or --dim "
                                "if wider (agents; docs/fidelity.md), or --dim (flat: diffuser's head)")
    bucket_width: int = option(8, "length-aware windows: each episode's length rounded up to a multiple of this "
                                  "(of 2^(levels-1)); 0 = the paper's fixed window, the longest episode")
    ema_decay: float = option(0.995, "EMA decay of the sampling weights")
    scale: int = option(5, "upsampling scale S: |D_syn| = S |D_real| (paper: 5)")
    ddim_steps: int = option(20, "sample with DDIM on this many steps; 0 = ancestral DDPM with all K steps "
                                 "(≈ 1 h for 3m on a CPU)")
    sample_batch: int = option(256, "episodes sampled per batch")
    seed: int = option(0, "seed of the model, its minibatches and D_syn")
    device: str = option("cpu", "torch device that trains and samples the model: cpu, cuda, cuda:1 ... (random "
                                "draws stay on the CPU, so a seed gives the same minibatches anywhere)")


def check_config(config, flags=None):
    """Raise a one-line InputError naming the flag of the first value that cannot work.

    `flags` renames fields in the messages (train.py's --diffusion-steps for `steps`).
    """
    flag = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(config)} | (flags or {})
    diffusion.check_device(config.device)
    artifacts.require_flags(finite={flag[n]: getattr(config, n) for n in ("lam", "lr", "ema_decay")},
                            at_least_one={flag[n]: getattr(config, n) for n in ("steps", "batch_size", "K", "dim",
                                                                                "scale", "sample_batch")},
                            seeds={flag["seed"]: config.seed})
    if config.lam < 0:
        raise artifacts.InputError(f"{flag['lam']} must be >= 0 (the hinge pushes Q_tot up; 0 is EAQ^{{-Q}}), "
                                   f"got {config.lam}")
    if config.lr <= 0:
        raise artifacts.InputError(f"{flag['lr']} must be > 0, got {config.lr}")
    if config.network not in ("flat", "agents") or config.mixing not in unet.MIXINGS:
        raise artifacts.InputError(f"{flag['network']} must be flat or agents and {flag['mixing']} one of "
                                   f"{', '.join(unet.MIXINGS)}; got {config.network!r}, {config.mixing!r}")
    if config.dim % 8:
        raise artifacts.InputError(f"{flag['dim']} must be a multiple of 8 (GroupNorm uses 8 groups), got {config.dim}")
    if config.head_width < 0 or config.head_width % 8:
        raise artifacts.InputError(f"{flag['head_width']} must be 0 (the network's own) or a positive multiple of 8 "
                                   f"(GroupNorm uses 8 groups), got {config.head_width}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise artifacts.InputError(f"{flag['ema_decay']} must be in [0, 1), got {config.ema_decay}")
    if not 0 <= config.ddim_steps <= config.K:
        raise artifacts.InputError(f"{flag['ddim_steps']} must be in [0, K={config.K}], got {config.ddim_steps}")
    if any(m < 1 for m in config.dim_mults):
        raise artifacts.InputError(f"{flag['dim_mults']} must be positive, got {list(config.dim_mults)}")
    multiple = 2 ** (len(config.dim_mults) - 1)
    if config.bucket_width < 0 or config.bucket_width % multiple:
        raise artifacts.InputError(f"{flag['bucket_width']} must be 0 or a positive multiple of {multiple} "
                                   f"(2^(levels-1) for --dim-mults {' '.join(map(str, config.dim_mults))}), "
                                   f"got {config.bucket_width}")


# ---------------------------------------------------------------------------
# The model and its checkpoint
# ---------------------------------------------------------------------------
def generator_name(fields, agent_width):
    """The network in a few characters, as D_syn's attrs and the frontier name it: network and width, the levels'
    multipliers unless DiffusionConfig's, the agents' mixing, and the head unless it is `dim` wide
    ("agents32-attention-head96"). `fields`: DiffusionConfig's network fields as a dict; `agent_width`: W."""
    name = f"{fields['network']}{fields['dim']}"
    if tuple(fields["dim_mults"]) != DiffusionConfig.dim_mults:
        name += f"-x{'x'.join(map(str, fields['dim_mults']))}"
    if fields["network"] == "agents":
        name += f"-{fields['mixing']}"
        head = unet.agent_head_width(fields["dim"], agent_width, fields["head_width"])
    else:
        head = fields["head_width"] or fields["dim"]
    return name + (f"-head{head}" if head != fields["dim"] else "")


# Fields that do not decide the trained weights (more `steps` continue a model; the rest only sample from it).
SAMPLING_FIELDS = ("steps", "scale", "ddim_steps", "sample_batch", "device")


def model_config(config, layout, dataset):
    """What decides the trained model, as plain values (a checkpoint's config; a resume must match it)."""
    fields = {name: list(value) if isinstance(value, tuple) else value
              for name, value in dataclasses.asdict(config).items() if name not in SAMPLING_FIELDS}
    return {**fields, "dataset_sha256": artifacts.file_digest(dataset), "n_features": layout.n_features,
            "layout": dataclasses.asdict(layout)}


RESUME_FLAGS = {"dataset_sha256": "--dataset (its contents)", "n_features": "--dataset (its layout)",
                "layout": "--dataset (its layout)"}


def check_resume(path, saved, wanted):
    """Refuse to resume a model trained with another configuration; names the first differing field."""
    for key, value in wanted.items():
        if saved.get(key) != value:
            flag = RESUME_FLAGS.get(key, "--" + key.replace("_", "-"))
            raise artifacts.InputError(f"{path} was trained with {flag} {saved.get(key)!r}, not {value!r}; "
                                       f"resume with the same value or choose another --out")


def prepare_model(config, real, dataset, ckpt_path, resume=False, build=diffusion.build):
    """A fresh model seeded with config.seed, or the one in ckpt_path after checking that it fits.

    resume: False (start afresh), True (a checkpoint must be there and fit) or "auto" (train.py, whose
    folder is named by the configuration: resume if a checkpoint loads and fits, else say why and start afresh).
    """
    wanted = model_config(config, data.layout_of(real), dataset)
    if resume:
        try:
            if not os.path.exists(ckpt_path):
                raise artifacts.InputError(f"{ckpt_path}: nothing to resume; run without --resume first")
            model = diffusion.load_checkpoint(ckpt_path, build)
            check_resume(ckpt_path, model.config, wanted)
            return model
        except artifacts.InputError as err:
            if resume is True:
                raise
            if os.path.exists(ckpt_path):
                print(f"training the diffusion model from scratch: {err}")
    torch.manual_seed(config.seed)
    net, ema = build(wanted)
    return diffusion.Model(net, ema, torch.optim.Adam(net.parameters(), lr=config.lr), None,
                 {**wanted, "dataset": os.path.abspath(dataset)})


# ---------------------------------------------------------------------------
# Algorithm 1 on a dataset file: train, sample, report
# ---------------------------------------------------------------------------
def use_diffusion_threads():
    """The diffusion model's torch thread count: artifacts.torch_threads() (1 unless EAQ_TORCH_THREADS says so)."""
    torch.set_num_threads(artifacts.torch_threads())


def fit(model, config, tau0, valid, horizons, q_row, ckpt_path, checkpoint_every=1000, progress=True):
    """Algorithm 1, training: Eq. 5 from the model's step up to config.steps (none if it is past them)."""
    device = torch.device(config.device)
    model.diffusion.to(device), model.ema.to(device)
    for state in model.optimizer.state.values():              # a resumed optimiser follows its model
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                state[key] = value.to(device)
    start_step, start_active = model.step, model.hinge_active_steps
    clock = artifacts.Clock(model.train_seconds, model.train_cpu_seconds)     # over every session

    def checkpoint(step, active):
        model.step, model.hinge_active_steps = step, start_active + active
        model.train_seconds, model.train_cpu_seconds = clock.wall(), clock.cpu()
        diffusion.save_checkpoint(ckpt_path, model)

    losses = {}
    if model.step < config.steps:
        losses = diffusion.train(model.diffusion, model.ema, model.optimizer, tau0.to(device), valid.to(device),
                                 q_row, model.config["lam"], config.steps, horizons, start_step=start_step,
                                 batch_size=config.batch_size, ema_decay=config.ema_decay, seed=config.seed,
                                 on_checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=progress)
    return {"losses": losses, "trained_steps": model.step - start_step,
            "train_seconds": clock.wall() - clock.wall_before,                 # this session's
            "model_steps": model.step, "train_seconds_total": model.train_seconds,
            "train_cpu_seconds_total": model.train_cpu_seconds,
            "hinge_active_share": model.hinge_active_steps / max(model.step, 1)}


def sample_synthetic(model, config, real, dataset, out, real_matrix, horizons, progress=True):
    """Algorithm 1, sampling: S x |D_real| episodes from the EMA model, streamed into OUT/synthetic.h5.

    Each synthetic episode's window is drawn from D_real's episode windows
    (`horizons`, (E,)), so D_syn's windows follow D_real's; with the paper's
    fixed window every one is T. Returns the D_real vs D_syn report
    (`fidelity.sampled_report`), accumulated batch by batch.
    """
    layout = data.layout_of(real)
    generator = torch.Generator().manual_seed(config.seed)
    windows = diffusion.synthetic_windows(horizons, config.scale * real.n_episodes, generator)          # (S E,)
    attrs = {**real.attrs, "synthetic": True, "lam": model.config["lam"], "diffusion_steps": model.step,
             "K": model.config["K"], "ddim_steps": config.ddim_steps, "scale": config.scale,
             "bucket_width": model.config["bucket_width"], "source_dataset": os.path.abspath(dataset),
             "generator": generator_name(model.config, layout.agent_width),
             "format_version": data.FORMAT_VERSION}
    attrs.pop("win_rate", None)                    # a property of the real episodes only
    clock = artifacts.Clock()
    with artifacts.atomic_path(os.path.join(out, "synthetic.h5")) as tmp, h5py.File(tmp, "w") as f:
        writer = data.EpisodeWriter(f, real_matrix.shape[-1], layout.n_agents, layout.obs_dim, layout.n_actions)
        report = fidelity.sampled_report(model, real, real_matrix, windows, config.ddim_steps, config.sample_batch,
                                         generator, writer.append, progress)
        syn = report["synthetic"]
        writer.finish(syn["length_max"])
        f.attrs.update({**attrs, "return_mean": syn["return_mean"], "return_std": syn["return_std"],
                        "length_mean": syn["length_mean"], **{key: syn[key] for key in fidelity.UNDECODED}})
    return {**report, "sample_seconds": clock.wall(), "sample_cpu_seconds": clock.cpu(),
            "sampler": f"ddim-{config.ddim_steps}" if config.ddim_steps else f"ddpm-{model.config['K']}"}


def lam_units(lam, normalizer, layout, horizon):
    """Our λ expressed in the two other readings of Eq. 5 (module docstring)."""
    q_range = float(normalizer.hi[layout.q_tot] - normalizer.lo[layout.q_tot])
    return {"sum_over_matrix": lam * layout.n_features * horizon,
            "q_in_data_units": lam * 2.0 / q_range if q_range > 0 else float("nan")}


def fit_and_sample(config, dataset, out, resume=False, checkpoint_every=1000, progress=True, build=diffusion.build):
    """Algorithm 1 on the D_real file `dataset`: train the model (Eq. 5), sample D_syn into OUT/synthetic.h5,
    write OUT/report.json; returns the report. `resume`: see `prepare_model`; `build`: see `load_checkpoint`."""
    real = data.load_dataset(dataset)                 # refused before OUT is made
    artifacts.prepare_output_dir(out)
    use_diffusion_threads()
    ckpt_path = os.path.join(out, "model.pt")
    model = prepare_model(config, real, dataset, ckpt_path, resume, build)
    tau0, valid, model.normalizer, real_matrix = diffusion.prepare(real, model.normalizer)
    model.config["horizon"] = int(tau0.shape[-1])
    horizons = diffusion.episode_horizons(real.lengths, config.bucket_width, model.config["horizon"])   # (E,)
    layout = data.layout_of(real)
    training = fit(model, config, tau0, valid, horizons, layout.q_tot, ckpt_path, checkpoint_every, progress)
    del tau0, valid                  # sampling needs only the model (and the matrix in data units, for the report)
    report = sample_synthetic(model, config, real, dataset, out, real_matrix, horizons, progress)
    report["copy"] = fidelity.copy_test(model.ema, model.normalizer, real, horizons, seed=config.seed)
    report["fidelity_misses"] = fidelity.fidelity_misses(report)
    window = float(horizons.mean())
    report.update(training, lam=config.lam, lam_units=lam_units(config.lam, model.normalizer, layout, window),
                  n_features=layout.n_features, horizon=model.config["horizon"], mean_window=window,
                  bucket_width=config.bucket_width, parameters=sum(p.numel() for p in model.diffusion.parameters()))
    artifacts.write_json(os.path.join(out, "report.json"), report)
    return report


def build_parser(config_cls=DiffusionConfig, required=("dataset", "out")):
    """eaq.py's flags; `required` names which of --dataset and --out must be given (experiments/ relax them)."""
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Train the EAQ diffusion model on a dataset and sample "
                                            "S times as many synthetic episodes (paper §3.2, Alg. 1).")
    p.add_argument("--dataset", required="dataset" in required, help="HDF5 dataset (D_real), e.g. made by datasets.py")
    p.add_argument("--out", required="out" in required, help="output folder: model.pt, synthetic.h5, report.json")
    artifacts.add_config_flags(p, config_cls)
    p.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/model.pt")
    return p


def parse_args(argv=None, config_cls=DiffusionConfig, check=None):
    """(the configuration, the parsed flags), every value checked (by `check`, a variant's own, else
    `check_config`): a bad one is a one-line usage error."""
    p = build_parser(config_cls)
    args = p.parse_args(argv)
    config = artifacts.config_from_args(config_cls, args)
    with artifacts.parser_errors(p):
        (check or check_config)(config)
        artifacts.require_flags(at_least_one={"--checkpoint-every": args.checkpoint_every})
    return config, args


def main(argv=None):
    config, args = parse_args(argv)
    with artifacts.one_line_errors():
        report = fit_and_sample(config, args.dataset, args.out, args.resume, args.checkpoint_every)
    print(fidelity.format_report(report))
    speed = (f"{report['trained_steps'] / report['train_seconds']:.1f} training steps/s"
             if report["trained_steps"] else f"no training needed (the model had {report['model_steps']} steps)")
    print(f"λ = {report['lam']}, {report['parameters']:,} parameters, {report['model_steps']} steps in all, "
          f"{speed}, {report['synthetic']['episodes'] / report['sample_seconds']:.1f} sampled episodes/s "
          f"({report['sampler']}); wrote {args.out}/synthetic.h5 and report.json")


if __name__ == "__main__":
    main()
