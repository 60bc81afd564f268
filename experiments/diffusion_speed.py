"""Speed of the EAQ diffusion model on this machine (paper §3.2; docs/diffusion.md, docs/gpu.md).

    python experiments/diffusion_speed.py --dataset runs/datasets/3m-poor-...-s0.h5 [eaq.py's flags]

Builds the model eaq.py would build from the same flags (`--network`,
`--dim`, `--device`, ...) and prints its size, training steps/s (Eq. 5 at
`--lam`, the minibatches of `diffusion.train`) and sampled episodes/s with
ancestral DDPM (all K steps, timed over a few steps and scaled, since every
step costs the same) and with DDIM, on D_real's windows. `--profile N`
also prints torch.profiler's table of N more training steps (where a step's
time goes: the operators by their own CPU time, and by CUDA time on a GPU).
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import data  # noqa: E402
import diffusion as D  # noqa: E402
import eaq  # noqa: E402


def synchronize(device):
    """Wait for the device's queued work, so that a timer reads finished work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def print_profile(work, device, rows=20):
    """torch.profiler's operator table of `work()`: by own CUDA time on a GPU, else by own CPU time."""
    cuda = torch.device(device).type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        work()
        synchronize(device)
    print(prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                    row_limit=rows))


def main(argv=None):
    p = eaq.build_parser(required=("dataset",))             # eaq.py's flags; nothing is written
    p.description = __doc__.splitlines()[0]
    p.add_argument("--train-steps", type=int, default=30, help="timed training steps (after 3 untimed)")
    p.add_argument("--no-sampling", action="store_true", help="time training only")
    p.add_argument("--profile", type=int, default=0, help="profile this many more training steps (0: none)")
    args = p.parse_args(argv)
    config = artifacts.config_from_args(eaq.DiffusionConfig, args)
    with artifacts.parser_errors(p):
        eaq.check_config(config)
        artifacts.require_flags(at_least_one={"--train-steps": args.train_steps})
    eaq.use_diffusion_threads()
    episodes = data.load_dataset(args.dataset)
    layout = data.layout_of(episodes)
    tau0, valid, normalizer, _ = D.prepare(episodes)
    net, ema = D.build(eaq.model_config(config, layout, args.dataset))
    net.to(config.device), ema.to(config.device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    tau0, valid = tau0.to(config.device), valid.to(config.device)
    F_, T = tau0.shape[1:]
    horizons = D.episode_horizons(episodes.lengths, config.bucket_width, T)

    def train(steps):
        D.train(net, ema, opt, tau0, valid, layout.q_tot, config.lam, steps, horizons,
                batch_size=config.batch_size, progress=False)
    train(3)                                # warm-up: allocations, kernel choices
    synchronize(config.device)
    start = time.time()
    train(args.train_steps)
    synchronize(config.device)
    train_rate = args.train_steps / (time.time() - start)
    params = sum(p.numel() for p in net.parameters())
    line = (f"{episodes.attrs['scenario']}: {config.network} dim {config.dim} on {config.device}, F={F_} T={T} "
            f"mean window {horizons.mean():.1f}, {params:,} parameters; training {train_rate:.2f} steps/s "
            f"(batch {config.batch_size}, {torch.get_num_threads()} CPU threads)")
    if args.profile:
        print_profile(lambda: train(args.profile), config.device)
    if args.no_sampling:
        print(line)
        return
    windows = D.synthetic_windows(horizons, config.sample_batch, torch.Generator().manual_seed(0))

    def sampling_seconds(steps):
        start = time.time()
        for _ in D.sample_batches(ema, normalizer, windows, T, F_, steps, config.sample_batch, progress=False):
            pass
        return time.time() - start
    ddim_rate = config.sample_batch / sampling_seconds(config.ddim_steps)
    ddpm_rate = config.sample_batch / (sampling_seconds(5) / 5 * config.K)   # 5 network calls = 5 DDPM steps
    print(f"{line}; sampling DDPM-{config.K} {ddpm_rate:.2f} episodes/s, DDIM-{config.ddim_steps} "
          f"{ddim_rate:.1f} episodes/s")


if __name__ == "__main__":
    main()
