"""qmix.py, cql.py, bcq.py, rad.py and the rollouts of evaluate.py."""
import numpy as np
import pytest
import torch

import bcq
import cql
import data
import env as envlib
import evaluate
import qmix
import rad


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


def action_gap(learner, batch):
    """Mean Q of the data actions minus mean Q of the other legal actions, over valid steps."""
    with torch.no_grad():
        q = qmix.unroll(learner.qmix.agent, qmix.agent_inputs(batch["obs"], batch["actions"],
                                                               learner.qmix.n_actions))[:, :-1]
    avail = batch["avail"][:, :-1]
    data_q = q.gather(-1, batch["actions"][..., None])[..., 0]
    others = avail & ~torch.nn.functional.one_hot(batch["actions"], q.shape[-1]).bool()
    other_q = (q * others).sum(-1) / others.sum(-1).clamp(min=1)
    mask = batch["valid"][..., None].expand_as(data_q)
    return qmix.masked_mean(data_q - other_q, mask).item()


def gap_after_updates(ep, batch, alpha):
    torch.manual_seed(0)
    learner = cql.QmixCQL(ep.n_agents, ep.obs_dim, ep.n_actions, alpha=alpha, seed=0)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    for _ in range(30):
        loss, _ = learner.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return action_gap(learner, batch)


def test_cql_penalty_lowers_absent_actions_relative_to_data_actions(tiny_3m):
    ep = data.load_dataset(tiny_3m[0])
    batch = qmix.EpisodeBuffer([ep]).sample(8, torch.Generator().manual_seed(0))
    without, with_cql = gap_after_updates(ep, batch, 0.0), gap_after_updates(ep, batch, 3.0)
    assert with_cql > without + 0.1, (with_cql, without)


def test_bcq_allows_only_legal_actions_near_the_most_likely():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    avail = torch.tensor([[True, True, True, True]])
    assert bcq.bcq_allowed(logits, avail, 0.4).tolist() == [[True, True, False, False]]
    avail = torch.tensor([[False, True, True, True]])          # renormalised: .3/.5 .15/.5 .05/.5
    assert bcq.bcq_allowed(logits, avail, 0.4).tolist() == [[False, True, True, False]]


def test_bcq_policy_never_picks_a_disallowed_action():
    torch.manual_seed(0)
    learner = bcq.QmixBCQ(n_agents=3, obs_dim=5, n_actions=6, tau=0.4)
    policy = learner.policy()
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
    batch = {"obs": torch.ones(2, 3, 2, 4), "actions": torch.zeros(2, 2, 2)}
    scaled = rad.augment(batch, "rad-s", g)["obs"]
    assert torch.allclose(scaled, scaled[..., :1].expand_as(scaled)), "one z per observation vector"
    assert rad.augment(batch, "none", g) is batch
    with pytest.raises(ValueError, match="unknown RAD mode"):
        rad.rad_factors((2, 3), "rad-x", g)


def test_focus_fire_ratio_by_hand():
    avail = np.ones((1, 4, 2, 7), dtype=bool)
    avail[0, 3, 1] = [False] * 4 + [True, False, False]        # agent 1 dead at t = 3
    actions = np.array([[[5, 5], [5, 6], [0, 5], [6, 4]]])     # same, split, one moves, lone survivor
    valid = np.ones((1, 4), dtype=bool)
    ratio, n = evaluate.focus_fire_ratio(actions, avail, valid, first_attack_action=5)
    assert n == 3 and ratio == pytest.approx(2 / 3)


class RandomPolicy:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def reset(self, n_envs):
        pass

    def __call__(self, obs, avail):
        return (self.rng.random(avail.shape) * avail).argmax(-1)


def test_short_cql_run_on_good_data_beats_random_play(tiny_3m, tmp_path):
    good = tmp_path / "good.h5"
    data.generate_dataset("3m", "good", 64, seed=1, path=str(good), n_envs=64, progress=False)
    ep = data.load_dataset(str(good))
    learner = cql.QmixCQL(ep.n_agents, ep.obs_dim, ep.n_actions, seed=0)
    qmix.train_loop(learner, qmix.EpisodeBuffer([ep]), iters=150, batch_size=16, lr=3e-4, seed=0,
                    progress=False)
    eval_env = envlib.make_env("3m", n_envs=32, seed=123)
    trained = evaluate.evaluate_policy(learner.policy(), eval_env)
    random = evaluate.evaluate_policy(RandomPolicy(0), eval_env)
    assert random["return_mean"] < 3.0
    assert trained["return_mean"] > random["return_mean"] + 3.0
    assert trained["normalised_return"] == pytest.approx(trained["return_mean"] / 20)


def test_mixer_shares_hypernetwork_weights_across_sampled_joint_actions():
    torch.manual_seed(0)
    mixer = qmix.QMixer(state_dim=6, n_agents=3)
    state, q = torch.randn(2, 5, 6), torch.randn(4, 2, 5, 3)
    together = mixer(q, state)
    assert together.shape == (4, 2, 5)
    for m in range(4):
        torch.testing.assert_close(together[m], mixer(q[m], state))
