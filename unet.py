"""The temporal U-Nets f_theta(tau_k, k) of the EAQ diffusion model (paper §3.2: "Conv1D-based").

Both run 1-D convolutions over time, as Janner et al.'s diffuser (its
TemporalUnet) and lucidrains' Unet1D do: per level two residual blocks
(Conv1d -> GroupNorm(8) -> Mish, the sinusoidal embedding of the diffusion
step k added between them) and a stride-2 convolution that halves the time
length; the way up mirrors it with transposed convolutions and skip
connections (`UNetTrunk`). The paper gives no width.

* `TemporalUNet` (the paper's flat layout): the Eq. 4 matrix's F feature
  rows are the input channels, mixed into `dim` channels by the first
  convolution; every generated step is an affine map of the head's
  `head_width` numbers (by default `dim`, diffuser's head).
* `AgentUNet` (after MADiff, Zhu et al. 2023): the matrix is cut into each
  agent's rows (observation, action one-hot, legal actions) and the global
  rows (reward, Q_tot, done). One trunk, shared by the agents, runs on each
  agent's rows with its id and the global rows as extra inputs, `dim`
  channels per agent; after every block pair the agents exchange
  information at each time step (`mixing`: self-attention over the agent
  axis, the agents' mean through a 1x1 convolution, or none). Each agent's
  head writes its own W rows from `head_width` channels per step — by
  default W rounded up to GroupNorm's multiple of 8 (or `dim`, if wider),
  so that an agent-step is written from at least as many numbers as it
  has rows (a head of `dim` = 32 channels cannot write SMAX's health
  bookkeeping back; docs/fidelity.md). The global rows come from the
  agents' pooled features. The output is the (B, F, T) matrix again.

Shapes: tau_k and the prediction (B, F, T); k (B,); the step embedding (B, dim);
inside AgentUNet the trunk runs on (B N, C, T).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MIXINGS = ("attention", "mean", "none")


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


def step_embedding(dim):
    """k (B,) -> (B, dim): the sinusoidal embedding through a small MLP (diffuser's)."""
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))


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


class UNetTrunk(nn.Module):
    """The U-Net's levels between its input convolution and its head: (B', dim, T') -> (B', dim + dim, T').

    `mixer(width)` makes the module applied after each block pair (down, middle and up); identity by default.
    T' must be a multiple of 2^(levels - 1) (`pad_time`). The output is the last up level's features
    beside the trunk's input (diffuser's final skip).
    """

    def __init__(self, dim, dim_mults, kernel, mixer=lambda width: nn.Identity()):
        super().__init__()
        widths = [dim * m for m in dim_mults]
        self.levels = len(widths)
        self.down, self.down_mix = nn.ModuleList(), nn.ModuleList()
        in_ch = dim
        for i, w in enumerate(widths):
            last = i == self.levels - 1
            self.down.append(nn.ModuleList([
                ResidualTemporalBlock(in_ch, w, dim, kernel), ResidualTemporalBlock(w, w, dim, kernel),
                nn.Identity() if last else nn.Conv1d(w, w, 3, stride=2, padding=1)]))
            self.down_mix.append(mixer(w))
            in_ch = w
        self.mid1 = ResidualTemporalBlock(in_ch, in_ch, dim, kernel)
        self.mid2 = ResidualTemporalBlock(in_ch, in_ch, dim, kernel)
        self.mid_mix = mixer(in_ch)
        self.up, self.up_mix = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths[:-1]))):
            self.up.append(nn.ModuleList([
                nn.ConvTranspose1d(in_ch, in_ch, 4, stride=2, padding=1),
                ResidualTemporalBlock(in_ch + w, w, dim, kernel),
                ResidualTemporalBlock(w, w, dim, kernel)]))
            self.up_mix.append(mixer(w))
            in_ch = w
        self.out_channels = in_ch + dim

    def forward(self, x, emb):
        """x (B', dim, T'), emb (B', dim) -> (B', out_channels, T')."""
        first, skips = x, []
        for (block1, block2, downsample), mix in zip(self.down, self.down_mix):
            x = mix(block2(block1(x, emb), emb))
            skips.append(x)
            x = downsample(x)                                              # (B', C, T'/2^i)
        x = self.mid_mix(self.mid2(self.mid1(x, emb), emb))
        skips.pop()                                                        # the deepest level has no up step
        for (upsample, block1, block2), mix in zip(self.up, self.up_mix):
            x = upsample(x)                                                # doubles the length
            x = mix(block2(block1(torch.cat([x, skips.pop()], dim=1), emb), emb))
        return torch.cat([x, first], dim=1)


def pad_time(x, levels):
    """Zeros on the right of (B, F, T) up to a multiple of 2^(levels - 1); crop the output back to T."""
    return F.pad(x, (0, (-x.shape[-1]) % 2 ** (levels - 1)))


