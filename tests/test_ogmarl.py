"""ogmarl.py: an OG-MARL vault, written here in OG-MARL's exact layout, converted and used for training; the
OG-MARL peer's export (our datasets as a vault) and its driver (experiments/peer_ogmarl/run.py, with a fake system)."""
import json
import os
import shutil
import time
import types

import h5py
import numpy as np
import pytest
import torch

import artifacts
import bcq
import cql
import data
import eaq
import evaluate
import fidelity
import learner
import ogmarl
import train
from experiments.peer_ogmarl import export
from experiments.peer_ogmarl import run as peer_run

N, O, A, S = 3, 30, 9, 48                      # SMAC's 3m: 3 agents, 30 features, 9 actions, state 48
LENGTHS = (4, 2, 5)                             # three finished episodes
TRAILING = 3                                    # then 3 rows of an unfinished one


def vault_rows(rng):
    """The rows of a small 3m vault: episodes one after another along time, as OG-MARL stores them."""
    rows = sum(LENGTHS) + TRAILING
    obs = rng.normal(size=(rows, N, O)).astype(np.float32)
    legals = np.ones((rows, N, A), np.float32)
    actions = rng.integers(0, A, size=(rows, N))
    team = rng.uniform(0, 2, size=rows).astype(np.float32)
    terminals = np.zeros((rows, N), np.float32)
    for end in np.cumsum(LENGTHS) - 1:
        terminals[end] = 1.0
    for t in range(LENGTHS[0], sum(LENGTHS[:2])):  # agent 1 is dead throughout the 2nd episode
        obs[t, 1] = 0.0
        legals[t, 1] = np.eye(A)[0]             # a dead agent may only no-op
        actions[t, 1] = 0
    return {"observations": obs, "actions": actions.astype(np.int32), "rewards": np.repeat(team[:, None], N, 1),
            "terminals": terminals, "truncations": np.zeros((rows, N), np.float32), "legals": legals,
            "state": rng.normal(size=(rows, S)).astype(np.float32)}


def write_vault(path, rows):
    """A flashbax vault in OG-MARL's layout (experiments/peer_ogmarl/export.py writes it)."""
    export.write_vault(path, [rows])


@pytest.fixture(scope="module")
def vault(tmp_path_factory):
    rows = vault_rows(np.random.default_rng(0))
    path = str(tmp_path_factory.mktemp("vaults") / "3m.vlt" / "Good")
    write_vault(path, rows)
    return path, rows


@pytest.fixture(scope="module")
def converted(vault, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("converted") / "ogmarl-3m-good.h5")
    ogmarl.main([vault[0], "--out", out])
    return out


def test_every_array_of_the_converted_episodes_by_hand(vault, converted):
    _, rows = vault
    ep = data.load_dataset(converted, scenario="3m", quality="good")
    assert ep.lengths.tolist() == list(LENGTHS) and ep.n_episodes == 3
    starts = np.cumsum((0,) + LENGTHS[:-1])
    for e, (start, n) in enumerate(zip(starts, LENGTHS)):
        np.testing.assert_array_equal(ep.obs[e, :n], rows["observations"][start:start + n])
        assert (ep.obs[e, n] == 0).all() and not ep.avail[e, n].any(), "the final observation is not stored"
        np.testing.assert_array_equal(ep.actions[e, :n], rows["actions"][start:start + n])
        np.testing.assert_array_equal(ep.avail[e, :n], rows["legals"][start:start + n] > 0.5)
        np.testing.assert_allclose(ep.rewards[e, :n], rows["rewards"][start:start + n, 0])
        assert ep.dones[e].tolist() == [False] * (n - 1) + [True] + [False] * (ep.dones.shape[1] - n)
        assert ep.returns()[e] == pytest.approx(rows["rewards"][start:start + n, 0].sum(), rel=1e-6)
    assert ep.avail[1, :2, 1].tolist() == [[True] + [False] * 8] * 2, "the dead agent may only no-op"
    a = ep.attrs
    assert (a["backend"], a["source"], a["n_agents"], a["obs_dim"], a["n_actions"]) == ("smac", "og-marl", N, O, A)
    assert a["dropped_unfinished_rows"] == TRAILING and a["final_observation"] == "absent (zeros)"
    assert a["return_mean"] == pytest.approx(ep.returns().mean(), rel=1e-6)


