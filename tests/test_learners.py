"""qmix.py, learner.py, cql.py, bcq.py, rad.py: networks, targets, penalties, policies, rollouts, training,
checkpoints, seeding."""
import csv
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bcq
import cql
import data
import datasets
import env as envlib
import learner
import qmix
import rad

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mixer_is_monotonic_in_every_agent_q():
    torch.manual_seed(0)
    mixer = qmix.QMixer(state_dim=12, n_agents=4)
    q = torch.randn(64, 4, requires_grad=True)
    q_tot = mixer(q, torch.randn(64, 12))
    grad, = torch.autograd.grad(q_tot.sum(), q)
    assert (grad >= 0).all() and (grad > 0).any()


def hand_batch():
    """B = 1, T = 3 padded steps (the episode lasts 2), N = 2 agents, O = 2, A = 3."""
    torch.manual_seed(0)
    avail = torch.ones(1, 4, 2, 3, dtype=torch.bool)
    avail[0, 1, :, 2] = False                                  # action 2 illegal at t = 1
    return {"obs": torch.randn(1, 4, 2, 2), "avail": avail,
            "actions": torch.tensor([[[0, 1], [1, 0], [0, 0]]]),
            "rewards": torch.tensor([[1.0, 2.0, 0.0]]), "dones": torch.tensor([[0.0, 1.0, 0.0]]),
            "valid": torch.tensor([[1.0, 1.0, 0.0]])}


def td(model, batch, q, q_target):
    return model.td_loss(batch, q, q_target)[0].item()


def test_td_targets_ignore_illegal_actions_stop_at_done_and_ignore_padding():
    model = qmix.QMIX(n_agents=2, obs_dim=2, n_actions=3)
    batch = hand_batch()
    q, q_target = torch.randn(1, 4, 2, 3), torch.randn(1, 4, 2, 3)
    base = td(model, batch, q, q_target)
    q2, qt2 = q.clone(), q_target.clone()
    q2[0, 1, :, 2], qt2[0, 1, :, 2] = 1e6, 1e6                 # illegal at t = 1: never the target
    assert td(model, batch, q2, qt2) == pytest.approx(base)
    qt3 = q_target.clone()
    qt3[0, 2] = 1e6                                            # after the terminal step t = 1
    assert td(model, batch, q, qt3) == pytest.approx(base)
    padded = {**batch, "rewards": torch.tensor([[1.0, 2.0, 99.0]])}
    assert td(model, padded, q, q_target) == pytest.approx(base)
    changed = {**batch, "rewards": torch.tensor([[5.0, 2.0, 0.0]])}
    assert td(model, changed, q, q_target) != pytest.approx(base), "a valid reward does count"


def test_legal_argmax_and_sampled_actions_are_legal():
    avail = torch.tensor([[True, False, True], [False, False, False]])
    assert qmix.legal_argmax(torch.tensor([[1.0, 9.0, 2.0], [1.0, 2.0, 3.0]]), avail).tolist() == [2, 0]
    g = torch.Generator().manual_seed(0)
    avail = torch.rand(2, 5, 3, 6, generator=g) > 0.5
    avail[..., 4] = True
    draws = cql.sample_legal_actions(avail, 20, g)
    assert draws.shape == (20, 2, 5, 3)
    assert torch.gather(avail.expand(20, *avail.shape), -1, draws[..., None]).all()


