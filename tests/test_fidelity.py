"""fidelity.py: a dataset's behaviour statistics, the attack -> damage checks, and D_syn's report and bar."""
import dataclasses
import json

import numpy as np
import pytest

import attacks
import data
import diffusion
import eaq
import fidelity
from conftest import Unscale, Zeros


def test_attack_share_and_action_histogram_distance_by_hand():
    ep = data.Episodes(np.zeros((1, 3, 2, 2), np.float32), np.ones((1, 3, 2, 7), bool),
                       np.array([[[5, 0], [6, 4]]]), np.zeros((1, 2), np.float32), np.array([[False, True]]),
                       np.array([2], np.int32), attrs={"backend": "smax"})
    assert fidelity.attack_share(ep) == 0.5                           # 5 and 6 attack; 0 and 4 do not
    other = data.Episodes(ep.obs, ep.avail, np.array([[[5, 0], [5, 0]]]), ep.rewards, ep.dones, ep.lengths,
                          attrs={"backend": "smax"})
    # agent 0: {5: .5, 6: .5} vs {5: 1} -> TV 0.5; agent 1: {0: .5, 4: .5} vs {0: 1} -> TV 0.5
    assert fidelity.action_tv_distance(ep, other) == pytest.approx(0.5)
    assert fidelity.action_tv_distance(ep, ep) == 0.0


def damage_episode(backend="smax"):
    """3m's layout (N = K = 3, O = 75, enemy blocks at 26, 39, 52, 13 wide), one episode of 3 steps:
    agent 0 sees enemy 0 at health 1.0, 0.8, 0.6 and shoots it at step 0 only (a hit, then a drop
    with no shooter); agent 1 sees enemy 1 at 0.5, then 0.7 (a gain), then no more; agent 2 shoots
    enemy 2, whom nobody sees (not counted)."""
    obs = np.zeros((1, 4, 3, 75), np.float32)
    for t, health in enumerate([1.0, 0.8, 0.6]):
        obs[0, t, 0, 26], obs[0, t, 0, 26 + 7] = health, 1.0             # health, unit-type bit 0 (marine)
    for t, health in enumerate([0.5, 0.7]):
        obs[0, t, 1, 39], obs[0, t, 1, 39 + 7] = health, 1.0
    actions = np.array([[[5, 4, 7], [4, 4, 4], [4, 4, 4]]])          # 5 + k attacks enemy k; 4 stops
    return data.Episodes(obs, np.ones((1, 4, 3, 8), bool), actions, np.zeros((1, 3), np.float32),
                         np.array([[False, False, True]]), np.array([3], np.int32), attrs={"backend": backend})


def test_attack_damage_counts_by_hand():
    ep = damage_episode()
    assert attacks.damage_threshold(ep) == pytest.approx(0.1)                  # half the smallest drop, 0.2
    counts = attacks.damage_counts(ep, 0.1)
    assert counts == {"seen": 3, "attacked": 1, "attacked_hit": 1, "unattacked_hit": 1, "gains": 1,
                      "all_seen": 0, "reward_agrees": 0, "reward_excess": 0.0,     # enemy 2 is never seen
                      "some_seen": 2, "reward_short": 2,     # both steps show enemy 0's 0.2 drop, rewards say 0
                      "seen_twice": 0, "disagree": 0}        # no enemy is seen by two agents
    assert attacks.damage_shares(counts) == pytest.approx(
        {"attacks_that_damage": 1.0, "damage_with_shooter": 0.5, "health_gain_share": 1 / 3,
         "reward_matches_damage": float("nan"), "reward_minus_damage": float("nan"),
         "reward_below_damage": 1.0, "health_disagreement": float("nan")}, nan_ok=True)
    obs = ep.obs.copy()
    obs[0, 1, 2, 26], obs[0, 1, 2, 33] = 0.8, 1.0          # agent 2 reads enemy 0 as agent 0 does at step 1
    obs[0, 2, 2, 26], obs[0, 2, 2, 33] = 0.3, 1.0          # and 0.3 against agent 0's 0.6 at step 2
    obs[0, 3, 2, 26], obs[0, 3, 2, 33] = 0.9, 1.0          # after the episode's end: not judged
    two = attacks.damage_counts(dataclasses.replace(ep, obs=obs), 0.1)
    assert (two["seen_twice"], two["disagree"]) == (2, 1) and two["seen"] == counts["seen"]
    assert attacks.damage_shares(two)["health_disagreement"] == 0.5
    paid = dataclasses.replace(ep, rewards=np.array([[0.0, 10 * 0.2 / 3 - 0.3, 0.0]], np.float32))
    assert attacks.damage_counts(paid, 0.1)["reward_short"] == 1     # 2/3 short is past half a shot (1/3); 0.3 not
    assert attacks.damage_counts(ep, 0.25)["attacked_hit"] == 0                # a 0.2 drop is below 0.25
    smac = damage_episode("smac")                                           # no SMAX layout: no numbers
    assert attacks.enemy_health(smac) is None and np.isnan(attacks.damage_threshold(smac))
    assert set(attacks.damage_counts(smac, 0.1).values()) == {0}
    assert all(np.isnan(v) for v in attacks.damage_shares(attacks.damage_counts(smac, 0.1)).values())


