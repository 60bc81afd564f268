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
* Episode minibatches, unrolling the GRU over (B, T, N), legal-action max,
  double-Q targets, TD loss over valid steps, hard target updates, the
  training loop and its checkpoints (`learner.pt`, for `--resume`), and
  the greedy decentralised rollouts that evaluate it.

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
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from tqdm import tqdm

import artifacts
import data
import env as envlib
import rad

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
# Episode minibatches
# ---------------------------------------------------------------------------
class EpisodeBuffer:
    """Episodes (one or more datasets) stored end to end without padding, sampled as padded minibatches.

    Episode e's steps live at rows offsets[e] .. offsets[e] + lengths[e] of
    the flat step arrays (its observations and legal actions one row more:
    the observation after the last step). A minibatch gathers its episodes'
    rows into (B, T_b, ...) tensors cut to its longest episode T_b and zeroes
    everything past each episode's end, exactly what slicing zero-padded
    (E, T, ...) arrays would give — at a fraction of the memory, since a
    padded layout holds every episode as long as the longest one.

    `episodes` is any iterable of Episodes (e.g. `data.dataset_chunks` of
    each file): each is packed before the next is read, so the padded
    arrays of a whole dataset are never in memory.
    """

    def __init__(self, episodes):
        names = ("obs", "avail", "actions", "rewards", "dones")
        lengths, rows = [], {name: [] for name in names}
        for ep in episodes:
            valid = np.arange(ep.obs.shape[1])[None, :] <= ep.lengths[:, None]        # (E, T+1): steps 0..length
            lengths.append(ep.lengths)
            rows["obs"].append(ep.obs[valid])
            rows["avail"].append(ep.avail[valid])
            # every array is stored with length + 1 rows per episode (actions, rewards, dones: one unused row)
            for name in ("actions", "rewards", "dones"):
                rows[name].append(step_rows(getattr(ep, name), valid))
        lengths = np.concatenate(lengths).astype(np.int64)
        self.n_episodes = len(lengths)
        self.lengths = torch.from_numpy(lengths)                                    # (E,)
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]))   # (E,)
        for name in names:
            setattr(self, name, torch.from_numpy(np.concatenate(rows.pop(name))))

    def sample(self, batch_size, generator):
        """A random minibatch, cut to its longest episode: dict of tensors (see module shapes)."""
        index = torch.randint(self.n_episodes, (batch_size,), generator=generator)
        lengths = self.lengths[index]                                               # (B,)
        T = int(lengths.max())
        steps = torch.arange(T + 1)
        inside = steps[None, :] <= lengths[:, None]                                 # (B, T+1)
        rows = (self.offsets[index, None] + steps[None, :]).clamp(max=len(self.obs) - 1)   # (B, T+1)

        def gather(flat, n_steps):
            x = flat[rows[:, :n_steps]]                                             # (B, n_steps, ...)
            keep = inside[:, :n_steps].reshape(inside.shape[0], n_steps, *([1] * (x.dim() - 2)))
            return x * keep if x.dtype != torch.bool else x & keep
        valid = steps[None, :T] < lengths[:, None]                                  # (B, T)
        return {"obs": gather(self.obs, T + 1), "avail": gather(self.avail, T + 1),
                "actions": gather(self.actions, T), "rewards": gather(self.rewards, T),
                "dones": gather(self.dones, T).float(), "valid": valid.float()}


def step_rows(x, valid):
    """The rows of a per-step array (E, T, ...) for valid steps 0..length (one row past the data, zero)."""
    padded = np.concatenate([x, np.zeros_like(x[:, :1])], axis=1)                 # (E, T+1, ...)
    return padded[valid]


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


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def use_learner_threads():
    """The learner's torch thread count: artifacts.torch_threads() (1 unless EAQ_TORCH_THREADS says otherwise)."""
    torch.set_num_threads(artifacts.torch_threads())


