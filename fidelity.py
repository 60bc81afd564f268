"""How faithful a generated dataset is: D_syn beside D_real (paper §3.2's synthetic episodes, Fig. 1b).

* Behaviour statistics of a dataset: attack share, per-agent action
  histograms and their total-variation distance, Figure 1b's focus-fire
  share (`focus_fire_counts`), the win share.
* The attack -> damage checks (SMAX): in the simulator an enemy loses health
  only when an agent shoots it and never gains any back, and the reward pays
  for exactly that damage, so in D_real every health drop has a shooter and
  the reward row matches the damage the observations show. A generated
  episode need not: nothing in Eq. 5 ties one agent's "attack k" at step t
  to enemy k's health at t+1 beyond what the network can write.
* `MatrixStats`: all of them, fed with generated Eq. 4 matrices batch by
  batch (D_syn is never held whole), and `synthetic_report`: D_real and
  D_syn side by side with the fidelity bar's verdict (`FIDELITY_BAR`).

Shapes: actions (E, T, N), avail (E, T, N, A), valid (E, T); health (E, T+1, K).
"""
import collections

import numpy as np

import data
import env as envlib


# ---------------------------------------------------------------------------
# A dataset's behaviour: attacks, action histograms, focus fire (Fig. 1b), wins
# ---------------------------------------------------------------------------
# A won episode's return: all the damage (1 × REWARD_SCALE) plus the win bonus (1 × REWARD_SCALE), 20 in all;
# a lost one stays at or below the damage's 10. 90 % of the maximum counts as a win's level.
WIN_RETURN = 0.9 * envlib.MAX_RETURN


def win_share(returns):
    """Share of episodes whose return reaches a win's level (`WIN_RETURN`); for recorded data, its win rate."""
    return float(np.mean(np.asarray(returns) >= WIN_RETURN))


def living_agents(avail, first_attack=envlib.FIRST_ATTACK_ACTION["smax"]):
    """(..., N) bool: agents that may move (dead agents may only stop or no-op; SMAX moves are 0-3, SMAC's 2-5)."""
    moves = slice(0, 4) if first_attack == envlib.FIRST_ATTACK_ACTION["smax"] else slice(2, 6)
    return avail[..., moves].any(axis=-1)


def focus_fire_counts(actions, avail, valid, first_attack):
    """Figure 1b's counts: (all-attack steps on which every living agent attacks the same enemy,
    all-attack steps).

    actions (E, T, N), avail (E, T, N, A), valid (E, T). An agent is living
    when it may move (dead agents may only stop; SMAX and SMAC alike). An
    all-attack step has at least two living agents (a lone survivor cannot
    focus fire with anyone), all of them attacking.
    """
    living = living_agents(avail, first_attack)                                      # (E, T, N)
    attacking = actions >= first_attack                                              # (E, T, N)
    all_attack = valid & (living.sum(-1) >= 2) & np.all(attacking | ~living, axis=-1)   # (E, T)
    target = np.where(living, actions, -1)
    first = np.take_along_axis(target, np.argmax(living, axis=-1)[..., None], axis=-1)
    same = np.all((target == first) | ~living, axis=-1)
    return int((same & all_attack).sum()), int(all_attack.sum())


def focus_fire_ratio(actions, avail, valid, first_attack):
    """Figure 1b: (share of all-attack steps that focus fire, number of all-attack steps);
    the share is NaN when there are none (`focus_fire_counts` defines both)."""
    same, n = focus_fire_counts(actions, avail, valid, first_attack)
    return (same / n if n else float("nan")), n


def first_attack_action(episodes):
    """The first attack action of a dataset's action layout (SMAX: 5, SMAC: 6), from its backend attr."""
    return envlib.FIRST_ATTACK_ACTION[episodes.attrs.get("backend", "smax")]


def dataset_focus_fire(episodes, counts=False):
    """Figure 1b's ratio for a dataset (Episodes), in its backend's action layout
    (with counts=True, `focus_fire_counts` instead)."""
    T = episodes.rewards.shape[1]
    valid = data.valid_steps(episodes.lengths, T)
    stat = focus_fire_counts if counts else focus_fire_ratio
    return stat(episodes.actions, episodes.avail[:, :T], valid, first_attack_action(episodes))


