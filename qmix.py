"""QMIX: recurrent agents and a monotonic mixing network (paper §4.1; Rashid et al. 2018).

Both offline learners of the paper (`cql.py`, `bcq.py`) are QMIX with an
extra loss, so everything they share lives here once:

* `AgentNetwork` — one network shared by all agents: input = own
  observation, last action one-hot (pymarl's QMIX input; `--no-last-action`
  gives OG-MARL's), agent id one-hot; linear 64 -> ReLU -> GRU 64 -> ReLU ->
  linear to one Q per action.
* `QMixer` — Q_tot = mix(Q_1..Q_N; s) with hypernetworks conditioned on the
  state s (embedding 32, hypernetwork 64). The mixing weights pass through
  abs(), so dQ_tot/dQ_n >= 0 (monotonicity). The state is the *joint
  observation* (the agents' observations concatenated), for real and
  synthetic episodes alike, because Eq. 4 has no separate global state.
* Unrolling the GRU over (B, T, N), legal-action max, double-Q targets, the
  TD loss over valid steps, hard target updates, and the greedy
  decentralised rollouts that evaluate a learner in the simulator
  (`learner.py` trains it: minibatches, the loop, checkpoints).

What comes from OG-MARL (the code the paper ran; read in its TF2
`qmix_cql.py` / `qmix_bcq.py`, 2024) and where we differ, on purpose:

* same: GRU agent 64/64 shared by all agents, QMIX mixer 32/64 with abs()
  weights, Adam 3e-4, gamma 0.99, double-Q targets (online argmax over legal
  actions, target-network value), TD loss 0.5 * MSE, hard target update
  every 200 steps, CQL with 20 sampled legal joint actions and weight 3.0,
  BCQ threshold 0.4 on BC probabilities renormalised over legal actions.
* agent input: OG-MARL gives observation + agent id, no last action; we
  add the last action (pymarl's QMIX input); `--no-last-action` is
  OG-MARL's.
* mixer state: OG-MARL's is SMAC's global state; ours the joint
  observation (Eq. 4 carries no state), for every method alike.
* minibatches: OG-MARL samples 32 windows of 20 steps from the episode
  stream (RNN reset at episode starts, no padding); we sample 32 whole
  episodes and compute only their steps: the GRU runs packed (its batch
  shrinks as episodes end) and the mixers, targets and losses see only
  the valid steps (`valid_steps`), so padding costs no compute.
* gradient clipping: none in OG-MARL's 2024 code (global norm 20 in its 2023
  code); ours global norm 10 by default, `--grad-clip 0` is OG-MARL's.
* optimisers: OG-MARL's BCQ steps Q + mixer and the BC network with two
  Adams; we use one Adam on the sum of the two losses — the same updates,
  since no parameter receives gradient from both (except through the
  shared clipping norm).

Shapes: obs (B, T+1, N, O), avail (B, T+1, N, A), actions (B, T, N),
rewards / dones / valid (B, T); agent Q values (B, T+1, N, A); Q_tot (B, T).
"""
import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import env as envlib

ILLEGAL = -1e9  # Q of an illegal action in a max (finite, so all-illegal padded steps stay finite)


class AgentNetwork(nn.Module):
    """Shared recurrent agent: linear -> ReLU -> GRU -> ReLU -> linear, one Q per action.

    `forward` takes one step (execution); `sequence` whole episodes at once
    (training): one GRU call over a packed batch, no Python loop over time.
    """

    def __init__(self, input_dim, n_actions, hidden=64):
        super().__init__()
        self.hidden = hidden
        self.fc1 = nn.Linear(input_dim, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.fc2 = nn.Linear(hidden, n_actions)

    def forward(self, x, h):
        """One step: inputs (M, I), hidden (M, H) -> (Q (M, A), hidden (M, H))."""
        out, h = self.gru(F.relu(self.fc1(x))[:, None], h[None])
        return self.fc2(F.relu(out[:, 0])), h[0]

    def sequence(self, x, lengths):
        """Whole sequences from a zero hidden state: inputs (M, T, I), lengths (M,) -> Q (M, T, A).

        Only each sequence's first lengths[m] steps are computed (a packed
        sequence: the GRU's batch shrinks as sequences end); Q past the end
        is 0. The steps computed are exactly those a padded run would give,
        since a GRU never looks ahead.
        """
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed._replace(data=F.relu(self.fc1(packed.data))))
        q = out._replace(data=self.fc2(F.relu(out.data)))
        return pad_packed_sequence(q, batch_first=True, total_length=x.shape[1])[0]