def train_loop(learner, buffer, iters, batch_size, lr, seed, evaluate=None, eval_every=1000,
               target_every=200, grad_clip=10.0, progress=True, checkpoint=None, resume_from=None):
    """Adam on `learner.loss(batch)` for `iters` iterations; returns the metrics rows.

    `learner` has `.qmix`, `.parameters()` and `.loss(batch) -> (loss, logs)`.
    Every `target_every` iterations the target networks are copied; every
    `eval_every` iterations (and at the end) `evaluate()` adds its numbers
    and `checkpoint` (a `LearnerCheckpoint`), if given, saves the run;
    `resume_from` (a state it read) continues from the iteration it holds.
    Minibatches come from a generator seeded with `seed`; everything else
    random (initialisation, CQL samples, RAD) is seeded by the caller.
    `grad_clip` <= 0 turns gradient clipping off.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    done, rows = 0, []
    if resume_from is not None:
        done, rows = checkpoint.restore(resume_from, learner, optimizer, generator)
    bar = tqdm(range(done + 1, iters + 1), desc=type(learner).__name__, disable=not progress,
               initial=done, total=iters)
    for it in bar:
        loss, logs = learner.loss(buffer.sample(batch_size, generator))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"learner loss became {loss.item()} at iteration {it}; "
                                     "lower --lr or check the dataset")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(learner.parameters(), grad_clip)
        optimizer.step()
        if it % target_every == 0:
            learner.qmix.update_targets()
        if evaluate and (it % eval_every == 0 or it == iters):
            row = {"iteration": it, **logs, **evaluate()}
            rows.append(row)
            bar.set_postfix(ret=f"{row.get('return_mean', float('nan')):.2f}")
            if checkpoint is not None:
                checkpoint.save(it, learner, optimizer, generator, rows)
    return rows


# ---------------------------------------------------------------------------
# Checkpoints: a learner run that stops (a session that closes, a cluster node
# that is taken back) goes on from its last evaluation, as if never stopped
# ---------------------------------------------------------------------------
def learner_networks(learner):
    """{attribute name: network} of a learner: QMIX (with its targets), and BCQ's behaviour network."""
    return {name: module for name, module in vars(learner).items() if isinstance(module, nn.Module)}


def learner_state(learner):
    """A learner's own state: its networks' weights and its generator (CQL's sampled actions, RAD's factors)."""
    state = {name: module.state_dict() for name, module in learner_networks(learner).items()}
    return {**state, "generator": learner.generator.get_state()}


def load_learner_state(learner, state):
    for name, module in learner_networks(learner).items():
        module.load_state_dict(state[name])
    learner.generator.set_state(state["generator"])


