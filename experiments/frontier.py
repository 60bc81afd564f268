"""The fidelity–cost frontier: how faithful a generator is after 10, 30, 90 CPU-minutes of training (docs/fidelity.md).

    python experiments/frontier.py --dataset runs/datasets/3m-poor-...-s0.h5 --network agents --dim 64 \
        --budgets 10 30 90 --out runs/frontier

trains one setting of the diffusion model (eaq.py's flags) on one thread,
a chunk of steps at a time, and whenever its training CPU time passes the
next budget, copies its checkpoint aside and judges it with the fidelity
suite (`fidelity.checkpoint_report`: 1 000 episodes sampled with DDIM-20,
and the copy test at k = 1 and k = 50). Judging is not counted in the
budget. Each judgement is appended to a record,
experiments/records-frontier/<dataset>-<setting>.json, as it comes, and the
run resumes from its last checkpoint (`--resume`). `--table` prints the
table of every record (docs/fidelity.md) and draws the plot beside them
(copy test and damage with a shooter against training CPU-minutes).

On a GPU (`--device cuda --clock wall`, docs/gpu.md) the budgets are
wall-clock minutes of training and the model is judged on the GPU; the
setting's name then ends in the device, and its record says which clock.

Training is Eq. 5 as eaq.py runs it: chunking changes nothing, because a
minibatch, its k and its noise depend only on (seed, step). One lever of
the optimiser is tried here and not in eaq.py (its default is Adam at a
constant rate, no clipping): `--decay-steps S` lowers the learning rate
along a cosine from `--lr` at step `--warmup` to 0 at step S (linearly up
from 0 before `--warmup`), and `--clip C` clips the gradient's norm at C.
One lever of the loss is tried here and never in eaq.py, whose Eq. 5 is
the paper's: `--min-snr G` weights each episode's x0 term by min(SNR_k, G),
SNR_k = abar_k / (1 - abar_k) (min-SNR-γ, Hang et al. 2023; the Q-hinge
is unchanged). One lever of the network f_theta: `--skip S` writes tau0's
estimate as EDM's preconditioned denoiser does (Karras et al. 2022, with
sigma_data = S): the noisy input rescaled, c_skip(k) tau_k / sqrt(abar_k),
plus c_out(k) times the U-Net, so at small k the U-Net writes only the
correction to what it is shown; Eq. 5's x0 term is still on f_theta.
`--learned-skip S` lets each feature row learn that curve for itself,
starting from EDM's at sigma_data = S (`LearnedSkipDiffusion`); `--self-cond`
hands the network its own previous estimate of tau0 (self_conditioning.py).
"""
import copy
import dataclasses
import glob
import json
import os
import shutil
import math
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import data  # noqa: E402
import diffusion  # noqa: E402
import eaq  # noqa: E402
import fidelity  # noqa: E402
from experiments import self_conditioning  # noqa: E402

RECORDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "records-frontier")
CHUNK = 100           # training steps between two looks at the CPU clock
# the numbers of a judgement the table shows, with the bar each is held to (fidelity.FIDELITY_BAR)
COLUMNS = (("copy k=1", lambda r: r["copy"]["1"]["action_accuracy"]),
           ("copy k=50", lambda r: r["copy"]["50"]["action_accuracy"]),
           ("legal rows k=1", lambda r: r["copy"]["1"]["legal_accuracy"]),
           ("damage w/ shooter", lambda r: r["synthetic"]["damage_with_shooter"]),
           ("health gained", lambda r: r["synthetic"]["health_gain_share"]),
           ("legal", lambda r: r["synthetic"]["legal_before_repair"]),
           ("attack share", lambda r: r["synthetic"]["attack_share"]),
           ("action TV", lambda r: r["action_tv_distance"]),
           ("dones", lambda r: r["synthetic"]["ended_share"]),
           ("wins", lambda r: r["synthetic"]["win_share"]))