class TemporalUNet(nn.Module):
    """The flat Conv1D U-Net: features are channels, (B, F, T) -> (B, F, T); any T (odd included)."""

    def __init__(self, n_features, dim=64, dim_mults=(1, 2, 4), kernel=5, head_width=0):
        super().__init__()
        head = head_width or dim
        self.step_embedding = step_embedding(dim)
        self.inp = nn.Conv1d(n_features, dim, kernel, padding=kernel // 2)
        self.trunk = UNetTrunk(dim, dim_mults, kernel)
        # diffuser's head: before the clip, every generated step is an affine function of these `head` channels
        self.out = nn.Sequential(conv_block(self.trunk.out_channels, head, kernel), nn.Conv1d(head, n_features, 1))

    def forward(self, tau_k, k):
        """tau_k (B, F, T), k (B,) int -> predicted tau0 (B, F, T)."""
        x = self.inp(pad_time(tau_k, self.trunk.levels))                   # (B, dim, T')
        x = self.out(self.trunk(x, self.step_embedding(k)))                # (B, F, T')
        return x[..., :tau_k.shape[-1]]


class AgentAttention(nn.Module):
    """Self-attention over the agent axis at every time step, with a residual: (B N, C, T) -> (B N, C, T)."""

    def __init__(self, channels, n_agents, heads=4):
        super().__init__()
        self.n_agents = n_agents
        self.norm = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x):
        BN, C, T = x.shape
        tokens = x.view(BN // self.n_agents, self.n_agents, C, T).permute(0, 3, 1, 2)   # (B, T, N, C)
        tokens = self.norm(tokens.reshape(-1, self.n_agents, C))                          # (B T, N, C)
        mixed, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        mixed = mixed.view(BN // self.n_agents, T, self.n_agents, C).permute(0, 2, 3, 1)  # (B, N, C, T)
        return x + mixed.reshape(BN, C, T)


class AgentMean(nn.Module):
    """Each agent's features plus a 1x1 convolution of the agents' mean (DeepSets): (B N, C, T) -> same."""

    def __init__(self, channels, n_agents):
        super().__init__()
        self.n_agents = n_agents
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        BN, C, T = x.shape
        mean = x.view(-1, self.n_agents, C, T).mean(dim=1)                  # (B, C, T)
        return x + self.mix(mean).repeat_interleave(self.n_agents, dim=0)


def agent_mixer(mixing, n_agents):
    """width -> the module that lets agents exchange information (`MIXINGS`)."""
    if mixing == "attention":
        return lambda width: AgentAttention(width, n_agents)
    if mixing == "mean":
        return lambda width: AgentMean(width, n_agents)
    if mixing == "none":
        return lambda width: nn.Identity()
    raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")


def agent_head_width(dim, agent_width, head_width=0):
    """The channels of AgentUNet's agents' head: `head_width`, or by default the narrowest width at or above
    both `dim` and an agent's `agent_width` rows that GroupNorm's 8 groups divide."""
    return head_width or max(dim, 8 * math.ceil(agent_width / 8))


class AgentUNet(nn.Module):
    """The agent-factored U-Net (module docstring): (B, F, T) -> (B, F, T) with F = N W + n_global;
    the agents' head `agent_head_width(dim, W, head_width)` channels wide."""

    def __init__(self, n_agents, agent_width, n_global=3, dim=64, dim_mults=(1, 2, 4), kernel=5,
                 mixing="attention", head_width=0):
        super().__init__()
        self.n_agents, self.agent_width, self.n_global = n_agents, agent_width, n_global
        head = agent_head_width(dim, agent_width, head_width)
        self.step_embedding = step_embedding(dim)
        self.inp = nn.Conv1d(agent_width + n_agents + n_global, dim, kernel, padding=kernel // 2)
        self.trunk = UNetTrunk(dim, dim_mults, kernel, agent_mixer(mixing, n_agents))
        # each agent-step's W rows are an affine function of these `head` channels
        self.agent_out = nn.Sequential(conv_block(self.trunk.out_channels, head, kernel),
                                       nn.Conv1d(head, agent_width, 1))
        self.global_out = nn.Sequential(conv_block(self.trunk.out_channels, dim, kernel),
                                        nn.Conv1d(dim, n_global, 1))

    def agent_inputs(self, tau_k):
        """tau_k (B, F, T) -> each agent's input (B N, W + N + n_global, T'): its rows, its id, the global rows;
        T' = T padded for the trunk's levels."""
        B, N, W = tau_k.shape[0], self.n_agents, self.agent_width
        x = pad_time(tau_k, self.trunk.levels)                             # (B, F, T')
        agents = x[:, :N * W].reshape(B, N, W, -1)                         # (B, N, W, T')
        ids = torch.eye(N, device=x.device)[None, :, :, None].expand(B, N, N, x.shape[-1])
        glob = x[:, N * W:, None].transpose(1, 2).expand(B, N, self.n_global, x.shape[-1])
        return torch.cat([agents, ids, glob], dim=2).reshape(B * N, -1, x.shape[-1])

    def write(self, h, k, T):
        """The first convolution's output h (B N, dim, T'), steps k (B,) -> predicted tau0 (B, F, T)."""
        N = self.n_agents
        B = h.shape[0] // N
        emb = self.step_embedding(k).repeat_interleave(N, dim=0)          # (B N, dim)
        h = self.trunk(h, emb)                                             # (B N, C, T')
        rows = self.agent_out(h).reshape(B, N * self.agent_width, -1)     # (B, N W, T')
        pooled = h.view(B, N, h.shape[1], -1).mean(dim=1)                  # (B, C, T')
        return torch.cat([rows, self.global_out(pooled)], dim=1)[..., :T]

    def forward(self, tau_k, k):
        """tau_k (B, F, T), k (B,) int -> predicted tau0 (B, F, T)."""
        return self.write(self.inp(self.agent_inputs(tau_k)), k, tau_k.shape[-1])
