"""How far apart two diffusion checkpoints are (docs/gpu.md).

    python experiments/checkpoints.py A/model.pt B/model.pt [LABEL]

Prints each checkpoint's training step, the largest absolute difference
between their weights (the network trained on Eq. 5) and between their EMA
weights (the network that samples D_syn), beside the largest weight. On a
CPU a run resumed from a checkpoint gives exactly the uninterrupted run's
weights (0 difference); GPU kernels are not bit-reproducible, so there two
identical runs already differ, and a resumed run is judged against that
floor (`experiments/cuda_check.sh`). Both files are loaded as eaq.py loads
them: tensors only, refused in one line if they are anything else.
"""
import argparse
import os
import sys

import torch
from torch.nn.utils import parameters_to_vector

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import diffusion  # noqa: E402
from experiments import departures  # noqa: E402


def largest_gap(net_a, net_b):
    """The largest |difference| between two networks' parameters, element by element."""
    return float((parameters_to_vector(net_a.parameters()) - parameters_to_vector(net_b.parameters())).abs().max())


@torch.no_grad()
def distance(a, b):
    """{steps, weights, ema, largest}: the two models' steps and their largest weight / EMA-weight differences."""
    if [p.shape for p in a.diffusion.parameters()] != [p.shape for p in b.diffusion.parameters()]:
        raise artifacts.InputError("the two checkpoints hold different networks (--dim, --dim-mults, "
                                   "or the dataset's layout); compare runs of one configuration")
    return {"steps": (a.step, b.step), "weights": largest_gap(a.diffusion, b.diffusion),
            "ema": largest_gap(a.ema, b.ema),
            "largest": float(parameters_to_vector(a.diffusion.parameters()).abs().max())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="a model.pt written by eaq.py (or experiments/departures.py)")
    p.add_argument("b", help="another model.pt of the same configuration")
    p.add_argument("label", nargs="?", default="", help="what the pair is, printed first")
    args = p.parse_args(argv)
    with artifacts.one_line_errors():
        d = distance(*(diffusion.load_checkpoint(path, departures.any_build) for path in (args.a, args.b)))
    print(f"{args.label + ': ' if args.label else ''}steps {d['steps'][0]} vs {d['steps'][1]}; "
          f"max |Δ weight| {d['weights']:.3e} (largest |weight| {d['largest']:.2f}); "
          f"max |Δ EMA weight| {d['ema']:.3e}")
    return d


if __name__ == "__main__":
    main()