def test_a_fraction_keeps_whole_episodes_chosen_by_the_seed(vault, tmp_path):
    out = str(tmp_path / "part.h5")
    ogmarl.convert(vault[0], out, fraction=0.5, seed=1, progress=False)
    part = data.load_dataset(out)
    assert part.n_episodes == 2 and part.attrs["vault_episodes"] == 3
    assert set(part.lengths.tolist()) <= set(LENGTHS)


def test_learners_and_the_diffusion_model_run_on_the_converted_file(converted, tmp_path):
    ep = data.load_dataset(converted)
    buffer = learner.EpisodeBuffer([ep])
    for cls in (cql.QmixCQL, bcq.QmixBCQ):
        model = cls(ep.n_agents, ep.obs_dim, ep.n_actions)
        rows = learner.train_loop(model, buffer, iters=3, batch_size=2, lr=1e-3, seed=0,
                               evaluate=lambda: {"return_mean": 0.0}, eval_every=3, progress=False)
        assert np.isfinite(rows[-1]["td_loss"])
    config = eaq.DiffusionConfig(steps=3, dim=8, dim_mults=(1,), K=10, ddim_steps=2, scale=1)
    report = eaq.fit_and_sample(config, converted, str(tmp_path / "eaq"), progress=False)
    syn = data.load_dataset(str(tmp_path / "eaq" / "synthetic.h5"))
    assert syn.attrs["backend"] == "smac" and report["synthetic"]["episodes"] == 3
    assert fidelity.first_attack_action(syn) == 6, "figures read SMAC's action layout"


def test_focus_fire_reads_the_datasets_action_layout():
    """Action 5 is SMAX's first attack but one of SMAC's moves."""
    def one_step(backend):
        return data.Episodes(np.zeros((1, 2, 3, 2), np.float32), np.ones((1, 2, 3, 9), bool),
                             np.array([[[5, 5, 5]]]), np.zeros((1, 1), np.float32), np.array([[True]]),
                             np.array([1], np.int32), attrs={"backend": backend})
    assert fidelity.dataset_focus_fire(one_step("smax")) == (1.0, 1)
    ratio, n = fidelity.dataset_focus_fire(one_step("smac"))
    assert n == 0 and np.isnan(ratio), "in SMAC's layout nobody attacks"


def edited_vault(tmp_path, name, edit):
    rows = vault_rows(np.random.default_rng(0))
    edit(rows)
    path = str(tmp_path / name / "Good")
    write_vault(path, rows)
    return path


def longer(rows):
    """84 rows (the 14 rows six times) with no terminal before row 62: a first episode of 67 steps."""
    for key in rows:
        rows[key] = np.concatenate([rows[key]] * 6)
    rows["terminals"][:62] = 0.0


@pytest.mark.parametrize("edit, flags, message", [
    (lambda rows: None, ["--scenario", "8m"], "a vault of 3m, not 8m (from its path)"),
    (lambda rows: rows["rewards"].__setitem__((2, 1), 9.0), [], "the agents' reward copies differ at row 2"),
    (longer, [], "an episode of 67 steps, longer than 3m's limit of 60"),
])
def test_bad_vaults_are_refused_in_one_line_and_write_nothing(tmp_path, capsys, edit, flags, message):
    path = edited_vault(tmp_path, "3m.vlt", edit)
    out = tmp_path / "out.h5"
    with pytest.raises(SystemExit):
        ogmarl.main([path, "--out", str(out)] + flags)
    err = capsys.readouterr().err
    assert err.strip().startswith("error:") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_a_folder_that_is_not_a_vault_is_refused(tmp_path):
    with pytest.raises(artifacts.InputError, match="not a flashbax vault"):
        ogmarl.convert(str(tmp_path), str(tmp_path / "x.h5"), "3m", "good", progress=False)