class QMixer(nn.Module):
    """Monotonic mixing: Q_tot = w2 . elu(W1 q + b1) + V(s), with |W1|, |w2| from hypernetworks."""

    def __init__(self, state_dim, n_agents, embed=32, hyper=64):
        super().__init__()
        self.n_agents, self.embed = n_agents, embed
        self.hyper_w1 = nn.Sequential(nn.Linear(state_dim, hyper), nn.ReLU(), nn.Linear(hyper, n_agents * embed))
        self.hyper_b1 = nn.Linear(state_dim, embed)
        self.hyper_w2 = nn.Sequential(nn.Linear(state_dim, hyper), nn.ReLU(), nn.Linear(hyper, embed))
        self.value = nn.Sequential(nn.Linear(state_dim, embed), nn.ReLU(), nn.Linear(embed, 1))

    def forward(self, q_agents, state):
        """q_agents (*extra, *lead, N), state (*lead, S) -> Q_tot (*extra, *lead).

        The hypernetworks run once per state; extra leading dimensions of
        q_agents (CQL's M sampled joint actions) share those weights.
        """
        lead = state.shape[:-1]
        extra = q_agents.shape[:q_agents.dim() - len(lead) - 1]
        s = state.reshape(-1, state.shape[-1])                                # (L, S)
        w1 = self.hyper_w1(s).abs().view(-1, self.n_agents, self.embed)       # (L, N, E)
        b1 = self.hyper_b1(s)                                                 # (L, E)
        w2 = self.hyper_w2(s).abs()                                           # (L, E)
        v = self.value(s)[:, 0]                                               # (L,)
        q = q_agents.reshape(*extra, -1, self.n_agents)                       # (*extra, L, N)
        hidden = F.elu(torch.einsum("...ln,lne->...le", q, w1) + b1)          # (*extra, L, E)
        return ((hidden * w2).sum(-1) + v).reshape(*extra, *lead)


# ---------------------------------------------------------------------------
# Episode minibatches through the networks
# ---------------------------------------------------------------------------
def joint_state(obs):
    """The mixer's state: the agents' observations concatenated, (B, T, N, O) -> (B, T, N*O)."""
    return obs.reshape(*obs.shape[:-2], -1)


def agent_inputs(obs, actions, n_actions, last_action=True):
    """Agent inputs (B, T+1, N, I): observation, [last action one-hot,] agent id one-hot.

    With last_action=False the input is OG-MARL's (observation and agent id only).
    """
    B, T1, N, _ = obs.shape
    parts = [obs]
    if last_action:
        last = torch.zeros(B, T1, N, n_actions)
        last[:, 1:] = F.one_hot(actions, n_actions).float()
        parts.append(last)
    parts.append(torch.eye(N).expand(B, T1, N, N))
    return torch.cat(parts, dim=-1)


def unroll(agent, inputs, lengths):
    """Run the shared GRU agent over time: inputs (B, T, N, I), lengths (B,) -> Q (B, T, N, A).

    Episode b's first lengths[b] steps are computed; Q past them is 0.
    """
    B, T, N, I = inputs.shape
    per_agent = inputs.permute(0, 2, 1, 3).reshape(B * N, T, I)             # (B*N, T, I)
    q = agent.sequence(per_agent, lengths.repeat_interleave(N))             # (B*N, T, A)
    return q.view(B, N, T, -1).permute(0, 2, 1, 3)                          # (B, T, N, A)


