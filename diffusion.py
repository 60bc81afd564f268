"""The EAQ diffusion model: DDPM over whole episodes with Eq. 5's loss (paper §3.2, Eq. 5, Algorithm 1).

A dataset is laid out as tau0 of shape (B, F, T) (Eq. 4, `data.py`): the F
feature rows are the channels of a 1-D convolution and time is its length.
A network f_theta(tau_k, k) (`unet.py`) predicts the clean episode tau0
directly from a noised one (x0-prediction, as the paper argues: the
prediction's Q_tot row can then be pushed up inside the same loss). The
loss is Eq. 5:

    L(theta) = E_{k, tau0} [ ||tau0 - f_theta(tau_k, k)||^2
                             + lam * [ max_{tau0' in B} Qbar(tau0') - Qbar(f_theta(tau_k, k)) ]_+ ]

where Qbar(tau) is the mean of the Q_tot row over the episode's valid steps
and the max runs over the real episodes of the minibatch B. lam = 0 is the
paper's EAQ^{-Q}. The forward process is DDPM's (Ho et al. 2020): K steps
with a linear beta schedule from 1e-4 to 0.02 ("the established DDPM
hyper-parameters", §4.4), tau_k = sqrt(abar_k) tau0 + sqrt(1 - abar_k) eps.
Sampling is ancestral DDPM from N(0, I), or DDIM (eta = 0) on a subsequence
of the K steps. Algorithm 1's two halves are `train` and `sample_batches`;
`build` makes the model a checkpoint's config names (`unet.py`'s flat or
agent-factored U-Net) and `save_checkpoint` / `load_checkpoint` keep it;
`eaq.py` runs them on a dataset file (D_syn, its report).

Units of lam: the squared error is a *mean* over the B x F x T entries (as in
diffuser) and Qbar is read on the normalised matrix; read literally, Eq. 5's
squared norm sums over F x T, so the paper's lam would be ours x F x T
(docs/diffusion.md). Not in the paper: length-aware windows
(`episode_horizons`), an EMA of the weights for sampling.

Index convention: the paper's diffusion step k runs over 1..K; arrays here
are 0-based, so buffer[k - 1] belongs to step k, and the network receives k.

Shapes: tau0, tau_k, predictions (B, F, T); Q_tot row and valid mask (B, T).
"""
import copy
import dataclasses

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import artifacts
import data
import unet


# ---------------------------------------------------------------------------
# DDPM schedule, Eq. 5 and sampling
# ---------------------------------------------------------------------------
def linear_betas(K, beta_1=1e-4, beta_K=0.02):
    """DDPM's linear variance schedule beta_1..beta_K (Ho et al. 2020)."""
    return torch.linspace(beta_1, beta_K, K, dtype=torch.float64)