def test_a_vault_of_another_map_by_its_contents_is_refused(tmp_path):
    path = edited_vault(tmp_path, "2s3z.vlt", lambda rows: None)    # 3 agents, 9 actions: not 2s3z (5, 11)
    with pytest.raises(artifacts.InputError, match="SMAC's 2s3z has 5 and 11: a vault of another map"):
        ogmarl.convert(path, str(tmp_path / "y.h5"), progress=False)


def test_train_py_takes_the_converted_file_as_d_real_and_needs_smac_to_evaluate_it(converted, tmp_path, capsys):
    import train
    args = train.parse_args(["--dataset", converted, "--backend", "smac", "--out", str(tmp_path)])
    assert (args.scenario, args.quality) == ("3m", "good")
    name = os.path.basename(train.result_dir(args))
    assert name.startswith("ogmarl-3m-good-" + artifacts.file_digest(converted)[:6] + "-cql-eaq-")
    with pytest.raises(SystemExit):                             # SMAX's 3m has other observations
        train.main(["--dataset", converted, "--out", str(tmp_path), "--iters", "2"])
    err = capsys.readouterr().err
    assert "do not match the smax simulator's 75/8" in err and "--backend smac" in err
    assert not os.path.exists(tmp_path / "eaq"), "refused before the diffusion model trains"


def test_a_vault_index_past_what_the_arrays_store_is_refused_at_once(tmp_path):
    import tensorstore as ts
    path = edited_vault(tmp_path, "3m.vlt", lambda rows: None)
    index = ts.open({"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{os.path.abspath(path)}",
                                                   "path": "vault_index"}}, open=True, write=True).result()
    index.write(np.array([2 ** 31 - 1], np.int32)).result()              # 17 real rows
    start = time.time()
    with pytest.raises(artifacts.InputError, match=r"vault_index says 2147483647 rows but its observations array "
                                                    r"stores fewer; a damaged vault"):
        ogmarl.convert(path, str(tmp_path / "z.h5"), progress=False)
    assert time.time() - start < 10 and not (tmp_path / "z.h5").exists()


def test_our_datasets_exported_to_a_vault_read_back_as_the_same_episodes(tiny_3m, tmp_path, capsys):
    real = data.load_dataset(tiny_3m[0])
    path = str(tmp_path / "3m.vlt" / "Medium")
    export.main([tiny_3m[0], tiny_3m[0], "--out", path])                  # D_real twice: files follow each other
    assert f"{2 * real.n_episodes} episodes, {2 * real.lengths.sum()} rows" in capsys.readouterr().out
    vault = ogmarl.Vault(path)
    bounds, unfinished = ogmarl.episode_bounds(vault)
    assert unfinished == 0 and [b - a for a, b in bounds] == 2 * real.lengths.tolist()
    T = real.rewards.shape[1]
    back = ogmarl.episodes_of_rows(vault, (0, vault.rows), bounds, T, path)
    for name in ("actions", "rewards", "dones", "lengths"):
        np.testing.assert_array_equal(getattr(back, name), np.concatenate([getattr(real, name)] * 2), err_msg=name)
    valid = data.valid_steps(real.lengths, T)
    for name in ("obs", "avail"):
        np.testing.assert_array_equal(getattr(back, name)[:, :T], np.concatenate([getattr(real, name)[:, :T] * (
            valid[..., None, None])] * 2), err_msg=name)           # the observation after the last step is not kept
    state = np.asarray(vault._open("infos.state.")[0, :vault.rows].read().result())
    np.testing.assert_array_equal(state, vault.read("observations", 0, vault.rows).reshape(vault.rows, -1))
    with pytest.raises(SystemExit):
        export.main([tiny_3m[0], "--out", path])
    assert "exists; pass --overwrite" in capsys.readouterr().err


