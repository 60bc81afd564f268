"""The EAQ diffusion model: Conv1D DDPM over whole episodes (paper §3.2, Eq. 5, Algorithm 1).

A dataset is laid out as tau0 of shape (B, F, T) (Eq. 4, `data.py`): the F
feature rows are the channels of a 1-D convolution and time is its length.
A temporal U-Net f_theta(tau_k, k) predicts the clean episode tau0 directly
from a noised one (x0-prediction, as the paper argues: the prediction's
Q_tot row can then be pushed up inside the same loss). The loss is Eq. 5:

    L(theta) = E_{k, tau0} [ ||tau0 - f_theta(tau_k, k)||^2
                             + lam * [ max_{tau0' in B} Qbar(tau0') - Qbar(f_theta(tau_k, k)) ]_+ ]

where Qbar(tau) is the mean of the Q_tot row over the episode's valid steps
and the max runs over the real episodes of the minibatch B. lam = 0 is the
paper's EAQ^{-Q}. The forward process is DDPM's (Ho et al. 2020): K steps
with a linear beta schedule from 1e-4 to 0.02 ("the established DDPM
hyper-parameters", §4.4), tau_k = sqrt(abar_k) tau0 + sqrt(1 - abar_k) eps.
Sampling is ancestral DDPM from N(0, I), or DDIM (eta = 0) on a subsequence
of the K steps. Upsampling scale S = 5 gives |D_syn| = 5 |D_real|.

Units of λ. `eaq_loss` takes the *mean* of the squared error over the
B x F x T entries of a minibatch (as diffuser and lucidrains' code do) and
reads Q̄ on the normalised matrix (the Q_tot row mapped to [-1, 1]). Eq. 5
writes a squared norm, i.e. a *sum* over an episode's F x T entries; read
literally, the paper's λ_sum equals our λ x F x T (3m-poor: F x T = 27 600,
so our λ = 0.1 is λ_sum = 2 760, and the paper's λ = 0.1 would be our
3.6e-6). If the hinge is read in data units (Q̄ on the return scale), the
paper's λ_data equals our λ x 2 / (hi - lo) of the Q_tot row. The paper does
not say which it used. The report gives both equivalents for the run's λ
and the share of training steps on which the hinge was active (> 0).

Global-row weight (a departure, off by default). The squared error of Eq. 5
weighs all F rows alike, so the three rows that carry the episode's outcome
(reward, Q_tot, done) get 3 / F of it: 1.1 % on 3m (F = 276), 0.4 % on
5m_vs_6m (F = 813). At the default budget the model then generates no won
episodes at all (README "Where the wins went"). `--global-row-weight W`
multiplies those three rows' squared error by W relative to the agents'
rows, the weights scaled to mean 1 so the loss keeps its size against λ's
hinge; W = 1 is Eq. 5 as written.

Head width (a departure, off by default). The U-Net ends, as diffuser's
does, in a convolution to `dim` channels and a 1x1 convolution from them to
the F rows: before the clip to [-1, 1], every generated step is an affine
function of `dim` numbers, so D_syn's steps lie near a `dim`-dimensional
subspace of the F-dimensional columns (40 of 276 on 3m). Which enemy lost
health after whose attack is not in D_real's top 40 directions (README
"Damage without a shooter"). `--head-width H` widens that last block to H
channels, so the 1x1 convolution reads H nonlinear features; 0 (the
default) keeps H = dim.

Skip parametrisation (a departure, off by default). A U-Net that writes
tau0 through `dim` channels cannot hand back even a nearly clean input: on
8m-poor the trained default model, given real episodes noised at k = 1,
returns the right action (its argmax) on 63 % of agent-steps and no
attack-availability value above 0.9 (README "What the network can copy").
`--x0-skip` keeps Eq. 5 and x0-prediction but builds f_theta from the best
affine estimate of tau0 plus the U-Net's correction (the preconditioning
of Karras et al. 2022, EDM, without its loss weight, and with each row's
mean: EDM's data are centred, ours are not):

    f_theta(tau_k, k) = mu + c_skip(k) (tau_k - sqrt(abar_k) mu) + c_out(k) U(tau_k, k)
    c_skip = sqrt(abar_k) var / (abar_k var + 1 - abar_k)
    c_out  = sqrt((1 - abar_k) var / (abar_k var + 1 - abar_k))

per feature row, mu and var being the row's mean and variance in the
normalised D_real (over valid steps). The first two terms are the
least-squares affine guess of tau0 from tau_k, and c_out is the root mean
square of what it misses, so U's target has unit size at every k; as
k -> 0, f_theta -> tau_k, so detail the U-Net cannot carry passes around it,
and a row that is constant in D_real is generated as that constant. On
8m-poor the network then copies, yet its D_syn is further from D_real on
most bars (README): the flag stays off.

Index convention: the paper's diffusion step k runs over 1..K; arrays here
are 0-based, so buffer[k - 1] belongs to step k, and the network receives k.

Shapes: tau0, tau_k, predictions (B, F, T); Q_tot row and valid mask (B, T).
"""
import argparse
import collections
import copy
import dataclasses
import math
import os

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import artifacts
import data

