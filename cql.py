"""QMIX+CQL, the paper's first offline learner (§4.1; Kumar et al. 2020, OG-MARL's form).

QMIX's TD loss plus the conservative penalty of CQL, in the form OG-MARL's
QMIX+CQL (the code the paper ran) uses for joint actions: at every step,
draw M = 20 joint actions uniformly among each agent's legal actions, mix
each into Q_tot with the online mixer, and push the soft maximum over those
and the data action down while pushing the data action up:

    L = L_TD + alpha * mean_t [ log( exp(Q_tot(s_t, a_t)) + sum_{m=1..M} exp(Q_tot(s_t, a^m)) )
                                - Q_tot(s_t, a_t) ]

with alpha = 3.0 and the mean over valid (non-padded) steps. Shapes follow
`qmix.py`; over the minibatch's V valid steps: sampled joint actions (M, V, N), their Q_tot (M, V).

    python cql.py --dataset runs/datasets/3m-medium-s0.h5 --iters 15000 --seed 0
"""
import dataclasses
import math

import torch

import artifacts
import learner
import qmix
import rad

option = artifacts.option


def sample_legal_actions(avail, n_samples, generator):
    """n_samples joint actions uniform over legal actions: avail (..., N, A) -> (M, ..., N).

    An agent with no legal action (an all-zero row) samples uniformly.
    """
    probs = avail.float()
    probs = torch.where(probs.sum(-1, keepdim=True) > 0, probs, torch.ones_like(probs))
    flat = probs.reshape(-1, probs.shape[-1])                                  # (rows, A)
    draws = torch.multinomial(flat, n_samples, replacement=True, generator=generator)
    return draws.T.reshape((n_samples,) + avail.shape[:-1])


def cql_penalty(mixer, q, state, q_tot_data, sampled_actions):
    """mean_t [logsumexp({Q_tot(s_t, a^m)} U {Q_tot(s_t, a_t)}) - Q_tot(s_t, a_t)] over the valid steps.

    q (V, N, A) online agent Q values at the V valid steps, state (V, S),
    q_tot_data (V,), sampled_actions (M, V, N).
    """
    M = sampled_actions.shape[0]
    q_sampled = q.expand((M,) + q.shape).gather(-1, sampled_actions[..., None])[..., 0]  # (M, V, N)
    q_tot_sampled = mixer(q_sampled, state)                                              # (M, V)
    all_q = torch.cat([q_tot_sampled, q_tot_data[None]], dim=0)                          # (M+1, V)
    return (torch.logsumexp(all_q, dim=0) - q_tot_data).mean()


class QmixCQL:
    """QMIX + CQL: `loss(batch)` is the TD loss plus alpha times the CQL penalty."""

    def __init__(self, n_agents, obs_dim, n_actions, alpha=3.0, n_samples=20, gamma=0.99,
                 aug="none", seed=0, last_action=True):
        self.qmix = qmix.QMIX(n_agents, obs_dim, n_actions, gamma=gamma, last_action=last_action)
        self.alpha, self.n_samples, self.aug = alpha, n_samples, aug
        self.generator = torch.Generator().manual_seed(seed + 1)

    def parameters(self):
        return [p for p in self.qmix.parameters() if p.requires_grad]

    def loss(self, batch):
        batch = rad.augment(batch, self.aug, self.generator)
        q, q_target = self.qmix.q_values(batch)
        td, q_tot = self.qmix.td_loss(batch, q, q_target)
        at_t = qmix.valid_steps(batch)
        sampled = sample_legal_actions(at_t(batch["avail"]), self.n_samples, self.generator)   # (M, V, N)
        penalty = cql_penalty(self.qmix.mixer, at_t(q), at_t(qmix.joint_state(batch["obs"])), q_tot, sampled)
        return td + self.alpha * penalty, {"td_loss": td.item(), "cql_penalty": penalty.item()}

    def policy(self):
        return qmix.GreedyPolicy(self.qmix)


@dataclasses.dataclass(frozen=True)
class CQLConfig:
    """QMIX+CQL's own settings (cql.py's flags; train.py keeps OG-MARL's)."""

    alpha: float = option(3.0, "CQL penalty weight (OG-MARL: 3.0)")
    cql_samples: int = option(20, "sampled legal joint actions per step (OG-MARL: 20)")


def check_config(config):
    if not math.isfinite(config.alpha) or config.alpha < 0:
        raise artifacts.InputError(f"--alpha must be a finite number >= 0, got {config.alpha}")
    artifacts.require_flags(at_least_one={"--cql-samples": config.cql_samples})


def learner_kwargs(config):
    return {"alpha": config.alpha, "n_samples": config.cql_samples}


def main(argv=None):
    learner.learner_main(QmixCQL, "Train QMIX+CQL on offline datasets and evaluate it (paper §4.1).", CQLConfig,
                         check_config, learner_kwargs, argv)


if __name__ == "__main__":
    main()