class FakeSystem:
    """Their system's interface as run.py uses it: agents, reset(), rnn_states, select_actions, train_step.
    Its action for an agent is (steps this game has seen + the first observation entry) mod its legal count."""

    def __init__(self, n_agents):
        self.agents = [f"agent_{i}" for i in range(n_agents)]
        self.training_step_ctr, self.trained = 0, []

    def reset(self):
        self.rnn_states = {a: 0 for a in self.agents}

    def select_actions(self, observations, legal_actions):
        actions = {}
        for a in self.agents:
            legal = np.flatnonzero(legal_actions[a])
            actions[a] = legal[(self.rnn_states[a] + int(observations[a][0])) % len(legal)]
            self.rnn_states[a] += 1
        return actions

    def train_step(self, experience):
        self.trained.append((self.training_step_ctr, experience))
        return {"td_loss": 0.5, "bc_loss": 0.25, "mean_q_values": 1.0}      # their QMIX+BCQ's logs: no "loss"


def test_their_select_actions_plays_each_game_with_its_own_hidden_state():
    system, B, N, A = FakeSystem(2), 3, 2, 5
    policy = peer_run.TheirPolicy(system)
    policy.reset(B)
    obs = np.zeros((B, N, 4), np.float32)
    obs[:, :, 0] = np.arange(B)[:, None]                          # game b's observations start with b
    avail = np.ones((B, N, A), np.float32)
    avail[2, 1] = np.eye(A)[3]                                    # game 2's agent 1 may only take action 3
    first = policy(obs, avail)
    np.testing.assert_array_equal(first, [[0, 0], [1, 1], [2, 3]])
    second = policy(obs, avail)                                   # every game's state advanced once, not B times
    np.testing.assert_array_equal(second, [[1, 1], [2, 2], [3, 3]])
    policy.reset(B)
    np.testing.assert_array_equal(policy(obs, avail), first)      # a new batch of games starts afresh


class CountingEnv:
    """Our evaluation's simulator interface: every game ends after 2 steps with reward 1 per step."""
    n_envs, episode_limit = 2, 5

    def __init__(self):
        self.resets = 0

    def reset(self):
        self.resets += 1
        self.t = 0
        return np.zeros((2, 2, 4), np.float32), np.ones((2, 2, 3), np.float32)

    def step(self, actions):
        self.t += 1
        done = np.full(2, self.t >= 2)
        return (np.zeros((2, 2, 4), np.float32), np.ones((2, 2, 3), np.float32), np.ones(2), done, np.zeros(2))


def test_their_training_loop_counts_steps_and_is_evaluated_as_ours():
    system, envs = FakeSystem(2), {"reported": CountingEnv(), "heldout": CountingEnv()}
    samples = iter(range(100))
    buffer = type("Buffer", (), {"sample": lambda self: next(samples)})()
    rows, heldout, seconds = peer_run.train_and_evaluate(system, buffer, 7, 3, envs, artifacts.Clock())
    assert [ctr for ctr, _ in system.trained] == list(range(7))                # their counter, from 0, one per step
    assert [x for _, x in system.trained] == list(range(7))                    # a new sample every step
    assert [r["iteration"] for r in rows] == [3, 6, 7] and envs["reported"].resets == 3
    assert rows[-1]["return_mean"] == 2.0 and (rows[-1]["td_loss"], rows[-1]["bc_loss"]) == (0.5, 0.25)
    assert heldout["return_mean"] == 2.0 and envs["heldout"].resets == 1 and seconds >= 0