def test_reward_against_the_damage_the_observations_show_by_hand():
    """3m's layout, agent 0 sees all three enemies for 4 steps: step 0 enemy 0 loses 0.2 (SMAX pays
    10 * 0.2 / 3) and the reward says so; step 1 enemy 1 loses 0.4, enemy 2 gains 0.2 (paid nothing),
    the reward says 2.0 against 10 * 0.4 / 3; step 2 ends the episode (its reward, a win bonus, is not judged)."""
    obs = np.zeros((1, 4, 3, 75), np.float32)
    healths = [[1.0, 1.0, 0.5], [0.8, 1.0, 0.5], [0.8, 0.6, 0.7], [0.8, 0.6, 0.7]]     # (T+1, K)
    for t, row in enumerate(healths):
        for k, start in enumerate((26, 39, 52)):
            obs[0, t, 0, start], obs[0, t, 0, start + 7] = row[k], 1.0
    rewards = np.array([[10 * 0.2 / 3, 2.0, 15.0]], np.float32)
    ep = data.Episodes(obs, np.ones((1, 4, 3, 8), bool), np.full((1, 3, 3), 4), rewards,
                       np.array([[False, False, True]]), np.array([3], np.int32), attrs={"backend": "smax"})
    counts = attacks.damage_counts(ep, 0.1)
    assert (counts["all_seen"], counts["reward_agrees"]) == (2, 1)   # 2.0 - 4/3 is past half a shot's 1/3
    assert (counts["some_seen"], counts["reward_short"]) == (2, 0)   # overpaid is not short
    assert counts["reward_excess"] == pytest.approx(2.0 - 10 * 0.4 / 3, abs=1e-5)
    shares = attacks.damage_shares(counts)
    assert shares["reward_matches_damage"] == 0.5
    assert shares["reward_minus_damage"] == pytest.approx((2.0 - 10 * 0.4 / 3) / 2, abs=1e-5)


def test_in_real_data_every_health_drop_follows_an_attack_on_that_enemy(tiny_3m):
    real = data.load_dataset(tiny_3m[0])
    threshold = attacks.damage_threshold(real)
    assert threshold == pytest.approx(0.1)                  # a marine's shot: 9 of a marine's 45 health, halved
    shares = attacks.damage_shares(attacks.damage_counts(real, threshold))
    assert shares["damage_with_shooter"] == 1.0 and shares["health_gain_share"] == 0.0
    assert 0.6 < shares["attacks_that_damage"] < 1.0       # the misses: weapons cooling down
    assert shares["reward_matches_damage"] == 1.0 and abs(shares["reward_minus_damage"]) < 1e-5
    assert shares["reward_below_damage"] == 0.0
    counts = attacks.damage_counts(real, threshold)
    assert counts["some_seen"] > counts["all_seen"] > 0       # partly seen steps are judged too
    late_rewards = np.roll(real.rewards, 1, axis=1)         # every reward a step late
    late_shares = attacks.damage_shares(attacks.damage_counts(dataclasses.replace(real, rewards=late_rewards),
                                                              threshold))
    assert late_shares["reward_matches_damage"] < 0.8 and late_shares["reward_below_damage"] > 0.1
    retargeted = real.actions.copy()                        # every attack moved to the next enemy
    attack = retargeted >= 5
    retargeted[attack] = 5 + (retargeted[attack] - 4) % 3
    moved = attacks.damage_shares(attacks.damage_counts(dataclasses.replace(real, actions=retargeted), threshold))
    assert moved["damage_with_shooter"] < 0.5
    late = real.actions.copy()                              # every action a step late
    late[:, 1:], late[:, 0] = real.actions[:, :-1], 4
    assert attacks.damage_shares(attacks.damage_counts(dataclasses.replace(real, actions=late), threshold))[
        "damage_with_shooter"] < 0.9


