"""Our default diffusion network beside lucidrains' Unet1D at the same (B, F, T), in one process (docs/fidelity.md).

    python experiments/peer_unet.py --dataset runs/datasets/3m-poor-...-s0.h5 [--rounds 7]

Runs in its own virtual environment: the project's requirements plus
`pip install --no-deps denoising-diffusion-pytorch einops ema-pytorch accelerate`
(its normal install replaces torch). The shape is the dataset's: F rows of
the Eq. 4 matrix, T its longest episode (rounded up as each network needs),
B eaq.py's training batch, and its sampling batch for one denoising forward.
Timed, on one thread, interleaved round by round (median of `--rounds`):
one x0-prediction training step (forward, backward, Adam) and one
denoising forward, for our default (eaq.DiffusionConfig: the agent-factored
U-Net), the same with a head of `dim` channels (the former default), our
flat U-Net at width 40 (the paper's layout) and Unet1D at its
default width 64 and at 32. Prints ms per call and the ratio peer / ours
(> 1: ours is faster).
"""
import argparse
import dataclasses
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as Fn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import diffusion  # noqa: E402
import eaq  # noqa: E402


def load_unet1d():
    """lucidrains' Unet1D without the package's __init__ (which needs torchvision for its 2-D half)."""
    import importlib.util
    import pathlib
    import types
    spec = importlib.util.find_spec("denoising_diffusion_pytorch")
    if spec is None:
        raise SystemExit("denoising-diffusion-pytorch is not installed: pip install --no-deps "
                         "denoising-diffusion-pytorch einops ema-pytorch accelerate (in a separate venv)")
    root = pathlib.Path(spec.submodule_search_locations[0])
    pkg = types.ModuleType("denoising_diffusion_pytorch")
    pkg.__path__ = [str(root)]
    sys.modules["denoising_diffusion_pytorch"] = pkg
    name = "denoising_diffusion_pytorch.denoising_diffusion_pytorch_1d"
    module_spec = importlib.util.spec_from_file_location(name, root / "denoising_diffusion_pytorch_1d.py")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module.Unet1D


def our_network(config, layout, dataset):
    """The denoising network eaq.py would train for `config` on this dataset."""
    return diffusion.build(eaq.model_config(config, layout, dataset))[0].model


def contestants(layout, horizon, dataset):
    """{name: (network, T it is fed)}: our default, it with a head of `dim` (the former default), our flat width 40,
    Unet1D at 64 and 32."""
    Unet1D = load_unet1d()
    levels = len(eaq.DiffusionConfig().dim_mults)
    T_peer = horizon + (-horizon) % 2 ** (levels - 1)
    default = eaq.DiffusionConfig()
    return {f"ours default ({default.network} {default.dim})": (our_network(default, layout, dataset), horizon),
            f"ours {default.network} {default.dim}, head {default.dim}":
                (our_network(dataclasses.replace(default, head_width=default.dim), layout, dataset), horizon),
            "ours flat 40": (our_network(dataclasses.replace(default, network="flat", dim=40), layout, dataset),
                             horizon),
            "Unet1D dim 64 (its default)": (Unet1D(dim=64, dim_mults=default.dim_mults, channels=layout.n_features),
                                            T_peer),
            "Unet1D dim 32": (Unet1D(dim=32, dim_mults=default.dim_mults, channels=layout.n_features), T_peer)}


def timed_ms(fn, n):
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="an HDF5 dataset: its matrix's F and T set the shape")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (the median is reported)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    real = data.load_dataset(args.dataset)
    layout, horizon = data.layout_of(real), int(real.lengths.max())
    config = eaq.DiffusionConfig()
    B, F, BS = config.batch_size, layout.n_features, config.sample_batch
    models = contestants(layout, horizon, args.dataset)
    optimizers = {n: torch.optim.Adam(m.parameters(), config.lr) for n, (m, _) in models.items()}

    def train_step(name):
        net, T = models[name]
        x0 = torch.rand(B, F, T) * 2 - 1
        loss = Fn.mse_loss(net(torch.randn_like(x0), torch.randint(1, config.K, (B,))), x0)
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()

    @torch.no_grad()
    def denoise(name):
        net, T = models[name]
        net(torch.randn(BS, F, T), torch.randint(1, config.K, (BS,)))

    times = {n: {"train": [], "denoise": []} for n in models}
    for name in models:                                      # warm-up
        train_step(name)
        denoise(name)
    for _ in range(args.rounds):
        for name in models:
            times[name]["train"].append(timed_ms(lambda: train_step(name), 3))
            times[name]["denoise"].append(timed_ms(lambda: denoise(name), 1))
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    print(f"F={F} T={horizon} train B={B} denoise B={BS}, one thread, median of {args.rounds} interleaved rounds, "
          f"torch {torch.__version__}")
    for name, (net, _) in models.items():
        params = sum(q.numel() for q in net.parameters()) / 1e6
        print(f"  {name:30s} {params:6.2f}M params  train {med[name]['train']:8.1f} ms  "
              f"denoise {med[name]['denoise']:8.1f} ms")
    ours = next(iter(models))
    for peer in [n for n in models if n.startswith("Unet1D")]:
        print(f"{peer} / {ours}: train {med[peer]['train'] / med[ours]['train']:.2f}x, "
              f"denoise {med[peer]['denoise'] / med[ours]['denoise']:.2f}x")


if __name__ == "__main__":
    main()