# ---------------------------------------------------------------------------
# The temporal U-Net f_theta(tau_k, k)
# ---------------------------------------------------------------------------


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of the diffusion step k: (B,) -> (B, dim)."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, k):
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=k.device) / (half - 1))
        angles = k.float()[:, None] * freqs[None, :]                       # (B, dim/2)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)             # (B, dim)


def conv_block(in_ch, out_ch, kernel):
    """Conv1d -> GroupNorm -> Mish, keeping the length."""
    return nn.Sequential(nn.Conv1d(in_ch, out_ch, kernel, padding=kernel // 2),
                         nn.GroupNorm(8, out_ch), nn.Mish())


class ResidualTemporalBlock(nn.Module):
    """Two conv blocks with the step embedding added in between, plus a residual path."""

    def __init__(self, in_ch, out_ch, emb_dim, kernel=5):
        super().__init__()
        self.block1 = conv_block(in_ch, out_ch, kernel)
        self.block2 = conv_block(out_ch, out_ch, kernel)
        self.emb = nn.Sequential(nn.Mish(), nn.Linear(emb_dim, out_ch))
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):
        """x (B, C_in, T), emb (B, E) -> (B, C_out, T)."""
        h = self.block1(x) + self.emb(emb)[:, :, None]
        return self.block2(h) + self.skip(x)


class TemporalUNet(nn.Module):
    """Conv1D U-Net over time: features are channels, (B, F, T) -> (B, F, T).

    Each level halves the time length with a stride-2 convolution (after two
    residual blocks) and the way up doubles it again, with skip connections.
    T is padded on the right with zeros to a multiple of 2^(levels - 1) and
    the output is cropped back, so any T (odd included) keeps its shape.
    """

    def __init__(self, n_features, dim=64, dim_mults=(1, 2, 4), kernel=5, head_width=None):
        super().__init__()
        widths = [dim * m for m in dim_mults]
        self.levels = len(widths)
        self.step_embedding = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, 4 * dim),
                                            nn.Mish(), nn.Linear(4 * dim, dim))
        self.inp = nn.Conv1d(n_features, dim, kernel, padding=kernel // 2)
        self.down = nn.ModuleList()
        in_ch = dim
        for i, w in enumerate(widths):
            last = i == self.levels - 1
            self.down.append(nn.ModuleList([
                ResidualTemporalBlock(in_ch, w, dim, kernel), ResidualTemporalBlock(w, w, dim, kernel),
                nn.Identity() if last else nn.Conv1d(w, w, 3, stride=2, padding=1)]))
            in_ch = w
        self.mid1 = ResidualTemporalBlock(in_ch, in_ch, dim, kernel)
        self.mid2 = ResidualTemporalBlock(in_ch, in_ch, dim, kernel)
        self.up = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths[:-1]))):
            self.up.append(nn.ModuleList([
                nn.ConvTranspose1d(in_ch, in_ch, 4, stride=2, padding=1),
                ResidualTemporalBlock(in_ch + w, w, dim, kernel),
                ResidualTemporalBlock(w, w, dim, kernel)]))
            in_ch = w
        head = head_width or dim                  # channels the last 1x1 convolution reads (module docstring)
        self.out = nn.Sequential(conv_block(in_ch + dim, head, kernel), nn.Conv1d(head, n_features, 1))

    def forward(self, tau_k, k):
        """tau_k (B, F, T), k (B,) int -> predicted tau0 (B, F, T)."""
        T = tau_k.shape[-1]
        multiple = 2 ** (self.levels - 1)
        x = F.pad(tau_k, (0, (-T) % multiple))                             # (B, F, T')
        emb = self.step_embedding(k)                                       # (B, dim)
        x = self.inp(x)                                                    # (B, dim, T')
        first, skips = x, []
        for block1, block2, downsample in self.down:
            x = block2(block1(x, emb), emb)
            skips.append(x)
            x = downsample(x)                                              # (B, C, T'/2^i)
        x = self.mid2(self.mid1(x, emb), emb)
        skips.pop()                                                        # the deepest level has no up step
        for upsample, block1, block2 in self.up:
            x = upsample(x)                                                # doubles the length
            x = block2(block1(torch.cat([x, skips.pop()], dim=1), emb), emb)
        x = self.out(torch.cat([x, first], dim=1))                         # (B, F, T')
        return x[..., :T]


# ---------------------------------------------------------------------------
# DDPM schedule, Eq. 5 and sampling
# ---------------------------------------------------------------------------
def linear_betas(K, beta_1=1e-4, beta_K=0.02):
    """DDPM's linear variance schedule beta_1..beta_K (Ho et al. 2020)."""
    return torch.linspace(beta_1, beta_K, K, dtype=torch.float64)


