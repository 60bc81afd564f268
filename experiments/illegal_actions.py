"""Where a diffusion model's raw actions are illegal (docs/fidelity-default-budget.md).

    python experiments/illegal_actions.py --model runs/eaq/<run>/model.pt --dataset <its D_real> [--episodes 800]

Samples episodes from the model's EMA weights (DDIM-20, windows drawn from
D_real's, as `eaq.py` does), decodes them with `data.matrix_to_episodes`
and counts the valid agent-steps whose raw action (the argmax of the action
rows, before repair) the decoded legal-action rows forbid: per action index,
and for agents with a single legal action (dead agents) apart.
"""
import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import diffusion  # noqa: E402
import eaq  # noqa: E402
import fidelity  # noqa: E402
from experiments import departures  # noqa: E402


def main():
    defaults = eaq.DiffusionConfig()             # eaq.py's sampler defaults
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="an eaq.py checkpoint (model.pt)")
    p.add_argument("--dataset", required=True, help="the D_real it was trained on")
    p.add_argument("--episodes", type=int, default=800, help="episodes to sample")
    p.add_argument("--ddim-steps", type=int, default=defaults.ddim_steps,
                   help="DDIM steps (0 = ancestral DDPM)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = p.parse_args()
    eaq.use_diffusion_threads()
    real, model = data.load_dataset(args.dataset), diffusion.load_checkpoint(args.model, departures.any_build)
    layout, T = data.layout_of(real), model.config["horizon"]
    generator = torch.Generator().manual_seed(args.seed)
    horizons = diffusion.episode_horizons(real.lengths, model.config["bucket_width"], T)
    windows = diffusion.synthetic_windows(horizons, args.episodes, generator)
    illegal, agent_steps, single, single_illegal = collections.Counter(), 0, 0, 0
    for matrix in diffusion.sample_batches(model.ema, model.normalizer, windows, T, layout.n_features,
                                           args.ddim_steps or None, defaults.sample_batch,
                                           generator):
        episodes = data.matrix_to_episodes(matrix, layout, (0.0, 1.0))          # (rewards unused here)
        valid = data.valid_steps(episodes.lengths, T)[..., None]                          # (b, T, 1)
        raw, legal = fidelity.raw_actions(matrix, layout, episodes.avail)               # (b, T, N) each
        bad = valid & ~legal
        one_legal = valid & (episodes.avail[:, :T].sum(-1) == 1)
        illegal.update(raw[bad].tolist())
        agent_steps += int(valid.sum()) * layout.n_agents
        single += int(one_legal.sum())
        single_illegal += int((one_legal & bad).sum())
    print(f"illegal raw actions: {sum(illegal.values()) / agent_steps:.4f} of {agent_steps} valid agent-steps")
    print("by action index: " + ", ".join(f"{a}: {c}" for a, c in illegal.most_common()))
    print(f"agent-steps with a single legal action (dead agents): {single / agent_steps:.3f} of all, "
          f"illegal in {single_illegal / max(single, 1):.4f} of them")


if __name__ == "__main__":
    main()
