"""Self-conditioning, a lever of the network f_theta (docs/fidelity.md, Levers; not in the paper).

    python experiments/frontier.py --dataset runs/datasets/3m-poor-...-s0.h5 --out runs/frontier --self-cond

Chen, Zhang & Hinton (2022, "Analog Bits") give the denoiser a second
input: its own previous estimate of tau0. Here f_theta(tau_k, k, e) is the
agent-factored U-Net with each agent's rows of e read beside its rows of
tau_k (`SelfConditioned`: a second first convolution, started at zero, so
training starts from the plain network).

* Training (`SelfCondDiffusion.loss`): on the episodes of a minibatch whose
  k is even, e = f_theta(tau_k, k, 0), computed without gradient and clipped
  to [-1, 1] as the sampler clips it; on the others e = 0. Eq. 5 is then
  taken on f_theta(tau_k, k, e) exactly as the paper writes it (x0 term and
  Q-hinge). k's parity picks the half, so a step's minibatch still depends
  only on (seed, step) and a resumed run continues exactly.
* Sampling: each DDIM (or DDPM) step is handed the previous step's clipped
  estimate (the first step: the network's own estimate with e = 0). No
  extra network call per step.
* Read outside a chain (the copy test, noise_levels.py's "read"): two
  calls, f_theta(tau_k, k, f_theta(tau_k, k, 0)).

The flat U-Net is not given this lever (`--network agents` only).
"""
import contextlib
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import diffusion  # noqa: E402


class SelfConditioned(nn.Module):
    """An AgentUNet read with an estimate e (B, F, T) beside tau_k: the first convolution's output is
    inp(tau_k's agent inputs) + inp_e(e's agent inputs), with inp_e started at zero."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.inp_e = nn.Conv1d(net.inp.in_channels, net.inp.out_channels, net.inp.kernel_size[0],
                               padding=net.inp.padding[0], bias=False)
        nn.init.zeros_(self.inp_e.weight)

    def forward(self, tau_k, k, estimate):
        """tau_k, estimate (B, F, T), k (B,) -> predicted tau0 (B, F, T)."""
        h = self.net.inp(self.net.agent_inputs(tau_k)) + self.inp_e(self.net.agent_inputs(estimate))
        return self.net.write(h, k, tau_k.shape[-1])                                 # (B, F, T)


class SelfCondDiffusion(diffusion.Diffusion):
    """Diffusion whose f_theta also reads its previous estimate of tau0 (module docstring)."""

    def __init__(self, model, K):
        super().__init__(model, K)
        self.chain = None          # inside a sampling chain: [the previous step's estimate, or None at the first]

    def f_theta(self, tau_k, k, estimate=None):
        """f_theta(tau_k, k, estimate); with no estimate, the network's own first one (e = 0) is read back."""
        if estimate is None:
            estimate = self.model(tau_k, k, torch.zeros_like(tau_k)).clamp(-1.0, 1.0)
        return self.model(tau_k, k, estimate)

    def loss(self, tau0, valid, q_row, lam, k, noise):
        tau_k = self.q_sample(tau0, k, noise)                                        # (B, F, T)
        estimate = torch.zeros_like(tau_k)
        even = k % 2 == 0                                                             # (B,) about half
        if even.any():
            with torch.no_grad():
                estimate[even] = self.model(tau_k[even], k[even], estimate[even]).clamp(-1.0, 1.0)
        return diffusion.eaq_loss(self.model(tau_k, k, estimate), tau0, q_row, valid, lam)

    def predict_tau0(self, tau_k, k):
        previous = self.chain[0] if self.chain is not None else None
        tau0 = self.f_theta(tau_k, k, previous).clamp(-1.0, 1.0)
        if self.chain is not None:
            self.chain[0] = tau0
        return tau0

    @contextlib.contextmanager
    def sampling_chain(self):
        """Within it, each predict_tau0 is handed the estimate of the one before."""
        self.chain = [None]
        try:
            yield
        finally:
            self.chain = None

    def p_sample_loop(self, shape, generator=None):
        with self.sampling_chain():
            return super().p_sample_loop(shape, generator)

    def ddim_from(self, tau, k_start, n_steps):
        with self.sampling_chain():
            return super().ddim_from(tau, k_start, n_steps)


def check_network(network):
    """Refuse, in one line, a network other than the agent-factored U-Net."""
    if network != "agents":
        raise artifacts.InputError("self-conditioning is built for the agent-factored U-Net: use --network agents")
