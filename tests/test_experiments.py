"""experiments/: damage.py (the attack -> damage check of dataset files, and D_real projected onto R directions),
denoise.py (what a trained diffusion model hands back), checkpoints.py (how far apart two are), bcq_filter.py
(a BCQ run played with and without its behaviour filter), heuristic_data.py (the heuristic-data ablation)."""
import csv
import dataclasses
import importlib
import json
import os
import types

import numpy as np
import pytest
import torch

import artifacts
import attacks
import bcq
import data
import datasets
import diffusion
import eaq
import env as envlib
import fidelity
import train
import unet
from conftest import Unscale, Zeros, output_rank
from experiments import departures, heuristic_data


def bench(name):
    """An experiments/ script as a module."""
    return importlib.import_module(f"experiments.{name}")


def rows(text):
    """{label: (attacks that damage, damage with a shooter, health gains, reward matches damage,
    reward − damage, reward below damage)} of the printed table."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 8 and cells[1].isdigit():
            out[cells[0]] = tuple(float(c) for c in cells[2:])
    return out


def test_damage_bench_reads_files_and_projects_d_real(tiny_3m, tmp_path, capsys):
    real = data.load_dataset(tiny_3m[0])
    moved = real.actions.copy()                              # every attack moved to the next enemy
    attack = moved >= 5
    moved[attack] = 5 + (moved[attack] - 4) % 3
    avail = real.avail.copy()                                # and the legal attacks with them
    avail[..., 5:] = np.roll(real.avail[..., 5:], 1, axis=-1)
    data.save_dataset(dataclasses.replace(real, actions=moved, avail=avail), str(tmp_path / "moved.h5"))
    F = data.layout_of(real).n_features
    W = data.layout_of(real).agent_width
    bench("damage").main(["--real", tiny_3m[0], "--synthetic", f"moved={tmp_path / 'moved.h5'}",
                          "--rank", "2", str(F), "--agent-rank", "2", str(W)])
    table = rows(capsys.readouterr().out)
    assert table["D_real"][1:] == (1.0, 0.0, 1.0, 0.0, 0.0)
    assert table["moved"][1] < 0.5 and table["moved"][3:] == (1.0, 0.0, 0.0)   # its rewards still match the damage
    full = [v for k, v in table.items() if k.startswith(f"D_real, top {F} of {F}")]
    assert full == [table["D_real"]], "projecting onto every direction changes nothing"
    two = [v for k, v in table.items() if k.startswith(f"D_real, top 2 of {F}")]
    assert two and two[0][1] < 1.0, "two directions per step cannot keep which enemy was hit"
    every = [v for k, v in table.items() if k.startswith(f"D_real, top {W} of {W} directions per agent-step")]
    assert every == [table["D_real"]], "projecting each agent's rows onto all their directions changes nothing"
    two = [v for k, v in table.items() if k.startswith(f"D_real, top 2 of {W} directions per agent-step")]
    assert two and two[0][1] < 1.0, "two directions per agent-step cannot keep which enemy was hit"


def test_damage_bench_refuses_bad_input_in_one_line(tiny_3m, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        bench("damage").main(["--real", str(tmp_path / "missing.h5")])
    assert stop.value.code == 2 and "missing.h5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench("damage").main(["--real", tiny_3m[0], "--rank", "0"])
    assert "--rank 0: must be between 1 and" in capsys.readouterr().err
    W = data.layout_of(data.load_dataset(tiny_3m[0])).agent_width
    with pytest.raises(SystemExit):
        bench("damage").main(["--real", tiny_3m[0], "--agent-rank", str(W + 1)])
    assert f"--agent-rank {W + 1}: must be between 1 and an agent's {W} rows" in capsys.readouterr().err


def denoise_table(text):
    """{label: (action argmax right, the four attack-avail bins)} of bench/denoise.py's first table."""
    out = {}
    for line in text.splitlines():
        parts = line.replace("/", " ").split()
        if len(parts) == 6 and (parts[0] == "D_real" or parts[0].isdigit()):
            out[parts[0]] = tuple(float(x) for x in parts[1:])
    return out


@pytest.fixture(scope="module")
def tiny_models(tiny_3m, tmp_path_factory):
    """Two tiny models trained 5 steps on tiny_3m: the plain U-Net and the skip-parametrised one."""
    paths = {}
    for name, run in (("plain", eaq), ("skip", departures)):
        out = tmp_path_factory.mktemp(name)
        config = departures.DepartureConfig(steps=5, K=50, dim=16, dim_mults=(1, 2), scale=1, x0_skip=True)
        if run is eaq:                                             # the paper's model
            config = eaq.DiffusionConfig(steps=5, K=50, dim=16, dim_mults=(1, 2), scale=1, network="flat")
        run.fit_and_sample(config, tiny_3m[0], str(out), progress=False)
        paths[name] = str(out / "model.pt")
    return paths