class Diffusion(nn.Module):
    """The schedule buffers around f_theta, with q_sample, p_sample_loop and ddim_sample.

    With `x0_skip` f_theta is the rows' affine estimate plus c_out U(tau_k, k) (module docstring); the
    rows' means and variances (F,) are buffers, 0 and 1 until `set_row_moments` fits them to D_real.
    """

    def __init__(self, model, K=1000, x0_skip=False):
        super().__init__()
        self.model, self.K, self.x0_skip = model, K, x0_skip
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
        if x0_skip:
            self.register_buffer("row_mean", torch.zeros(model.inp.in_channels))           # (F,)
            self.register_buffer("row_var", torch.ones(model.inp.in_channels))             # (F,)

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
        """The network's estimate of tau0 from tau_k (B, F, T) at steps k (B,): U itself, or with
        `x0_skip` mu + c_skip (tau_k - sqrt(abar_k) mu) + c_out U(tau_k, k)."""
        if not self.x0_skip:
            return self.model(tau_k, k)
        c_skip, c_out = self.skip_coefficients(k)
        mu = self.row_mean[None, :, None]                                                # (1, F, 1)
        scaled_mu = self.abar[k - 1].sqrt()[:, None, None] * mu                          # E[tau_k] = sqrt(abar) mu
        return mu + c_skip * (tau_k - scaled_mu) + c_out * self.model(tau_k, k)

    def q_sample(self, tau0, k, noise):
        """tau_k = sqrt(abar_k) tau0 + sqrt(1 - abar_k) eps, for steps k (B,) in 1..K."""
        abar = self.abar[k - 1][:, None, None]
        return abar.sqrt() * tau0 + (1.0 - abar).sqrt() * noise

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
        device = self.abar.device
        steps = np.unique(np.linspace(self.K, 1, n_steps).round().astype(int))[::-1]
        tau = torch.randn(shape, generator=generator).to(device)
        for i, k in enumerate(steps):
            ks = torch.full((shape[0],), int(k), device=device, dtype=torch.long)
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


def global_row_weights(layout, weight):
    """(F,) weights of the squared error: 1 on the agents' rows, `weight` on the reward, Q_tot and done rows,
    scaled to mean 1; None for weight 1 (Eq. 5's plain mean)."""
    if weight == 1.0:
        return None
    rows = torch.ones(layout.n_features)
    rows[[layout.reward, layout.q_tot, layout.done]] = weight
    return rows / rows.mean()


def eaq_loss(tau0_pred, tau0, q_row, valid, lam, row_weights=None):
    """Eq. 5 -> (total, diffusion_term, q_term).

    diffusion_term = mean over the whole matrix of (tau0 - f_theta(tau_k, k))^2,
                     each row's error times row_weights (F,) if given (`global_row_weights`)
    q_term         = mean_b [ max_{b'} Qbar(tau0_{b'}) - Qbar(f_theta(tau_k, k)_b) ]_+
    total          = diffusion_term + lam * q_term

    The max is over the real episodes of the minibatch and is a constant
    (no gradient flows into the data); `valid` (B, T) marks the real steps
    of each episode, so padding never enters Qbar.
    """
    if row_weights is None:
        diffusion_term = F.mse_loss(tau0_pred, tau0)
    else:
        diffusion_term = (((tau0_pred - tau0) ** 2) * row_weights.to(tau0.device)[None, :, None]).mean()
    best = q_bar(tau0, q_row, valid).max().detach()
    q_term = F.relu(best - q_bar(tau0_pred, q_row, valid)).mean()
    return diffusion_term + lam * q_term, diffusion_term, q_term


# ---------------------------------------------------------------------------
# Training (Algorithm 1, training process)
# ---------------------------------------------------------------------------
def build(config):
    """A Diffusion model (and its EMA copy) from a config dict."""
    net = TemporalUNet(config["n_features"], config["dim"], tuple(config["dim_mults"]),
                       head_width=config.get("head_width", 0))
    diffusion = Diffusion(net, config["K"], x0_skip=config.get("x0_skip", False))
    ema = copy.deepcopy(diffusion).requires_grad_(False)
    return diffusion, ema


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
    config: dict                   # plain values only (a checkpoint loads with weights_only=True)
    step: int = 0                  # training steps done so far
    hinge_active_steps: int = 0    # steps whose Q-hinge term was > 0
    train_seconds: float = 0.0     # training wall time over all sessions
    train_cpu_seconds: float | None = 0.0   # and CPU time (artifacts.Clock); None if a session did not count it


def save_checkpoint(path, model):
    """Tensors and plain values only, written to a temporary name then renamed."""
    artifacts.save_tensors(path, {"model": model.diffusion.state_dict(), "ema": model.ema.state_dict(),
                                  "optimizer": model.optimizer.state_dict(), "step": model.step,
                                  "hinge_active_steps": model.hinge_active_steps, "train_seconds": model.train_seconds,
                                  "train_cpu_seconds": model.train_cpu_seconds,
                                  "normalizer": model.normalizer.state_dict(), "config": model.config})


CHECKPOINT_KEYS = {"model", "ema", "optimizer", "step", "normalizer", "config"}
# Config fields added after checkpoints were first written, with the value those older ones were trained with.
OLDER_CHECKPOINTS = {"global_row_weight": 1.0, "head_width": 0, "x0_skip": False}


def load_checkpoint(path):
    """-> Model, loaded without running any code (weights_only); refuses anything else in one line.

    The optimiser's learning rate and moments come from the checkpoint (its saved parameter groups).
    """
    ckpt = artifacts.load_tensors(path, "EAQ checkpoint", "delete it to train again", CHECKPOINT_KEYS)
    try:
        config = {**OLDER_CHECKPOINTS, **ckpt["config"]}
        diffusion, ema = build(config)
        diffusion.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer = torch.optim.Adam(diffusion.parameters())
        optimizer.load_state_dict(ckpt["optimizer"])
        cpu = ckpt.get("train_cpu_seconds")                       # None: saved before 2026-11-27
        counts = (int(ckpt["step"]), int(ckpt.get("hinge_active_steps", 0)), float(ckpt.get("train_seconds", 0.0)),
                  None if cpu is None else float(cpu))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise artifacts.InputError(f"{path}: damaged EAQ checkpoint ({type(err).__name__}); "
                                   f"delete it to train again") from None
    return Model(diffusion, ema, optimizer, data.Normalizer.from_state_dict(ckpt["normalizer"]), config, *counts)