class MinSNRDiffusion(diffusion.Diffusion):
    """Eq. 5 with the x0 term of each episode weighted by min(SNR_k, gamma) (the hinge term as the paper's)."""

    def __init__(self, model, K, gamma):
        super().__init__(model, K)
        self.gamma = gamma

    def loss(self, tau0, valid, q_row, lam, k, noise):
        tau0_pred = self.f_theta(self.q_sample(tau0, k, noise), k)                      # (B, F, T)
        _, _, q_term = diffusion.eaq_loss(tau0_pred, tau0, q_row, valid, lam)
        snr = self.abar[k - 1] / (1.0 - self.abar[k - 1])                              # (B,)
        per_episode = ((tau0_pred - tau0) ** 2).mean(dim=(1, 2))                        # (B,)
        diffusion_term = (snr.clamp(max=self.gamma) * per_episode).mean()
        return diffusion_term + lam * q_term, diffusion_term, q_term


def min_snr_build(gamma):
    """diffusion.build, with the trained network's loss weighted by min-SNR-gamma (the EMA copy only samples)."""
    def build(model_config):
        net, ema = diffusion.build(model_config)
        return MinSNRDiffusion(net.model, model_config["K"], gamma), ema
    return build


class SkipDiffusion(diffusion.Diffusion):
    """f_theta(tau_k, k) = c_skip(k) x + c_out(k) U(tau_k, k), x = tau_k / sqrt(abar_k) = tau0 + sigma_k eps,
    sigma_k^2 = (1 - abar_k) / abar_k (EDM's preconditioning, Karras et al. 2022):
    c_skip = sigma_data^2 / (sigma_k^2 + sigma_data^2), c_out = sigma_k sigma_data / sqrt(sigma_k^2 + sigma_data^2).
    At k = 1 (sigma ≈ 0.01) the estimate is the input and 1 % of the U-Net; at k = K it is sigma_data U."""

    def __init__(self, model, K, sigma_data):
        super().__init__(model, K)
        self.sigma_data = sigma_data

    def f_theta(self, tau_k, k):
        abar = self.abar[k - 1][:, None, None]                                       # (B, 1, 1)
        sigma2, sd2 = (1.0 - abar) / abar, self.sigma_data ** 2
        c_skip, c_out = sd2 / (sigma2 + sd2), (sigma2 * sd2 / (sigma2 + sd2)).sqrt()
        return c_skip * tau_k / abar.sqrt() + c_out * self.model(tau_k, k)


def variant_build(make):
    """diffusion.build with f_theta written by another Diffusion, `make(network, model_config)`, the EMA copy
    too (it samples)."""
    def build(model_config):
        net, _ = diffusion.build(model_config)
        model = make(net.model, model_config)
        return model, copy.deepcopy(model).requires_grad_(False)
    return build


def skip_build(sigma_data):
    """diffusion.build, with f_theta preconditioned as SkipDiffusion writes it."""
    return variant_build(lambda net, config: SkipDiffusion(net, config["K"], sigma_data))


class LearnedSkipDiffusion(diffusion.Diffusion):
    """f_theta(tau_k, k) = g(k) x + U(tau_k, k), x = tau_k / sqrt(abar_k), with a gate per feature row learnt
    with the network: g_f(k) = sigmoid(a_f - s_f log sigma_k). EDM's c_skip is this curve with s = 2 and
    a = 2 log sigma_data, one sigma_data for every row (SkipDiffusion); here each row learns how far to trust
    its own noisy input at each noise level, starting from EDM's curve at `sigma_data`. The U-Net's output is
    added unscaled, so at g = 0 this is the plain network."""

    def __init__(self, model, K, n_features, sigma_data):
        super().__init__(model, K)
        self.gate_a = torch.nn.Parameter(torch.full((n_features,), 2.0 * math.log(sigma_data)))    # (F,)
        self.gate_s = torch.nn.Parameter(torch.full((n_features,), 2.0))                          # (F,)

    def gate(self, k):
        """(B, F, 1): each row's share of the rescaled input at steps k (B,)."""
        abar = self.abar[k - 1]
        log_sigma = 0.5 * torch.log((1.0 - abar) / abar)                                    # (B,)
        return torch.sigmoid(self.gate_a[None] - self.gate_s[None] * log_sigma[:, None])[..., None]

    def f_theta(self, tau_k, k):
        abar = self.abar[k - 1][:, None, None]                                       # (B, 1, 1)
        return self.gate(k) * tau_k / abar.sqrt() + self.model(tau_k, k)


