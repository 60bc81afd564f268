"""What a trained diffusion model hands back (docs/what-the-network-can-copy.md).

    python experiments/denoise.py --model runs/eaq/<run>/model.pt [--k 1 10 50 ...] [--sample 512]

Two checks of one model.pt (its D_real is the dataset it was trained on):

1. Copying. D_real's episodes of the commonest window (up to `--episodes`)
   are noised to step k (Eq. 5's tau_k) and the EMA network's prediction of
   tau0 is read back: on each valid agent-step, whether the argmax of the
   agent's action rows is the action taken, and how the attack-availability
   rows (binary in D_real: 1 where the target is in range) are spread over
   the bins below 0.1, 0.1-0.5, 0.5-0.9 and above 0.9. A network that can
   copy its input returns D_real's actions and binary rows at small k.
2. Where the attack mass goes (`--sample N`): N episodes sampled as D_syn
   is (DDIM, the model's windows) and, over their valid agent-steps, the
   action rows' positive mass on attacks, split into targets the sample's
   own availability rows open (above 0.5, as `data.matrix_to_episodes`
   decodes them) or close; the share of agent-steps with an open target;
   the share whose action-row argmax is an attack, and the attack share
   after decoding (the argmax among legal actions).
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import data  # noqa: E402
import diffusion  # noqa: E402
import eaq  # noqa: E402
import env as envlib  # noqa: E402
import fidelity  # noqa: E402
from experiments import departures  # noqa: E402

BINS = (-np.inf, 0.1, 0.5, 0.9, np.inf)


def action_and_avail(matrix, layout, lengths):
    """Eq. 4 matrix (E, F, T) in data units -> each valid agent-step's (action rows, avail rows), (n, N, A)."""
    return fidelity.action_and_legal(matrix, layout, data.valid_steps(lengths, matrix.shape[-1]))


def prepare_real(model, real):
    """D_real as the model sees it: (tau0 normalised (E, F, T) tensor, the matrix in data units, each episode's
    window (E,))."""
    tau0, _, _, real_matrix = diffusion.prepare(real, model.normalizer)
    horizons = diffusion.episode_horizons(real.lengths, model.config["bucket_width"], int(tau0.shape[-1]))
    return tau0, real_matrix, horizons


def copying(model, real, prepared, ks, n_episodes, seed=0):
    """Check 1 on D_real as `prepare_real` gives it: [(k, share of agent-steps whose action argmax is right,
    avail histogram (4,))], and D_real's avail histogram."""
    layout = data.layout_of(real)
    tau0, _, horizons = prepared
    h = int(np.bincount(horizons).argmax())                                              # the commonest window
    index = np.flatnonzero(horizons == h)[:n_episodes]
    x0, lengths = tau0[index][..., :h], real.lengths[index]                              # (E, F, h)
    first = fidelity.first_attack_action(real)
    true_act, true_avail = action_and_avail(model.normalizer.unnormalize(x0.numpy()), layout, lengths)

    def histogram(avail):
        return np.histogram(avail[..., first:], bins=BINS)[0] / avail[..., first:].size

    g = torch.Generator().manual_seed(seed)
    rows = []
    with torch.no_grad():
        for k in ks:
            steps = torch.full((len(index),), k, dtype=torch.long)
            tau_k = model.ema.q_sample(x0, steps, torch.randn(x0.shape, generator=g))
            pred = model.normalizer.unnormalize(model.ema.predict_tau0(tau_k, steps).numpy())
            act, avail = action_and_avail(pred, layout, lengths)
            rows.append((k, float((act.argmax(-1) == true_act.argmax(-1)).mean()), histogram(avail)))
    return rows, histogram(true_avail)


def attack_mass(matrix, layout, backend):
    """Check 2 on matrices (E, F, T) in data units -> dict of shares over their valid agent-steps."""
    first = envlib.FIRST_ATTACK_ACTION[backend]
    episodes = data.matrix_to_episodes(matrix, layout, (-np.inf, np.inf), attrs={"backend": backend})
    act, avail = action_and_avail(matrix, layout, episodes.lengths)                      # (n, N, A) each
    mass = np.clip(act, 0.0, None)
    total = mass.sum(-1).mean()
    open_ = avail[..., first:] > 0.5
    return {"attack mass": float(mass[..., first:].sum(-1).mean() / total),
            "on open targets": float((mass[..., first:] * open_).sum(-1).mean() / total),
            "on closed targets": float((mass[..., first:] * ~open_).sum(-1).mean() / total),
            "steps with an open target": float(open_.any(-1).mean()),
            "argmax is an attack": float((act.argmax(-1) >= first).mean()),
            "decoded attack share": fidelity.attack_share(episodes)}


def sampled_attack_mass(model, real, prepared, n, seed=0):
    """Check 2 on D_real and on n episodes sampled as eaq.sample_synthetic samples D_syn (D_real from
    `prepare_real`), with eaq.py's default sampler and batch."""
    layout = data.layout_of(real)
    _, real_matrix, horizons = prepared
    g = torch.Generator().manual_seed(seed)
    defaults = eaq.DiffusionConfig()
    batches = diffusion.sample_batches(model.ema, model.normalizer, diffusion.synthetic_windows(horizons, n, g),
                                       real_matrix.shape[-1], layout.n_features, defaults.ddim_steps,
                                       defaults.sample_batch, g, progress=False)
    backend = real.attrs.get("backend", "smax")
    return attack_mass(real_matrix, layout, backend), attack_mass(np.concatenate(list(batches)), layout, backend)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a model.pt written by eaq.py (or experiments/departures.py)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 50, 100, 200, 400, 700],
                   help="diffusion steps to noise D_real to (1..K)")
    p.add_argument("--episodes", type=int, default=256, help="D_real episodes of the commonest window to noise")
    p.add_argument("--sample", type=int, default=0, help="episodes to sample for check 2 (0: skip it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and the samples")
    args = p.parse_args(argv)
    torch.set_num_threads(artifacts.torch_threads())
    try:
        model = diffusion.load_checkpoint(args.model, departures.any_build)
        real = data.load_dataset(model.config["dataset"])
    except artifacts.InputError as err:
        p.error(str(err))
    if any(not 1 <= k <= model.config["K"] for k in args.k):
        p.error(f"--k must lie in 1..K = {model.config['K']}, got {args.k}")
    prepared = prepare_real(model, real)                                   # D_real prepared once for both checks
    rows, real_hist = copying(model, real, prepared, args.k, args.episodes, args.seed)
    print("k      action argmax right   attack-avail values <0.1 / 0.1-0.5 / 0.5-0.9 / >0.9")
    print(f"D_real {1.0:20.3f}   " + " / ".join(f"{x:.3f}" for x in real_hist))
    for k, right, hist in rows:
        print(f"{k:<6d} {right:20.3f}   " + " / ".join(f"{x:.3f}" for x in hist))
    if args.sample:
        for name, shares in zip(("D_real", f"{args.sample} sampled"),
                                sampled_attack_mass(model, real, prepared, args.sample, args.seed)):
            print(f"{name}: " + ", ".join(f"{key} {value:.3f}" for key, value in shares.items()))


if __name__ == "__main__":
    main()