class LearnerCheckpoint:
    """`learner.pt` beside a run's metrics: what the rest of the run depends on, saved at each evaluation.

    It holds the iteration, the learner's networks and generator, Adam's
    moments, the minibatch generator, torch's global generator, where the
    reported evaluation's stream of episodes stands, the metrics rows so
    far, the wall and CPU seconds spent (`artifacts.Clock`), and `config` —
    the run's flags and its datasets' sha256 — against which a resume is
    checked. A resumed run computes what the uninterrupted one would have
    (tested). Tensors and plain values only: it loads with
    weights_only=True, so loading it runs no code. Once the run ends it
    holds the final networks.
    """

    KEYS = {"iteration", "learner", "optimizer", "minibatches", "torch_rng", "eval_stream", "rows", "seconds",
            "config"}

    def __init__(self, path, config, env, clock):
        self.path, self.config, self.env = path, config, env
        self.clock = clock                   # artifacts.Clock started with this session

    def save(self, iteration, learner, optimizer, minibatches, rows):
        artifacts.save_tensors(self.path, {
            "iteration": iteration, "learner": learner_state(learner), "optimizer": optimizer.state_dict(),
            "minibatches": minibatches.get_state(), "torch_rng": torch.get_rng_state(),
            "eval_stream": self.env.stream_state(), "rows": rows, "seconds": self.clock.wall(),
            "cpu_seconds": self.clock.cpu(), "config": self.config})

    def read(self):
        """The saved state, checked against this run; an InputError naming the problem if it cannot resume."""
        fix = "run without --resume to start afresh, or choose another --out"
        if not os.path.exists(self.path):
            raise artifacts.InputError(f"{self.path}: nothing to resume; {fix}")
        state = artifacts.load_tensors(self.path, "learner checkpoint", fix, self.KEYS)
        saved = state["config"] if isinstance(state["config"], dict) else {}
        for key, wanted in self.config.items():
            if saved.get(key) != wanted:
                what = "datasets' sha256" if key == "datasets" else key
                raise artifacts.InputError(f"{self.path} was saved by a run with other {what} "
                                           f"({saved.get(key)!r}, not {wanted!r}); {fix}")
        if state["eval_stream"] is None:
            raise artifacts.InputError(f"{self.path}: its run was evaluated in StarCraft II, whose episodes cannot "
                                       f"be replayed from a saved state; {fix}")
        return state

    def restore(self, state, learner, optimizer, minibatches):
        """Put a read state back into the run; returns (iterations done, metrics rows so far)."""
        try:
            load_learner_state(learner, state["learner"])
            optimizer.load_state_dict(state["optimizer"])
            minibatches.set_state(state["minibatches"])
            torch.set_rng_state(state["torch_rng"])
            self.env.set_stream_state(state["eval_stream"])
            self.clock.add_before(float(state["seconds"]), state.get("cpu_seconds"))   # None: saved before 11-27
            return int(state["iteration"]), list(state["rows"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise artifacts.InputError(f"{self.path}: damaged learner checkpoint ({type(err).__name__}); "
                                       f"delete it to train the run again") from None


def write_metrics(rows, csv_path, png_path, title):
    """Metrics CSV and a learning-curve PNG (return vs iteration), both written atomically."""
    plt = artifacts.pyplot()
    artifacts.write_csv(csv_path, rows)
    its = [r["iteration"] for r in rows]
    mean = np.array([r["return_mean"] for r in rows])
    std = np.array([r["return_std"] for r in rows])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(its, mean)
    ax.fill_between(its, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="iteration", ylabel="return (SMAC scale)", title=title)
    fig.tight_layout()
    artifacts.save_figure(fig, png_path, dpi=100)


# ---------------------------------------------------------------------------
# The learners' shared command line (cql.py, bcq.py and train.py)
# ---------------------------------------------------------------------------
# The flags that change a learner run's result (train.py's cache key, the checkpoint's check).
LEARNER_FLAGS = ("iters", "batch_size", "lr", "gamma", "target_every", "grad_clip", "last_action",
                 "eval_every", "eval_episodes", "backend", "seed")


def add_learner_flags(p):
    """Flags every learner run takes; defaults are the paper's (15 000 iterations) and OG-MARL's QMIX."""
    p.add_argument("--iters", type=int, default=15000, help="training iterations (paper: 15 000)")
    p.add_argument("--batch-size", type=int, default=32, help="episodes per minibatch (OG-MARL: 32)")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (OG-MARL: 3e-4)")
    p.add_argument("--gamma", type=float, default=0.99, help="discount (OG-MARL: 0.99)")
    p.add_argument("--target-every", type=int, default=200, help="hard target update period (OG-MARL: 200)")
    p.add_argument("--grad-clip", type=float, default=10.0,
                   help="global gradient-norm clip; 0 = none (OG-MARL's 2024 code; its 2023 code: 20)")
    p.add_argument("--no-last-action", dest="last_action", action="store_false",
                   help="agent input without the last action (OG-MARL's input: observation + agent id)")
    p.add_argument("--eval-every", type=int, default=1000, help="iterations between evaluations")
    p.add_argument("--eval-episodes", type=int, default=32, help="episodes per evaluation, played in parallel")
    p.add_argument("--backend", default="smax", choices=envlib.BACKENDS, help="simulator for evaluation")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the run: initialisation, minibatches, sampled actions, evaluation episodes")


def learner_parser(description):
    """cql.py / bcq.py's command line: datasets, the learner flags, RAD and the output folder."""
    import argparse
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dataset", action="append", required=True,
                   help="HDF5 dataset; repeat to train on their union (e.g. D_real and D_syn)")
    add_learner_flags(p)
    p.add_argument("--aug", default="none", choices=rad.AUGMENTATIONS,
                   help="observation augmentation of every minibatch (paper §4.2: RAD-s, RAD-m)")
    p.add_argument("--out", default=None,
                   help="folder for metrics.csv, curve.png and learner.pt (default: runs/<learner>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from OUT/learner.pt (saved at every evaluation)")
    return p


def check_learner_args(parser, args):
    """One-line argparse errors for learner flag values that cannot work."""
    data.require_at_least_one(parser, args, ("iters", "batch_size", "target_every", "eval_every", "eval_episodes"))
    data.require_seed(parser, args, ("seed",))
    data.require_finite(parser, args, ("lr", "gamma", "grad_clip"))
    if args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not 0.0 <= args.gamma <= 1.0:
        parser.error(f"--gamma must be in [0, 1], got {args.gamma}")
    if args.grad_clip < 0:
        parser.error(f"--grad-clip must be >= 0 (0 = no clipping), got {args.grad_clip}")


def check_datasets(paths):
    """Refuse datasets that describe different maps or shapes (attrs only); returns the first's attrs."""
    attrs = [data.read_attrs(p) for p in paths]
    for path, a in zip(paths[1:], attrs[1:]):
        for key in ("scenario", "n_agents", "obs_dim", "n_actions"):
            if a[key] != attrs[0][key]:
                raise artifacts.InputError(f"{path}: {key} {a[key]!r} differs from {paths[0]}'s {attrs[0][key]!r}")
    return attrs[0]


def load_buffer(paths, chunk_episodes=data.CHUNK_EPISODES):
    """The union of the datasets, read file by file and chunk by chunk: (first file's attrs, EpisodeBuffer)."""
    attrs = check_datasets(paths)
    return attrs, EpisodeBuffer(chunk for path in paths for chunk in data.dataset_chunks(path, chunk_episodes))


def check_simulator(path, attrs, backend):
    """Refuse, before any training, a dataset whose shapes the evaluation simulator does not share."""
    try:
        env = envlib.make_env(attrs["scenario"], backend, n_envs=1)
    except ImportError as err:
        raise artifacts.InputError(str(err)) from None
    if (env.obs_dim, env.n_actions) != (attrs["obs_dim"], attrs["n_actions"]):
        raise artifacts.InputError(f"{path}: obs_dim/n_actions {attrs['obs_dim']}/{attrs['n_actions']} do not match "
                                   f"the {backend} simulator's {env.obs_dim}/{env.n_actions}; a {attrs['backend']} "
                                   f"dataset is evaluated with --backend {attrs['backend']}")


def resume_state(checkpoint, resume):
    """The state to resume from, or None (start afresh).

    resume: False (start afresh), True (cql.py / bcq.py --resume: a
    checkpoint of this run must be there) or "auto" (train.py, whose
    folder is named by the run's configuration: resume if a checkpoint
    loads and matches, else say why and start afresh).
    """
    if not resume:
        return None
    try:
        return checkpoint.read()
    except artifacts.InputError as err:
        if resume is True:
            raise
        if os.path.exists(checkpoint.path):
            print(f"training the learner from the start: {err}")
        return None


def seeded_learner(learner_cls, dataset_paths, args, aug="none", extra=None):
    """A run's starting point, a function of args.seed: (datasets' attrs, episode store, learner, evaluation envs).

    The networks are initialised right after torch.manual_seed(seed) and
    both evaluation streams come from their own seeded simulators, so
    anything built here and trained by `train_loop` with the same flags
    follows the same run (bench/bcq_filter.py relies on it).
    """
    use_learner_threads()
    a, buffer = load_buffer(dataset_paths)
    torch.manual_seed(args.seed)
    learner = learner_cls(a["n_agents"], a["obs_dim"], a["n_actions"], gamma=args.gamma, aug=aug,
                          seed=args.seed, last_action=args.last_action, **(extra or {}))
    check_simulator(dataset_paths[0], a, args.backend)
    return a, buffer, learner, make_eval_envs(a["scenario"], args.backend, args.eval_episodes, args.seed)


def run_learner(learner_cls, dataset_paths, args, out, aug="none", extra=None, progress=True, resume=False):
    """Train `learner_cls` on the datasets, evaluate periodically, write CSV + PNG into `out`.

    `args` holds the learner flags (`add_learner_flags`). The run is a
    function of args.seed: the networks are initialised right after
    torch.manual_seed(seed), minibatches and the learners' own draws come
    from generators seeded from it, and both evaluation streams from their
    own seeded simulators. `out`/learner.pt is saved at every evaluation
    and `resume` (see `resume_state`) continues from it. Returns a dict:
    the last metrics row ('final'), the held-out evaluation, the number of
    training episodes, the iteration it resumed from (0 if none) and the
    wall and CPU seconds the run took over all its sessions (CPU: None if
    it resumed from a checkpoint that did not count them).
    """
    clock = artifacts.Clock()
    artifacts.prepare_output_dir(out)
    a, buffer, learner, envs = seeded_learner(learner_cls, dataset_paths, args, aug, extra)
    env = envs["reported"]
    config = {"learner": learner_cls.__name__, "aug": aug, **(extra or {}),
              **{name: getattr(args, name) for name in LEARNER_FLAGS},
              "datasets": [artifacts.file_digest(p) for p in dataset_paths]}
    checkpoint = LearnerCheckpoint(os.path.join(out, "learner.pt"), config, env, clock)
    state = resume_state(checkpoint, resume)
    if state is not None:
        print(f"resuming the learner from iteration {state['iteration']} ({checkpoint.path})")

    def evaluate_now():
        return evaluate_policy(learner.policy(), env)

    rows = train_loop(learner, buffer, args.iters, args.batch_size, args.lr, args.seed, evaluate_now,
                      args.eval_every, args.target_every, args.grad_clip, progress, checkpoint, state)
    heldout = evaluate_policy(learner.policy(), envs["heldout"])
    title = f"{type(learner).__name__} {a['scenario']} aug={aug} seed={args.seed}"
    write_metrics(rows, os.path.join(out, "metrics.csv"), os.path.join(out, "curve.png"), title)
    return {"final": rows[-1], "heldout": heldout, "training_episodes": int(buffer.n_episodes),
            "resumed_from": 0 if state is None else int(state["iteration"]),
            "seconds": clock.wall(), "cpu_seconds": clock.cpu()}


def learner_main(learner_cls, description, add_flags, check_flags, learner_kwargs, argv=None):
    """cql.py / bcq.py: the shared flags plus the learner's own, checked; then train, evaluate, report."""
    parser = learner_parser(description)
    add_flags(parser)
    args = parser.parse_args(argv)
    check_learner_args(parser, args)
    check_flags(parser, args)
    run_and_report(learner_cls, args, learner_kwargs(args))


def run_and_report(learner_cls, args, extra):
    """Train and evaluate one learner on --dataset, print one summary line."""
    out = args.out or os.path.join("runs", learner_cls.__name__.lower())
    with artifacts.one_line_errors():
        result = run_learner(learner_cls, args.dataset, args, out, args.aug, extra, resume=args.resume)
    last, heldout = result["final"], result["heldout"]
    print(f"{learner_cls.__name__} after {last['iteration']} iterations: return {last['return_mean']:.2f} ± "
          f"{last['return_std']:.2f}, normalised {last['normalised_return']:.3f}, win rate "
          f"{last['win_rate']:.2f} (held-out episodes: {heldout['return_mean']:.2f}); "
          f"wrote {out}/metrics.csv and curve.png")