def penalty_after_updates(ep, batch, alpha):
    """CQL's penalty (soft max over sampled joint actions minus the data action) after 30 updates."""
    torch.manual_seed(0)
    model = cql.QmixCQL(ep.n_agents, ep.obs_dim, ep.n_actions, alpha=alpha, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(30):
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.generator.manual_seed(123)                        # the same sampled actions for both
    return model.loss(batch)[1]["cql_penalty"]


def test_cql_penalty_lowers_absent_actions_relative_to_data_actions(tiny_3m):
    ep = data.load_dataset(tiny_3m[0])
    batch = learner.EpisodeBuffer([ep]).sample(8, torch.Generator().manual_seed(0))
    without, with_cql = penalty_after_updates(ep, batch, 0.0), penalty_after_updates(ep, batch, 3.0)
    assert with_cql < without - 0.5, (with_cql, without)


def test_bcq_allows_only_legal_actions_near_the_most_likely():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    avail = torch.tensor([[True, True, True, True]])
    assert bcq.bcq_allowed(logits, avail, 0.4).tolist() == [[True, True, False, False]]
    avail = torch.tensor([[False, True, True, True]])          # renormalised: .3/.5 .15/.5 .05/.5
    assert bcq.bcq_allowed(logits, avail, 0.4).tolist() == [[False, True, True, False]]


def test_bcq_policy_never_picks_a_disallowed_action():
    torch.manual_seed(0)
    model = bcq.QmixBCQ(n_agents=3, obs_dim=5, n_actions=6, tau=0.4)
    policy = model.policy()
    policy.reset(16)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs = rng.normal(size=(16, 3, 5)).astype(np.float32)
        avail = rng.random((16, 3, 6)) > 0.4
        avail[..., 4] = True
        h_bc = policy.h_bc.clone()
        last, first = policy.last.clone(), policy.first
        actions = torch.as_tensor(policy(obs, avail))
        policy.h_bc, policy.last, policy.first = h_bc, last, first
        allowed = policy.allowed(torch.as_tensor(obs), torch.as_tensor(avail))
        assert allowed.gather(-1, actions[..., None]).all()
        policy.last, policy.first = actions, False


def test_rad_factors_lie_in_range_with_the_right_shapes():
    g = torch.Generator().manual_seed(0)
    s = rad.rad_factors((4, 7, 3, 10), "rad-s", g)
    m = rad.rad_factors((4, 7, 3, 10), "rad-m", g)
    assert s.shape == (4, 7, 3, 1) and m.shape == (4, 7, 3, 10)
    for z in (s, m):
        assert z.min() >= 0.8 and z.max() <= 1.2 and z.std() > 0.05
    # the whole range is reached, with the spread of U[0.8, 1.2] (std 0.4 / √12), not a narrower one's
    assert m.min() < 0.81 and m.max() > 1.19 and m.std().item() == pytest.approx(0.4 / 12 ** 0.5, rel=0.1)
    batch = {"obs": torch.ones(2, 3, 2, 4), "actions": torch.zeros(2, 2, 2)}
    scaled = rad.augment(batch, "rad-s", g)["obs"]
    assert torch.allclose(scaled, scaled[..., :1].expand_as(scaled)), "one z per observation vector"
    assert rad.augment(batch, "none", g) is batch
    with pytest.raises(ValueError, match="unknown RAD mode"):
        rad.rad_factors((2, 3), "rad-x", g)


class RandomPolicy:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def reset(self, n_envs):
        pass

    def __call__(self, obs, avail):
        return (self.rng.random(avail.shape) * avail).argmax(-1)


def test_short_cql_run_on_good_data_beats_random_play(tiny_3m, tmp_path):
    good = tmp_path / "good.h5"
    datasets.generate_dataset("3m", "good", 64, seed=1, path=str(good), n_envs=64, progress=False)
    ep = data.load_dataset(str(good))
    model = cql.QmixCQL(ep.n_agents, ep.obs_dim, ep.n_actions, seed=0)
    learner.train_loop(model, learner.EpisodeBuffer([ep]), iters=150, batch_size=16, lr=3e-4, seed=0,
                    progress=False)
    eval_env = envlib.make_env("3m", n_envs=32, seed=123)
    trained = qmix.evaluate_policy(model.policy(), eval_env)
    random = qmix.evaluate_policy(RandomPolicy(0), eval_env)
    assert random["return_mean"] < 3.0
    assert trained["return_mean"] > random["return_mean"] + 3.0


def test_mixer_shares_hypernetwork_weights_across_sampled_joint_actions():
    torch.manual_seed(0)
    mixer = qmix.QMixer(state_dim=6, n_agents=3)
    state, q = torch.randn(2, 5, 6), torch.randn(4, 2, 5, 3)
    together = mixer(q, state)
    assert together.shape == (4, 2, 5)
    for m in range(4):
        torch.testing.assert_close(together[m], mixer(q[m], state))


class SumMixer(torch.nn.Module):
    """VDN-style stand-in for the QMIX mixer: Q_tot = sum of the agents' Q (makes targets computable by hand)."""

    def forward(self, q_agents, state):
        return q_agents.sum(-1)


def with_sum_mixers(model):
    model.mixer, model.target_mixer = SumMixer(), SumMixer()
    return model


def test_double_q_target_and_discount_by_hand():
    model = with_sum_mixers(qmix.QMIX(n_agents=2, obs_dim=2, n_actions=3, gamma=0.5))
    batch = hand_batch()                                       # lasts 2 steps; action 2 illegal at t = 1
    q = torch.zeros(1, 4, 2, 3)
    q_target = torch.zeros(1, 4, 2, 3)
    q[0, 0, 0, 0], q[0, 0, 1, 1] = 1.0, 2.0                    # data actions at t = 0: (0, 1) -> Q_tot 3
    q[0, 1, 0, 1], q[0, 1, 1, 0] = 4.0, 0.5                    # data actions at t = 1: (1, 0) -> Q_tot 4.5
    q[0, 1, :, 2] = 9.0                                        # illegal at t = 1: never the argmax
    q[0, 1, 0, 0] = 5.0                                        # online argmax at t = 1: agent 0 -> 0, agent 1 -> 0
    q_target[0, 1, 0] = torch.tensor([7.0, 100.0, 100.0])      # the target net values the online argmax,
    q_target[0, 1, 1] = torch.tensor([-1.0, 100.0, 100.0])     # not its own max (double Q)
    loss, q_tot = model.td_loss(batch, q, q_target)
    torch.testing.assert_close(q_tot, torch.tensor([3.0, 4.5]))      # the V = 2 valid steps
    y0 = 1.0 + 0.5 * (7.0 - 1.0)                               # r_0 + gamma * Q_tot_target(s_1, a*)
    y1 = 2.0                                                   # terminal: no bootstrap
    assert loss.item() == pytest.approx(0.5 * ((3.0 - y0) ** 2 + (4.5 - y1) ** 2) / 2)


class StateMixer(torch.nn.Module):
    """Q_tot = sum of the agents' Q + the state's first feature: a mixer whose value tells which state it read."""

    def forward(self, q_agents, state):
        return q_agents.sum(-1) + state[..., 0]


def test_the_target_mixer_reads_the_next_state_and_the_online_mixer_this_one():
    model = qmix.QMIX(n_agents=2, obs_dim=2, n_actions=3, gamma=0.5)
    model.mixer, model.target_mixer = StateMixer(), StateMixer()
    batch = hand_batch()
    batch["obs"] = torch.zeros(1, 4, 2, 2)
    batch["obs"][0, :, 0, 0] = torch.tensor([10.0, 20.0, 30.0, 40.0])   # the joint state's first feature at t
    loss, q_tot = model.td_loss(batch, torch.zeros(1, 4, 2, 3), torch.zeros(1, 4, 2, 3))
    torch.testing.assert_close(q_tot, torch.tensor([10.0, 20.0]))    # Q_tot(s_t, a_t) at t = 0, 1
    y0 = 1.0 + 0.5 * 20.0                                           # r_0 + gamma * Q_tot_target(s_1, a*)
    y1 = 2.0                                                        # terminal
    assert loss.item() == pytest.approx(0.5 * ((10.0 - y0) ** 2 + (20.0 - y1) ** 2) / 2)


class TimeBehaviour(torch.nn.Module):
    """A behaviour model G sure of action t mod 3 at step t, whatever it sees."""

    def sequence(self, x, lengths):
        M, T, _ = x.shape
        return 10.0 * F.one_hot(torch.arange(T) % 3, 3).float().expand(M, T, 3)


def test_bcqs_filter_of_the_next_action_reads_the_behaviour_model_at_the_next_step(monkeypatch):
    torch.manual_seed(0)
    model = bcq.QmixBCQ(n_agents=2, obs_dim=2, n_actions=3, tau=0.9)
    model.behaviour = TimeBehaviour()
    batch = hand_batch()
    batch["avail"][:] = True                                        # the allowed sets differ by G alone
    seen = {}
    td_loss = qmix.QMIX.td_loss

    def spy(self, batch, q, q_target, allowed_next=None):
        seen["allowed"] = allowed_next
        return td_loss(self, batch, q, q_target, allowed_next)
    monkeypatch.setattr(qmix.QMIX, "td_loss", spy)
    model.loss(batch)
    logits = qmix.unroll(model.behaviour, model.qmix.inputs(batch), qmix.observed_rows(batch))   # (B, T+1, N, A)
    valid = batch["valid"].bool()
    at_next = bcq.bcq_allowed(logits[:, 1:], batch["avail"][:, 1:], 0.9)[valid]
    at_this = bcq.bcq_allowed(logits[:, :-1], batch["avail"][:, :-1], 0.9)[valid]
    assert not torch.equal(at_next, at_this), "G allows other actions at t and t+1 here"
    assert torch.equal(seen["allowed"][valid], at_next)


def test_bcq_target_uses_only_allowed_actions():
    model = with_sum_mixers(qmix.QMIX(n_agents=2, obs_dim=2, n_actions=3, gamma=1.0))
    batch = hand_batch()
    q = torch.zeros(1, 4, 2, 3)
    q[0, 1] = torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0]])     # online argmax: action 0 for both
    q_target = torch.zeros(1, 4, 2, 3)
    q_target[0, 1] = torch.tensor([[10.0, 20.0, 0.0], [10.0, 20.0, 0.0]])
    allowed = torch.zeros(1, 3, 2, 3, dtype=torch.bool)
    allowed[..., 1] = True                                         # BC allows only action 1
    _, q_tot = model.td_loss(batch, q, q_target)
    loss_free, _ = model.td_loss(batch, q, q_target)
    loss_bcq, _ = model.td_loss(batch, q, q_target, allowed_next=allowed)
    y_free, y_bcq = 1.0 + 20.0, 1.0 + 40.0                        # Q_tot target at t = 1: 10+10 or 20+20
    q0 = q_tot[0].item()
    assert loss_free.item() == pytest.approx(0.5 * ((q0 - y_free) ** 2 + (q_tot[1].item() - 2.0) ** 2) / 2)
    assert loss_bcq.item() == pytest.approx(0.5 * ((q0 - y_bcq) ** 2 + (q_tot[1].item() - 2.0) ** 2) / 2)


