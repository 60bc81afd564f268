"""QMIX+BCQ for discrete actions, the paper's second offline learner (§4.1; Fujimoto et al. 2019).

Discrete BCQ in the form of OG-MARL's QMIX+BCQ: besides QMIX, a recurrent
behaviour-cloning network G (the same shared GRU agent architecture) learns
the data's action distribution by cross-entropy. Actions are then only
chosen among legal actions the data makes plausible:

    allowed(o) = { a legal : G(a | o) / max_{a' legal} G(a' | o) >= tau },  tau = 0.4

(G's probabilities renormalised over the legal actions). The next action of
the TD target is the argmax of Q over allowed(o), as in OG-MARL. The loss is
L_TD + cross-entropy(G).

At execution, discrete BCQ (Fujimoto et al.) also acts greedily over
allowed(o) only — our default, so the learned policy stays where the data
are. OG-MARL's QMIX+BCQ instead acts greedily over all legal actions
(`--bcq-execution greedy`).

    python bcq.py --dataset runs/datasets/3m-medium-s0.h5 --iters 15000 --seed 0
"""
import dataclasses

import torch
import torch.nn.functional as F

import artifacts
import learner
import qmix
import rad

option = artifacts.option

EXECUTIONS = ("filtered", "greedy")


def bcq_allowed(logits, avail, tau):
    """Legal actions whose renormalised behaviour probability is >= tau * the max: (..., A) bool."""
    probs = torch.softmax(logits.masked_fill(~avail, qmix.ILLEGAL), dim=-1) * avail
    return avail & (probs >= tau * probs.max(dim=-1, keepdim=True).values)


class QmixBCQ:
    """QMIX + discrete BCQ: `loss(batch)` is the constrained TD loss plus the behaviour-cloning loss."""

    def __init__(self, n_agents, obs_dim, n_actions, tau=0.4, execution="filtered", gamma=0.99,
                 aug="none", seed=0, last_action=True):
        self.qmix = qmix.QMIX(n_agents, obs_dim, n_actions, gamma=gamma, last_action=last_action)
        self.behaviour = qmix.AgentNetwork(self.qmix.agent.fc1.in_features, n_actions)
        self.tau, self.execution, self.aug = tau, execution, aug
        self.generator = torch.Generator().manual_seed(seed + 1)

    def parameters(self):
        return [p for p in self.qmix.parameters() if p.requires_grad] + list(self.behaviour.parameters())

    def loss(self, batch):
        batch = rad.augment(batch, self.aug, self.generator)
        logits = qmix.unroll(self.behaviour, self.qmix.inputs(batch), qmix.observed_rows(batch))  # (B, T+1, N, A)
        at_t = qmix.valid_steps(batch)
        bc = F.cross_entropy(at_t(logits).flatten(0, 1), at_t(batch["actions"]).flatten())   # over (V*N)
        allowed = bcq_allowed(logits[:, 1:].detach(), batch["avail"][:, 1:], self.tau)   # (B, T, N, A)
        q, q_target = self.qmix.q_values(batch)
        td, _ = self.qmix.td_loss(batch, q, q_target, allowed_next=allowed)
        return td + bc, {"td_loss": td.item(), "bc_loss": bc.item()}

    def policy(self):
        return BCQPolicy(self) if self.execution == "filtered" else qmix.GreedyPolicy(self.qmix)


class BCQPolicy(qmix.GreedyPolicy):
    """Greedy over the BCQ-allowed actions; runs the behaviour network alongside the agent."""

    def __init__(self, qmix_bcq):
        super().__init__(qmix_bcq.qmix)
        self.behaviour, self.tau = qmix_bcq.behaviour, qmix_bcq.tau

    def reset(self, n_envs):
        super().reset(n_envs)
        self.h_bc = torch.zeros(n_envs * self.qmix.n_agents, self.behaviour.hidden)

    def allowed(self, obs, avail):
        logits, self.h_bc = self.behaviour(self.step_inputs(obs), self.h_bc)
        return bcq_allowed(logits.view(avail.shape), avail, self.tau)


@dataclasses.dataclass(frozen=True)
class BCQConfig:
    """QMIX+BCQ's own settings (bcq.py's flags; train.py takes --bcq-execution and keeps OG-MARL's threshold)."""

    tau: float = option(0.4, "BCQ threshold on renormalised behaviour probability (OG-MARL: 0.4)")
    bcq_execution: str = option("filtered", "act greedily among BCQ-allowed actions (discrete BCQ) or among all "
                                            "legal ones (OG-MARL's QMIX+BCQ)", choices=EXECUTIONS)


def check_config(config):
    if not 0.0 <= config.tau <= 1.0:
        raise artifacts.InputError(f"--tau must be in [0, 1], got {config.tau}")


def learner_kwargs(config):
    return {"tau": config.tau, "execution": config.bcq_execution}


def main(argv=None):
    learner.learner_main(QmixBCQ, "Train QMIX+BCQ on offline datasets and evaluate it (paper §4.1).", BCQConfig,
                         check_config, learner_kwargs, argv)


if __name__ == "__main__":
    main()