def attack_counts(episodes):
    """(attacking valid agent-steps, valid agent-steps), in the dataset's action layout."""
    valid = data.valid_steps(episodes.lengths, episodes.rewards.shape[1])
    return int((episodes.actions >= first_attack_action(episodes))[valid].sum()), int(valid.sum()) * episodes.n_agents


def attack_share(episodes):
    """Share of valid agent-steps whose action is an attack."""
    attacks, agent_steps = attack_counts(episodes)
    return attacks / agent_steps


def action_counts(episodes):
    """(N, A): how often each agent took each action on its valid steps."""
    valid = data.valid_steps(episodes.lengths, episodes.rewards.shape[1])           # (E, T)
    return np.stack([np.bincount(episodes.actions[..., n][valid], minlength=episodes.n_actions)
                     for n in range(episodes.n_agents)]).astype(np.float64)   # (N, A)


def histogram_tv(counts_a, counts_b):
    """Total-variation distance between two (N, A) per-agent action counts, averaged over agents."""
    p = counts_a / counts_a.sum(axis=1, keepdims=True)
    q = counts_b / counts_b.sum(axis=1, keepdims=True)
    return float(0.5 * np.abs(p - q).sum(axis=1).mean())


def action_tv_distance(a, b):
    """Total-variation distance between two datasets' per-agent action histograms, averaged over agents."""
    return histogram_tv(action_counts(a), action_counts(b))


# ---------------------------------------------------------------------------
# Attack -> damage: do enemies lose health where the actions say they were shot? (SMAX)
# ---------------------------------------------------------------------------
# An enemy killed by t+1 is no longer seen there and not counted (docs/damage-without-a-shooter.md).
# The reward row is tied to the same health: SMAX pays each step the enemies'
# summed health fractions lost, over K (× REWARD_SCALE), so where every enemy
# is seen at t and t+1 the observations fix r_t exactly (D_real: to 1e-6).
SEEN_BIT = 0.5   # a unit's block counts as seen when its largest unit-type bit exceeds this (D_real's are 0 or 1)


def enemy_health(episodes):
    """(E, T+1, K): each enemy's health fraction as the agents see it (the largest over the agents
    that see it), NaN where none does; None unless the data has SMAX's observation layout."""
    if episodes.attrs.get("backend", "smax") != "smax":
        return None
    n_enemies = episodes.n_actions - envlib.FIRST_ATTACK_ACTION["smax"]
    blocks = envlib.smax_enemy_blocks(episodes.n_agents, n_enemies, episodes.obs_dim)
    if blocks is None:
        return None
    starts, width = blocks
    obs = episodes.obs                                                              # (E, T+1, N, O)
    bits = np.stack([obs[..., s + envlib.SMAX_UNIT_FEATURES:s + width].max(axis=-1) for s in starts], axis=-1)
    health = np.where(bits > SEEN_BIT, obs[..., starts], -np.inf).max(axis=2)      # (E, T+1, K)
    return np.where(np.isinf(health), np.nan, health)


def enemy_health_drops(episodes):
    """(drop (E, T, K): each enemy's health at t minus at t+1, seen (E, T, K): t+1 lies inside the
    episode and some agent sees the enemy at t and at t+1), or None without SMAX's layout."""
    health = enemy_health(episodes)                                                  # (E, T+1, K)
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
                     "all_seen", "reward_agrees", "reward_excess", "some_seen", "reward_short")


def damage_reward(health_lost, n_enemies):
    """SMAX's damage reward on our scale: REWARD_SCALE * (health fractions lost, summed over enemies) / K."""
    return envlib.REWARD_SCALE * health_lost / n_enemies


def reward_excess(rewards, drop):
    """(E, T): each step's reward minus the reward SMAX pays for the health the enemies lose by the next
    step (`damage_reward`; gains pay nothing). Exactly 0 in D_real wherever every enemy is seen at t and
    t+1 and the episode goes on (the win bonus comes at the end)."""
    paid = damage_reward(np.clip(drop, 0.0, None).sum(axis=-1), drop.shape[-1])       # (E, T)
    return rewards[:, :drop.shape[1]] - paid