class Diffusion(nn.Module):
    """The schedule buffers around f_theta: q_sample, Eq. 5's `loss`, p_sample_loop and ddim_sample."""

    def __init__(self, model, K=1000):
        super().__init__()
        self.model, self.K = model, K
        betas = linear_betas(K)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        buffers = {
            "betas": betas, "abar": abar, "abar_prev": abar_prev,
            # posterior q(tau_{k-1} | tau_k, tau0) = N(c0 tau0 + ck tau_k, var)
            "post_c0": betas * abar_prev.sqrt() / (1.0 - abar),
            "post_ck": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
            "post_var": betas * (1.0 - abar_prev) / (1.0 - abar),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float())

    def f_theta(self, tau_k, k):
        """The network's estimate of tau0 from tau_k (B, F, T) at steps k (B,)."""
        return self.model(tau_k, k)

    def q_sample(self, tau0, k, noise):
        """tau_k = sqrt(abar_k) tau0 + sqrt(1 - abar_k) eps, for steps k (B,) in 1..K."""
        abar = self.abar[k - 1][:, None, None]
        return abar.sqrt() * tau0 + (1.0 - abar).sqrt() * noise

    def loss(self, tau0, valid, q_row, lam, k, noise):
        """Eq. 5 on a minibatch tau0 (B, F, T) noised to steps k (B,) with `noise`: (total, diffusion, q) terms."""
        return eaq_loss(self.f_theta(self.q_sample(tau0, k, noise), k), tau0, q_row, valid, lam)

    def predict_tau0(self, tau_k, k):
        """f_theta(tau_k, k), clipped to the normalised data range [-1, 1]."""
        return self.f_theta(tau_k, k).clamp(-1.0, 1.0)

    @torch.no_grad()
    def p_sample_loop(self, shape, generator=None):
        """Ancestral DDPM sampling: tau_K ~ N(0, I), then tau_{k-1} ~ q(. | tau_k, f_theta(tau_k, k))."""
        device = self.abar.device
        tau = torch.randn(shape, generator=generator).to(device)     # CPU generator: same draws on any device
        for k in range(self.K, 0, -1):
            ks = torch.full((shape[0],), k, device=device, dtype=torch.long)
            tau0 = self.predict_tau0(tau, ks)
            mean = self.post_c0[k - 1] * tau0 + self.post_ck[k - 1] * tau
            noise = torch.randn(shape, generator=generator).to(device) if k > 1 else 0.0
            tau = mean + self.post_var[k - 1].sqrt() * noise
        return tau

    @torch.no_grad()
    def ddim_sample(self, shape, n_steps, generator=None):
        """Deterministic DDIM (eta = 0) on n_steps evenly spaced steps of 1..K."""
        tau = torch.randn(shape, generator=generator).to(self.abar.device)
        return self.ddim_from(tau, self.K, n_steps)

    @torch.no_grad()
    def ddim_from(self, tau, k_start, n_steps):
        """DDIM (eta = 0) from tau (B, F, T) at step k_start down to tau0, on n_steps evenly spaced steps."""
        device = self.abar.device
        steps = np.unique(np.linspace(k_start, 1, n_steps).round().astype(int))[::-1]
        for i, k in enumerate(steps):
            ks = torch.full((tau.shape[0],), int(k), device=device, dtype=torch.long)
            tau0 = self.predict_tau0(tau, ks)
            abar = self.abar[k - 1]
            eps = (tau - abar.sqrt() * tau0) / (1.0 - abar).sqrt()
            abar_next = self.abar[steps[i + 1] - 1] if i + 1 < len(steps) else self.abar.new_tensor(1.0)
            tau = abar_next.sqrt() * tau0 + (1.0 - abar_next).sqrt() * eps
        return tau

    def sample(self, shape, ddim_steps=None, generator=None):
        """DDPM with all K steps, or DDIM with `ddim_steps` steps."""
        if ddim_steps:
            return self.ddim_sample(shape, ddim_steps, generator)
        return self.p_sample_loop(shape, generator)


def q_bar(tau, q_row, valid):
    """Qbar(tau): mean of the Q_tot row over each episode's valid steps, (B, F, T) -> (B,)."""
    valid = valid.float()
    return (tau[:, q_row] * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)


def eaq_loss(tau0_pred, tau0, q_row, valid, lam):
    """Eq. 5 -> (total, diffusion_term, q_term).

    diffusion_term = mean over the whole matrix of (tau0 - f_theta(tau_k, k))^2
    q_term         = mean_b [ max_{b'} Qbar(tau0_{b'}) - Qbar(f_theta(tau_k, k)_b) ]_+
    total          = diffusion_term + lam * q_term

    The max is over the real episodes of the minibatch and is a constant
    (no gradient flows into the data); `valid` (B, T) marks the real steps
    of each episode, so padding never enters Qbar.
    """
    diffusion_term = F.mse_loss(tau0_pred, tau0)
    best = q_bar(tau0, q_row, valid).max().detach()
    q_term = F.relu(best - q_bar(tau0_pred, q_row, valid)).mean()
    return diffusion_term + lam * q_term, diffusion_term, q_term


# ---------------------------------------------------------------------------
# Training (Algorithm 1, training process)
# ---------------------------------------------------------------------------
@torch.no_grad()
def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


