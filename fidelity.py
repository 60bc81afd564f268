"""How faithful a generated dataset is: D_syn beside D_real (paper §3.2's synthetic episodes, Fig. 1b).

* Behaviour statistics of a dataset: attack share, per-agent action
  histograms and their total-variation distance, Figure 1b's focus-fire
  share (`focus_fire_counts`), the win share.
* The attack -> damage checks of SMAX episodes (`attacks.py`): damage with
  a shooter, health gained, reward against damage.
* `MatrixStats`: all of them, fed with generated Eq. 4 matrices batch by
  batch (D_syn is never held whole), and `synthetic_report`: D_real and
  D_syn side by side with the fidelity bar's verdict (`FIDELITY_BAR`).
* The copy test (`copy_test`): can the trained network hand back a real
  episode noised to step k? A network that cannot copy at k = 1 cannot
  generate what it cannot represent.

    python fidelity.py --real R.h5 --synthetic S.h5     # a D_syn file beside its D_real
    python fidelity.py --real R.h5 --checkpoint model.pt [--episodes 1000]   # sample, and the copy test

Shapes: actions (E, T, N), avail (E, T, N, A), valid (E, T); health (E, T+1, K).
"""
import argparse
import collections
import dataclasses

import numpy as np
import torch

import artifacts
import attacks
import data
import diffusion
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
    n_attacks, agent_steps = attack_counts(episodes)
    return n_attacks / agent_steps


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
        self.damage.update(attacks.damage_counts(episodes, self.damage_threshold))
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
            **attacks.damage_shares(self.damage),
        }


# What a faithful D_syn must show against D_real (docs/fidelity.md), and its model's copy test at k = 1.
FIDELITY_BAR = {"attack_share_rel": 0.25, "action_tv": 0.1, "ended_share": 0.9, "legal_before_repair": 0.98,
                "length_rel": 0.1, "damage_with_shooter": 0.9, "health_gain_share": 0.01, "win_share_rel": 0.7,
                "copy_k1": 0.99}


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
    if syn["health_gain_share"] > bar["health_gain_share"]:
        misses.append(f"health gained {syn['health_gain_share']:.3f} > {bar['health_gain_share']}")
    if syn["win_share"] < bar["win_share_rel"] * real["win_share"]:
        misses.append(f"win share {syn['win_share']:.3f} < {bar['win_share_rel']} x D_real's {real['win_share']:.3f}")
    copy = report.get("copy", {}).get("1")
    if copy and copy["action_accuracy"] < bar["copy_k1"]:
        misses.append(f"copy test at k = 1 {copy['action_accuracy']:.3f} < {bar['copy_k1']}")
    return misses


def reward_range(normalizer, layout):
    """The reward row's (lo, hi) in data units, as the normalizer fitted it: what decoding maps the row back into."""
    return float(normalizer.lo[layout.reward]), float(normalizer.hi[layout.reward])


def matrix_stats(real, reward_range):
    """An empty MatrixStats for matrices of D_real's layout (Episodes), reward range (lo, hi) and damage threshold."""
    return MatrixStats(data.layout_of(real), reward_range, real.attrs.get("backend", "smax"),
                       attacks.damage_threshold(real))


def stats_pair(real, real_matrix, reward_range):
    """Two MatrixStats for D_real (Episodes; `real_matrix` its Eq. 4 matrix (E, F, T), added) and D_syn (empty)."""
    real_stats, syn_stats = matrix_stats(real, reward_range), matrix_stats(real, reward_range)
    real_stats.add(real_matrix)
    return real_stats, syn_stats


def synthetic_report(real_stats, syn_stats):
    """D_real vs D_syn side by side (two MatrixStats), the action-histogram distance and the fidelity verdict."""
    report = {"real": real_stats.summary(), "synthetic": syn_stats.summary(),
              "action_tv_distance": histogram_tv(real_stats.action_counts, syn_stats.action_counts)}
    report["fidelity_misses"] = fidelity_misses(report)
    return report