def observed_rows(batch):
    """Each episode's observation rows in a minibatch, its length + 1: (B,) int64."""
    return batch["valid"].sum(1).long() + 1


def legal_argmax(q, avail):
    """argmax over legal actions (index 0 where none is legal): (..., A) -> (...)."""
    return q.masked_fill(~avail, ILLEGAL).argmax(dim=-1)


def td_targets(rewards, dones, q_tot_next, gamma):
    """y_t = r_t + gamma (1 - done_t) Q_tot_target(s_{t+1}, a*_{t+1}), no gradient."""
    return (rewards + gamma * (1.0 - dones) * q_tot_next).detach()


# ---------------------------------------------------------------------------
# The QMIX learner core
# ---------------------------------------------------------------------------
class QMIX(nn.Module):
    """Agent + mixer and their target copies; `td_loss` is the QMIX TD loss with double-Q targets."""

    def __init__(self, n_agents, obs_dim, n_actions, hidden=64, embed=32, hyper=64, gamma=0.99,
                 last_action=True):
        super().__init__()
        self.n_agents, self.n_actions, self.gamma = n_agents, n_actions, gamma
        self.last_action = last_action
        input_dim = obs_dim + (n_actions if last_action else 0) + n_agents
        self.agent = AgentNetwork(input_dim, n_actions, hidden)
        self.mixer = QMixer(n_agents * obs_dim, n_agents, embed, hyper)
        self.target_agent = copy.deepcopy(self.agent).requires_grad_(False)
        self.target_mixer = copy.deepcopy(self.mixer).requires_grad_(False)

    def inputs(self, batch):
        """This learner's agent inputs for a minibatch, (B, T+1, N, I)."""
        return agent_inputs(batch["obs"], batch["actions"], self.n_actions, self.last_action)

    def update_targets(self):
        """Hard target update: copy the online networks."""
        self.target_agent.load_state_dict(self.agent.state_dict())
        self.target_mixer.load_state_dict(self.mixer.state_dict())

    def q_values(self, batch):
        """Online and target agent Q values, each (B, T+1, N, A); 0 past each episode's last observation."""
        inputs, rows = self.inputs(batch), observed_rows(batch)
        with torch.no_grad():
            q_target = unroll(self.target_agent, inputs, rows)
        return unroll(self.agent, inputs, rows), q_target

    def td_loss(self, batch, q, q_target, allowed_next=None):
        """0.5 * mean over valid steps of (Q_tot(s_t, a_t) - y_t)^2; returns (loss, Q_tot of the data (V,)).

        Only the V valid steps of the minibatch (t < length) are mixed, so
        padding costs nothing; `valid_steps` picks them in a fixed order
        (episode by episode, step by step). The next action is the online
        network's argmax among `allowed_next` (B, T, N, A) (default: the
        legal actions at t+1), valued by the target networks.
        """
        at_t, at_next = valid_steps(batch, 0), valid_steps(batch, 1)
        state = joint_state(batch["obs"])                                     # (B, T+1, N*O)
        chosen = at_t(q).gather(-1, at_t(batch["actions"])[..., None])[..., 0]   # (V, N)
        q_tot = self.mixer(chosen, at_t(state))                               # (V,)
        allowed = at_next(batch["avail"]) if allowed_next is None else at_t(allowed_next)   # (V, N, A)
        next_action = legal_argmax(at_next(q).detach(), allowed)              # (V, N)
        q_next = at_next(q_target).gather(-1, next_action[..., None])[..., 0]    # (V, N)
        with torch.no_grad():
            q_tot_next = self.target_mixer(q_next, at_next(state))            # (V,)
        y = td_targets(at_t(batch["rewards"]), at_t(batch["dones"]), q_tot_next, self.gamma)
        return 0.5 * ((q_tot - y) ** 2).mean(), q_tot


