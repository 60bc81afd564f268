"""The temporal U-Net f_theta(tau_k, k) of the EAQ diffusion model (paper §3.2: "Conv1D-based").

The Eq. 4 matrix (B, F, T) goes through 1-D convolutions over time with its
F feature rows as channels, as in Janner et al.'s diffuser (its
TemporalUnet) and lucidrains' Unet1D: per level two residual blocks (Conv1d
-> GroupNorm(8) -> Mish, the sinusoidal embedding of the diffusion step k
added between them) and a stride-2 convolution that halves the time
length; the way up mirrors it with transposed convolutions and skip
connections. The paper gives no width; ours is `--dim` (docs/diffusion.md).

Shapes: tau_k and the prediction (B, F, T); k (B,); the step embedding (B, dim).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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

    def __init__(self, n_features, dim=64, dim_mults=(1, 2, 4), kernel=5):
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
        # diffuser's head: before the clip, every generated step is an affine function of these `dim` channels
        self.out = nn.Sequential(conv_block(in_ch + dim, dim, kernel), nn.Conv1d(dim, n_features, 1))

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