def episode_horizons(lengths, bucket_width, T):
    """Each episode's window (E,) int: its length rounded up to a multiple of bucket_width, at most T.

    Length-aware diffusion (docs/diffusion.md; not in the paper): episodes
    whose lengths fall in the same bucket of `bucket_width` steps are
    trained, and generated, together on a window of the bucket's upper
    edge instead of the dataset's longest episode T. bucket_width = 0 gives
    every episode the paper's fixed window T.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if bucket_width == 0:
        return np.full(len(lengths), T, dtype=np.int64)
    return np.minimum(-(-lengths // bucket_width) * bucket_width, T)


def train(diffusion, ema, optimizer, tau0, valid, q_row, lam, steps, horizons=None, start_step=0,
          batch_size=32, ema_decay=0.995, seed=0, on_checkpoint=None, checkpoint_every=1000, progress=True):
    """Algorithm 1's training loop from `start_step` to `steps`; returns the last losses.

    Each minibatch comes from one horizon bucket (`episode_horizons`, (E,);
    None = all T) and is cut to that window: a uniformly drawn episode picks
    the bucket, then the minibatch is drawn uniformly from the bucket, so
    every episode is as likely to be in a minibatch as under the paper's
    uniform sampling. The minibatch, the steps k and the noise of step s
    depend only on (seed, s), so a run resumed from a checkpoint continues
    exactly as an uninterrupted one. A non-finite loss stops training with
    an error. The returned dict also counts the steps whose Q-hinge was active.
    """
    E, T = tau0.shape[0], tau0.shape[-1]
    horizons = torch.full((E,), T) if horizons is None else torch.as_tensor(horizons)
    buckets = {int(h): torch.nonzero(horizons == h).flatten() for h in horizons.unique()}
    losses, active = {}, 0
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc="diffusion",
               disable=not progress)
    for step in bar:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        h = int(horizons[torch.randint(E, (1,), generator=g)])            # the bucket, chosen ∝ its size
        members = buckets[h]
        index = members[torch.randint(len(members), (min(batch_size, E),), generator=g)].to(tau0.device)
        batch, batch_valid = tau0[index, :, :h], valid[index, :h]         # (b, F, h), (b, h)
        k = torch.randint(1, diffusion.K + 1, (len(index),), generator=g).to(tau0.device)  # k ~ U{1..K}
        noise = torch.randn(batch.shape, generator=g).to(tau0.device)
        total, diff_term, q_term = diffusion.loss(batch, batch_valid, q_row, lam, k, noise)
        if not torch.isfinite(total):
            raise FloatingPointError(f"diffusion loss became {total.item()} at step {step}; "
                                     "lower --lr or check the dataset for NaNs")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        ema_update(ema, diffusion, ema_decay)
        losses = {"loss": total.item(), "diffusion": diff_term.item(), "q": q_term.item()}
        active += int(losses["q"] > 0)
        bar.set_postfix(diffusion=f"{losses['diffusion']:.4f}", q=f"{losses['q']:.4f}")
        if on_checkpoint and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            on_checkpoint(step + 1, active)
    return {**losses, "hinge_active_steps": active}


# ---------------------------------------------------------------------------
# Sampling (Algorithm 1, sampling process)
# ---------------------------------------------------------------------------
def synthetic_windows(horizons, n, generator):
    """The windows of n synthetic episodes, (n,): those of n real episodes drawn uniformly (`horizons`, (E,))."""
    return np.asarray(horizons)[torch.randint(len(horizons), (n,), generator=generator).numpy()]


def sample_batches(ema, normalizer, horizons, T, n_features, ddim_steps=None, batch_size=256, generator=None,
                   progress=True):
    """Generated episode matrices in data units, batch by batch: yields (b, F, T) numpy arrays.

    `horizons` (n,) gives each episode's window; episodes of one window are
    sampled together (ascending windows, `batch_size` at a time) and padded
    with zeros (the Eq. 4 matrix's padding) to T, so D_syn is never held whole.
    """
    generator = generator or torch.Generator().manual_seed(0)
    with tqdm(total=len(horizons), desc="sampling", unit="ep", disable=not progress) as bar:
        for h in np.unique(horizons):
            count = int((horizons == h).sum())
            for start in range(0, count, batch_size):
                b = min(batch_size, count - start)
                tau = ema.sample((b, n_features, int(h)), ddim_steps, generator)      # (b, F, h)
                matrix = normalizer.unnormalize(tau.cpu().numpy())
                yield np.pad(matrix, [(0, 0), (0, 0), (0, T - int(h))])             # (b, F, T)
                bar.update(b)


def check_device(name):
    """Raise a one-line InputError unless `name` is a torch device this machine has."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise artifacts.InputError(f"--device {name!r} is not a torch device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise artifacts.InputError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); "
                                   f"use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise artifacts.InputError(f"--device {name}: only cpu and cuda are supported")