def valid_steps(batch, shift=0):
    """A function picking a minibatch's V valid steps from a (B, T', ...) tensor: x[:, shift:][valid] -> (V, ...).

    shift 0 gives step t's entry, shift 1 step t+1's (the next observation),
    for every valid step t < length.
    """
    valid = batch["valid"].bool()                                            # (B, T)
    T = valid.shape[1]
    return lambda x: x[:, shift:shift + T][valid]


# ---------------------------------------------------------------------------
# Decentralised execution and evaluation in the simulator (§4.5)
# ---------------------------------------------------------------------------
class GreedyPolicy:
    """Decentralised greedy execution: each agent's argmax over its allowed (legal) actions.

    Keeps each agent's GRU state and last action between calls; `allowed`
    narrows the legal actions (BCQ overrides it).
    """

    def __init__(self, qmix):
        self.qmix = qmix

    def reset(self, n_envs):
        self.h = torch.zeros(n_envs * self.qmix.n_agents, self.qmix.agent.hidden)
        self.last = torch.zeros(n_envs, self.qmix.n_agents, dtype=torch.long)
        self.first = True

    def allowed(self, obs, avail):
        return avail

    def step_inputs(self, obs):
        """This step's agent inputs (B*N, I): observation, [last action one-hot,] agent id."""
        B, N, _ = obs.shape
        parts = [obs]
        if self.qmix.last_action:
            last = torch.zeros(B, N, self.qmix.n_actions)
            if not self.first:
                last = F.one_hot(self.last, self.qmix.n_actions).float()
            parts.append(last)
        parts.append(torch.eye(N).expand(B, N, N))
        return torch.cat(parts, dim=-1).reshape(B * N, -1)

    def q_values(self, obs):
        """Agent Q values (B, N, A) for this step's observations; advances the GRU state."""
        B, N, _ = obs.shape
        q, self.h = self.qmix.agent(self.step_inputs(obs), self.h)
        return q.view(B, N, -1)

    @torch.no_grad()
    def __call__(self, obs, avail):
        """obs (B, N, O), avail (B, N, A) numpy -> actions (B, N) numpy."""
        obs, avail = torch.as_tensor(obs), torch.as_tensor(avail)
        action = legal_argmax(self.q_values(obs), self.allowed(obs, avail))
        self.last, self.first = action, False
        return action.numpy()


def evaluate_policy(policy, env):
    """Play one batch of `env.n_envs` episodes with `policy`; returns the summary dict.

    A policy is any object with `reset(n_envs)` and `__call__(obs, avail) ->
    actions`. Build `env` once (`env.make_env(scenario, backend, n_envs,
    seed)`) and pass it to every evaluation: compiling SMAX is the slow part,
    and successive evaluations then see fresh, seeded start states.
    """
    obs, avail = env.reset()
    policy.reset(env.n_envs)
    returns = np.zeros(env.n_envs)
    for _ in range(env.episode_limit):
        obs, avail, reward, done, won = env.step(policy(obs, avail))
        returns += reward                      # finished episodes return reward 0
        if done.all():
            break
    return {"return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "normalised_return": float(returns.mean() / envlib.MAX_RETURN),
            "win_rate": float(won.mean())}


# Evaluation episodes come from their own seeded streams, apart from training:
# the reported one (every --eval-every iterations and at the end) and a
# held-out one, played once at the end, on which λ is chosen (Table 1).
EVAL_SEED_OFFSET = {"reported": 10_000, "heldout": 20_000}


def make_eval_envs(scenario, backend, n_episodes, seed):
    """The simulator batches of a run's two evaluation streams, {'reported': env, 'heldout': env}."""
    reported = envlib.make_env(scenario, backend, n_envs=n_episodes, seed=seed + EVAL_SEED_OFFSET["reported"])
    return {"reported": reported, "heldout": reported.fork(seed + EVAL_SEED_OFFSET["heldout"])}
