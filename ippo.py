"""Shared-parameter IPPO on SMAX: how the behaviour policies that make the datasets are trained (paper §4.3).

The datasets need policies of given levels of play, not a particular
learner; OG-MARL used QMIX, which JaxMARL reports as fragile on SMAX, so
`behaviour.py` trains them with independent PPO and one network for all
agents (Schulman et al. 2017, de Witt et al. 2020), written here in JAX:

* Networks (pure functions of a parameter pytree): actor and critic are
  separate networks shared by all agents; input = the agent's observation
  and its id one-hot; two tanh layers of 64; the actor gives one logit per
  action, illegal actions masked out. With `actor="gru"` its middle layer
  is a GRU cell (Cho et al. 2014) that remembers the game so far, emptied
  when a game starts (JaxMARL's recurrent SMAX actor, with tanh); the
  MLP actor has a memory of width 0. The critic gives V(o_n), or with
  `critic="central"` V(o_1, ..., o_N, n): every agent's observation and
  the agent's id (MAPPO, Yu et al. 2022; the actor is the same, so the
  policies it trains are played and shipped as before).
* Training (`Trainer`): `n_envs` SMAX games in parallel (a finished game
  restarts at once), rollouts of `n_steps` steps, GAE(gamma, lambda) on the
  team reward, clipped PPO for `epochs` x `minibatches`, Adam with a
  linearly decaying learning rate. The MLP actor's minibatches are random
  agent-steps; the GRU's are random games, replayed step by step from the
  rollout's first memory (backpropagation through the whole rollout).
  One checkpoint interval (many PPO updates) is one jitted program,
  `jax.vmap`-ed over the training seeds, so 4 seeds cost little more than
  one on a CPU.

Shapes: obs (E, N, O), agent inputs (E, N, O + N), central critic inputs
(E, N, N O + N), logits (E, N, A), memory (E, N, H);
rollouts carry a leading step axis (S, E, N, ...); a seed axis leads all of
them inside the vmapped program.
"""
import functools

import numpy as np

import env as envlib

ILLEGAL = -1e9            # logit of an illegal action (finite: no NaN in the entropy)


# ---------------------------------------------------------------------------
# Networks (pure functions of a parameter pytree)
# ---------------------------------------------------------------------------
def init_mlp(key, sizes, out_scale):
    """Orthogonally initialised MLP layers [{'w': (in, out), 'b': (out,)}, ...]."""
    import jax
    import jax.numpy as jnp
    layers = []
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        scale = out_scale if i == len(sizes) - 2 else np.sqrt(2.0)
        layers.append({"w": jax.nn.initializers.orthogonal(scale)(k, (n_in, n_out)), "b": jnp.zeros(n_out)})
    return layers


def mlp(layers, x):
    """tanh hidden layers, linear output: (..., in) -> (..., out)."""
    import jax.numpy as jnp
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def agent_inputs(obs):
    """Each agent's observation and id one-hot: (..., N, O) -> (..., N, O + N)."""
    import jax.numpy as jnp
    N = obs.shape[-2]
    ids = jnp.broadcast_to(jnp.eye(N, dtype=obs.dtype), obs.shape[:-1] + (N,))
    return jnp.concatenate([obs, ids], axis=-1)


def critic_inputs(obs, critic):
    """The critic's input: `agent_inputs` ("agent"), or every agent's observation and the agent's id one-hot
    ("central"): (..., N, O) -> (..., N, N O + N)."""
    import jax.numpy as jnp
    if critic == "agent":
        return agent_inputs(obs)
    N = obs.shape[-2]
    team = obs.reshape(obs.shape[:-2] + (1, N * obs.shape[-1]))                    # (..., 1, N O)
    ids = jnp.broadcast_to(jnp.eye(N, dtype=obs.dtype), obs.shape[:-1] + (N,))    # (..., N, N)
    return jnp.concatenate([jnp.broadcast_to(team, obs.shape[:-1] + team.shape[-1:]), ids], axis=-1)