def test_rad_scales_their_minibatch_observations_and_the_state_made_of_them():
    rng = np.random.default_rng(0)
    obs = rng.uniform(0.1, 1.0, size=(4, 20, 3, 5)).astype(np.float32)      # (B, T, N, O), their sample's layout
    obs[0, 5:, 1] = 0.0                                                     # a dead agent's rows
    experience = {"observations": obs, "actions": rng.integers(0, 9, (4, 20, 3)),
                  "infos": {"state": obs.reshape(4, 20, -1), "legals": np.ones((4, 20, 3, 9), np.float32)}}
    buffer = type("Buffer", (), {"sample": lambda self: experience})()
    scaled = peer_run.RadSamples(buffer, "rad-s", seed=0).sample()
    z = scaled["observations"][obs > 0] / obs[obs > 0]
    assert 0.8 <= z.min() < z.max() <= 1.2
    ratio = np.where(obs > 0, scaled["observations"] / np.where(obs > 0, obs, 1.0), np.nan)
    assert np.allclose(np.nanmin(ratio, -1)[obs[..., 0] > 0], np.nanmax(ratio, -1)[obs[..., 0] > 0]), \
        "RAD-s: one factor per agent's observation vector"
    assert np.all(scaled["observations"][0, 5:, 1] == 0.0), "zeros stay zeros"
    assert np.array_equal(scaled["infos"]["state"], scaled["observations"].reshape(4, 20, -1)), \
        "the mixer's state is the scaled joint observation"
    assert scaled["actions"] is experience["actions"] and scaled["infos"]["legals"] is experience["infos"]["legals"]
    assert np.array_equal(experience["infos"]["state"], obs.reshape(4, 20, -1)), "the buffer's batch is untouched"
    multi = peer_run.RadSamples(buffer, "rad-m", seed=0)
    first, second = multi.sample()["observations"], multi.sample()["observations"]
    alive = obs[..., 0] > 0                                                 # (B, T, N)
    z_m = first[alive] / obs[alive]                                         # (live rows, O)
    assert not np.allclose(z_m.min(-1), z_m.max(-1)), "RAD-m: a factor per feature"
    assert not np.allclose(first, second), "fresh factors for every minibatch"
    assert np.array_equal(first, peer_run.RadSamples(buffer, "rad-m", seed=0).sample()["observations"]), "seeded"


def test_the_peer_refuses_two_augmentations_at_once(capsys):
    with pytest.raises(SystemExit):
        peer_run.main(["--og-marl", "x", "--synthetic", "syn.h5", "--rad", "rad-s"])
    assert "--synthetic and --rad are two augmentations" in capsys.readouterr().err


def test_the_peer_refuses_a_folder_that_is_not_their_checkout(tmp_path):
    with pytest.raises(artifacts.InputError, match="not a checkout of instadeepai/og-marl"):
        peer_run.import_system(str(tmp_path), "cql")


def test_a_peer_run_is_named_by_its_data_and_says_what_augmented_it(tiny_3m, tmp_path):
    assert peer_run.augmentation_of(None) == ("none", 0.0, None)
    syn = tmp_path / "synthetic.h5"
    shutil.copyfile(tiny_3m[0], syn)
    with h5py.File(syn, "a") as f:
        f.attrs["lam"] = 0.1
    assert peer_run.augmentation_of(str(syn)) == ("eaq", 0.1, None), "a D_syn from before its attrs named it"
    with h5py.File(syn, "a") as f:
        f.attrs["generator"] = "agents32-attention-head96"
    assert peer_run.augmentation_of(str(syn)) == ("eaq", 0.1, "agents32-attention-head96")
    assert peer_run.run_name(tiny_3m[0], "bcq", None, 15000, 2) == "3m-medium-ogmarl-bcq-none-it15000-s2"
    assert peer_run.run_name(tiny_3m[0], "cql", str(syn), 10, 0).startswith("3m-medium-ogmarl-cql-syn-")
    assert peer_run.augmentation_of(None, "rad-m") == ("rad-m", 0.0, None)
    assert peer_run.run_name(tiny_3m[0], "bcq", None, 15000, 2, "rad-s") == "3m-medium-ogmarl-bcq-rad-s-it15000-s2"


