"""Attack -> damage in SMAX episodes: do enemies lose health where the actions say they were shot?
(fidelity.py's damage metrics; docs/damage-without-a-shooter.md)

In the simulator an enemy loses health only when an agent shoots it and
never gains any back, and the reward pays for exactly that damage, so in
D_real every health drop has a shooter and the reward row matches the
damage the observations show. A generated episode need not: nothing in
Eq. 5 ties one agent's "attack k" at step t to enemy k's health at t+1
beyond what the network can write.

Shapes: actions (E, T, N); health (E, T+1, K); drops and masks (E, T, K).
"""
import numpy as np

import data
import env as envlib


# An enemy killed by t+1 is no longer seen there and not counted (docs/damage-without-a-shooter.md).
# The reward row is tied to the same health: SMAX pays each step the enemies'
# summed health fractions lost, over K (× REWARD_SCALE), so where every enemy
# is seen at t and t+1 the observations fix r_t exactly (D_real: to 1e-6).
SEEN_BIT = 0.5   # a unit's block counts as seen when its largest unit-type bit exceeds this (D_real's are 0 or 1)


def enemy_health_views(episodes):
    """(E, T+1, N, K): each agent's reading of each enemy's health fraction, NaN where the agent does not
    see it; None unless the data has SMAX's observation layout. In D_real every agent that sees an enemy
    reads the same health."""
    if episodes.attrs.get("backend", "smax") != "smax":
        return None
    n_enemies = episodes.n_actions - envlib.FIRST_ATTACK_ACTION["smax"]
    blocks = envlib.smax_enemy_blocks(episodes.n_agents, n_enemies, episodes.obs_dim)
    if blocks is None:
        return None
    starts, width = blocks
    obs = episodes.obs                                                              # (E, T+1, N, O)
    bits = np.stack([obs[..., s + envlib.SMAX_UNIT_FEATURES:s + width].max(axis=-1) for s in starts], axis=-1)
    return np.where(bits > SEEN_BIT, obs[..., starts], np.nan)                     # (E, T+1, N, K)


def enemy_health(episodes, views=None):
    """(E, T+1, K): each enemy's health fraction as the agents see it (the largest over the agents
    that see it), NaN where none does; None unless the data has SMAX's observation layout. `views`:
    `enemy_health_views(episodes)`, when the caller has it already."""
    views = enemy_health_views(episodes) if views is None else views
    return None if views is None else np.fmax.reduce(views, axis=2)


def enemy_health_drops(episodes, views=None):
    """(drop (E, T, K): each enemy's health at t minus at t+1, seen (E, T, K): t+1 lies inside the
    episode and some agent sees the enemy at t and at t+1), or None without SMAX's layout; `views` as in
    `enemy_health`."""
    health = enemy_health(episodes, views)                                           # (E, T+1, K)
    if health is None:
        return None
    drop = health[:, :-1] - health[:, 1:]                                            # (E, T, K)
    seen = data.valid_steps(episodes.lengths - 1, drop.shape[1])[..., None] & ~np.isnan(drop)
    return np.nan_to_num(drop), seen


def damage_threshold(episodes):
    """Half the smallest health drop an enemy shows in `episodes` (on D_real one shot: 0.2 of a
    marine's health on 3m, so 0.1); NaN where there is no drop or no SMAX layout."""
    drops = enemy_health_drops(episodes)
    if drops is None:
        return float("nan")
    drop, seen = drops
    hits = drop[seen & (drop > 1e-3)]                           # float noise of equal healths is not a hit
    return float(hits.min() / 2) if hits.size else float("nan")


DAMAGE_COUNT_KEYS = ("seen", "attacked", "attacked_hit", "unattacked_hit", "gains",
                     "all_seen", "reward_agrees", "reward_excess", "some_seen", "reward_short",
                     "seen_twice", "disagree")


def damage_reward(health_lost, n_enemies):
    """SMAX's damage reward on our scale: REWARD_SCALE * (health fractions lost, summed over enemies) / K."""
    return envlib.REWARD_SCALE * health_lost / n_enemies


def reward_excess(rewards, drop):
    """(E, T): each step's reward minus the reward SMAX pays for the health the enemies lose by the next
    step (`damage_reward`; gains pay nothing). Exactly 0 in D_real wherever every enemy is seen at t and
    t+1 and the episode goes on (the win bonus comes at the end)."""
    paid = damage_reward(np.clip(drop, 0.0, None).sum(axis=-1), drop.shape[-1])       # (E, T)
    return rewards[:, :drop.shape[1]] - paid


def attacked_enemies(actions, n_enemies):
    """(E, T, N) SMAX actions -> (E, T, K) bool: some agent attacks enemy k at step t."""
    first = envlib.FIRST_ATTACK_ACTION["smax"]
    return np.stack([(actions == first + k).any(axis=-1) for k in range(n_enemies)], axis=-1)