def format_report(report):
    """A report (`synthetic_report`, with eaq.py's training entries and the copy test where present) as printed:
    D_real and D_syn side by side, λ in the paper's units, the copy test, the verdict."""
    rows = [("episodes", "{:d}"), ("ended_share", "{:.3f}"), ("length_mean", "{:.1f}"),
            ("length_std", "{:.1f}"), ("length_min", "{:d}"), ("length_max", "{:d}"),
            ("legal_before_repair", "{:.3f}"), ("return_mean", "{:.2f}"), ("return_std", "{:.2f}"),
            ("win_share", "{:.3f}"), ("q0_win_share", "{:.3f}"), ("q0_std", "{:.2f}"), ("q_bar_mean", "{:.2f}"),
            ("q_consistency", "{:.3f}"), ("attack_share", "{:.3f}"),
            ("focus_fire_share", "{:.3f}"), ("all_attack_steps", "{:d}"), ("attacks_that_damage", "{:.3f}"),
            ("damage_with_shooter", "{:.3f}"), ("health_gain_share", "{:.3f}"), ("reward_matches_damage", "{:.3f}"),
            ("reward_minus_damage", "{:+.3f}"), ("reward_below_damage", "{:.3f}"),
            ("health_disagreement", "{:.3f}")]
    lines = [f"{'':22s}{'D_real':>10s}{'D_syn':>10s}"]
    for key, fmt in rows:
        lines.append(f"{key:22s}{fmt.format(report['real'][key]):>10s}"
                     f"{fmt.format(report['synthetic'][key]):>10s}")
    lines.append(f"action-histogram TV distance (D_real vs D_syn): {report['action_tv_distance']:.3f}")
    if report.get("lam") == 0:
        lines.append("λ = 0: no Q-hinge in the loss (EAQ^{-Q})")
    elif "lam" in report:
        lam = report["lam_units"]
        lines.append(f"λ = {report['lam']:g}: hinge active on {report['hinge_active_share']:.1%} of training steps; "
                     f"as Eq. 5 summed over F x T: λ_sum = {lam['sum_over_matrix']:g}; "
                     f"with Q̄ in data units: λ_data = {lam['q_in_data_units']:g}")
    for k, result in report.get("copy", {}).items():
        lines.append(f"copy test, D_real noised to k = {k}: actions {result['action_accuracy']:.3f}, "
                     f"legal-action rows {result['legal_accuracy']:.3f}")
    lines.append(fidelity_line(report))
    return "\n".join(lines)


def fidelity_line(report):
    """One line: whether D_syn meets the fidelity bar, and how it misses it."""
    misses = report["fidelity_misses"]
    return ("D_syn meets the fidelity bar" if not misses
            else "D_syn MISSES the fidelity bar: " + "; ".join(misses) + " (the generator settings that come "
                 "closer, and their cost: docs/fidelity.md)")


# ---------------------------------------------------------------------------
# From a trained model: its samples and the copy test
# ---------------------------------------------------------------------------
def action_and_legal(matrix, layout, valid):
    """Each valid agent-step's (action rows, legal-action rows), (n, N, A) each, of a matrix (E, F, T) in data
    units; valid (E, T)."""
    rows = data.agent_rows(matrix, layout)[valid]                                  # (n, N, O + 2A)
    O, A = layout.obs_dim, layout.n_actions
    return rows[..., O:O + A], rows[..., O + A:]


def window_batches(horizons, batch_size=256):
    """D_real's episodes grouped by their window (`horizons`, (E,)), at most batch_size at a time:
    yields (h, index of the batch's episodes)."""
    for h in np.unique(horizons):
        members = np.flatnonzero(horizons == h)
        for start in range(0, len(members), batch_size):
            yield int(h), members[start:start + batch_size]


@torch.no_grad()
def copy_test(ema, normalizer, real, horizons, ks=(1, 50), batch_size=256, seed=0):
    """D_real's episodes noised to each step k (Eq. 5's tau_k) and read back by the network: {str(k):
    {"action_accuracy": share of valid agent-steps whose action-row argmax is the action taken,
    "legal_accuracy": share of legal-action entries on the right side of 0.5}}. Each episode is cut to its
    window (`horizons`, (E,)), as in training; `ema` is a diffusion.Diffusion, `normalizer` its data's.
    A step above the model's K is read at K."""
    layout, device, ks = data.layout_of(real), ema.abar.device, sorted({min(k, ema.K) for k in ks})
    tau0, valid, _, matrix = diffusion.prepare(real, normalizer)                     # (E, F, T), (E, T)
    g = torch.Generator().manual_seed(seed)
    right = {k: np.zeros(4) for k in ks}             # right actions, agent-steps, right legal entries, entries
    for h, index in window_batches(horizons, batch_size):
        x0, v = tau0[index, :, :h], valid[index, :h].numpy()                         # (b, F, h), (b, h)
        act, legal = action_and_legal(matrix[index, :, :h], layout, v)
        for k in ks:
            steps = torch.full((len(index),), k, dtype=torch.long)
            tau_k = ema.q_sample(x0, steps, torch.randn(x0.shape, generator=g))
            pred = ema.predict_tau0(tau_k.to(device), steps.to(device)).cpu().numpy()
            pred_act, pred_legal = action_and_legal(normalizer.unnormalize(pred), layout, v)
            right[k] += [(pred_act.argmax(-1) == act.argmax(-1)).sum(), act.shape[0] * act.shape[1],
                         ((pred_legal > 0.5) == (legal > 0.5)).sum(), legal.size]
    return {str(k): {"action_accuracy": r[0] / r[1], "legal_accuracy": r[2] / r[3]} for k, r in right.items()}


def sampled_report(model, real, real_matrix, windows, ddim_steps, batch_size=256, generator=None, on_batch=None,
                   progress=True):
    """D_real beside len(windows) episodes sampled from a trained model (diffusion.Model) with these windows
    (n,): `synthetic_report`; each decoded batch (Episodes) also goes to `on_batch` (eaq.py writes D_syn)."""
    real_stats, syn_stats = stats_pair(real, real_matrix, reward_range(model.normalizer, data.layout_of(real)))
    for matrix in diffusion.sample_batches(model.ema, model.normalizer, windows, real_matrix.shape[-1],
                                           real_matrix.shape[1], ddim_steps or None, batch_size, generator, progress):
        episodes = syn_stats.add(matrix)
        if on_batch:
            on_batch(episodes)
    return synthetic_report(real_stats, syn_stats)