def use_diffusion_threads():
    """The diffusion model's torch thread count: artifacts.torch_threads() (1 unless EAQ_TORCH_THREADS says so)."""
    torch.set_num_threads(artifacts.torch_threads())


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


def episode_horizons(lengths, bucket_width, T):
    """Each episode's window (E,) int: its length rounded up to a multiple of bucket_width, at most T.

    Length-aware diffusion (README, "Length-aware windows"; not in the paper): episodes
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
          batch_size=32, ema_decay=0.995, seed=0, on_checkpoint=None, checkpoint_every=1000,
          progress=True, row_weights=None):
    """Algorithm 1's training loop from `start_step` to `steps`; returns the last losses.

    Each minibatch comes from one horizon bucket (`episode_horizons`, (E,);
    None = all T) and is cut to that window: a uniformly drawn episode picks
    the bucket, then the minibatch is drawn uniformly from the bucket, so
    every episode is as likely to be in a minibatch as under the paper's
    uniform sampling. The minibatch, the steps k and the noise of step s
    depend only on (seed, s), so a run resumed from a checkpoint continues
    exactly as an uninterrupted one. A non-finite loss stops training with
    an error. The returned dict also counts the steps whose Q-hinge was active.
    `row_weights` (F,) weighs each row's squared error (`global_row_weights`; None = Eq. 5's plain mean).
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
        tau_k = diffusion.q_sample(batch, k, noise)
        total, diff_term, q_term = eaq_loss(diffusion.f_theta(tau_k, k), batch, q_row, batch_valid, lam,
                                           row_weights)
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
# Sampling D_syn (Algorithm 1, sampling process) and its report
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


def raw_actions(matrix, layout, avail):
    """Each agent's action before repair (the argmax of its action rows) and whether `avail` allows it.

    matrix (b, F, T) in data units, avail (b, T', N, A) with T' >= T -> (raw (b, T, N), legal (b, T, N) bool).
    """
    T = matrix.shape[-1]
    raw = np.stack([matrix[:, layout.action(n)].argmax(axis=1) for n in range(layout.n_agents)], axis=-1)
    return raw, np.take_along_axis(avail[:, :T], raw[..., None], axis=-1)[..., 0]


class MatrixStats:
    """The report's statistics of episode matrices fed batch by batch (D_syn is never held whole).

    `add(matrix)` takes (b, F, T) in data units and returns the decoded
    Episodes; `summary()` gives the report entries; `action_counts` (N, A)
    feeds the action-histogram distance between two sets. Wins are counted
    twice: from the reward row (the return the learners read) and from the
    Q_tot row at step 0, the episode's reward-to-go there, i.e. the return
    the matrix itself claims (Eq. 4). On D_real the two agree; a model that
    generated won episodes but blurred the terminal reward would show wins
    in the second count only. With a `damage_threshold` (`data.damage_threshold`
    of D_real) it also counts whether enemies lose health where the actions
    say they were shot (`data.damage_counts`; SMAX layouts only, else NaN).
    """

    def __init__(self, layout, reward_range, backend="smax", damage_threshold=float("nan")):
        self.layout, self.reward_range, self.backend = layout, reward_range, backend
        self.damage_threshold = damage_threshold
        self.damage = collections.Counter()            # `data.damage_counts` summed over batches
        self.lengths, self.ended, self.returns, self.q_bars, self.q0s = [], [], [], [], []
        self.legal = self.agent_steps = self.attacks = 0
        self.q_error = self.steps = 0.0
        self.focus = self.all_attack_steps = 0
        self.action_counts = np.zeros((layout.n_agents, layout.n_actions))

    def add(self, matrix):
        layout = self.layout
        lengths, ended = data.episode_ends(matrix[:, layout.done])
        episodes = data.matrix_to_episodes(matrix, layout, self.reward_range, attrs={"backend": self.backend})
        T = matrix.shape[-1]
        valid = data.valid_steps(lengths, T)                                   # (b, T)
        _, legal = raw_actions(matrix, layout, episodes.avail)                 # (b, T, N) before repair
        q_row = matrix[:, layout.q_tot]                                        # (b, T)
        rtg = data.reward_to_go(episodes.rewards, lengths)
        self.lengths.append(lengths), self.ended.append(ended), self.returns.append(episodes.returns())
        self.q_bars.append((q_row * valid).sum(1) / valid.sum(1))
        self.q0s.append(q_row[:, 0])                                           # (b,) Q_tot at step 0
        self.legal += int(legal[valid].sum())
        self.agent_steps += int(valid.sum()) * layout.n_agents
        self.q_error += float(np.abs(q_row - rtg)[valid].sum())
        self.steps += float(valid.sum())
        self.attacks += data.attack_counts(episodes)[0]
        focus, all_attack = data.dataset_focus_fire(episodes, counts=True)
        self.focus += focus
        self.all_attack_steps += all_attack
        self.action_counts += data.action_counts(episodes)
        self.damage.update(data.damage_counts(episodes, self.damage_threshold))
        return episodes

    def summary(self):
        lengths, returns, q0s = np.concatenate(self.lengths), np.concatenate(self.returns), np.concatenate(self.q0s)
        return {
            "episodes": int(len(lengths)),
            "ended_share": float(np.concatenate(self.ended).mean()),
            "length_mean": float(lengths.mean()), "length_std": float(lengths.std()),
            "length_min": int(lengths.min()), "length_max": int(lengths.max()),
            "legal_before_repair": self.legal / self.agent_steps,
            "return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "win_share": data.win_share(returns),
            "q0_win_share": data.win_share(q0s), "q0_std": float(q0s.std()),
            "q_bar_mean": float(np.concatenate(self.q_bars).mean()),
            "q_consistency": self.q_error / self.steps,
            "attack_share": self.attacks / self.agent_steps,
            "focus_fire_share": self.focus / self.all_attack_steps if self.all_attack_steps else float("nan"),
            "all_attack_steps": self.all_attack_steps,
            **data.damage_shares(self.damage),
        }