def test_denoise_bench_sees_what_the_skip_lets_through(tiny_models, capsys):
    for name in ("plain", "skip"):
        bench("denoise").main(["--model", tiny_models[name], "--k", "1", "--sample", "8"])
        out = capsys.readouterr().out
        table = denoise_table(out)
        assert table["D_real"][0] == 1.0 and table["D_real"][2:4] == (0.0, 0.0)       # binary rows
        if name == "skip":                     # at k = 1 f_theta is tau_k, up to 1 % of the noise scale
            assert table["1"] == pytest.approx(table["D_real"], abs=1e-3)
        else:                                  # five steps of training cannot copy 276 rows through 16 channels
            assert table["1"][0] < 0.9 and table["1"][4] < table["D_real"][4]
        real = dict(pair.rsplit(" ", 1) for pair in out.split("D_real: ")[1].splitlines()[0].split(", "))
        assert float(real["on closed targets"]) == 0.0
        assert float(real["attack mass"]) == float(real["on open targets"]) == float(real["decoded attack share"])
        assert "8 sampled: attack mass" in out


def test_denoise_bench_refuses_bad_input_in_one_line(tiny_models, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        bench("denoise").main(["--model", str(tmp_path / "missing.pt")])
    assert stop.value.code == 2 and "missing.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench("denoise").main(["--model", tiny_models["skip"], "--k", "0"])
    assert "--k must lie in 1..K = 50" in capsys.readouterr().err


def test_checkpoints_bench_measures_the_largest_weight_difference(tiny_models, capsys):
    same = bench("checkpoints").main([tiny_models["plain"], tiny_models["plain"], "itself"])
    assert same["weights"] == same["ema"] == 0.0 and same["steps"] == (5, 5)
    assert capsys.readouterr().out.startswith("itself: steps 5 vs 5; max |Δ weight| 0.000e+00")
    plain, skip = (diffusion.load_checkpoint(tiny_models[name], departures.any_build) for name in ("plain", "skip"))
    apart = bench("checkpoints").main([tiny_models["plain"], tiny_models["skip"]])

    def by_hand(net_a, net_b):            # tensor by tensor, not through one flattened vector
        return max(float((a - b).detach().abs().max()) for a, b in zip(net_a.parameters(), net_b.parameters()))
    assert apart["weights"] == pytest.approx(by_hand(plain.diffusion, skip.diffusion)) and apart["weights"] > 0
    assert apart["ema"] == pytest.approx(by_hand(plain.ema, skip.ema))
    assert 0 < apart["ema"] < apart["weights"]                                     # the EMA moves slowly


def test_checkpoints_bench_refuses_bad_input_in_one_line(tiny_3m, tiny_models, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        bench("checkpoints").main([tiny_models["plain"], str(tmp_path / "missing.pt")])
    assert stop.value.code == 2 and "missing.pt" in capsys.readouterr().err
    wide = tmp_path / "wide"
    eaq.fit_and_sample(eaq.DiffusionConfig(steps=1, K=50, dim=24, dim_mults=(1, 2), scale=1), tiny_3m[0], str(wide),
                       progress=False)
    with pytest.raises(SystemExit) as stop:
        bench("checkpoints").main([tiny_models["plain"], str(wide / "model.pt")])
    assert stop.value.code == 2 and "hold different networks" in capsys.readouterr().err


def test_bcq_filter_bench_counts_legal_allowed_and_chosen_attacks_of_living_agents():
    torch.manual_seed(0)
    model = bcq.QmixBCQ(n_agents=2, obs_dim=3, n_actions=7, tau=0.4)
    with torch.no_grad():                        # G is sure of action 0 (a move); Q prefers action 5 (an attack)
        for net, favourite in ((model.behaviour, 0), (model.qmix.agent, 5)):
            net.fc2.weight.zero_()
            net.fc2.bias.zero_()
            net.fc2.bias[favourite] = 10.0
    obs = np.zeros((1, 2, 3), np.float32)
    avail = np.ones((1, 2, 7), bool)
    avail[0, 1, :4] = False                      # agent 1 may not move: dead, so not counted
    for filtered, action in ((True, 0), (False, 5)):
        policy = bench("bcq_filter").CountingPolicy(model, filtered, first_attack=5)
        policy.reset(1)
        assert policy(obs, avail)[0, 0] == action
        assert policy.summary() == {"attack_legal": 1.0, "attack_allowed": 0.0, "attack_chosen": float(action == 5),
                                    "allowed_actions": 1.0, "legal_actions": 7.0}


def filter_table(text):
    """{(iteration, execution): cells after the execution} of bench/bcq_filter.py's table."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0].isdigit():
            out[int(cells[0]), cells[1]] = cells[2:]
    return out


def test_bcq_filter_bench_replays_the_networks_of_a_bcq_run(tiny_3m, tmp_path, capsys):
    flags = ["--dataset", tiny_3m[0], "--iters", "5", "--batch-size", "4", "--eval-every", "3",
             "--eval-episodes", "3", "--seed", "1", "--tau", "1.0"]       # tau = 1: only G's argmax is allowed
    bcq.main(flags + ["--out", str(tmp_path / "run")])
    capsys.readouterr()
    trained = bench("bcq_filter").main(["train"] + flags + ["--metrics", str(tmp_path / "run" / "metrics.csv")])
    with open(tmp_path / "run" / "metrics.csv") as f:
        run = list(csv.DictReader(f))
    assert [(r["iteration"], r["td_loss"], r["bc_loss"]) for r in trained] == \
        [(int(r["iteration"]), float(r["td_loss"]), float(r["bc_loss"])) for r in run], "trained as bcq.py trains"
    table = filter_table(capsys.readouterr().out)
    assert set(table) == {(3, "filtered"), (3, "greedy"), (5, "filtered"), (5, "greedy")}
    for iteration in (3, 5):
        filtered, greedy = table[iteration, "filtered"], table[iteration, "greedy"]
        assert filtered[0] == filtered[1], "the filtered play of the same networks returns what bcq.py's run did"
        assert greedy[1] == ""
        for row in (filtered, greedy):
            legal, allowed, chosen = (float(c) for c in row[3:6])
            assert 0 <= allowed <= legal <= 1 and 0 <= chosen <= legal
        assert filtered[6].startswith("1.00 / ") and greedy[6].startswith("1.00 / ")   # G's one allowed action
        assert float(filtered[5]) <= float(filtered[4])                     # filtered play attacks only if allowed


def test_bcq_filter_bench_replays_finished_runs_held_out_episodes(tiny_3m, tmp_path, capsys, monkeypatch):
    flags = ["--scenario", "3m", "--quality", "medium", "--dataset", tiny_3m[0], "--algo", "bcq", "--aug", "none",
             "--iters", "100", "--eval-every", "100", "--eval-episodes", "8", "--out", str(tmp_path)]
    # tau = 0 (bcq.py's flag; train.py keeps OG-MARL's 0.4): every legal action allowed, both plays alike
    monkeypatch.setattr(train, "own_config", lambda args: bcq.BCQConfig(tau=0.0))
    run = train.result_dir(train.parse_args(flags))
    train.main(flags)
    capsys.readouterr()
    rows = bench("bcq_filter").main(["runs", run, str(tmp_path / "datasets")])
    assert "skipped" in capsys.readouterr().err                  # not a run folder: said, and left out
    recorded = json.loads(open(os.path.join(run, "results.json")).read())["heldout"]["return_mean"]
    assert [(r["cell"], r["column"], r["seed"]) for r in rows] == [("3m-medium", "original", 0)]
    assert rows[0]["filtered"]["return"] == recorded > 0, "the filtered play is the run's own held-out evaluation"
    assert rows[0]["greedy"] == rows[0]["filtered"]


def test_bcq_filter_bench_refuses_bad_input_in_one_line(tiny_3m, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        bench("bcq_filter").main(["train", "--dataset", tiny_3m[0], "--metrics", str(tmp_path / "missing.csv")])
    assert stop.value.code == 2 and "missing.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench("bcq_filter").main(["train", "--dataset", tiny_3m[0], "--tau", "2"])
    assert "--tau must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        bench("bcq_filter").main(["runs", str(tmp_path)])
    assert stop.value.code == 2 and "none of the folders is a finished QMIX+BCQ run" in capsys.readouterr().err


def test_more_exploration_means_a_worse_heuristic_behaviour_policy():
    env = envlib.make_env("3m", n_envs=48, seed=0)
    greedy, _ = datasets.collect_batch(env, heuristic_data.HeuristicPolicy(env, 0.0, seed=1))
    noisy, _ = datasets.collect_batch(env, heuristic_data.HeuristicPolicy(env, 1.0, seed=1))
    assert greedy.returns().mean() > noisy.returns().mean() + 3.0


def test_a_heuristic_dataset_is_written_in_the_schema_and_says_who_made_it(tmp_path):
    attrs = heuristic_data.generate("3m", "poor", 12, 0, str(tmp_path / "h.h5"), n_envs=12, progress=False)
    episodes = data.load_dataset(str(tmp_path / "h.h5"), scenario="3m", quality="poor")
    assert episodes.n_episodes == 12 and attrs["epsilon"] == heuristic_data.heuristic_epsilon("3m", "poor") == 0.5
    assert episodes.attrs["behaviour"] == heuristic_data.HEURISTIC and not episodes.attrs["synthetic"]


def test_legal_rows_read_off_the_observation_leave_real_data_as_it_is(tiny_3m, tiny_models, tmp_path, capsys):
    legal_rows = bench("legal_rows")
    real = data.load_dataset(tiny_3m[0])
    matrix = data.episodes_to_matrix(real)
    np.testing.assert_array_equal(legal_rows.legal_rows_from_obs(matrix, data.layout_of(real)), matrix)
    blanked = matrix.copy()
    blanked[:, data.layout_of(real).avail(0)] = 0.0           # agent 0's legal rows lost: the rule restores them
    np.testing.assert_array_equal(legal_rows.legal_rows_from_obs(blanked, data.layout_of(real)), matrix)
    legal_rows.main(["--real", tiny_3m[0], "--checkpoint", tiny_models["plain"], "--episodes", "6",
                     "--json", str(tmp_path / "r.json")])
    printed = capsys.readouterr().out
    reports = json.load(open(tmp_path / "r.json"))
    assert reports["from_observation"]["synthetic"]["episodes"] == reports["generated"]["synthetic"]["episodes"] == 6
    assert reports["from_observation"]["synthetic"]["length_mean"] == reports["generated"]["synthetic"]["length_mean"]
    assert printed.splitlines()[0].split() == ["D_real", "generated", "from", "obs"]
    assert "generated: D_syn" in printed and "from_observation: D_syn" in printed


def test_the_scheduled_optimiser_warms_up_decays_and_clips():
    frontier = bench("frontier")
    w = torch.nn.Parameter(torch.zeros(2))
    opt = frontier.ScheduledAdam([w], 1e-3, warmup=4, decay_steps=14, clip=0.5)
    assert [opt.rate(s) for s in (0, 3, 4, 9, 14, 20)] == pytest.approx([2.5e-4, 1e-3, 1e-3, 5e-4, 0.0, 0.0])
    rates = []
    for _ in range(6):
        opt.zero_grad()
        (w * torch.tensor([30.0, 40.0])).sum().backward()             # gradient norm 50
        opt.step()
        rates.append(opt.param_groups[0]["lr"])
        assert w.grad.norm().item() == pytest.approx(0.5)              # clipped before the step
    assert rates == pytest.approx([opt.rate(s) for s in range(6)])
    assert frontier.setting_name(eaq.DiffusionConfig(network="agents", dim=64), 91, (0, 8600, 1.0)) == \
        "agents64-attention-head96-lr0.001-cos8600-clip1-s0"           # 3m's 91 rows per agent: a head of 96
    assert frontier.setting_name(eaq.DiffusionConfig(network="flat", dim=80, device="cuda:1"), 91) == \
        "flat80-lr0.001-s0-cuda1"


def test_the_frontier_judges_a_setting_at_each_budget_and_tables_it(tiny_3m, tmp_path, capsys):
    frontier = bench("frontier")
    flags = ["--dataset", tiny_3m[0], "--out", str(tmp_path / "runs"), "--records", str(tmp_path / "records"),
             "--network", "flat", "--K", "50", "--dim", "16", "--dim-mults", "1", "2", "--batch-size", "4",
             "--budgets", "0.01", "0.02", "--episodes", "4"]
    frontier.main(flags)
    record = json.load(open(tmp_path / "records" / "3m-medium-flat16-x1x2-lr0.001-s0.json"))
    assert [j["budget_minutes"] for j in record["judgements"]] == [0.01, 0.02]
    first, second = record["judgements"]
    assert first["train_cpu_seconds"] >= 0.6 and second["train_cpu_seconds"] >= 1.2       # each budget reached
    assert first["model_steps"] % 100 == 0 and first["model_steps"] <= second["model_steps"]
    assert first["synthetic"]["episodes"] == 4 and set(first["copy"]) == {"1", "50"}
    frontier.main(flags + ["--resume"])                                 # both budgets judged: nothing to do
    assert len(json.load(open(tmp_path / "records" / "3m-medium-flat16-x1x2-lr0.001-s0.json"))["judgements"]) == 2
    capsys.readouterr()
    frontier.main(["--table", "--records", str(tmp_path / "records")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| dataset | setting | minutes | steps |") and len(lines) == 4
    assert "| flat16-x1x2-lr0.001-s0 | 0.01 |" in lines[2]
    assert os.path.exists(tmp_path / "records" / "frontier.png")


def test_the_frontier_on_the_wall_clock_judges_by_training_wall_time_with_min_snr(tiny_3m, tmp_path, capsys):
    frontier = bench("frontier")
    frontier.main(["--dataset", tiny_3m[0], "--out", str(tmp_path / "runs"), "--records", str(tmp_path / "records"),
                   "--network", "flat", "--K", "50", "--dim", "16", "--dim-mults", "1", "2", "--batch-size", "4",
                   "--budgets", "0.01", "--episodes", "4", "--clock", "wall", "--chunk", "7", "--min-snr", "5"])
    record = json.load(open(tmp_path / "records" / "3m-medium-flat16-x1x2-lr0.001-minsnr5-s0.json"))
    judged = record["judgements"][0]
    assert record["clock"] == "wall" and judged["train_seconds"] >= 0.6 and judged["model_steps"] % 7 == 0
    assert record["min_snr"] == 5.0
    model = types.SimpleNamespace(train_seconds=5.0, train_cpu_seconds=3.0)
    assert (frontier.trained_seconds(model, "wall"), frontier.trained_seconds(model, "cpu")) == (5.0, 3.0)
    capsys.readouterr()
    frontier.main(["--table", "--records", str(tmp_path / "records")])
    assert "| flat16-x1x2-lr0.001-minsnr5-s0 | 0.01 wall |" in capsys.readouterr().out


def test_the_value_test_trains_one_learner_on_d_syn_alone_and_on_d_real_alone(tmp_path, monkeypatch):
    value_test = bench("value_test")
    monkeypatch.setattr(value_test, "RECORDS", str(tmp_path / "records"))
    flags = ["--scenario", "3m", "--quality", "poor", "--fraction", "0.0005", "--iters", "4", "--diffusion-steps", "4",
             "--dim", "8", "--ddim-steps", "2", "--scale", "2", "--eval-every", "2", "--eval-episodes", "4",
             "--out", str(tmp_path / "runs")]
    value_test.main(flags)
    (path,) = [os.path.join(tmp_path / "records", f) for f in os.listdir(tmp_path / "records")]
    record = json.load(open(path))
    n_real = data.load_dataset(str(tmp_path / "runs" / "datasets" / record["dataset"])).n_episodes
    assert record["real_alone"]["episodes"] == n_real and record["syn_alone"]["episodes"] == 2 * n_real
    real, syn = record["real_alone"]["return_mean"], record["syn_alone"]["return_mean"]
    assert record["ratio"] == (syn / real if real > 0 else None)
    assert record["verdict"] == value_test.verdict(record["ratio"])


def test_the_value_test_verdict_holds_d_syn_to_nine_tenths_of_d_real():
    value_test = bench("value_test")
    assert value_test.value_ratio(9.0, 10.0) == 0.9 and value_test.verdict(0.9) == "meets"
    assert value_test.verdict(value_test.value_ratio(8.9, 10.0)).startswith("misses")
    assert value_test.value_ratio(3.0, 0.0) is None and value_test.verdict(None).startswith("undefined")


def test_the_speed_script_builds_the_model_eaq_would_and_profiles_a_step(tiny_3m, capsys):
    speed = bench("diffusion_speed")
    flags = ["--dataset", tiny_3m[0], "--K", "20", "--dim", "8", "--dim-mults", "1", "2", "--batch-size", "4",
             "--train-steps", "2", "--sample-batch", "4", "--ddim-steps", "2"]
    speed.main(flags + ["--network", "flat"])
    flat = capsys.readouterr().out
    speed.main(flags + ["--no-sampling", "--profile", "1"])
    agents = capsys.readouterr().out
    layout = data.layout_of(data.load_dataset(tiny_3m[0]))
    sizes = {network: sum(p.numel() for p in diffusion.build(eaq.model_config(
        eaq.DiffusionConfig(network=network, dim=8, dim_mults=(1, 2), K=20), layout, tiny_3m[0]))[0].parameters())
        for network in ("flat", "agents")}
    assert f"flat dim 8 on cpu, F={layout.n_features}" in flat and f"{sizes['flat']:,} parameters" in flat
    assert "DDIM-2" in flat and "episodes/s" in flat
    assert "agents dim 8 on cpu" in agents and f"{sizes['agents']:,} parameters" in agents
    assert "Self CPU time total" in agents and "sampling" not in agents        # the profile, no sampling


def test_min_snr_weights_each_episodes_x0_term_by_its_capped_snr():
    """experiments/frontier.py's min-SNR-γ lever by hand: a network that answers zeros, two episodes of ones at a
    low-noise step (SNR above γ: weight γ) and a high-noise one (SNR below: weight SNR); the hinge is Eq. 5's."""
    frontier = bench("frontier")
    model = frontier.MinSNRDiffusion(Zeros(), K=1000, gamma=5.0)
    tau0, valid = torch.ones(2, 3, 4), torch.ones(2, 4)
    k = torch.tensor([1, 900])
    snr = model.abar[k - 1] / (1.0 - model.abar[k - 1])
    assert snr[0] > 5.0 > snr[1]
    total, diffusion_term, q_term = model.loss(tau0, valid, 0, 0.1, k, torch.zeros_like(tau0))
    assert float(diffusion_term) == pytest.approx((5.0 + float(snr[1])) / 2)          # each episode's error is 1
    plain = diffusion.Diffusion(Zeros(), K=1000).loss(tau0, valid, 0, 0.1, k, torch.zeros_like(tau0))
    assert float(plain[1]) == pytest.approx(1.0) and float(q_term) == pytest.approx(float(plain[2])) == 1.0
    assert float(total) == pytest.approx(float(diffusion_term) + 0.1 * float(q_term))
    config = eaq.DiffusionConfig(network="agents", dim=32)
    assert frontier.setting_name(config, 91, levers=frontier.Levers(min_snr=5.0)) == \
        "agents32-attention-head96-lr0.001-minsnr5-s0"


def test_the_skip_lever_writes_the_estimate_from_the_input_at_small_k_and_from_the_network_at_large_k():
    frontier = bench("frontier")
    model = frontier.SkipDiffusion(Zeros(), K=1000, sigma_data=0.5)
    tau0 = torch.rand(64, 3, 8) * 2 - 1
    for k, close in ((1, 0.05), (1000, 0.01)):
        steps = torch.full((64,), k)
        estimate = model.f_theta(model.q_sample(tau0, steps, torch.randn_like(tau0)), steps)
        target = tau0 if k == 1 else torch.zeros_like(tau0)     # the input at k = 1; the zero network's at k = K
        assert (estimate - target).abs().max() < close

    class Ones(torch.nn.Module):
        def forward(self, tau_k, k):
            return torch.ones_like(tau_k)
    abar = model.abar[499]                 # a zero input: the U-Net's share, c_out = sigma sd / sqrt(sigma^2 + sd^2)
    sigma2 = (1 - abar) / abar
    assert float(frontier.SkipDiffusion(Ones(), 1000, 0.5).f_theta(torch.zeros(1, 1, 1), torch.tensor([500]))) == \
        pytest.approx(float((sigma2 * 0.25 / (sigma2 + 0.25)).sqrt()))
    with pytest.raises(artifacts.InputError, match="give one of them"):
        frontier.Levers(min_snr=5.0, skip=0.5).build()
    assert frontier.setting_name(eaq.DiffusionConfig(), 91, levers=frontier.Levers(skip=0.5)) == \
        "agents32-attention-head96-lr0.001-skip0.5-s0"
    assert frontier.setting_name(eaq.DiffusionConfig(dim_mults=(3, 3, 4), head_width=32), 91) == \
        "agents32-x3x3x4-attention-lr0.001-s0"                          # a head of --dim: the name says nothing


def test_the_frontier_judges_a_skip_model_with_its_own_f_theta(tiny_3m, tmp_path):
    """A 16-channel U-Net trained for a second copies little at k = 1 (the plain test above: < 0.9); with the skip
    the estimate at k = 1 is the input, so the judged model copies: the judgement loaded the skip's f_theta."""
    frontier = bench("frontier")
    frontier.main(["--dataset", tiny_3m[0], "--out", str(tmp_path / "runs"), "--records", str(tmp_path / "records"),
                   "--network", "flat", "--K", "50", "--dim", "16", "--dim-mults", "1", "2", "--batch-size", "4",
                   "--budgets", "0.01", "--episodes", "4", "--clock", "wall", "--chunk", "5", "--skip", "0.5"])
    record = json.load(open(tmp_path / "records" / "3m-medium-flat16-x1x2-lr0.001-skip0.5-s0.json"))
    assert record["skip"] == 0.5 and record["judgements"][0]["copy"]["1"]["action_accuracy"] >= 0.99


def test_the_learned_skip_starts_on_edms_curve_and_learns_each_rows_gate(tiny_3m, tmp_path):
    frontier = bench("frontier")
    learned = frontier.LearnedSkipDiffusion(Zeros(), K=1000, n_features=3, sigma_data=0.5)
    fixed = frontier.SkipDiffusion(Zeros(), K=1000, sigma_data=0.5)
    tau_k, steps = torch.randn(4, 3, 8), torch.tensor([1, 50, 500, 1000])
    assert torch.allclose(learned.f_theta(tau_k, steps), fixed.f_theta(tau_k, steps), atol=1e-5)   # EDM's c_skip
    with torch.no_grad():
        learned.gate_a[1] = -50.0                                              # row 1 shut: the network's alone
    out = learned.f_theta(tau_k, steps)
    assert out[:, 1].abs().max() < 1e-12 and torch.allclose(out[:, 0], fixed.f_theta(tau_k, steps)[:, 0], atol=1e-5)
    with pytest.raises(artifacts.InputError, match="give one of them"):
        frontier.Levers(skip=0.5, learned_skip=0.5).build()
    flags = ["--dataset", tiny_3m[0], "--out", str(tmp_path / "runs"), "--records", str(tmp_path / "records"),
             "--network", "flat", "--K", "50", "--dim", "16", "--dim-mults", "1", "2", "--batch-size", "4",
             "--budgets", "0.01", "--episodes", "4", "--clock", "wall", "--chunk", "5", "--learned-skip", "0.5"]
    frontier.main(flags)
    record = json.load(open(tmp_path / "records" / "3m-medium-flat16-x1x2-lr0.001-lskip0.5-s0.json"))
    assert record["learned_skip"] == 0.5 and record["judgements"][0]["copy"]["1"]["action_accuracy"] >= 0.99
    judged = diffusion.load_checkpoint(str(tmp_path / "runs" / "flat16-x1x2-lr0.001-lskip0.5-s0" / "model-0.01min.pt"),
                                       frontier.learned_skip_build(0.5))
    start = torch.full_like(judged.diffusion.gate_a, 2 * np.log(0.5))
    assert not torch.allclose(judged.diffusion.gate_a, start), "the gates trained with the network"


class Recorder(torch.nn.Module):
    """A stand-in network for self-conditioning: records each estimate it is handed and answers 0.1 x its call."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, tau_k, k, estimate):
        self.seen.append(estimate.clone())
        return torch.full_like(tau_k, 0.1 * len(self.seen))


def test_self_conditioning_starts_as_the_plain_network_and_hands_each_step_the_estimate_before(tiny_3m, tmp_path):
    self_conditioning = bench("self_conditioning")
    torch.manual_seed(0)
    net = unet.AgentUNet(n_agents=2, agent_width=5, dim=8, dim_mults=(1, 2))
    wrapped = self_conditioning.SelfConditioned(net)
    tau_k, e, k = torch.randn(3, 13, 6), torch.randn(3, 13, 6), torch.tensor([1, 10, 100])
    assert torch.allclose(wrapped(tau_k, k, e), net(tau_k, k))                # the estimate's convolution starts at 0
    with torch.no_grad():
        wrapped.inp_e.weight.normal_()
    assert not torch.allclose(wrapped(tau_k, k, e), net(tau_k, k))

    model = self_conditioning.SelfCondDiffusion(Recorder(), K=10)
    model.ddim_from(torch.zeros(2, 3, 4), 10, 3)                                 # three DDIM steps
    handed = [float(s.flatten()[0]) for s in model.model.seen]
    assert handed == pytest.approx([0.0, 0.1, 0.2, 0.3])     # first step: its own first estimate; then the step before
    assert model.chain is None
    model.model.seen.clear()
    model.predict_tau0(torch.zeros(2, 3, 4), torch.tensor([5, 5]))               # outside a chain: two calls
    assert [float(s.flatten()[0]) for s in model.model.seen] == pytest.approx([0.0, 0.1])

    model.model.seen.clear()
    tau0 = torch.zeros(2, 3, 4)
    model.loss(tau0, torch.ones(2, 4, dtype=torch.bool), 1, 0.0, torch.tensor([3, 4]), torch.randn(2, 3, 4))
    first, second = model.model.seen
    assert first.shape[0] == 1 and float(first.abs().max()) == 0.0               # the even-k episode's own first read
    assert float(second[0].abs().max()) == 0.0 and torch.allclose(second[1], torch.full((3, 4), 0.1))

    frontier = bench("frontier")
    with pytest.raises(artifacts.InputError, match="give one of them"):
        frontier.Levers(min_snr=5.0, self_cond=True).build()
    flags = ["--dataset", tiny_3m[0], "--out", str(tmp_path / "runs"), "--records", str(tmp_path / "records"),
             "--K", "50", "--dim", "8", "--dim-mults", "1", "2", "--batch-size", "4", "--budgets", "0.01",
             "--episodes", "4", "--clock", "wall", "--chunk", "5", "--self-cond"]
    with pytest.raises(SystemExit):
        frontier.main(flags + ["--network", "flat"])                            # refused in one line
    frontier.main(flags)
    name = "agents8-x1x2-attention-head96-lr0.001-selfcond-s0"
    record = json.load(open(tmp_path / "records" / f"3m-medium-{name}.json"))
    assert record["self_cond"] and record["judgements"][0]["synthetic"]["episodes"] == 4
    judged = diffusion.load_checkpoint(str(tmp_path / "runs" / name / "model-0.01min.pt"),
                                       frontier.Levers(self_cond=True).build())
    assert float(judged.diffusion.model.inp_e.weight.detach().abs().max()) > 0, "the estimate's convolution trained"


def test_the_head_width_bounds_the_rank_of_each_agent_step_and_the_frontier_judges_the_head_it_trained(
        tiny_3m, tmp_path, capsys):
    net = unet.AgentUNet(n_agents=2, agent_width=40, dim=8, dim_mults=(1, 2), head_width=8)
    assert output_rank(net, 2 * 40 + 3, 40) == 8                                   # one shared head: 8 numbers per step
    assert output_rank(unet.AgentUNet(n_agents=2, agent_width=40, dim=8, dim_mults=(1, 2)), 2 * 40 + 3, 40) == 40
    assert [unet.agent_head_width(32, 91), unet.agent_head_width(8, 40), unet.agent_head_width(128, 91),
            unet.agent_head_width(32, 91, 16)] == [96, 40, 128, 16]          # rows, or --dim if wider, or as given
    frontier = bench("frontier")
    flags = ["--dataset", tiny_3m[0], "--out", str(tmp_path / "runs"), "--records", str(tmp_path / "records"),
             "--K", "50", "--dim", "8", "--dim-mults", "1", "2", "--batch-size", "4", "--budgets", "0.01",
             "--episodes", "4", "--clock", "wall", "--chunk", "5"]
    frontier.main(flags + ["--head-width", "16"])
    record = json.load(open(tmp_path / "records" / "3m-medium-agents8-x1x2-attention-head16-lr0.001-s0.json"))
    assert record["config"]["head_width"] == 16 and record["judgements"][0]["synthetic"]["episodes"] == 4
    judged = tmp_path / "runs" / "agents8-x1x2-attention-head16-lr0.001-s0" / "model-0.01min.pt"
    assert diffusion.load_checkpoint(str(judged)).ema.model.agent_out[-1].in_channels == 16
    for bad, message in ((["--head-width", "12"], "multiple of 8"), (["--head-width=-8"], "0 (the network's own)")):
        with pytest.raises(SystemExit):
            frontier.main(flags + bad)
        assert message in capsys.readouterr().err


def test_noise_levels_hand_d_real_back_read_and_denoised(tiny_3m):
    noise_levels = bench("noise_levels")
    real = data.load_dataset(tiny_3m[0])
    normalizer = data.Normalizer.fit(data.episodes_to_matrix(real))
    horizons = diffusion.episode_horizons(real.lengths, 8, real.rewards.shape[1])
    copier = diffusion.Diffusion(Unscale(diffusion.Diffusion(Zeros()).abar), K=1000)
    prepared = diffusion.prepare(real, normalizer)
    report = {how: noise_levels.handed_back(copier, normalizer, real, prepared, horizons, 1, how)
              for how in noise_levels.HOWS}
    assert report["read"] == report["denoised"]                  # DDIM from k = 1 is one reading
    real_stats = fidelity.matrix_stats(real, fidelity.reward_range(normalizer, data.layout_of(real)))
    real_stats.add(data.episodes_to_matrix(real))
    truth = real_stats.summary()
    read = report["read"]
    assert read["action_accuracy"] == 1.0 and read["damage_with_shooter"] == truth["damage_with_shooter"] == 1.0
    assert read["health_gain_share"] == truth["health_gain_share"] == 0.0 and read["health_disagreement"] == 0.0
    noisy = noise_levels.handed_back(copier, normalizer, real, prepared, horizons, 1000, "read")     # pure noise
    assert noisy["action_accuracy"] < 0.5 and noisy["health_gain_share"] > 0.1


def test_the_noise_levels_command_tables_each_step_both_ways(tiny_3m, tiny_models, tmp_path, capsys):
    noise_levels = bench("noise_levels")
    noise_levels.main(["--real", tiny_3m[0], "--checkpoint", tiny_models["plain"], "--ks", "1", "999", "50",
                       "--ddim-steps", "4", "--json", str(tmp_path / "r.json")])
    lines = capsys.readouterr().out.splitlines()
    report = json.load(open(tmp_path / "r.json"))
    assert [(level["k"], level["how"]) for level in report["levels"]] == [
        (1, "read"), (1, "denoised"), (50, "read"), (50, "denoised")]          # 999 is read at the model's K = 50, once
    assert len(lines) == 7 and lines[2].startswith("| — | D_real | 1.000 |") and lines[5].startswith("| 50 | read |")
    noise_levels.main(["--table", str(tmp_path / "r.json")])
    assert capsys.readouterr().out.splitlines()[1:8] == lines                   # the record prints the same table
    for argv, message in ((["--real", tiny_3m[0], "--checkpoint", tiny_models["plain"], "--ks", "0"],
                           "--ks must be at least 1"),
                          (["--real", tiny_3m[0]], "give --real R.h5 and --checkpoint model.pt"),
                          (["--table", str(tmp_path / "none.json")], "none.json: not a readable noise-level record")):
        with pytest.raises(SystemExit):
            noise_levels.main(argv)
        err = capsys.readouterr().err.strip()
        assert message in err.splitlines()[-1] and "Traceback" not in err, err


def test_the_samplers_command_judges_each_sampler_as_the_fidelity_suite_does(tiny_3m, tiny_models, tmp_path, capsys):
    samplers = bench("samplers")
    samplers.main(["--real", tiny_3m[0], "--checkpoint", tiny_models["plain"], "--ddim-steps", "1", "0",
                   "--episodes", "6", "--json", str(tmp_path / "s.json")])
    lines = capsys.readouterr().out.splitlines()
    record = json.load(open(tmp_path / "s.json"))
    assert [s["ddim_steps"] for s in record["samplers"]] == [1, 0] and record["model_steps"] == 5
    real = data.load_dataset(tiny_3m[0])
    for s in record["samplers"]:                 # each sampler's report is the suite's own on the same episodes
        alone = fidelity.checkpoint_report(tiny_models["plain"], real, n_episodes=6, ddim_steps=s["ddim_steps"],
                                           progress=False)
        assert s["report"]["synthetic"] == json.loads(json.dumps(alone["synthetic"]))
    assert record["samplers"][0]["report"]["synthetic"] != record["samplers"][1]["report"]["synthetic"]
    assert len(lines) == 4 and "| DDIM-1 |" in lines[2] and "| DDPM (all K) |" in lines[3]
    samplers.main(["--table", str(tmp_path / "s.json")])
    assert capsys.readouterr().out.splitlines() == lines                        # the record prints the same table
    for argv, message in ((["--real", tiny_3m[0], "--checkpoint", tiny_models["plain"], "--ddim-steps", "-1"],
                           "--ddim-steps must be >= 0"),
                          (["--real", tiny_3m[0]], "--real and --checkpoint are needed"),
                          (["--table", str(tmp_path / "none.json")], "none.json: not a readable sampler record")):
        with pytest.raises(SystemExit):
            samplers.main(argv)
        err = capsys.readouterr().err.strip()
        assert message in err.splitlines()[-1] and "Traceback" not in err, err


def test_drop_causes_names_why_a_handed_back_drop_has_no_shooter(tiny_3m, capsys):
    causes = bench("drop_causes")
    real = data.load_dataset(tiny_3m[0])
    threshold = attacks.damage_threshold(real)
    same = causes.drop_causes(real, real, threshold)
    assert same["hits"] > 0 and same["unattacked"] == same["readings_off"] == same["reading_error_sum"] == 0
    unarmed = dataclasses.replace(real, actions=np.where(real.actions >= 5, 1, real.actions))    # every attack lost
    lost = causes.drop_causes(real, unarmed, threshold)
    assert lost["unattacked"] == lost["hits"] == lost["D_real's drop, its attack lost"] == same["hits"]
    # one enemy all its viewers read 0.4 too high at a step t where D_real's health holds and nobody attacks it
    views = attacks.enemy_health_views(real)                                      # (E, T+1, N, K)
    health = np.fmax.reduce(views, axis=2)
    attacked = attacks.attacked_enemies(real.actions, 3)
    inside = data.valid_steps(real.lengths - 1, attacked.shape[1])
    quiet = (inside[..., None] & ~attacked & (health[:, :-1] == health[:, 1:]) & (health[:, :-1] <= 0.6)
             & (~np.isnan(views[:, :-1])).all(axis=2))
    e, t, k = map(int, np.argwhere(quiet)[0])
    starts, _ = envlib.smax_enemy_blocks(3, 3, real.obs_dim)
    obs = real.obs.copy()
    obs[e, t, :, starts[k]] += 0.4
    high = causes.drop_causes(real, dataclasses.replace(real, obs=obs), threshold)
    assert high["unattacked"] == high["health at t read too high"] >= 1
    assert high["health at t read too high, one viewer off"] == 0 and high["readings_off"] == 3
    one = real.obs.copy()
    one[e, t, 0, starts[k]] += 0.4                                                # one viewer alone
    alone = causes.drop_causes(real, dataclasses.replace(real, obs=one), threshold)
    assert alone["health at t read too high, one viewer off"] == alone["unattacked"] >= 1
    with pytest.raises(SystemExit):
        causes.main(["--real", tiny_3m[0], "--checkpoint", "missing.pt", "--examples", "-1"])
    assert "--examples must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        causes.main(["--real", tiny_3m[0], "--checkpoint", "missing.pt", "--skip", "0.5", "--learned-skip", "0.5"])
    assert "give one of them" in capsys.readouterr().err