def test_the_peer_table_sets_each_learner_beside_its_data(tmp_path, capsys):
    def results(learner, aug, ret, generator=None):
        config = {"scenario": "3m", "quality": "poor", "algo": "cql", "aug": aug, "lam": 0.1 if aug == "eaq" else 0.0,
                  "seed": 0, **({"learner": learner} if learner else {})}
        return {"config": config, "aug": "none" if aug == "none" else "eaq (λ=0.1)", "dataset": {"return_mean": 4.0},
                **({"generator": generator} if generator else {}),
                "final": {"return_mean": ret, "return_std": 1.0, "win_rate": 0.25, "normalised_return": ret / 20},
                "heldout": {"return_mean": 2.5},
                **({"iterations_per_cpu_second": 20.0} if learner else {})}
    for name, r in {"theirs": results("og-marl", "none", 2.0), "ours": results(None, "none", 6.0),
                    "theirs-eaq": results("og-marl", "eaq", 3.0),
                    "theirs-eaq-head96": results("og-marl", "eaq", 5.0, "agents32-attention-head96")}.items():
        (tmp_path / name).mkdir()
        artifacts.write_json(str(tmp_path / name / "results.json"), r)
    (tmp_path / "unfinished").mkdir()
    peer_run.main(["--table", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert lines[2] == "| 3m-poor | ours | cql | none | 0 | 6.00 ± 1.00 | 0.25 | 4.00 | 1.50 | 2.50 |  |"
    assert lines[3] == "| 3m-poor | OG-MARL | cql | none | 0 | 2.00 ± 1.00 | 0.25 | 4.00 | 0.50 | 2.50 | 20.0 |"
    # each D_syn named by the network that made it; one from before D_syn's attrs named it: the former default's
    assert lines[4].startswith("| 3m-poor | OG-MARL | cql | eaq (λ=0.1), agents32-attention | 0 | 3.00 ")
    assert lines[5].startswith("| 3m-poor | OG-MARL | cql | eaq (λ=0.1), agents32-attention-head96 | 0 | 5.00 ")
    assert peer_run.learner_label({"algo": "bcq", "bcq_execution": "greedy"}) == "ours (greedy execution)"
    assert peer_run.learner_label({"algo": "bcq", "bcq_execution": "filtered", "last_action": True,
                                   "grad_clip": 10.0}) == "ours"
    assert peer_run.learner_label({"algo": "bcq", "bcq_execution": "greedy", "window": 20, "last_action": False,
                                   "grad_clip": 0.0}) == \
        "ours (greedy execution, 20-step windows, no last action, no gradient clipping)"
    assert peer_run.learner_label({"algo": "cql", "bcq_execution": "greedy", "last_action": False}) == \
        "ours (no last action)"
    row = evaluate.table1_row({**results("og-marl", "eaq", 3.0), "config": {**results("og-marl", "eaq", 3.0)["config"],
                                                                              "eval_episodes": 32}}, "theirs-eaq")
    assert (row["method"], row["lam"], row["return_mean"], row["heldout_return"]) == ("EAQ", 0.1, 3.0, 2.5)


def test_the_peer_grid_sets_each_seed_beside_each_kind_of_data(tmp_path, capsys):
    """--grid: a row per learner, algo and seed, a mean row over the seeds each column holds; runs of ours with
    OG-MARL's ways are left to --table; two records of one cell are refused in one line."""
    def results(learner, aug, seed, ret, held, **config):
        config = {"scenario": "3m", "quality": "poor", "algo": "bcq", "aug": aug, "lam": 0.1 if aug == "eaq" else 0.0,
                  "seed": seed, **({"learner": learner} if learner else {}), **config}
        return {"config": config, "aug": "eaq (λ=0.1)" if aug == "eaq" else aug, "dataset": {"return_mean": 4.0},
                "final": {"return_mean": ret, "return_std": 1.0, "win_rate": 0.0}, "heldout": {"return_mean": held}}
    runs = {"t0": results("og-marl", "none", 0, 2.0, 1.0), "t1": results("og-marl", "none", 1, 4.0, 2.0),
            "t0-eaq": results("og-marl", "eaq", 0, 6.0, 5.0), "t0-rad": results("og-marl", "rad-s", 0, 3.0, 2.5),
            "o2": results(None, "none", 2, 7.0, 6.5),
            "o2-greedy": results(None, "none", 2, 1.0, 1.0, bcq_execution="greedy")}
    for name, r in runs.items():
        (tmp_path / name).mkdir()
        artifacts.write_json(str(tmp_path / name / "results.json"), r)
    peer_run.main(["--grid", str(tmp_path)])
    assert capsys.readouterr().out.splitlines() == [
        "| 3m-poor | seed | D_real | ∪ D_syn: eaq (λ=0.1), agents32-attention | D_real, rad-s |",
        "|---|---|---|---|---|",
        "| OG-MARL BCQ | 0 | 2.00 (1.00) | 6.00 (5.00) | 3.00 (2.50) |",
        "| OG-MARL BCQ | 1 | 4.00 (2.00) |  |  |",
        "| OG-MARL BCQ | mean | **3.00 (1.50)**, 2 seeds |  |  |",
        "| ours BCQ | 2 | 7.00 (6.50) |  |  |"]
    (tmp_path / "t1-again").mkdir()
    artifacts.write_json(str(tmp_path / "t1-again" / "results.json"), runs["t1"])
    with pytest.raises(SystemExit):
        peer_run.main(["--grid", str(tmp_path)])
    assert "two records of ('bcq', 'OG-MARL', 1, 'none')" in capsys.readouterr().err


def test_window_minibatches_are_stretches_of_one_episode_drawn_by_step():
    """experiments/windows.py by hand: two episodes of 20 and 2 steps whose observations carry (episode, step);
    each window is at most 5 steps of one episode, with a done only where the episode ends, and starts at a step
    drawn uniformly from all 22 (so 20 / 22 of the windows come from the long episode, not half)."""
    from experiments import windows
    E, T, n, o = 2, 20, 3, 4
    lengths = np.array([20, 2])
    obs = np.zeros((E, T + 1, n, o), np.float32)
    obs[..., 0] = 100 * np.arange(E)[:, None, None] + np.arange(T + 1)[None, :, None]   # 100 e + t
    dones = np.zeros((E, T), np.float32)
    dones[np.arange(E), lengths - 1] = 1.0
    episodes = types.SimpleNamespace(obs=obs, avail=np.ones((E, T + 1, n, 5), bool), lengths=lengths,
                                     actions=np.zeros((E, T, n), np.int64), rewards=np.ones((E, T), np.float32),
                                     dones=dones)
    batch = windows.WindowBuffer([episodes], window=5).sample(4000, torch.Generator().manual_seed(0))
    steps = batch["valid"].sum(1).long()                                                 # (B,)
    first = batch["obs"][:, 0, 0, 0].long()                                              # 100 e + start
    e, start = first // 100, first % 100
    assert torch.equal(steps, torch.clamp(torch.from_numpy(lengths)[e] - start, max=5))   # to the end at most
    for b in range(200):
        k = int(steps[b])
        assert torch.equal(batch["obs"][b, :k + 1, 0, 0].long(), first[b] + torch.arange(k + 1))  # the next obs too
        assert batch["dones"][b, :k].tolist() == [0.0] * (k - 1) + [float(start[b] + k == lengths[e[b]])]
        assert batch["rewards"][b, :k].tolist() == [1.0] * k and not batch["valid"][b, k:].any()
    assert abs(float((e == 0).float().mean()) - 20 / 22) < 0.02


def test_the_window_script_is_train_py_with_windows(tmp_path, capsys):
    from experiments import windows
    flags = ["--scenario", "3m", "--quality", "poor", "--fraction", "0.0005", "--iters", "4", "--aug", "none",
             "--eval-every", "2", "--eval-episodes", "4", "--out", str(tmp_path)]
    windows.main(["--window", "3"] + flags)
    printed = capsys.readouterr().out
    out = windows.window_dir(train.parse_args(flags), 3)
    results = json.load(open(os.path.join(out, "results.json")))
    assert out.startswith(os.path.join(str(tmp_path), "windows")) and out.endswith("-window3")
    assert results["config"]["window"] == 3 and results["final"]["iteration"] == 4
    assert f"results in {out}" in printed
    with pytest.raises(SystemExit):
        windows.main(["--window", "0"] + flags)
    assert "--window must be at least 1, got 0" in capsys.readouterr().err