def damage_counts(episodes, threshold):
    """The attack -> damage counts over steps t whose next observation lies inside the episode, per enemy k
    seen at t and t+1: {"seen", "attacked" (some agent attacks k at t), "attacked_hit" (and k's health
    drops by more than `threshold` by t+1), "unattacked_hit" (drops although nobody attacks k), "gains"
    (k's health rises by more than `threshold`)}; and the reward against that damage over the steps on
    which every enemy is seen at t and t+1: {"all_seen" (such steps), "reward_agrees" (r_t within half a
    shot's reward, `damage_reward(threshold, K)`, of the damage the observations show), "reward_excess"
    (the sum over them of r_t minus that damage)}; and over the steps on which at least one enemy is seen at
    t and t+1, where the enemies nobody sees may have lost more: {"some_seen" (such steps), "reward_short" (r_t
    below the reward for the damage shown by more than half a shot)}; and over the valid steps t and enemies
    k that two agents or more see: {"seen_twice", "disagree" (their readings of k's health differ by more
    than `threshold`)}. All zero without a SMAX layout or threshold."""
    views = enemy_health_views(episodes)                                             # (E, T+1, N, K)
    if views is None or not np.isfinite(threshold):
        return dict.fromkeys(DAMAGE_COUNT_KEYS, 0)
    drops = enemy_health_drops(episodes, views)
    drop, seen = drops
    attacked = attacked_enemies(episodes.actions, drop.shape[-1])                   # (E, T, K)
    hit = seen & (drop > threshold)
    excess = reward_excess(episodes.rewards, np.where(seen, drop, 0.0))            # (E, T): unseen enemies pay 0
    all_seen, some_seen = excess[seen.all(axis=-1)], excess[seen.any(axis=-1)]    # (steps,) each
    per_shot = damage_reward(threshold, drop.shape[-1])                             # half a shot's reward
    return {"seen": int(seen.sum()), "attacked": int((seen & attacked).sum()),
            "attacked_hit": int((hit & attacked).sum()), "unattacked_hit": int((hit & ~attacked).sum()),
            "gains": int((seen & (drop < -threshold)).sum()),
            "all_seen": int(all_seen.size), "reward_agrees": int((np.abs(all_seen) < per_shot).sum()),
            "reward_excess": float(all_seen.sum()),
            "some_seen": int(some_seen.size), "reward_short": int((some_seen < -per_shot).sum()),
            **health_agreement(views, episodes.lengths, threshold)}


def health_agreement(views, lengths, threshold):
    """{"seen_twice": valid (step, enemy) pairs two agents or more see, "disagree": those whose readings of the
    enemy's health differ by more than `threshold`}, from `enemy_health_views` (E, T+1, N, K) and lengths (E,)."""
    views = views[:, :-1]                                                            # (E, T, N, K)
    valid = data.valid_steps(lengths, views.shape[1])[..., None]                     # (E, T, 1)
    twice = valid & ((~np.isnan(views)).sum(axis=2) >= 2)                           # (E, T, K)
    spread = np.fmax.reduce(views, axis=2) - np.fmin.reduce(views, axis=2)
    return {"seen_twice": int(twice.sum()), "disagree": int((twice & (spread > threshold)).sum())}


def damage_shares(counts):
    """From `damage_counts` (summed over batches, e.g. in a collections.Counter):
    attacks_that_damage = P(k loses health | attacked),
    damage_with_shooter = P(some agent attacked k | k loses health), health_gain_share = P(k gains health),
    reward_matches_damage = P(r_t within half a shot's reward of the damage shown | every enemy seen),
    reward_minus_damage = the mean of r_t minus that damage, reward_below_damage = P(r_t short of the damage
    the seen enemies show by more than half a shot | some enemy seen), health_disagreement = P(the agents that
    see an enemy read its health differently | two or more see it); NaN where a share has no cases.
    D_real: damage_with_shooter and reward_matches_damage 1, health_gain_share, reward_minus_damage,
    reward_below_damage and health_disagreement 0; its attacks that do not damage are weapon cooldowns."""
    def share(a, b):
        return a / b if b else float("nan")
    hits = counts["attacked_hit"] + counts["unattacked_hit"]
    return {"attacks_that_damage": share(counts["attacked_hit"], counts["attacked"]),
            "damage_with_shooter": share(counts["attacked_hit"], hits),
            "health_gain_share": share(counts["gains"], counts["seen"]),
            "reward_matches_damage": share(counts["reward_agrees"], counts["all_seen"]),
            "reward_minus_damage": share(counts["reward_excess"], counts["all_seen"]),
            "reward_below_damage": share(counts["reward_short"], counts["some_seen"]),
            "health_disagreement": share(counts["disagree"], counts["seen_twice"])}
