"""Three departures from Eq. 5's generator, tried and left off (docs/where-the-wins-went.md,
docs/damage-without-a-shooter.md, docs/what-the-network-can-copy.md).

    python experiments/departures.py --dataset D_real.h5 --out runs/eaq-hw280 --head-width 280 [eaq.py's flags]

trains and samples like `eaq.py` (same flags, same files) with any of:

* `--global-row-weight W` — the squared error of Eq. 5 weighs all F rows
  alike, so the three rows that carry the episode's outcome (reward, Q_tot,
  done) get 3 / F of it (1.1 % on 3m). W multiplies those rows' squared
  error relative to the agents' rows, the weights scaled to mean 1 so the
  loss keeps its size against λ's hinge; W = 1 is Eq. 5 as written.
* `--head-width H` (eaq.py's flag, on the flat U-Net here) — the U-Net
  ends, as diffuser's does, in a convolution to `dim` channels and a 1x1
  convolution from them to the F rows: every generated step is an affine
  function of `dim` numbers. H widens that last block to H channels.
* `--x0-skip` — keeps Eq. 5 and x0-prediction but builds f_theta from the
  best affine estimate of tau0 from tau_k, row by row, plus the U-Net's
  correction (Karras et al. 2022's preconditioning, with each row's mean:
  EDM's data are centred, ours are not):

      f_theta(tau_k, k) = mu + c_skip(k) (tau_k - sqrt(abar_k) mu) + c_out(k) U(tau_k, k)
      c_skip = sqrt(abar_k) var / (abar_k var + 1 - abar_k)
      c_out  = sqrt((1 - abar_k) var / (abar_k var + 1 - abar_k))

  per feature row, mu and var being the row's mean and variance in the
  normalised D_real (over valid steps); as k -> 0, f_theta -> tau_k.

Each is a subclass of the core's classes, built by `build` from the
checkpoint's config, so a checkpoint of a departure resumes and loads as one.
"""
import copy
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import data  # noqa: E402
import diffusion  # noqa: E402
import eaq  # noqa: E402
import fidelity  # noqa: E402
import unet  # noqa: E402

option = artifacts.option


@dataclasses.dataclass(frozen=True)
class DepartureConfig(eaq.DiffusionConfig):
    """eaq.DiffusionConfig and the three departures (module docstring); their defaults are the paper's model,
    on the flat U-Net they change (its width and steps as when they were tried)."""

    network: str = option("flat", "the departures change the flat U-Net (unet.TemporalUNet)", choices=("flat",))
    dim: int = option(40, "U-Net base width, a multiple of 8")
    steps: int = option(9000, "training steps")

    global_row_weight: float = option(1.0, "weight of the reward, Q_tot and done rows' squared error against the "
                                           "agents' rows (1 = Eq. 5 as written)")
    x0_skip: bool = option(False, "f_theta = the rows' affine estimate of tau0 from tau_k plus c_out(k) U(tau_k, k)")


def check_config(config):
    eaq.check_config(config)
    if config.network != "flat":
        raise artifacts.InputError(f"the departures change the flat U-Net; use --network flat, not {config.network}")
    artifacts.require_flags(finite={"--global-row-weight": config.global_row_weight})
    if config.global_row_weight <= 0:
        raise artifacts.InputError(f"--global-row-weight must be > 0 (1 = Eq. 5's plain squared error), "
                                   f"got {config.global_row_weight}")