# ---------------------------------------------------------------------------
# The model and its checkpoint
# ---------------------------------------------------------------------------
def build(model_config):
    """A Diffusion model and its EMA copy from a checkpoint's config dict: `network` ("flat":
    unet.TemporalUNet over the F rows; "agents": unet.AgentUNet over each agent's rows, with `mixing`),
    `dim`, `dim_mults`, `head_width`, `K`, and the matrix's `n_features` and `layout` (data.FeatureLayout's
    fields)."""
    dim, mults = model_config["dim"], tuple(model_config["dim_mults"])
    if model_config["network"] == "agents":
        layout = data.FeatureLayout(**model_config["layout"])
        net = unet.AgentUNet(layout.n_agents, layout.agent_width, layout.n_features - layout.reward, dim, mults,
                             mixing=model_config["mixing"], head_width=model_config["head_width"])
    else:
        net = unet.TemporalUNet(model_config["n_features"], dim, mults, head_width=model_config["head_width"])
    model = Diffusion(net, model_config["K"])
    return model, copy.deepcopy(model).requires_grad_(False)


def prepare(episodes, normalizer=None):
    """Real episodes -> (tau0 normalised (E, F, T) tensor, valid (E, T) bool tensor, normalizer,
    the Eq. 4 matrix in data units (E, F, T) numpy)."""
    matrix = data.episodes_to_matrix(episodes)                             # (E, F, T) data units
    normalizer = normalizer or data.Normalizer.fit(matrix)
    tau0 = torch.from_numpy(normalizer.normalize(matrix))
    valid = torch.from_numpy(data.valid_steps(episodes.lengths, matrix.shape[-1]))
    return tau0, valid, normalizer, matrix


@dataclasses.dataclass
class Model:
    """Everything Algorithm 1 trains and samples with, and what a checkpoint holds."""

    diffusion: Diffusion
    ema: Diffusion                 # the exponential moving average of the weights: sampling uses it
    optimizer: torch.optim.Optimizer
    normalizer: data.Normalizer
    config: dict                   # `model_config` and the dataset's path, layout and window T (plain values)
    step: int = 0                  # training steps done so far
    hinge_active_steps: int = 0    # steps whose Q-hinge term was > 0
    train_seconds: float = 0.0     # training wall time over all sessions
    train_cpu_seconds: float = 0.0   # and CPU time (artifacts.Clock)


def save_checkpoint(path, model):
    """Tensors and plain values only, written to a temporary name then renamed."""
    artifacts.save_tensors(path, {"model": model.diffusion.state_dict(), "ema": model.ema.state_dict(),
                                  "optimizer": model.optimizer.state_dict(), "step": model.step,
                                  "hinge_active_steps": model.hinge_active_steps, "train_seconds": model.train_seconds,
                                  "train_cpu_seconds": model.train_cpu_seconds,
                                  "normalizer": model.normalizer.state_dict(), "config": model.config})


CHECKPOINT_KEYS = {"model", "ema", "optimizer", "step", "hinge_active_steps", "train_seconds", "train_cpu_seconds",
                   "normalizer", "config"}


def load_checkpoint(path, build=build):
    """-> Model, loaded without running any code (weights_only); refuses anything else in one line.

    `build` makes the networks from the saved config (a variant's own, for experiments/). The optimiser's
    learning rate and moments come from the checkpoint (its saved parameter groups).
    """
    ckpt = artifacts.load_tensors(path, "EAQ checkpoint", "delete it to train again", CHECKPOINT_KEYS)
    try:
        net, ema = build(ckpt["config"])
        net.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer = torch.optim.Adam(net.parameters())
        optimizer.load_state_dict(ckpt["optimizer"])
        counts = (int(ckpt["step"]), int(ckpt["hinge_active_steps"]), float(ckpt["train_seconds"]),
                  float(ckpt["train_cpu_seconds"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise artifacts.InputError(f"{path}: damaged EAQ checkpoint ({type(err).__name__}); "
                                   f"delete it to train again") from None
    return Model(net, ema, optimizer, data.Normalizer.from_state_dict(ckpt["normalizer"]), ckpt["config"],
                 *counts)