def damage_counts(episodes, threshold):
    """The attack -> damage counts over steps t whose next observation lies inside the episode, per enemy k
    seen at t and t+1: {"seen", "attacked" (some agent attacks k at t), "attacked_hit" (and k's health
    drops by more than `threshold` by t+1), "unattacked_hit" (drops although nobody attacks k), "gains"
    (k's health rises by more than `threshold`)}; and the reward against that damage over the steps on
    which every enemy is seen at t and t+1: {"all_seen" (such steps), "reward_agrees" (r_t within half a
    shot's reward, `damage_reward(threshold, K)`, of the damage the observations show), "reward_excess"
    (the sum over them of r_t minus that damage)}; and over the steps on which at least one enemy is seen at
    t and t+1, where the enemies nobody sees may have lost more: {"some_seen" (such steps), "reward_short" (r_t
    below the reward for the damage shown by more than half a shot)}. All zero without a SMAX layout or
    threshold."""
    drops = enemy_health_drops(episodes)
    if drops is None or not np.isfinite(threshold):
        return dict.fromkeys(DAMAGE_COUNT_KEYS, 0)
    drop, seen = drops
    first = envlib.FIRST_ATTACK_ACTION["smax"]
    attacked = np.stack([(episodes.actions == first + k).any(axis=-1)
                         for k in range(drop.shape[-1])], axis=-1)                   # (E, T, K)
    hit = seen & (drop > threshold)
    excess = reward_excess(episodes.rewards, np.where(seen, drop, 0.0))            # (E, T): unseen enemies pay 0
    all_seen, some_seen = excess[seen.all(axis=-1)], excess[seen.any(axis=-1)]    # (steps,) each
    per_shot = damage_reward(threshold, drop.shape[-1])                             # half a shot's reward
    return {"seen": int(seen.sum()), "attacked": int((seen & attacked).sum()),
            "attacked_hit": int((hit & attacked).sum()), "unattacked_hit": int((hit & ~attacked).sum()),
            "gains": int((seen & (drop < -threshold)).sum()),
            "all_seen": int(all_seen.size), "reward_agrees": int((np.abs(all_seen) < per_shot).sum()),
            "reward_excess": float(all_seen.sum()),
            "some_seen": int(some_seen.size), "reward_short": int((some_seen < -per_shot).sum())}


def damage_shares(counts):
    """From `damage_counts` (summed over batches, e.g. in a collections.Counter): attacks_that_damage = P(k loses health | attacked),
    damage_with_shooter = P(some agent attacked k | k loses health), health_gain_share = P(k gains health),
    reward_matches_damage = P(r_t within half a shot's reward of the damage shown | every enemy seen),
    reward_minus_damage = the mean of r_t minus that damage, reward_below_damage = P(r_t short of the damage
    the seen enemies show by more than half a shot | some enemy seen); NaN where a share has no cases.
    D_real: damage_with_shooter and reward_matches_damage 1, the other three after them 0; its attacks that
    do not damage are weapon cooldowns."""
    def share(a, b):
        return a / b if b else float("nan")
    hits = counts["attacked_hit"] + counts["unattacked_hit"]
    return {"attacks_that_damage": share(counts["attacked_hit"], counts["attacked"]),
            "damage_with_shooter": share(counts["attacked_hit"], hits),
            "health_gain_share": share(counts["gains"], counts["seen"]),
            "reward_matches_damage": share(counts["reward_agrees"], counts["all_seen"]),
            "reward_minus_damage": share(counts["reward_excess"], counts["all_seen"]),
            "reward_below_damage": share(counts["reward_short"], counts["some_seen"])}


# ---------------------------------------------------------------------------
# D_syn beside D_real: the report and the fidelity bar
# ---------------------------------------------------------------------------
def raw_actions(matrix, layout, avail):
    """Each agent's action before repair (the argmax of its action rows) and whether `avail` allows it.

    matrix (b, F, T) in data units, avail (b, T', N, A) with T' >= T -> (raw (b, T, N), legal (b, T, N) bool).
    """
    T = matrix.shape[-1]
    raw = np.stack([matrix[:, layout.action(n)].argmax(axis=1) for n in range(layout.n_agents)], axis=-1)
    return raw, np.take_along_axis(avail[:, :T], raw[..., None], axis=-1)[..., 0]