def test_cql_penalty_exact_value():
    q = torch.tensor([[[1.0, 2.0], [0.0, 3.0]]])                # (V=1, N=2, A=2)
    sampled = torch.tensor([[[0, 0]], [[1, 1]]])                 # M = 2 joint actions: (0, 0) and (1, 1)
    q_tot_data = torch.tensor([2.0])                            # data action (1, 0): 2 + 0
    penalty = cql.cql_penalty(SumMixer(), q, torch.zeros(1, 4), q_tot_data, sampled)
    expected = np.log(np.exp(1.0) + np.exp(5.0) + np.exp(2.0)) - 2.0
    assert penalty.item() == pytest.approx(expected, rel=1e-6)


def test_valid_steps_pick_each_step_and_its_successor():
    batch = hand_batch()                                        # B = 1, T = 3, lasts 2 steps
    x = torch.arange(4.0).view(1, 4)                            # one entry per observation row
    assert qmix.valid_steps(batch, 0)(x).tolist() == [0.0, 1.0]
    assert qmix.valid_steps(batch, 1)(x).tolist() == [1.0, 2.0]
    assert qmix.observed_rows(batch).tolist() == [3]


def padding_filled_with_garbage(batch):
    """The same minibatch with every entry past each episode's end replaced by large random values."""
    g = torch.Generator().manual_seed(1)
    rows = qmix.observed_rows(batch)                            # (B,)
    past_obs = torch.arange(batch["obs"].shape[1])[None, :] >= rows[:, None]             # (B, T+1)
    past_step = batch["valid"] == 0                                                      # (B, T)
    out = dict(batch)
    out["obs"] = torch.where(past_obs[..., None, None], 1e3 * torch.randn(batch["obs"].shape, generator=g),
                             batch["obs"])
    out["avail"] = torch.where(past_obs[..., None, None], torch.rand(batch["avail"].shape, generator=g) > 0.5,
                               batch["avail"])
    out["actions"] = torch.where(past_step[..., None], torch.randint_like(batch["actions"], 5), batch["actions"])
    out["rewards"] = torch.where(past_step, 1e3 * torch.randn(batch["rewards"].shape, generator=g), batch["rewards"])
    out["dones"] = torch.where(past_step, torch.ones_like(batch["dones"]), batch["dones"])
    return out