def masked_logits(actor, inputs, avail):
    """MLP logits with illegal actions at ILLEGAL: (..., I), (..., A) -> (..., A)."""
    import jax.numpy as jnp
    return jnp.where(avail, mlp(actor, inputs), ILLEGAL)


ACTORS = ("mlp", "gru")


def actor_shapes(kind, in_dim, hidden, n_actions):
    """Every tensor's shape, layer by layer: an MLP [in, H, H, A], or a GRU actor [embedding, GRU cell
    (input weights w, recurrent weights u, bias b for its reset, update and candidate gates), tanh layer, logits]."""
    if kind == "mlp":
        sizes = [in_dim, hidden, hidden, n_actions]
        return [{"w": (a, b), "b": (b,)} for a, b in zip(sizes[:-1], sizes[1:])]
    return [{"w": (in_dim, hidden), "b": (hidden,)},
            {"w": (hidden, 3 * hidden), "u": (hidden, 3 * hidden), "b": (3 * hidden,)},
            {"w": (hidden, hidden), "b": (hidden,)}, {"w": (hidden, n_actions), "b": (n_actions,)}]


def init_actor(key, in_dim, hidden, n_actions, kind="mlp"):
    """Orthogonally initialised actor layers (`actor_shapes`), the logits' layer at scale 0.01."""
    import jax
    import jax.numpy as jnp
    if kind == "mlp":
        return init_mlp(key, [in_dim, hidden, hidden, n_actions], 0.01)
    k_in, k_w, k_u, k_head = jax.random.split(key, 4)
    cell = {"w": jax.nn.initializers.orthogonal(1.0)(k_w, (hidden, 3 * hidden)),
            "u": jax.nn.initializers.orthogonal(1.0)(k_u, (hidden, 3 * hidden)), "b": jnp.zeros(3 * hidden)}
    return init_mlp(k_in, [in_dim, hidden], np.sqrt(2.0)) + [cell] + init_mlp(k_head, [hidden, hidden, n_actions], 0.01)


def is_recurrent(actor):
    return "u" in actor[1]


def memory_size(actor):
    """H: the width of the actor's memory (0 for the MLP)."""
    return actor[1]["u"].shape[0] if is_recurrent(actor) else 0


def gru_cell(cell, h, x):
    """One GRU step: memory h (..., H), input x (..., H) -> h' (..., H)."""
    import jax
    import jax.numpy as jnp
    H = h.shape[-1]
    gx, gh = x @ cell["w"] + cell["b"], h @ cell["u"]                            # (..., 3H) each
    reset = jax.nn.sigmoid(gx[..., :H] + gh[..., :H])
    update = jax.nn.sigmoid(gx[..., H:2 * H] + gh[..., H:2 * H])
    candidate = jnp.tanh(gx[..., 2 * H:] + reset * gh[..., 2 * H:])
    return (1.0 - update) * candidate + update * h


def actor_step(actor, h, inputs, avail):
    """One step of the actor: (memory (..., H), inputs (..., I), legal (..., A)) -> (memory', logits (..., A)).
    The MLP actor's memory has width 0 and passes through unchanged."""
    import jax.numpy as jnp
    if not is_recurrent(actor):
        return h, masked_logits(actor, inputs, avail)
    h = gru_cell(actor[1], h, jnp.tanh(inputs @ actor[0]["w"] + actor[0]["b"]))
    return h, masked_logits(actor[2:], h, avail)


def forget_at_start(h, first):
    """Empty the memory of the games that start at this step: h (E, N, H), first (E,)."""
    import jax.numpy as jnp
    return jnp.where(first[:, None, None], 0.0, h)


def minibatch_logits(actor, batch):
    """The actor's logits for a minibatch: per agent-step for the MLP's (M, ...) minibatch; for the GRU's games,
    replayed step by step from their first memory h0 (B, N, H): inputs (S, B, N, I) -> logits (S, B, N, A)."""
    import jax
    if "h0" not in batch:
        return masked_logits(actor, batch["inputs"], batch["avail"])

    def step(h, t):
        inputs, avail, first = t
        return actor_step(actor, forget_at_start(h, first), inputs, avail)

    _, logits = jax.lax.scan(step, batch["h0"], (batch["inputs"], batch["avail"], batch["first"]))
    return logits