def learned_skip_build(sigma_data):
    """diffusion.build, with f_theta as LearnedSkipDiffusion writes it."""
    return variant_build(lambda net, config: LearnedSkipDiffusion(net, config["K"], config["n_features"], sigma_data))


def self_cond_build(model_config):
    """diffusion.build, with f_theta self-conditioned (self_conditioning.py; the agent-factored U-Net only)."""
    self_conditioning.check_network(model_config["network"])
    return variant_build(lambda net, config: self_conditioning.SelfCondDiffusion(
        self_conditioning.SelfConditioned(net), config["K"]))(model_config)


@dataclasses.dataclass(frozen=True)
class Levers:
    """The levers of Eq. 5's weighting and of f_theta a setting trains with (at most one; none: eaq.py's model)."""
    min_snr: float = 0.0          # > 0: the x0 term weighted by min(SNR_k, min_snr) (MinSNRDiffusion)
    skip: float = 0.0             # > 0: f_theta preconditioned with this sigma_data (SkipDiffusion)
    learned_skip: float = 0.0     # > 0: a per-row skip learnt from this sigma_data's curve (LearnedSkipDiffusion)
    self_cond: bool = False       # f_theta handed its previous estimate (self_conditioning.py)

    def build(self):
        """The build of the setting's model, else diffusion.build; two levers at once are refused in one line."""
        if sum(bool(x) for x in dataclasses.astuple(self)) > 1:
            raise artifacts.InputError("--min-snr, --skip, --learned-skip and --self-cond are levers of their own: "
                                       "give one of them")
        if self.self_cond:
            return self_cond_build
        if self.learned_skip:
            return learned_skip_build(self.learned_skip)
        return (min_snr_build(self.min_snr) if self.min_snr else skip_build(self.skip) if self.skip
                else diffusion.build)

    def suffix(self):
        """The levers' part of a setting's name: -minsnr5, -skip0.5, -lskip0.05, -selfcond, or nothing."""
        named = (("minsnr", self.min_snr), ("skip", self.skip), ("lskip", self.learned_skip))
        return "".join(f"-{name}{value:g}" for name, value in named if value) + ("-selfcond" if self.self_cond else "")


class ScheduledAdam(torch.optim.Adam):
    """Adam whose learning rate follows a warm-up and a cosine decay by its own step count, with the gradient's
    norm clipped at `clip` (0: none) before each step."""

    def __init__(self, params, lr, warmup=0, decay_steps=0, clip=0.0):
        super().__init__(params, lr=lr)
        self.peak, self.warmup, self.decay_steps, self.clip = lr, warmup, decay_steps, clip

    def rate(self, step):
        """The learning rate of training step `step` (0-based)."""
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if not self.decay_steps:
            return self.peak
        progress = min(1.0, (step - self.warmup) / max(1, self.decay_steps - self.warmup))
        return 0.5 * self.peak * (1.0 + math.cos(math.pi * progress))

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        done = int(self.state[params[0]]["step"]) if self.state.get(params[0]) else 0
        for group in self.param_groups:
            group["lr"] = self.rate(done)
        if self.clip:
            torch.nn.utils.clip_grad_norm_(params, self.clip)
        return super().step(closure)


def setting_name(config, agent_width, schedule=(0, 0, 0.0), levers=Levers()):
    """A run's label: its network (`eaq.generator_name`; an agent's rows are `agent_width`), learning rate, its
    schedule, its `levers`, and its device unless the CPU."""
    warmup, decay_steps, clip = schedule
    named = (("warm", warmup), ("cos", decay_steps), ("clip", clip))
    extra = "".join(f"-{name}{value:g}" for name, value in named if value) + levers.suffix()
    device = "" if config.device == "cpu" else "-" + config.device.replace(":", "")
    network = eaq.generator_name(dataclasses.asdict(config), agent_width)
    return f"{network}-lr{config.lr:g}{extra}-s{config.seed}{device}"


def dataset_label(dataset):
    """A dataset file's map and quality: runs/datasets/3m-poor-polc453ae-...-s0.h5 -> 3m-poor."""
    return os.path.splitext(os.path.basename(dataset))[0].split("-pol")[0]