# What a faithful D_syn must show against D_real (README "What the diffusion model generated").
FIDELITY_BAR = {"attack_share_rel": 0.25, "action_tv": 0.1, "ended_share": 0.9, "legal_before_repair": 0.98,
                "length_rel": 0.1, "damage_with_shooter": 0.9}


def fidelity_misses(report):
    """The ways a D_syn misses the fidelity bar, as short sentences (empty if it meets it)."""
    real, syn, bar = report["real"], report["synthetic"], FIDELITY_BAR
    misses = []
    if abs(syn["attack_share"] - real["attack_share"]) > bar["attack_share_rel"] * real["attack_share"]:
        misses.append(f"attack share {syn['attack_share']:.3f} vs D_real's {real['attack_share']:.3f} "
                      f"(±{bar['attack_share_rel']:.0%})")
    if report["action_tv_distance"] > bar["action_tv"]:
        misses.append(f"action-histogram distance {report['action_tv_distance']:.3f} > {bar['action_tv']}")
    if syn["ended_share"] < bar["ended_share"]:
        misses.append(f"confident dones {syn['ended_share']:.0%} < {bar['ended_share']:.0%}")
    if syn["legal_before_repair"] < bar["legal_before_repair"]:
        misses.append(f"legal before repair {syn['legal_before_repair']:.3f} < {bar['legal_before_repair']}")
    if abs(syn["length_mean"] - real["length_mean"]) > bar["length_rel"] * real["length_mean"]:
        misses.append(f"mean length {syn['length_mean']:.1f} vs {real['length_mean']:.1f} (±{bar['length_rel']:.0%})")
    if syn.get("damage_with_shooter", float("nan")) < bar["damage_with_shooter"]:     # NaN (no SMAX layout): no verdict
        misses.append(f"damage with a shooter {syn['damage_with_shooter']:.3f} < {bar['damage_with_shooter']}")
    return misses


def synthetic_report(real_stats, syn_stats):
    """D_real vs D_syn side by side (two MatrixStats), the action-histogram distance and the fidelity verdict."""
    report = {"real": real_stats.summary(), "synthetic": syn_stats.summary(),
              "action_tv_distance": data.histogram_tv(real_stats.action_counts, syn_stats.action_counts)}
    report["fidelity_misses"] = fidelity_misses(report)
    return report


def format_report(report):
    rows = [("episodes", "{:d}"), ("ended_share", "{:.3f}"), ("length_mean", "{:.1f}"),
            ("length_std", "{:.1f}"), ("length_min", "{:d}"), ("length_max", "{:d}"),
            ("legal_before_repair", "{:.3f}"), ("return_mean", "{:.2f}"), ("return_std", "{:.2f}"),
            ("win_share", "{:.3f}"), ("q0_win_share", "{:.3f}"), ("q0_std", "{:.2f}"), ("q_bar_mean", "{:.2f}"),
            ("q_consistency", "{:.3f}"), ("attack_share", "{:.3f}"),
            ("focus_fire_share", "{:.3f}"), ("all_attack_steps", "{:d}"), ("attacks_that_damage", "{:.3f}"),
            ("damage_with_shooter", "{:.3f}"), ("health_gain_share", "{:.3f}"), ("reward_matches_damage", "{:.3f}"),
            ("reward_minus_damage", "{:+.3f}"), ("reward_below_damage", "{:.3f}")]
    lines = [f"{'':22s}{'D_real':>10s}{'D_syn':>10s}"]
    for key, fmt in [(key, fmt) for key, fmt in rows if key in report["real"]]:   # older reports lack later keys
        lines.append(f"{key:22s}{fmt.format(report['real'][key]):>10s}"
                     f"{fmt.format(report['synthetic'][key]):>10s}")
    lines.append(f"action-histogram TV distance (D_real vs D_syn): {report['action_tv_distance']:.3f}")
    lam = report["lam_units"]
    lines.append(f"λ = {report['lam']:g}: hinge active on {report['hinge_active_share']:.1%} of training steps; "
                 f"as Eq. 5 summed over F x T: λ_sum = {lam['sum_over_matrix']:g}; "
                 f"with Q̄ in data units: λ_data = {lam['q_in_data_units']:g}")
    if report.get("global_row_weight", 1.0) != 1.0:
        lines.append(f"Eq. 5's squared error weighted {report['global_row_weight']:g}x on the reward, Q_tot and "
                     "done rows (--global-row-weight; a departure from the paper)")
    if report.get("head_width", 0):                                    # 0: the head is --dim wide
        lines.append(f"U-Net head {report['head_width']} channels wide (--head-width; a departure from the paper)")
    if report.get("x0_skip", False):
        lines.append("f_theta = the rows' affine estimate of tau0 + c_out U(tau_k, k) (--x0-skip; a departure "
                     "from the paper)")
    lines.append(fidelity_line(report))
    return "\n".join(lines)