# Measured on the matrix before decoding; a D_syn file keeps them as attributes (decoding repairs both).
UNDECODED = ("legal_before_repair", "ended_share")


def file_report(real, synthetic_path):
    """D_real (Episodes) beside a D_syn file, read a chunk at a time: `synthetic_report`."""
    real_matrix = data.episodes_to_matrix(real)
    r = data.layout_of(real).reward
    real_stats, syn_stats = stats_pair(real, real_matrix, (float(real_matrix[:, r].min()),
                                                           float(real_matrix[:, r].max())))
    for chunk in data.dataset_chunks(synthetic_path):
        if data.layout_of(chunk) != data.layout_of(real):
            raise artifacts.InputError(f"{synthetic_path} has another layout than D_real ({data.layout_of(chunk)}); "
                                       f"pass the D_real it was generated from")
        syn_stats.add(data.episodes_to_matrix(chunk))
    report = synthetic_report(real_stats, syn_stats)
    attrs = data.read_attrs(synthetic_path)
    report["synthetic"].update({key: attrs.get(key, float("nan")) for key in UNDECODED})
    report["fidelity_misses"] = fidelity_misses(report)
    return report


def load_for_judging(path, real, device="cpu", build=diffusion.build):
    """The model in checkpoint `path` (`build`: diffusion.load_checkpoint's) on torch `device`, after checking
    that it was trained on D_real's layout, and D_real's episode windows as it trained on them (E,)."""
    model = diffusion.load_checkpoint(path, build)
    model.ema.to(device)
    if model.config["layout"] != dataclasses.asdict(data.layout_of(real)):
        raise artifacts.InputError(f"{path} was trained on another layout than --real's; pass its D_real")
    return model, diffusion.episode_horizons(real.lengths, model.config["bucket_width"], real.rewards.shape[1])


def checkpoint_report(path, real, synthetic=None, n_episodes=1000, ddim_steps=20, ks=(1, 50), seed=0,
                      progress=True, device="cpu", build=diffusion.build):
    """The model in checkpoint `path` (trained on D_real, Episodes; `build`: diffusion.load_checkpoint's)
    judged on torch `device`: its D_syn file `synthetic`, or else `n_episodes` sampled from it with D_real's
    windows, beside D_real, and its copy test at steps `ks`."""
    model, horizons = load_for_judging(path, real, device, build)
    if synthetic:
        report = file_report(real, synthetic)
    else:
        generator = torch.Generator().manual_seed(seed)
        windows = diffusion.synthetic_windows(horizons, n_episodes, generator)
        report = sampled_report(model, real, diffusion.prepare(real, model.normalizer)[3], windows, ddim_steps,
                                generator=generator, progress=progress)
    report["copy"] = copy_test(model.ema, model.normalizer, real, horizons, ks, seed=seed)
    report["fidelity_misses"] = fidelity_misses(report)
    return {**report, "model_steps": model.step, "train_cpu_seconds": model.train_cpu_seconds}


def main(argv=None):
    p = argparse.ArgumentParser(description="The fidelity suite: D_syn beside D_real, and a model's copy test.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--real", required=True, help="D_real: the HDF5 dataset the model was trained on")
    p.add_argument("--synthetic", help="a D_syn file (eaq.py's synthetic.h5)")
    p.add_argument("--checkpoint", help="a model.pt (eaq.py's): its copy test, and without --synthetic its samples")
    p.add_argument("--episodes", type=int, default=1000, help="episodes sampled from --checkpoint")
    p.add_argument("--ddim-steps", type=int, default=20, help="DDIM steps of that sampling; 0 = DDPM, all K")
    p.add_argument("--k", type=int, nargs="+", default=[1, 50], help="the copy test's diffusion steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and the copy test's noise")
    p.add_argument("--device", default="cpu", help="torch device that samples and reads back: cpu, cuda")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    with artifacts.parser_errors(p):
        if not (args.synthetic or args.checkpoint):
            raise artifacts.InputError("give --synthetic S.h5, --checkpoint model.pt, or both")
        artifacts.require_flags(at_least_one={"--episodes": args.episodes, "--k": min(args.k)},
                                seeds={"--seed": args.seed})
        diffusion.check_device(args.device)
    with artifacts.one_line_errors():
        real = data.load_dataset(args.real)
        report = (checkpoint_report(args.checkpoint, real, args.synthetic, args.episodes, args.ddim_steps,
                                    tuple(args.k), args.seed, device=args.device) if args.checkpoint
                  else file_report(real, args.synthetic))
        if args.json:
            artifacts.write_json(args.json, report)
    print(format_report(report))


if __name__ == "__main__":
    main()