def record_path(records, dataset, name):
    os.makedirs(records, exist_ok=True)
    return os.path.join(records, f"{dataset_label(dataset)}-{name}.json")


def trained_seconds(model, clock):
    """The model's training time so far by `clock`: "cpu" (CPU-seconds) or "wall" (wall-clock seconds)."""
    return model.train_cpu_seconds if clock == "cpu" else model.train_seconds


def run(config, dataset, out, budgets, episodes, resume, schedule=(0, 0, 0.0), records=RECORDS, clock="cpu",
        chunk=CHUNK, levers=Levers()):
    """Train `config` on `dataset` up to each budget (minutes of training by `clock`) in turn, judging the model
    at each; `schedule` = (warm-up steps, cosine decay steps, gradient clip), all 0: eaq.py's constant-rate Adam;
    `levers` (none: Eq. 5 and f_theta as eaq.py trains them) picks min-SNR's weighting or a lever of f_theta.
    The setting's checkpoints go to out/<setting_name>/."""
    real = data.load_dataset(dataset)
    name = setting_name(config, data.layout_of(real).agent_width, schedule, levers)
    out = os.path.join(out, name)
    artifacts.prepare_output_dir(out)
    eaq.use_diffusion_threads()
    ckpt = os.path.join(out, "model.pt")
    build = levers.build()
    model = eaq.prepare_model(config, real, dataset, ckpt, resume, build)
    if any(schedule):
        state = model.optimizer.state_dict()
        model.optimizer = ScheduledAdam(model.diffusion.parameters(), config.lr, *schedule)
        model.optimizer.load_state_dict(state)
    tau0, valid, model.normalizer, _ = diffusion.prepare(real, model.normalizer)
    model.config["horizon"] = int(tau0.shape[-1])
    horizons = diffusion.episode_horizons(real.lengths, config.bucket_width, model.config["horizon"])
    q_row = data.layout_of(real).q_tot
    path = record_path(records, dataset, name)
    record = (json.load(open(path)) if resume and os.path.exists(path)
              else {"dataset": os.path.basename(dataset), "setting": name, "config": dataclasses.asdict(config),
                    "schedule": dict(zip(("warmup", "decay_steps", "clip"), schedule)), **dataclasses.asdict(levers),
                    "clock": clock, "judgements": []})
    done = {j["budget_minutes"] for j in record["judgements"]}
    for budget in budgets:
        if budget in done:
            continue
        while trained_seconds(model, clock) < 60 * budget:
            step_config = dataclasses.replace(config, steps=model.step + chunk)
            eaq.fit(model, step_config, tau0, valid, horizons, q_row, ckpt, checkpoint_every=chunk, progress=False)
        judged = os.path.join(out, f"model-{budget}min.pt")
        shutil.copyfile(ckpt, judged)
        timer = artifacts.Clock()
        report = fidelity.checkpoint_report(judged, real, n_episodes=episodes, progress=False, device=config.device,
                                            build=build)
        report.update(budget_minutes=budget, judge_cpu_seconds=timer.cpu(), judge_seconds=timer.wall(),
                      train_seconds=model.train_seconds,
                      parameters=sum(p.numel() for p in model.diffusion.parameters()))
        record["judgements"].append(report)
        artifacts.write_json(path, record)
        print(f"{name} at {budget} {clock} minutes ({model.step} steps): "
              + ", ".join(f"{name} {get(report):.3f}" for name, get in COLUMNS), flush=True)
    return record


def table(records):
    """The markdown table of every judgement of `records` (one row each)."""
    lines = ["| dataset | setting | minutes | steps | parameters | " + " | ".join(n for n, _ in COLUMNS)
             + " | misses |",
             "|---" * (len(COLUMNS) + 6) + "|"]
    for record in records:
        for j in record["judgements"]:
            cells = [f"{get(j):.3f}" for _, get in COLUMNS]
            minutes = f"{j['budget_minutes']:g}" + (" wall" if record.get("clock") == "wall" else "")
            lines.append(f"| {dataset_label(record['dataset'])} | {record['setting']} | {minutes} | "
                         f"{j['model_steps']} | {j['parameters']:,} | " + " | ".join(cells)
                         + f" | {len(j['fidelity_misses'])} |")
    return "\n".join(lines)