def epsilon_greedy(key, logits, avail, epsilon):
    """argmax over legal actions, or with probability epsilon a uniformly random legal one (per agent)."""
    import jax
    import jax.numpy as jnp
    k_explore, k_random = jax.random.split(key)
    greedy = jnp.argmax(logits, axis=-1)
    random = jax.random.categorical(k_random, jnp.where(avail, 0.0, -jnp.inf))
    explore = jax.random.uniform(k_explore, greedy.shape) < epsilon
    return jnp.where(explore, random, greedy)


def init_params(key, obs_dim, n_agents, n_actions, hidden, critic="agent", actor="mlp"):
    import jax
    k_actor, k_critic = jax.random.split(key)
    critic_in = obs_dim + n_agents if critic == "agent" else n_agents * obs_dim + n_agents
    return {"actor": init_actor(k_actor, obs_dim + n_agents, hidden, n_actions, actor),
            "critic": init_mlp(k_critic, [critic_in, hidden, hidden, 1], 1.0)}


# ---------------------------------------------------------------------------
# PPO (one checkpoint interval = one jitted program, vmapped over seeds)
# ---------------------------------------------------------------------------
def gae(values, rewards, dones, last_value, gamma, lam):
    """Generalised advantage estimates and value targets.

    values (S, E, N), rewards / dones (S, E) (the team's), last_value (E, N)
    -> (advantages (S, E, N), targets (S, E, N)). A done (win, loss or time
    limit) ends the bootstrap, as SMAC treats its time limit as terminal.
    """
    import jax
    import jax.numpy as jnp

    def backwards(carry, step):
        advantage, next_value = carry
        value, reward, done = step
        not_done = 1.0 - done[:, None]
        delta = reward[:, None] + gamma * next_value * not_done - value
        advantage = delta + gamma * lam * not_done * advantage
        return (advantage, value), advantage

    _, advantages = jax.lax.scan(backwards, (jnp.zeros_like(last_value), last_value),
                                 (values, rewards, dones.astype(values.dtype)), reverse=True)
    return advantages, advantages + values


def ppo_loss(params, batch, clip, vf_coef, ent_coef):
    """Clipped PPO surrogate + clipped value loss - entropy bonus, on a minibatch (its agent-steps flattened)."""
    import jax
    import jax.numpy as jnp
    logits = minibatch_logits(params["actor"], batch)
    logits = logits.reshape(-1, logits.shape[-1])                               # (M, A)
    batch = {k: v.reshape((logits.shape[0],) + v.shape[batch["action"].ndim:])
             for k, v in batch.items() if k not in ("h0", "first")}            # (M, ...)
    log_probs = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(log_probs, batch["action"][:, None], axis=-1)[:, 0]
    ratio = jnp.exp(logp - batch["logp"])
    adv = (batch["advantage"] - batch["advantage"].mean()) / (batch["advantage"].std() + 1e-8)
    policy_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip, 1 + clip) * adv).mean()
    value = mlp(params["critic"], batch["critic_inputs"])[:, 0]
    value_clipped = batch["value"] + jnp.clip(value - batch["value"], -clip, clip)
    value_loss = 0.5 * jnp.maximum((value - batch["target"]) ** 2,
                                   (value_clipped - batch["target"]) ** 2).mean()
    entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
    return policy_loss + vf_coef * value_loss - ent_coef * entropy


def tree_where(cond, a, b):
    """Per-environment select between two pytrees whose leaves lead with (E, ...)."""
    import jax
    import jax.numpy as jnp
    return jax.tree.map(lambda x, y: jnp.where(cond.reshape(cond.shape + (1,) * (x.ndim - 1)), x, y), a, b)


CRITICS = ("agent", "central")