def real_matrix(path):
    """(Episodes, layout, Eq. 4 matrix in data units, reward range) of a dataset file."""
    real = data.load_dataset(path)
    matrix = data.episodes_to_matrix(real)
    r = data.layout_of(real).reward
    return real, data.layout_of(real), matrix, (float(matrix[:, r].min()), float(matrix[:, r].max()))


def test_statistics_fed_batch_by_batch_equal_the_whole(tiny_3m):
    real, layout, matrix, reward_range = real_matrix(tiny_3m[0])
    threshold = attacks.damage_threshold(real)
    whole, parts = (fidelity.MatrixStats(layout, reward_range, "smax", threshold),
                    fidelity.MatrixStats(layout, reward_range, "smax", threshold))
    whole.add(matrix)
    for chunk in np.array_split(matrix, 3):
        parts.add(chunk)
    a, b = whole.summary(), parts.summary()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True), key
    np.testing.assert_array_equal(whole.action_counts, parts.action_counts)
    assert a["attack_share"] == pytest.approx(fidelity.attack_share(real))
    assert a["return_mean"] == pytest.approx(float(real.returns().mean()), abs=1e-4)
    assert a["win_share"] == pytest.approx(float(np.mean(real.returns() >= 18.0))) and a["win_share"] > 0
    assert fidelity.win_share([20.0, 18.0, 17.9, 5.0]) == 0.5                  # a win's level: 90 % of 20
    assert a["q0_win_share"] == a["win_share"]                             # D_real: Q_tot at step 0 is the return
    assert a["q0_std"] == pytest.approx(a["return_std"], rel=1e-4)
    assert (a["damage_with_shooter"], a["health_gain_share"]) == (1.0, 0.0)   # decoded from Eq. 4 as recorded
    assert a["reward_matches_damage"] == 1.0 and abs(a["reward_minus_damage"]) < 1e-4
    assert a["reward_below_damage"] == 0.0 and a["health_disagreement"] == 0.0   # every viewer reads the same
    assert a["attacks_that_damage"] == pytest.approx(
        attacks.damage_shares(attacks.damage_counts(real, threshold))["attacks_that_damage"])


def test_wins_are_counted_from_the_reward_row_and_from_q_tot_at_step_0_apart(tiny_3m):
    real, layout, matrix, reward_range = real_matrix(tiny_3m[0])
    wins = float(np.mean(real.returns() >= fidelity.WIN_RETURN))
    no_rewards, no_q = matrix.copy(), matrix.copy()
    no_rewards[:, layout.reward] = 0.0                  # the reward row loses every win; the Q row keeps them
    no_q[:, layout.q_tot] = 0.0                         # and the other way round
    for m, reward_wins, q_wins in ((no_rewards, 0.0, wins), (no_q, wins, 0.0)):
        stats = fidelity.MatrixStats(layout, reward_range)
        stats.add(m)
        s = stats.summary()
        assert (s["win_share"], s["q0_win_share"]) == pytest.approx((reward_wins, q_wins))
    assert wins > 0