def plot(records, path):
    """Copy accuracy at k = 1 and damage with a shooter against training CPU-minutes, one line per setting."""
    plt = artifacts.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for record in records:
        minutes = [j["train_cpu_seconds"] / 60 for j in record["judgements"]]
        label = f"{dataset_label(record['dataset'])} {record['setting']}"
        for ax, (name, get) in zip(axes, (COLUMNS[0], COLUMNS[3])):
            ax.plot(minutes, [get(j) for j in record["judgements"]], marker="o", label=label)
            ax.set(xlabel="training CPU-minutes (one thread)", ylabel=name, xscale="log")
    for ax, bar in zip(axes, (fidelity.FIDELITY_BAR["copy_k1"], fidelity.FIDELITY_BAR["damage_with_shooter"])):
        ax.axhline(bar, color="k", linestyle=":", linewidth=1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv=None):
    p = eaq.build_parser(required=())        # eaq.py's flags; --dataset and --out are only needed to train
    p.description = __doc__.splitlines()[0]
    p.add_argument("--budgets", type=float, nargs="+", default=[10, 30, 90],
                   help="minutes of training (by --clock) to judge at")
    p.add_argument("--clock", default="cpu", choices=("cpu", "wall"),
                   help="budgets in training CPU-minutes (one CPU thread) or wall-clock minutes (a GPU)")
    p.add_argument("--chunk", type=int, default=CHUNK,
                   help="training steps between two looks at the clock (and two checkpoints)")
    p.add_argument("--episodes", type=int, default=1000, help="episodes sampled at each judgement")
    p.add_argument("--warmup", type=int, default=0, help="learning-rate warm-up steps (0: none, as eaq.py)")
    p.add_argument("--decay-steps", type=int, default=0, help="cosine decay of the rate to 0 at this step (0: none)")
    p.add_argument("--clip", type=float, default=0.0, help="clip the gradient norm at this (0: none, as eaq.py)")
    p.add_argument("--min-snr", type=float, default=0.0,
                   help="weight the x0 term by min(SNR_k, this) (min-SNR-γ; 0: Eq. 5 as written)")
    p.add_argument("--skip", type=float, default=0.0,
                   help="precondition f_theta as EDM's denoiser with this sigma_data (0: none, as eaq.py)")
    p.add_argument("--learned-skip", type=float, default=0.0,
                   help="gate f_theta's input per row, learnt from EDM's curve at this sigma_data (0: none)")
    p.add_argument("--self-cond", action="store_true",
                   help="hand f_theta its previous estimate of tau0 (self-conditioning; agents only)")
    p.add_argument("--records", default=RECORDS, help="the folder of the records")
    p.add_argument("--table", action="store_true", help="print the table of every record and write the plot")
    args = p.parse_args(argv)
    if args.table:
        records = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(args.records, "*.json")))]
        print(table(records))
        plot(records, os.path.join(args.records, "frontier.png"))
        return
    config = artifacts.config_from_args(eaq.DiffusionConfig, args)
    with artifacts.parser_errors(p):
        eaq.check_config(config)
        if not (args.dataset and args.out):
            raise artifacts.InputError("--dataset and --out are needed to train (or use --table)")
        artifacts.require_flags(at_least_one={"--chunk": args.chunk, "--episodes": args.episodes},
                                finite={"--min-snr": args.min_snr, "--skip": args.skip,
                                        "--learned-skip": args.learned_skip})
        for flag, value in (("--min-snr", args.min_snr), ("--skip", args.skip), ("--learned-skip", args.learned_skip)):
            if value < 0:
                raise artifacts.InputError(f"{flag} must be >= 0 (0: none), got {value}")
        levers = Levers(args.min_snr, args.skip, args.learned_skip, args.self_cond)
        levers.build()
        if args.self_cond:
            self_conditioning.check_network(config.network)
    with artifacts.one_line_errors():
        schedule = (args.warmup, args.decay_steps, args.clip)
        run(config, args.dataset, args.out, sorted(args.budgets), args.episodes, args.resume,
            schedule, args.records, args.clock, args.chunk, levers)


if __name__ == "__main__":
    main()