class Trainer:
    """Shared-parameter IPPO (or MAPPO, `critic="central"`; a GRU actor with `actor="gru"`) on one SMAX map;
    `run_interval` and `evaluate` are jitted and vmapped over seeds."""

    def __init__(self, scenario, n_envs=64, n_steps=128, epochs=4, minibatches=4, lr=1e-3, gamma=0.99,
                 gae_lambda=0.95, clip=0.2, vf_coef=0.5, ent_coef=0.01, max_grad_norm=0.5, hidden=64,
                 updates_per_interval=8, intervals=100, eval_episodes=128, eval_epsilon=0.05, critic="agent",
                 actor="mlp"):
        import jax
        import optax
        self.sim = envlib.make_env(scenario, "smax", n_envs=1, seed=0)
        self.n_agents, self.obs_dim, self.n_actions = self.sim.n_agents, self.sim.obs_dim, self.sim.n_actions
        self.n_envs, self.n_steps, self.epochs, self.minibatches = n_envs, n_steps, epochs, minibatches
        self.gamma, self.gae_lambda, self.clip = gamma, gae_lambda, clip
        self.vf_coef, self.ent_coef, self.hidden, self.critic, self.actor = vf_coef, ent_coef, hidden, critic, actor
        if actor == "gru" and n_envs % minibatches:
            raise ValueError(f"a GRU actor's minibatches are whole games: minibatches ({minibatches}) must divide "
                             f"n_envs ({n_envs})")
        self.eval_episodes, self.eval_epsilon = eval_episodes, eval_epsilon
        self.updates_per_interval = updates_per_interval
        schedule = optax.linear_schedule(lr, 0.0, intervals * updates_per_interval * epochs * minibatches)
        self.optimizer = optax.chain(optax.clip_by_global_norm(max_grad_norm),
                                     optax.adam(schedule, eps=1e-5))
        self.run_interval = jax.jit(jax.vmap(self._run_interval))
        self.evaluate = jax.jit(jax.vmap(self._evaluate))

    @property
    def steps_per_update(self):
        return self.n_envs * self.n_steps

    def init(self, seed):
        """The training state of one seed (params, optimiser, games in progress, key)."""
        import jax
        key = jax.random.PRNGKey(seed)
        key, k_params, k_reset = jax.random.split(key, 3)
        params = init_params(k_params, self.obs_dim, self.n_agents, self.n_actions, self.hidden, self.critic,
                             self.actor)
        env_state, obs, avail = jax.vmap(self.sim.reset_one)(jax.random.split(k_reset, self.n_envs))
        memory = jax.numpy.zeros((self.n_envs, self.n_agents, memory_size(params["actor"])))
        return {"params": params, "opt": self.optimizer.init(params), "env": env_state, "obs": obs,
                "avail": avail, "h": memory, "first": jax.numpy.ones(self.n_envs, bool), "key": key}

    def _env_step(self, carry, _):
        """One step of all n_envs games with the current policy, restarting finished games."""
        import jax
        import jax.numpy as jnp
        params, env_state, obs, avail, h, first, key = carry
        key, k_act, k_step, k_reset = jax.random.split(key, 4)
        inputs = agent_inputs(obs)                                              # (E, N, O+N)
        h, logits = actor_step(params["actor"], forget_at_start(h, first), inputs, avail)    # (E, N, H), (E, N, A)
        action = jax.random.categorical(k_act, logits)                         # (E, N)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], -1)[..., 0]
        values_in = critic_inputs(obs, self.critic)                            # (E, N, O+N) or (E, N, NO+N)
        value = mlp(params["critic"], values_in)[..., 0]                       # (E, N)
        E = obs.shape[0]
        env_state, next_obs, next_avail, reward, done, _ = jax.vmap(self.sim.step_one)(
            jax.random.split(k_step, E), env_state, jnp.zeros(E, dtype=bool), action)
        fresh_state, fresh_obs, fresh_avail = jax.vmap(self.sim.reset_one)(jax.random.split(k_reset, E))
        env_state = tree_where(done, fresh_state, env_state)
        next_obs = jnp.where(done[:, None, None], fresh_obs, next_obs)
        next_avail = jnp.where(done[:, None, None], fresh_avail, next_avail)
        transition = {"inputs": inputs, "critic_inputs": values_in, "avail": avail, "action": action,
                      "logp": logp, "value": value, "first": first,
                      "reward": reward / envlib.REWARD_SCALE, "done": done}
        return (params, env_state, next_obs, next_avail, h, done, key), transition

    def _update(self, state, _):
        """Collect one rollout and run PPO's epochs of minibatch updates on it."""
        import jax
        import optax
        carry = (state["params"], state["env"], state["obs"], state["avail"], state["h"], state["first"],
                 state["key"])
        (params, env_state, obs, avail, h, first, key), traj = jax.lax.scan(
            self._env_step, carry, None, self.n_steps)
        last_value = mlp(params["critic"], critic_inputs(obs, self.critic))[..., 0]     # (E, N)
        advantage, target = gae(traj["value"], traj["reward"], traj["done"], last_value,
                                self.gamma, self.gae_lambda)
        batch = {k: traj[k] for k in ("inputs", "critic_inputs", "avail", "action", "logp", "value", "first")}
        batch.update(advantage=advantage, target=target)
        loss_fn = functools.partial(ppo_loss, clip=self.clip, vf_coef=self.vf_coef, ent_coef=self.ent_coef)

        def minibatch_step(carry, mb):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, mb)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        def epoch(carry, k):
            if self.actor == "mlp":                     # random agent-steps: (S*E*N, ...) shuffled
                flat = {name: x.reshape((-1,) + x.shape[3:]) for name, x in batch.items() if name != "first"}
                perm = jax.random.permutation(k, flat["action"].shape[0])
                mbs = jax.tree.map(lambda x: x[perm].reshape((self.minibatches, -1) + x.shape[1:]), flat)
            else:                                       # random games, whole: (S, E, ...) split along E
                perm = jax.random.permutation(k, self.n_envs)
                mbs = {name: jax.numpy.moveaxis(x[:, perm].reshape((x.shape[0], self.minibatches, -1) + x.shape[2:]),
                                                1, 0) for name, x in batch.items()}
                mbs["h0"] = state["h"][perm].reshape((self.minibatches, -1) + state["h"].shape[1:])
            carry, losses = jax.lax.scan(minibatch_step, carry, mbs)
            return carry, losses.mean()

        key, k_epochs = jax.random.split(key)
        (params, opt_state), losses = jax.lax.scan(epoch, (params, state["opt"]),
                                                   jax.random.split(k_epochs, self.epochs))
        new_state = {"params": params, "opt": opt_state, "env": env_state, "obs": obs, "avail": avail,
                     "h": h, "first": first, "key": key}
        return new_state, losses.mean()

    def _run_interval(self, state):
        """`updates_per_interval` PPO updates (rollout + epochs) in one lax.scan -> (state, losses)."""
        import jax
        return jax.lax.scan(self._update, state, None, self.updates_per_interval)

    def _evaluate(self, actor, key):
        """eval_episodes games, ε-greedy (eval_epsilon) as the data are collected -> (returns (G,), won (G,))."""
        import jax
        import jax.numpy as jnp
        G = self.eval_episodes
        key, k_reset = jax.random.split(key)
        env_state, obs, avail = jax.vmap(self.sim.reset_one)(jax.random.split(k_reset, G))

        def step(carry):
            env_state, obs, avail, h, finished, returns, won, key = carry
            key, k_act, k_step = jax.random.split(key, 3)
            h, logits = actor_step(actor, h, agent_inputs(obs), avail)
            action = epsilon_greedy(k_act, logits, avail, self.eval_epsilon)
            env_state, obs, avail, reward, done, won = jax.vmap(self.sim.step_one)(
                jax.random.split(k_step, G), env_state, finished, action)
            return env_state, obs, avail, h, done, returns + reward, won, key

        def playing(carry):
            return ~carry[4].all()             # every game ends by the 100-step limit

        memory = jnp.zeros((G, self.n_agents, memory_size(actor)))
        init = (env_state, obs, avail, memory, jnp.zeros(G, bool), jnp.zeros(G), jnp.zeros(G, bool), key)
        _, _, _, _, _, returns, won, _ = jax.lax.while_loop(playing, step, init)
        return returns, won
