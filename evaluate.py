"""Evaluation in the simulator and the paper's behaviour statistics (§4.5, Fig. 1b, Table 1).

* `evaluate_policy` — greedy decentralised rollouts over legal actions, many
  episodes in parallel through `env.py`: mean ± std return (SMAC scale),
  normalised return (return / 20) and win rate.
* `focus_fire_ratio` — Figure 1b: among steps where every living agent
  attacks, the share where they all attack the same enemy.

A policy is any object with `reset(n_envs)` and `__call__(obs, avail) ->
actions`, e.g. `qmix.GreedyPolicy`.
"""
import numpy as np

import env as envlib


def evaluate_policy(policy, env):
    """Play one batch of `env.n_envs` episodes with `policy`; returns the summary dict.

    Build `env` once (`env.make_env(scenario, backend, n_envs, seed)`) and pass
    it to every evaluation: compiling SMAX is the slow part, and successive
    evaluations then see fresh, seeded start states.
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


def focus_fire_ratio(actions, avail, valid, first_attack_action):
    """Figure 1b: share of all-attack steps on which every living agent attacks the same enemy.

    actions (E, T, N), avail (E, T, N, A), valid (E, T). An agent is living
    when it may move (dead agents may only stop; SMAX and SMAC alike). Returns
    (ratio, number of all-attack steps); the ratio is NaN when there are none.
    """
    living = avail[..., :4].any(axis=-1) if first_attack_action == 5 else avail[..., 2:6].any(axis=-1)
    attacking = actions >= first_attack_action                                       # (E, T, N)
    all_attack = valid & living.any(-1) & np.all(attacking | ~living, axis=-1)       # (E, T)
    target = np.where(living, actions, -1)
    first = np.take_along_axis(target, np.argmax(living, axis=-1)[..., None], axis=-1)
    same = np.all((target == first) | ~living, axis=-1)
    n = int(all_attack.sum())
    return (float((same & all_attack).sum() / n) if n else float("nan")), n