def fidelity_line(report):
    """One line: whether D_syn meets the fidelity bar, and how it misses it."""
    misses = report.get("fidelity_misses", [])
    return ("D_syn meets the fidelity bar" if not misses
            else "D_syn MISSES the fidelity bar: " + "; ".join(misses))


# ---------------------------------------------------------------------------
# Command line: train on D_real, sample D_syn, report
# ---------------------------------------------------------------------------
def check_device(parser, name):
    """Stop with a one-line argparse error unless `name` is a torch device this machine has."""
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device {name!r} is not a torch device; use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {name}: only cpu and cuda are supported")


def build_parser():
    """diffusion.py's flags; train.py takes its diffusion defaults from here (one set of defaults)."""
    p = argparse.ArgumentParser(description="Train the EAQ diffusion model on a dataset and sample "
                                            "S times as many synthetic episodes (paper §3.2, Alg. 1).")
    p.add_argument("--dataset", required=True, help="HDF5 dataset (D_real) made by data.py")
    p.add_argument("--out", required=True, help="output folder: model.pt, synthetic.h5, report.json")
    p.add_argument("--lam", type=float, default=0.1,
                   help="λ of Eq. 5 in our units (see the module docstring; paper tunes among 0.5, 0.1, "
                        "0.01; 0 = EAQ^{-Q})")
    p.add_argument("--steps", type=int, default=9000,
                   help="training steps (paper: silent; with --dim 40 the least measured budget whose 3m-poor "
                        "D_syn meets the attack-share, action-histogram, done and length bars: README)")
    p.add_argument("--batch-size", type=int, default=32, help="episodes per minibatch (paper: silent)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="Adam learning rate (paper: silent; in 3 000 steps 1e-3 comes far closer to D_real's "
                        "actions than diffuser's 2e-4: README)")
    p.add_argument("--K", type=int, default=1000, help="diffusion steps (DDPM's 1000, §4.4)")
    p.add_argument("--dim", type=int, default=40,
                   help="U-Net base width (paper: silent; wide enough for faithful actions, narrow enough to "
                        "stay >= 2x faster than lucidrains' Unet1D: README)")
    p.add_argument("--head-width", type=int, default=0,
                   help="channels of the U-Net's last block, read by its final 1x1 convolution; 0 = --dim "
                        "(diffuser's head: every generated step an affine function of --dim numbers; a wider "
                        "head is a departure, see the module docstring); a multiple of 8")
    p.add_argument("--x0-skip", action="store_true",
                   help="f_theta = the best affine estimate of tau0 from tau_k, row by row, plus c_out(k) U(tau_k, "
                        "k), the U-Net's correction (a departure, see the module docstring); Eq. 5 is unchanged")
    p.add_argument("--dim-mults", type=int, nargs="+", default=[1, 2, 4],
                   help="width multiplier per U-Net level (each extra level halves T)")
    p.add_argument("--bucket-width", type=int, default=8,
                   help="length-aware diffusion: train and sample episodes on windows of their length rounded "
                        "up to a multiple of this (a multiple of 2^(levels-1)); 0 = the paper's fixed window, "
                        "the longest episode")
    p.add_argument("--ema-decay", type=float, default=0.995, help="EMA decay of the sampling weights")
    p.add_argument("--global-row-weight", type=float, default=1.0,
                   help="weight of the reward, Q_tot and done rows' squared error against the agents' rows "
                        "(1 = Eq. 5 as written; a departure, see the module docstring)")
    p.add_argument("--scale", type=int, default=5, help="upsampling scale S: |D_syn| = S |D_real| (paper: 5)")
    p.add_argument("--ddim-steps", type=int, default=20,
                   help="sample with DDIM on this many steps; 0 = ancestral DDPM with all K steps "
                        "(≈ 1 h for 3m on a CPU)")
    p.add_argument("--sample-batch", type=int, default=256, help="episodes sampled per batch")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/model.pt")
    p.add_argument("--seed", type=int, default=0, help="random seed of the model and of D_syn")
    p.add_argument("--device", default="cpu",
                   help="torch device that trains and samples the model: cpu, cuda, cuda:1 ... "
                        "(random draws stay on the CPU, so a seed gives the same minibatches anywhere)")
    return p


def check_bucket_width(p, width, dim_mults):
    """Stop with a one-line argparse error unless windows of `width` steps fit the U-Net's levels."""
    multiple = 2 ** (len(dim_mults) - 1)
    if width < 0 or width % multiple:
        p.error(f"--bucket-width must be 0 or a positive multiple of {multiple} (2^(levels-1) for "
                f"--dim-mults {' '.join(map(str, dim_mults))}), got {width}")


def check_head_width(p, width):
    """Stop with a one-line argparse error unless --head-width is 0 or a positive multiple of 8."""
    if width < 0 or width % 8:
        p.error(f"--head-width must be 0 (= --dim) or a positive multiple of 8 (GroupNorm uses 8 groups), "
                f"got {width}")


def check_args(p, args):
    """One-line argparse errors for diffusion flag values that cannot work."""
    check_device(p, args.device)
    data.require_finite(p, args, ("lam", "lr", "ema_decay", "global_row_weight"))
    if args.lam < 0:
        p.error(f"--lam must be >= 0 (the hinge pushes Q_tot up; 0 is EAQ^{{-Q}}), got {args.lam}")
    if args.lr <= 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if args.global_row_weight <= 0:
        p.error(f"--global-row-weight must be > 0 (1 = Eq. 5's plain squared error), got {args.global_row_weight}")
    data.require_at_least_one(p, args, ("steps", "batch_size", "K", "dim", "scale", "sample_batch",
                                        "checkpoint_every"))
    data.require_seed(p, args, ("seed",))
    if args.dim % 8:
        p.error(f"--dim must be a multiple of 8 (GroupNorm uses 8 groups), got {args.dim}")
    check_head_width(p, args.head_width)
    if not 0.0 <= args.ema_decay < 1.0:
        p.error(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if args.ddim_steps < 0 or args.ddim_steps > args.K:
        p.error(f"--ddim-steps must be in [0, K={args.K}], got {args.ddim_steps}")
    if any(m < 1 for m in args.dim_mults):
        p.error(f"--dim-mults must be positive, got {args.dim_mults}")
    check_bucket_width(p, args.bucket_width, args.dim_mults)


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def model_config(args, layout):
    """Everything that decides the trained model: a resume must match it field by field."""
    return {"n_features": layout.n_features, "dim": args.dim, "dim_mults": list(args.dim_mults), "K": args.K,
            "lam": args.lam, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
            "ema_decay": args.ema_decay, "bucket_width": args.bucket_width,
            "global_row_weight": args.global_row_weight, "head_width": args.head_width,
            "x0_skip": args.x0_skip, "dataset": os.path.abspath(args.dataset),
            "dataset_sha256": artifacts.file_digest(args.dataset), "layout": dataclasses.asdict(layout)}


RESUME_FLAGS = {"dim": "--dim", "dim_mults": "--dim-mults", "K": "--K", "lam": "--lam", "seed": "--seed",
                "batch_size": "--batch-size", "lr": "--lr", "ema_decay": "--ema-decay",
                "bucket_width": "--bucket-width", "global_row_weight": "--global-row-weight",
                "head_width": "--head-width", "x0_skip": "--x0-skip",
                "dataset_sha256": "--dataset (its contents)", "n_features": "--dataset (its layout)"}


def check_resume(path, saved, wanted):
    """Refuse to resume a model trained with another configuration; names the first differing field."""
    for key, flag in RESUME_FLAGS.items():
        if saved.get(key) != wanted[key]:
            raise artifacts.InputError(f"{path} was trained with {flag} {saved.get(key)!r}, not {wanted[key]!r}; "
                                       f"resume with the same value or choose another --out")


def prepare_model(args, real, ckpt_path):
    """A fresh model seeded with args.seed, or (--resume) the one in ckpt_path after checking it fits."""
    layout = data.layout_of(real)
    config = model_config(args, layout)
    if not args.resume:
        torch.manual_seed(args.seed)
        diffusion, ema = build(config)
        return Model(diffusion, ema, torch.optim.Adam(diffusion.parameters(), lr=args.lr), None, config)
    if not os.path.exists(ckpt_path):
        raise artifacts.InputError(f"{ckpt_path}: nothing to resume; run without --resume first")
    model = load_checkpoint(ckpt_path)
    check_resume(ckpt_path, model.config, config)
    return model


def fit(model, args, tau0, valid, horizons, layout, ckpt_path, progress=True):
    """Algorithm 1, training: Eq. 5 from the model's step up to args.steps (none if it is past them)."""
    device = torch.device(args.device)
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
        save_checkpoint(ckpt_path, model)

    losses = {}
    if model.step < args.steps:
        losses = train(model.diffusion, model.ema, model.optimizer, tau0.to(device), valid.to(device), layout.q_tot,
                       model.config["lam"], args.steps, horizons, start_step=start_step, batch_size=args.batch_size,
                       ema_decay=args.ema_decay, seed=args.seed, on_checkpoint=checkpoint,
                       checkpoint_every=args.checkpoint_every, progress=progress,
                       row_weights=global_row_weights(layout, model.config["global_row_weight"]))
    return {"losses": losses, "trained_steps": model.step - start_step,
            "train_seconds": clock.wall() - clock.wall_before,                 # this session's
            "model_steps": model.step, "train_seconds_total": model.train_seconds,
            "train_cpu_seconds_total": model.train_cpu_seconds,
            "hinge_active_share": model.hinge_active_steps / max(model.step, 1)}


def sample_synthetic(model, args, real, real_matrix, horizons, progress=True):
    """Algorithm 1, sampling: S x |D_real| episodes from the EMA model, streamed into D_syn batch by batch.

    Each synthetic episode's window is drawn from D_real's episode windows
    (`horizons`, (E,)), so D_syn's windows follow D_real's; with the paper's
    fixed window every one is T. Returns the D_real vs D_syn report.
    """
    layout = data.layout_of(real)
    r = layout.reward
    reward_range = (float(model.normalizer.lo[r]), float(model.normalizer.hi[r]))
    backend = real.attrs.get("backend", "smax")
    threshold = data.damage_threshold(real)
    real_stats, syn_stats = (MatrixStats(layout, reward_range, backend, threshold),
                             MatrixStats(layout, reward_range, backend, threshold))
    real_stats.add(real_matrix)
    generator = torch.Generator().manual_seed(args.seed)
    windows = synthetic_windows(horizons, args.scale * real.n_episodes, generator)          # (S E,)
    T = real_matrix.shape[-1]
    attrs = {**real.attrs, "synthetic": True, "lam": model.config["lam"], "diffusion_steps": model.step,
             "K": model.config["K"], "ddim_steps": args.ddim_steps, "scale": args.scale,
             "bucket_width": model.config["bucket_width"], "source_dataset": os.path.abspath(args.dataset),
             "format_version": data.FORMAT_VERSION}
    attrs.pop("win_rate", None)                    # a property of the real episodes only
    clock = artifacts.Clock()
    with artifacts.atomic_path(os.path.join(args.out, "synthetic.h5")) as tmp, h5py.File(tmp, "w") as f:
        writer = data.EpisodeWriter(f, T, layout.n_agents, layout.obs_dim, layout.n_actions)
        for matrix in sample_batches(model.ema, model.normalizer, windows, T, layout.n_features,
                                     args.ddim_steps or None, args.sample_batch, generator, progress):
            writer.append(syn_stats.add(matrix))
        report = synthetic_report(real_stats, syn_stats)
        writer.finish(report["synthetic"]["length_max"])
        syn = report["synthetic"]
        f.attrs.update({**attrs, "return_mean": syn["return_mean"], "return_std": syn["return_std"],
                        "length_mean": syn["length_mean"]})
    return {**report, "sample_seconds": clock.wall(), "sample_cpu_seconds": clock.cpu(),
            "sampler": f"ddim-{args.ddim_steps}" if args.ddim_steps else f"ddpm-{model.config['K']}"}


def lam_units(lam, normalizer, layout, horizon):
    """Our λ expressed in the two other readings of Eq. 5 (module docstring)."""
    q_range = float(normalizer.hi[layout.q_tot] - normalizer.lo[layout.q_tot])
    return {"sum_over_matrix": lam * layout.n_features * horizon,
            "q_in_data_units": lam * 2.0 / q_range if q_range > 0 else float("nan")}


def fit_and_sample(args, progress=True):
    """Algorithm 1 on D_real: train the model (Eq. 5), sample D_syn, write it and the report; returns the report."""
    artifacts.prepare_output_dir(args.out)
    use_diffusion_threads()
    real = data.load_dataset(args.dataset)
    ckpt_path = os.path.join(args.out, "model.pt")
    model = prepare_model(args, real, ckpt_path)
    tau0, valid, model.normalizer, real_matrix = prepare(real, model.normalizer)
    if model.config["x0_skip"]:              # D_real's row moments: the same on a resume (same dataset contents)
        for net in (model.diffusion, model.ema):
            net.set_row_moments(tau0, valid)
    model.config["horizon"] = int(tau0.shape[-1])
    horizons = episode_horizons(real.lengths, model.config["bucket_width"], model.config["horizon"])   # (E,)
    layout = data.layout_of(real)
    training = fit(model, args, tau0, valid, horizons, layout, ckpt_path, progress)
    del tau0, valid                  # sampling needs only the model (and the matrix in data units, for the report)
    report = sample_synthetic(model, args, real, real_matrix, horizons, progress)
    window = float(horizons.mean())
    report.update(training, lam=model.config["lam"], lam_units=lam_units(model.config["lam"], model.normalizer,
                                                                          layout, window),
                  n_features=layout.n_features, horizon=model.config["horizon"], mean_window=window,
                  bucket_width=model.config["bucket_width"], global_row_weight=model.config["global_row_weight"],
                  head_width=model.config["head_width"], x0_skip=model.config["x0_skip"],
                  parameters=sum(p.numel() for p in model.diffusion.parameters()))
    artifacts.write_json(os.path.join(args.out, "report.json"), report)
    return report


def main(argv=None):
    args = parse_args(argv)
    with artifacts.one_line_errors():
        report = fit_and_sample(args)
    print(format_report(report))
    speed = (f"{report['trained_steps'] / report['train_seconds']:.1f} training steps/s"
             if report["trained_steps"] else f"no training needed (the model had {report['model_steps']} steps)")
    print(f"λ = {report['lam']}, {report['parameters']:,} parameters, {report['model_steps']} steps in all, "
          f"{speed}, {report['synthetic']['episodes'] / report['sample_seconds']:.1f} sampled episodes/s "
          f"({report['sampler']}); wrote {args.out}/synthetic.h5 and report.json")


if __name__ == "__main__":
    main()