class MatrixStats:
    """The report's statistics of episode matrices fed batch by batch (D_syn is never held whole).

    `add(matrix)` takes (b, F, T) in data units and returns the decoded
    Episodes; `summary()` gives the report entries; `action_counts` (N, A)
    feeds the action-histogram distance between two sets. Wins are counted
    twice: from the reward row (the return the learners read) and from the
    Q_tot row at step 0, the episode's reward-to-go there, i.e. the return
    the matrix itself claims (Eq. 4). On D_real the two agree; a model that
    generated won episodes but blurred the terminal reward would show wins
    in the second count only. With a `damage_threshold` (`damage_threshold`
    of D_real) it also counts whether enemies lose health where the actions
    say they were shot (`damage_counts`; SMAX layouts only, else NaN).
    """

    def __init__(self, layout, reward_range, backend="smax", damage_threshold=float("nan")):
        self.layout, self.reward_range, self.backend = layout, reward_range, backend
        self.damage_threshold = damage_threshold
        self.damage = collections.Counter()            # `damage_counts` summed over batches
        self.lengths, self.ended, self.returns, self.q_bars, self.q0s = [], [], [], [], []
        self.legal = self.agent_steps = self.attacks = 0
        self.q_error = self.steps = 0.0
        self.focus = self.all_attack_steps = 0
        self.action_counts = np.zeros((layout.n_agents, layout.n_actions))

    def add(self, matrix):
        layout = self.layout
        lengths, ended = data.episode_ends(matrix[:, layout.done])
        episodes = data.matrix_to_episodes(matrix, layout, self.reward_range, attrs={"backend": self.backend})
        T = matrix.shape[-1]
        valid = data.valid_steps(lengths, T)                                   # (b, T)
        _, legal = raw_actions(matrix, layout, episodes.avail)                 # (b, T, N) before repair
        q_row = matrix[:, layout.q_tot]                                        # (b, T)
        rtg = data.reward_to_go(episodes.rewards, lengths)
        self.lengths.append(lengths), self.ended.append(ended), self.returns.append(episodes.returns())
        self.q_bars.append((q_row * valid).sum(1) / valid.sum(1))
        self.q0s.append(q_row[:, 0])                                           # (b,) Q_tot at step 0
        self.legal += int(legal[valid].sum())
        self.agent_steps += int(valid.sum()) * layout.n_agents
        self.q_error += float(np.abs(q_row - rtg)[valid].sum())
        self.steps += float(valid.sum())
        self.attacks += attack_counts(episodes)[0]
        focus, all_attack = dataset_focus_fire(episodes, counts=True)
        self.focus += focus
        self.all_attack_steps += all_attack
        self.action_counts += action_counts(episodes)
        self.damage.update(damage_counts(episodes, self.damage_threshold))
        return episodes

    def summary(self):
        lengths, returns, q0s = np.concatenate(self.lengths), np.concatenate(self.returns), np.concatenate(self.q0s)
        return {
            "episodes": int(len(lengths)),
            "ended_share": float(np.concatenate(self.ended).mean()),
            "length_mean": float(lengths.mean()), "length_std": float(lengths.std()),
            "length_min": int(lengths.min()), "length_max": int(lengths.max()),
            "legal_before_repair": self.legal / self.agent_steps,
            "return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "win_share": win_share(returns),
            "q0_win_share": win_share(q0s), "q0_std": float(q0s.std()),
            "q_bar_mean": float(np.concatenate(self.q_bars).mean()),
            "q_consistency": self.q_error / self.steps,
            "attack_share": self.attacks / self.agent_steps,
            "focus_fire_share": self.focus / self.all_attack_steps if self.all_attack_steps else float("nan"),
            "all_attack_steps": self.all_attack_steps,
            **damage_shares(self.damage),
        }


# What a faithful D_syn must show against D_real (docs/fidelity-default-budget.md).
FIDELITY_BAR = {"attack_share_rel": 0.25, "action_tv": 0.1, "ended_share": 0.9, "legal_before_repair": 0.98,
                "length_rel": 0.1, "damage_with_shooter": 0.9}