class DepartureDiffusion(diffusion.Diffusion):
    """Eq. 5 with the outcome rows weighted (`row_weights`, (F,) or None) and, with `x0_skip`, f_theta built
    around the rows' affine estimate of tau0; the rows' moments (F,) are buffers, 0 and 1 until set."""

    def __init__(self, model, K, row_weights=None, x0_skip=False):
        super().__init__(model, K)
        self.x0_skip = x0_skip
        self.register_buffer("row_weights", row_weights if row_weights is not None else torch.ones(0))
        n_features = model.inp.in_channels
        self.register_buffer("row_mean", torch.zeros(n_features))                          # (F,)
        self.register_buffer("row_var", torch.ones(n_features))                            # (F,)

    def set_row_moments(self, tau0, valid):
        """Each row's mean and variance (F,) over the valid steps of tau0 (E, F, T), valid (E, T)."""
        w = valid.float()[:, None, :]                                                    # (E, 1, T)
        n = w.sum(dim=(0, 2)).clamp(min=1.0)
        mean = (tau0 * w).sum(dim=(0, 2)) / n
        self.row_mean.copy_(mean)
        self.row_var.copy_((((tau0 - mean[None, :, None]) ** 2) * w).sum(dim=(0, 2)) / n)

    def skip_coefficients(self, k):
        """(c_skip, c_out), each (B, F, 1), for steps k (B,) in 1..K (module docstring)."""
        abar = self.abar[k - 1][:, None, None]                                           # (B, 1, 1)
        var = self.row_var[None, :, None]                                                # (1, F, 1)
        denom = abar * var + 1.0 - abar
        return abar.sqrt() * var / denom, ((1.0 - abar) * var / denom).sqrt()

    def f_theta(self, tau_k, k):
        if not self.x0_skip:
            return self.model(tau_k, k)
        c_skip, c_out = self.skip_coefficients(k)
        mu = self.row_mean[None, :, None]                                                # (1, F, 1)
        scaled_mu = self.abar[k - 1].sqrt()[:, None, None] * mu                          # E[tau_k] = sqrt(abar) mu
        return mu + c_skip * (tau_k - scaled_mu) + c_out * self.model(tau_k, k)

    def loss(self, tau0, valid, q_row, lam, k, noise):
        if not len(self.row_weights):
            return super().loss(tau0, valid, q_row, lam, k, noise)
        tau0_pred = self.f_theta(self.q_sample(tau0, k, noise), k)
        diffusion_term = (((tau0_pred - tau0) ** 2) * self.row_weights[None, :, None]).mean()
        best = diffusion.q_bar(tau0, q_row, valid).max().detach()
        q_term = torch.relu(best - diffusion.q_bar(tau0_pred, q_row, valid)).mean()
        return diffusion_term + lam * q_term, diffusion_term, q_term


def global_row_weights(n_features, weight):
    """(F,) weights of the squared error: 1 on the agents' rows, `weight` on the reward, Q_tot and done rows (the
    matrix's last three), scaled to mean 1; None for weight 1 (Eq. 5's plain mean)."""
    if weight == 1.0:
        return None
    rows = torch.ones(n_features)
    rows[-3:] = weight
    return rows / rows.mean()


def build(model_config, moments=None):
    """A DepartureDiffusion and its EMA copy from a checkpoint's config (with the departures' fields);
    `moments`: D_real's row (mean, variance), for --x0-skip."""
    n, dim, mults = model_config["n_features"], model_config["dim"], tuple(model_config["dim_mults"])
    net = unet.TemporalUNet(n, dim, mults, head_width=model_config["head_width"])
    model = DepartureDiffusion(net, model_config["K"], global_row_weights(n, model_config["global_row_weight"]),
                               model_config["x0_skip"])
    if moments is not None:
        model.row_mean.copy_(moments[0]), model.row_var.copy_(moments[1])
    return model, copy.deepcopy(model).requires_grad_(False)


def any_build(model_config):
    """The build of a checkpoint's config: this script's for a departure's model, eaq.py's for the paper's."""
    return build(model_config) if "x0_skip" in model_config else diffusion.build(model_config)


def row_moments(dataset):
    """D_real's rows' mean and variance (F,) each, in the normalised units the model sees (valid steps only)."""
    tau0, valid, _, _ = diffusion.prepare(data.load_dataset(dataset))
    probe = DepartureDiffusion(unet.TemporalUNet(tau0.shape[1], 8, (1,)), 1)
    probe.set_row_moments(tau0, valid)
    return probe.row_mean, probe.row_var


def fit_and_sample(config, dataset, out, resume=False, checkpoint_every=1000, progress=True):
    """eaq.fit_and_sample with the departures of `config` (a DepartureConfig); the report names them."""
    moments = row_moments(dataset) if config.x0_skip else None
    report = eaq.fit_and_sample(config, dataset, out, resume, checkpoint_every, progress,
                                build=lambda model_config: build(model_config, moments))
    report.update(global_row_weight=config.global_row_weight, head_width=config.head_width, x0_skip=config.x0_skip)
    artifacts.write_json(os.path.join(out, "report.json"), report)
    return report


def main(argv=None):
    config, args = eaq.parse_args(argv, DepartureConfig, check_config)
    with artifacts.one_line_errors():
        report = fit_and_sample(config, args.dataset, args.out, args.resume, args.checkpoint_every)
    print(fidelity.format_report(report))
    print(f"departures: --global-row-weight {config.global_row_weight:g}, --head-width {config.head_width}, "
          f"--x0-skip {config.x0_skip}; wrote {args.out}/synthetic.h5 and report.json")


if __name__ == "__main__":
    main()