@pytest.mark.parametrize("learner_cls", [cql.QmixCQL, bcq.QmixBCQ])
def test_losses_never_read_past_an_episodes_end(tiny_3m, learner_cls):
    """Whatever the padding holds, the loss, its logs and its gradient are the same (the learners skip it)."""
    ep = data.load_dataset(tiny_3m[0])
    batch = learner.EpisodeBuffer([ep]).sample(8, torch.Generator().manual_seed(0))
    assert (batch["valid"] == 0).any(), "the minibatch has padding to fill"
    results = []
    for b in (batch, padding_filled_with_garbage(batch)):
        torch.manual_seed(0)
        model = learner_cls(ep.n_agents, ep.obs_dim, ep.n_actions, seed=0)
        loss, logs = model.loss(b)
        grads = torch.autograd.grad(loss, model.parameters())
        results.append((loss, logs, grads))
    (loss, logs, grads), (loss2, logs2, grads2) = results
    assert loss.item() == loss2.item() and logs == logs2
    for g1, g2 in zip(grads, grads2):
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_target_networks_update_every_target_every_iterations(tiny_3m):
    ep = data.load_dataset(tiny_3m[0])
    torch.manual_seed(0)
    model = cql.QmixCQL(ep.n_agents, ep.obs_dim, ep.n_actions)
    buffer = learner.EpisodeBuffer([ep])

    def target_equals_online():
        return all(torch.equal(a, b) for a, b in zip(model.qmix.agent.state_dict().values(),
                                                     model.qmix.target_agent.state_dict().values()))
    learner.train_loop(model, buffer, iters=3, batch_size=4, lr=1e-2, seed=0, target_every=3, progress=False)
    assert target_equals_online(), "copied at iteration 3"
    learner.train_loop(model, buffer, iters=2, batch_size=4, lr=1e-2, seed=0, target_every=3, progress=False)
    assert not target_equals_online(), "not copied at iterations 1-2 of the next loop"


