"""Speed of the EAQ diffusion model on this machine (paper §3.2; docs/diffusion.md).

    python experiments/diffusion_speed.py --dataset runs/datasets/3m-poor-s0.h5

Prints the model size, training steps/s (batch 32, Eq. 5 with lam = 0.1) and
sampled episodes/s with ancestral DDPM (all K steps, timed over a few steps
and scaled, since every step costs the same) and with DDIM, on length-aware
windows (`--bucket-width`, the default 8) or the paper's fixed window (0).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import diffusion as D  # noqa: E402
import eaq  # noqa: E402


def main():
    defaults = eaq.DiffusionConfig()             # eaq.py's defaults, one set
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="HDF5 dataset (D_real)")
    p.add_argument("--dim", type=int, default=defaults.dim, help="U-Net base width")
    p.add_argument("--dim-mults", type=int, nargs="+", default=list(defaults.dim_mults), help="U-Net levels")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="training minibatch")
    p.add_argument("--K", type=int, default=defaults.K, help="diffusion steps")
    p.add_argument("--ddim-steps", type=int, default=defaults.ddim_steps, help="DDIM steps")
    p.add_argument("--sample-batch", type=int, default=defaults.sample_batch,
                   help="episodes sampled per batch")
    p.add_argument("--bucket-width", type=int, default=defaults.bucket_width,
                   help="length-aware windows; 0 = the fixed window T")
    p.add_argument("--train-steps", type=int, default=30, help="timed training steps")
    p.add_argument("--no-sampling", action="store_true", help="time training only")
    args = p.parse_args()
    eaq.use_diffusion_threads()
    episodes = data.load_dataset(args.dataset)
    tau0, valid, normalizer, _ = D.prepare(episodes)
    config = {"n_features": tau0.shape[1], "dim": args.dim, "dim_mults": args.dim_mults, "K": args.K}
    net, ema = D.build(config)
    opt = torch.optim.Adam(net.parameters(), lr=defaults.lr)
    q_row = data.layout_of(episodes).q_tot
    F_, T = tau0.shape[1:]
    horizons = D.episode_horizons(episodes.lengths, args.bucket_width, T)
    D.train(net, ema, opt, tau0, valid, q_row, 0.1, 3, horizons, batch_size=args.batch_size, progress=False)
    start = time.time()
    D.train(net, ema, opt, tau0, valid, q_row, 0.1, args.train_steps, horizons,
            batch_size=args.batch_size, progress=False)
    train_rate = args.train_steps / (time.time() - start)
    if args.no_sampling:
        print(f"{episodes.attrs['scenario']}: F={F_} T={T} mean window {horizons.mean():.1f}, training "
              f"{train_rate:.2f} steps/s (batch {args.batch_size}, {torch.get_num_threads()} threads)")
        return
    windows = D.synthetic_windows(horizons, args.sample_batch, torch.Generator().manual_seed(0))

    def sampling_seconds(steps):
        start = time.time()
        for _ in D.sample_batches(ema, normalizer, windows, T, F_, steps,
                                  args.sample_batch, progress=False):
            pass
        return time.time() - start
    ddim_rate = args.sample_batch / sampling_seconds(args.ddim_steps)
    ddpm_rate = args.sample_batch / (sampling_seconds(5) / 5 * args.K)   # 5 network calls = 5 DDPM steps
    params = sum(p.numel() for p in net.parameters())
    print(f"{episodes.attrs['scenario']}: F={F_} T={T} E={tau0.shape[0]} mean window {horizons.mean():.1f}, "
          f"{params:,} parameters; training {train_rate:.2f} steps/s (batch {args.batch_size}); "
          f"sampling DDPM-{args.K} {ddpm_rate:.2f} episodes/s, DDIM-{args.ddim_steps} "
          f"{ddim_rate:.1f} episodes/s")


if __name__ == "__main__":
    main()