def test_the_fidelity_verdict_sees_a_synthetic_set_without_attacks(tiny_3m):
    real, layout, matrix, reward_range = real_matrix(tiny_3m[0])

    def report_of(syn_matrix):
        threshold = attacks.damage_threshold(real)
        real_stats, syn_stats = (fidelity.MatrixStats(layout, reward_range, "smax", threshold),
                                 fidelity.MatrixStats(layout, reward_range, "smax", threshold))
        real_stats.add(matrix), syn_stats.add(syn_matrix)
        return fidelity.synthetic_report(real_stats, syn_stats)
    same = report_of(matrix.copy())
    assert same["fidelity_misses"] == [] and same["action_tv_distance"] == 0.0
    assert same["real"]["attack_share"] == pytest.approx(fidelity.attack_share(real))
    assert same["real"]["attack_share"] > 0.1
    passive = matrix.copy()
    valid = data.valid_steps(real.lengths, matrix.shape[-1])
    for n in range(layout.n_agents):
        rows = passive[:, layout.action(n)]                       # (E, A, T) one-hot action rows
        rows[:] = 0.0
        rows[:, 4] = valid                                        # every agent stops, every step
    report = report_of(passive)
    assert report["synthetic"]["attack_share"] == 0.0 and report["action_tv_distance"] > 0.5
    assert any(m.startswith("attack share 0.000") for m in report["fidelity_misses"])
    assert "MISSES the fidelity bar" in fidelity.fidelity_line(report)
    retargeted = matrix.copy()                      # each agent's attack (and legal-attack) rows rolled by one
    for n in range(layout.n_agents):
        for rows in (layout.action(n), layout.avail(n)):
            block = retargeted[:, rows]
            block[:, 5:] = np.roll(block[:, 5:], 1, axis=1)
            retargeted[:, rows] = block
    report = report_of(retargeted)
    assert report["synthetic"]["attack_share"] == pytest.approx(same["synthetic"]["attack_share"])
    assert report["synthetic"]["damage_with_shooter"] < 0.5
    assert [m for m in report["fidelity_misses"] if m.startswith("damage with a shooter")], report["fidelity_misses"]
    assert same["synthetic"]["damage_with_shooter"] == 1.0


def test_the_report_prints_the_damage_check_and_the_lambda_in_the_papers_units(tiny_3m):
    real, layout, matrix, reward_range = real_matrix(tiny_3m[0])
    stats = fidelity.MatrixStats(layout, reward_range, "smax", attacks.damage_threshold(real))
    stats.add(matrix)
    report = {"real": stats.summary(), "synthetic": stats.summary(), "action_tv_distance": 0.0, "lam": 0.1,
              "lam_units": {"sum_over_matrix": 2760.0, "q_in_data_units": 0.01}, "hinge_active_share": 0.5}
    report["fidelity_misses"] = fidelity.fidelity_misses(report)
    printed = fidelity.format_report(report)
    assert "damage_with_shooter        1.000     1.000" in printed
    assert "reward_matches_damage      1.000     1.000" in printed and "reward_minus_damage       +0.000" in printed
    assert f"{'reward_below_damage':22s}{'0.000':>10s}{'0.000':>10s}" in printed
    assert "hinge active on 50.0% of training steps; as Eq. 5 summed over F x T: λ_sum = 2760" in printed
    assert printed.endswith("D_syn meets the fidelity bar")
    without_q = fidelity.format_report({**report, "lam": 0.0, "hinge_active_share": 1.0})   # the hinge is computed
    assert "λ = 0: no Q-hinge in the loss (EAQ^{-Q})" in without_q and "hinge active" not in without_q


def test_the_copy_test_by_hand(tiny_3m):
    real = data.load_dataset(tiny_3m[0])
    layout, matrix = data.layout_of(real), data.episodes_to_matrix(real)
    normalizer = data.Normalizer.fit(matrix)
    horizons = diffusion.episode_horizons(real.lengths, 8, matrix.shape[-1])
    schedule = diffusion.Diffusion(Zeros(), K=1000)
    copier = diffusion.Diffusion(Unscale(schedule.abar), K=1000)
    copied = fidelity.copy_test(copier, normalizer, real, horizons, ks=(1, 1000))
    assert copied["1"] == {"action_accuracy": 1.0, "legal_accuracy": 1.0}
    assert copied["1000"]["action_accuracy"] < 0.9                       # pure noise, blown up: no copy
    # the zero network answers every row's midpoint: the lowest action an agent ever took, rows at 0.5 illegal
    blank = fidelity.copy_test(schedule, normalizer, real, horizons, ks=(1,))["1"]
    valid = data.valid_steps(real.lengths, matrix.shape[-1])
    lowest = np.array([real.actions[..., n][valid].min() for n in range(layout.n_agents)])
    assert blank["action_accuracy"] == pytest.approx(float((real.actions[valid] == lowest).mean()))
    mid = normalizer.unnormalize(np.zeros_like(matrix[:1]))[0, :, 0]         # (F,) each row's answer
    legal_rows = np.concatenate([np.arange(layout.avail(n).start, layout.avail(n).stop)
                                 for n in range(layout.n_agents)])
    truth = real.avail[:, :matrix.shape[-1]][valid]                          # (n, N, A)
    assert blank["legal_accuracy"] == pytest.approx(
        float(((mid[legal_rows] > 0.5).reshape(layout.n_agents, -1)[None] == truth).mean()))