def fidelity_misses(report):
    """The ways a D_syn misses the fidelity bar, as short sentences (empty if it meets it)."""
    real, syn, bar = report["real"], report["synthetic"], FIDELITY_BAR
    misses = []
    if abs(syn["attack_share"] - real["attack_share"]) > bar["attack_share_rel"] * real["attack_share"]:
        misses.append(f"attack share {syn['attack_share']:.3f} vs D_real's {real['attack_share']:.3f} "
                      f"(±{bar['attack_share_rel']:.0%})")
    if report["action_tv_distance"] > bar["action_tv"]:
        misses.append(f"action-histogram distance {report['action_tv_distance']:.3f} > {bar['action_tv']}")
    if syn["ended_share"] < bar["ended_share"]:
        misses.append(f"confident dones {syn['ended_share']:.0%} < {bar['ended_share']:.0%}")
    if syn["legal_before_repair"] < bar["legal_before_repair"]:
        misses.append(f"legal before repair {syn['legal_before_repair']:.3f} < {bar['legal_before_repair']}")
    if abs(syn["length_mean"] - real["length_mean"]) > bar["length_rel"] * real["length_mean"]:
        misses.append(f"mean length {syn['length_mean']:.1f} vs {real['length_mean']:.1f} (±{bar['length_rel']:.0%})")
    if syn["damage_with_shooter"] < bar["damage_with_shooter"]:        # NaN (no SMAX layout): no verdict
        misses.append(f"damage with a shooter {syn['damage_with_shooter']:.3f} < {bar['damage_with_shooter']}")
    return misses


def synthetic_report(real_stats, syn_stats):
    """D_real vs D_syn side by side (two MatrixStats), the action-histogram distance and the fidelity verdict."""
    report = {"real": real_stats.summary(), "synthetic": syn_stats.summary(),
              "action_tv_distance": histogram_tv(real_stats.action_counts, syn_stats.action_counts)}
    report["fidelity_misses"] = fidelity_misses(report)
    return report


def format_report(report):
    """The report of `diffusion.fit_and_sample` as printed: D_real and D_syn side by side, λ in the paper's
    units, the verdict."""
    rows = [("episodes", "{:d}"), ("ended_share", "{:.3f}"), ("length_mean", "{:.1f}"),
            ("length_std", "{:.1f}"), ("length_min", "{:d}"), ("length_max", "{:d}"),
            ("legal_before_repair", "{:.3f}"), ("return_mean", "{:.2f}"), ("return_std", "{:.2f}"),
            ("win_share", "{:.3f}"), ("q0_win_share", "{:.3f}"), ("q0_std", "{:.2f}"), ("q_bar_mean", "{:.2f}"),
            ("q_consistency", "{:.3f}"), ("attack_share", "{:.3f}"),
            ("focus_fire_share", "{:.3f}"), ("all_attack_steps", "{:d}"), ("attacks_that_damage", "{:.3f}"),
            ("damage_with_shooter", "{:.3f}"), ("health_gain_share", "{:.3f}"), ("reward_matches_damage", "{:.3f}"),
            ("reward_minus_damage", "{:+.3f}"), ("reward_below_damage", "{:.3f}")]
    lines = [f"{'':22s}{'D_real':>10s}{'D_syn':>10s}"]
    for key, fmt in rows:
        lines.append(f"{key:22s}{fmt.format(report['real'][key]):>10s}"
                     f"{fmt.format(report['synthetic'][key]):>10s}")
    lines.append(f"action-histogram TV distance (D_real vs D_syn): {report['action_tv_distance']:.3f}")
    lam = report["lam_units"]
    lines.append(f"λ = {report['lam']:g}: hinge active on {report['hinge_active_share']:.1%} of training steps; "
                 f"as Eq. 5 summed over F x T: λ_sum = {lam['sum_over_matrix']:g}; "
                 f"with Q̄ in data units: λ_data = {lam['q_in_data_units']:g}")
    lines.append(fidelity_line(report))
    return "\n".join(lines)


def fidelity_line(report):
    """One line: whether D_syn meets the fidelity bar, and how it misses it."""
    misses = report["fidelity_misses"]
    return ("D_syn meets the fidelity bar" if not misses
            else "D_syn MISSES the fidelity bar: " + "; ".join(misses))