@pytest.mark.parametrize("last_action", [True, False])
def test_greedy_policy_computes_the_training_q_values(last_action):
    torch.manual_seed(0)
    model = qmix.QMIX(n_agents=3, obs_dim=4, n_actions=5, last_action=last_action)
    policy = qmix.GreedyPolicy(model)
    policy.reset(2)
    obs = torch.randn(2, 6, 3, 4)                               # (B, T+1, N, O)
    avail = torch.ones(2, 6, 3, 5, dtype=torch.bool)
    step_q, actions = [], []
    with torch.no_grad():
        for t in range(6):
            q = policy.q_values(obs[:, t])
            a = qmix.legal_argmax(q, avail[:, t])
            policy.last, policy.first = a, False
            step_q.append(q)
            actions.append(a)
        unrolled = qmix.unroll(model.agent, qmix.agent_inputs(obs, torch.stack(actions[:-1], 1), 5, last_action),
                              torch.full((2,), 6))
    torch.testing.assert_close(torch.stack(step_q, 1), unrolled)
    assert model.agent.fc1.in_features == 4 + 3 + (5 if last_action else 0)


def test_unroll_computes_each_episode_alone_up_to_its_last_observation():
    """The packed GRU equals running each episode by itself, cut to its rows; past them Q is 0."""
    torch.manual_seed(0)
    agent = qmix.AgentNetwork(input_dim=7, n_actions=5)
    inputs = torch.randn(3, 6, 2, 7)                            # (B, T+1, N, I)
    rows = torch.tensor([6, 2, 4])
    q = qmix.unroll(agent, inputs, rows)
    for b, n in enumerate(rows.tolist()):
        alone = qmix.unroll(agent, inputs[b:b + 1, :n], torch.tensor([n]))
        torch.testing.assert_close(q[b, :n], alone[0])
        assert not q[b, n:].any()