def test_the_bar_holds_health_gains_wins_and_the_copy_test(tiny_3m):
    real, layout, matrix, reward_range = real_matrix(tiny_3m[0])
    real_stats, syn_stats = fidelity.stats_pair(real, matrix, reward_range)
    syn_stats.add(matrix)
    report = fidelity.synthetic_report(real_stats, syn_stats)
    assert report["fidelity_misses"] == [] and report["real"]["win_share"] > 0

    def misses(**synthetic):
        changed = {**report, "synthetic": {**report["synthetic"], **synthetic}}
        return fidelity.fidelity_misses(changed)
    assert misses(health_gain_share=0.02) == ["health gained 0.020 > 0.01"]
    assert misses(health_gain_share=0.01) == []
    low = 0.69 * report["real"]["win_share"]
    assert [m for m in misses(win_share=low) if m.startswith("win share")] and misses(
        win_share=0.71 * report["real"]["win_share"]) == []
    copied = {**report, "copy": {"1": {"action_accuracy": 0.985, "legal_accuracy": 1.0}}}
    assert fidelity.fidelity_misses(copied) == ["copy test at k = 1 0.985 < 0.99"]
    copied["copy"]["1"]["action_accuracy"] = 0.995
    assert fidelity.fidelity_misses(copied) == []


@pytest.fixture(scope="module")
def tiny_model(tiny_3m, tmp_path_factory):
    out = tmp_path_factory.mktemp("fidelity-model")
    config = eaq.DiffusionConfig(steps=30, batch_size=8, K=50, dim=16, dim_mults=(1, 2), scale=1,
                                 network="agents")
    return out, eaq.fit_and_sample(config, tiny_3m[0], str(out), progress=False)


def test_the_command_reads_a_synthetic_file_as_eaq_reported_it(tiny_3m, tiny_model, tmp_path, capsys):
    out, streamed = tiny_model
    assert set(streamed["copy"]) == {"1", "50"}
    assert any(m.startswith("copy test at k = 1") for m in streamed["fidelity_misses"])   # 30 steps cannot copy
    fidelity.main(["--real", tiny_3m[0], "--synthetic", str(out / "synthetic.h5"), "--json", str(tmp_path / "r.json")])
    printed = capsys.readouterr().out
    assert "D_syn MISSES the fidelity bar" in printed and "copy test" not in printed
    read = json.load(open(tmp_path / "r.json"))
    for key in ("attack_share", "damage_with_shooter", "length_mean", "legal_before_repair", "ended_share",
                "win_share", "focus_fire_share"):
        assert read["synthetic"][key] == pytest.approx(streamed["synthetic"][key], nan_ok=True), key
    assert read["action_tv_distance"] == pytest.approx(streamed["action_tv_distance"])


def test_the_command_samples_a_checkpoint_and_runs_its_copy_test(tiny_3m, tiny_model, tmp_path, capsys):
    out, streamed = tiny_model
    fidelity.main(["--real", tiny_3m[0], "--checkpoint", str(out / "model.pt"), "--episodes", "10",
                   "--k", "1", "7", "--json", str(tmp_path / "r.json")])
    printed = capsys.readouterr().out
    read = json.load(open(tmp_path / "r.json"))
    assert read["synthetic"]["episodes"] == 10 and set(read["copy"]) == {"1", "7"}
    assert f"copy test, D_real noised to k = 1: actions {read['copy']['1']['action_accuracy']:.3f}" in printed
    assert read["copy"]["1"] == pytest.approx(streamed["copy"]["1"])        # the same network, noise and episodes


def test_the_command_refuses_bad_input_in_one_line(tiny_3m, tmp_path, capsys):
    for argv, message in ((["--real", tiny_3m[0]], "give --synthetic S.h5, --checkpoint model.pt, or both"),
                          (["--real", tiny_3m[0], "--synthetic", str(tmp_path / "none.h5")], "none.h5"),
                          (["--real", tiny_3m[0], "--checkpoint", str(tmp_path / "none.pt")], "none.pt"),
                          (["--real", tiny_3m[0], "--checkpoint", str(tmp_path / "none.pt"), "--device", "tpu9"],
                           "--device 'tpu9' is not a torch device")):
        with pytest.raises(SystemExit):
            fidelity.main(argv)
        err = capsys.readouterr().err.strip()
        assert message in err.splitlines()[-1] and "Traceback" not in err, err