def test_bcq_greedy_execution_is_plain_greedy_over_legal_actions():
    model = bcq.QmixBCQ(n_agents=2, obs_dim=3, n_actions=4, execution="greedy")
    assert type(model.policy()) is qmix.GreedyPolicy
    assert isinstance(bcq.QmixBCQ(2, 3, 4).policy(), bcq.BCQPolicy)


def run_cli(script, dataset, out, seed, *extra):
    subprocess.run([sys.executable, os.path.join(ROOT, script), "--dataset", dataset, "--iters", "6",
                    "--batch-size", "4", "--eval-every", "3", "--eval-episodes", "3", "--seed", str(seed),
                    "--out", str(out), *extra], check=True, capture_output=True, cwd=ROOT,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("script, extra", [("cql.py", ["--aug", "rad-m"]), ("bcq.py", [])])
def test_a_learner_run_is_a_function_of_its_seed(tiny_3m, tmp_path, script, extra):
    first = run_cli(script, tiny_3m[0], tmp_path / "a", 0, *extra)
    again = run_cli(script, tiny_3m[0], tmp_path / "b", 0, *extra)
    other = run_cli(script, tiny_3m[0], tmp_path / "c", 1, *extra)
    assert first == again, "the same seed in another process gives the same metrics.csv"
    loss = "cql_penalty" if script == "cql.py" else "bc_loss"
    assert [r[loss] for r in first] != [r[loss] for r in other], "another seed gives other numbers"


def test_minibatches_equal_slices_of_zero_padded_episodes(tiny_3m):
    """The unpadded episode store gathers exactly what zero-padded (E, T, ...) arrays would give."""
    ep = data.load_dataset(tiny_3m[0])
    short = ep.select(np.arange(5))                             # a second dataset, cut to a shorter T
    T_short = int(short.lengths.max())
    short = data.Episodes(obs=short.obs[:, :T_short + 1], avail=short.avail[:, :T_short + 1],
                          actions=short.actions[:, :T_short], rewards=short.rewards[:, :T_short],
                          dones=short.dones[:, :T_short], lengths=short.lengths, attrs=short.attrs)
    buffer = learner.EpisodeBuffer([ep, short])
    assert buffer.n_episodes == ep.n_episodes + 5
    assert len(buffer.obs) == int((ep.lengths + 1).sum() + (short.lengths + 1).sum())   # no padding stored
    g = torch.Generator().manual_seed(0)
    index = torch.randint(buffer.n_episodes, (16,), generator=torch.Generator().manual_seed(0))
    batch = buffer.sample(16, g)
    T = int(buffer.lengths[index].max())
    for b, e in enumerate(index.tolist()):
        src, i = (ep, e) if e < ep.n_episodes else (short, e - ep.n_episodes)
        n = int(src.lengths[i])
        np.testing.assert_array_equal(batch["obs"][b, :n + 1].numpy(), src.obs[i, :n + 1])
        np.testing.assert_array_equal(batch["avail"][b, :n + 1].numpy(), src.avail[i, :n + 1])
        np.testing.assert_array_equal(batch["actions"][b, :n].numpy(), src.actions[i, :n])
        np.testing.assert_array_equal(batch["rewards"][b, :n].numpy(), src.rewards[i, :n])
        np.testing.assert_array_equal(batch["dones"][b, :n].numpy(), src.dones[i, :n])
        assert not batch["obs"][b, n + 1:].any() and not batch["avail"][b, n + 1:].any()
        assert not batch["actions"][b, n:].any() and not batch["dones"][b, n:].any()
        assert batch["valid"][b].tolist() == [1.0] * n + [0.0] * (T - n)
    assert batch["obs"].shape[1] == T + 1 and batch["actions"].shape[1] == T


def test_datasets_are_read_chunk_by_chunk_into_the_same_buffer(tiny_3m, monkeypatch):
    """load_buffer reads at most one chunk of padded episodes at a time and stores what the whole files give."""
    paths = [tiny_3m[0], tiny_3m[0]]                                          # a union of two files
    whole = learner.EpisodeBuffer([data.load_dataset(p) for p in paths])
    reads, load = [], data.load_dataset

    def counting_load(path, *args, episodes=slice(None), **kwargs):
        chunk = load(path, *args, episodes=episodes, **kwargs)
        reads.append(chunk.n_episodes)
        return chunk
    monkeypatch.setattr(data, "load_dataset", counting_load)
    attrs, chunked = learner.load_buffer(paths, chunk_episodes=3)
    assert attrs["scenario"] == "3m" and max(reads) == 3 and len(reads) > 2
    assert chunked.n_episodes == whole.n_episodes == sum(reads)
    for name in ("lengths", "offsets", "obs", "avail", "actions", "rewards", "dones"):
        assert torch.equal(getattr(chunked, name), getattr(whole, name)), name


class Stop(Exception):
    """Stands for whatever ends a run early: a closed session, a node taken back."""


def tiny_config(**over):
    """The configuration of a tiny run: 7 iterations, evaluations at 3, 6 and 7."""
    return learner.LearnerConfig(**{"iters": 7, "batch_size": 4, "eval_every": 3, "target_every": 2,
                                    "eval_episodes": 3, **over})


@pytest.mark.parametrize("learner_cls, aug, kwargs", [(cql.QmixCQL, "rad-m", {"n_samples": 5}),
                                                      (bcq.QmixBCQ, "none", {})])
def test_a_stopped_learner_run_resumes_to_the_numbers_of_an_unstopped_one(tiny_3m, tmp_path, monkeypatch,
                                                                          learner_cls, aug, kwargs):
    args = tiny_config()
    whole = learner.run_learner(learner_cls, [tiny_3m[0]], args, str(tmp_path / "whole"), aug, kwargs, progress=False)
    loss, calls = learner_cls.loss, []

    def loss_that_stops_at_iteration_5(self, batch):
        calls.append(1)
        if len(calls) == 5:
            raise Stop
        return loss(self, batch)

    monkeypatch.setattr(learner_cls, "loss", loss_that_stops_at_iteration_5)
    out = str(tmp_path / "stopped")
    with pytest.raises(Stop):
        learner.run_learner(learner_cls, [tiny_3m[0]], args, out, aug, kwargs, progress=False)
    calls.clear()
    saved = torch.load(os.path.join(out, "learner.pt"), weights_only=True)
    saved["seconds"], saved["cpu_seconds"] = 1e5, 1e6        # the stopped session's counts, made unmistakable
    torch.save(saved, os.path.join(out, "learner.pt"))
    wall, cpu = time.time(), time.process_time()
    resumed = learner.run_learner(learner_cls, [tiny_3m[0]], args, out, aug, kwargs, progress=False, resume=True)
    wall, cpu = time.time() - wall, time.process_time() - cpu
    assert 1e5 < resumed["seconds"] <= 1e5 + wall and 1e6 < resumed["cpu_seconds"] <= 1e6 + cpu, \
        "a resumed run's wall and CPU time add this session's to the earlier ones"
    assert len(calls) == 4 and resumed["resumed_from"] == 3 and whole["resumed_from"] == 0, \
        "it went on from the checkpoint of iteration 3"
    with open(tmp_path / "whole" / "metrics.csv") as a, open(os.path.join(out, "metrics.csv")) as b:
        assert a.read() == b.read()
    assert resumed["heldout"] == whole["heldout"]
    checkpoints = [torch.load(os.path.join(d, "learner.pt"), weights_only=True) for d in (str(tmp_path / "whole"), out)]
    assert checkpoints[0]["eval_stream"] == checkpoints[1]["eval_stream"], "the evaluations saw the same episodes"
    saved = [c["learner"] for c in checkpoints]
    for name, state in saved[0].items():
        if name == "generator":
            assert torch.equal(state, saved[1][name])
            continue
        for key, tensor in state.items():
            assert torch.equal(tensor, saved[1][name][key]), f"{name}.{key}"


def test_a_resume_refuses_another_runs_checkpoint_and_one_that_would_run_code(tiny_3m, tmp_path, capsys,
                                                                                malicious_pickle):
    out = str(tmp_path / "run")
    flags = ["--dataset", tiny_3m[0], "--iters", "3", "--batch-size", "4", "--eval-every", "3",
             "--eval-episodes", "3", "--out", out]
    with pytest.raises(SystemExit):
        cql.main(flags + ["--resume"])
    assert "learner.pt: nothing to resume; run without --resume" in capsys.readouterr().err
    cql.main(flags)
    capsys.readouterr()
    for extra, message in ((["--lr", "1e-3"], "with other lr (0.0003, not 0.001)"),
                           (["--seed", "1"], "with other seed (0, not 1)"),
                           (["--dataset", tiny_3m[0]], "with other datasets' sha256")):
        with pytest.raises(SystemExit):
            cql.main(flags + extra + ["--resume"])
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out}/learner.pt was saved by a run") and message in err, err
        assert "run without --resume" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        bcq.main(flags + ["--resume"])
    assert "with other learner ('QmixCQL', not 'QmixBCQ')" in capsys.readouterr().err
    damaged = torch.load(os.path.join(out, "learner.pt"), weights_only=True)
    damaged["learner"]["qmix"].pop("mixer.value.2.bias")
    torch.save(damaged, os.path.join(out, "learner.pt"))
    with pytest.raises(SystemExit):
        cql.main(flags + ["--resume"])
    assert "learner.pt: damaged learner checkpoint (RuntimeError); delete it" in capsys.readouterr().err
    payload, target = malicious_pickle
    torch.save({"iteration": payload}, os.path.join(out, "learner.pt"))
    with pytest.raises(SystemExit):
        cql.main(flags + ["--resume"])
    assert ("learner.pt: not a readable learner checkpoint (refused: loading it would call io.open; a checkpoint "
            "holds tensors and plain values only); run without --resume") in capsys.readouterr().err
    assert not target.exists()
    result = learner.run_learner(cql.QmixCQL, [tiny_3m[0]], tiny_config(iters=3), out, progress=False,
                                 resume="auto")
    assert "training the learner from the start: " in capsys.readouterr().out and result["resumed_from"] == 0


def test_a_refused_dataset_leaves_no_output_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cql.main(["--dataset", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "out")])
    assert "no such dataset file" in capsys.readouterr().err and not (tmp_path / "out").exists()
