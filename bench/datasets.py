"""The README's dataset tables (paper §4.3) and the heuristic ablation's calibration.

    python bench/datasets.py                          # 3 % datasets from the shipped trained policies
    python bench/datasets.py --behaviour heuristic    # the same for the heuristic ε-mixture (ablation)
    python bench/datasets.py --calibrate              # heuristic: mean return vs epsilon, per map

The table generates, for every map with shipped policies (or every paper
map, for the heuristic) and quality, the paper's "original" dataset size
(3 % of OG-MARL's episode count) and prints a Markdown table beside
OG-MARL's statistics, plus the generation throughput (episodes/s, compile
time excluded) on this machine.
"""
import argparse
import os
import sys
import tempfile
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import behaviour  # noqa: E402
import data  # noqa: E402
import env as envlib  # noqa: E402


def calibrate(scenarios, epsilons, n_episodes, seed):
    """Mean +- std return and win rate of the behaviour policy for each epsilon."""
    print("| map | " + " | ".join(f"ε={e:g}" for e in epsilons) + " |")
    print("|---|" + "---|" * len(epsilons))
    for scenario in scenarios:
        env = envlib.make_env(scenario, n_envs=n_episodes, seed=seed)
        cells = []
        for eps in epsilons:
            policy = data.HeuristicPolicy(env, eps, seed=seed + 1)
            episodes, won = data.collect_batch(env, policy)
            r = episodes.returns()
            cells.append(f"{r.mean():.2f} ± {r.std():.2f} ({won.mean():.2f})")
        print(f"| {scenario} | " + " | ".join(cells) + " |", flush=True)


def throughput(scenario, n_envs, batches, seed):
    """Episodes/s of batched collection with the poor heuristic behaviour, after compilation."""
    env = envlib.make_env(scenario, n_envs=n_envs, seed=seed)
    policy = data.HeuristicPolicy(env, data.behaviour_epsilon(scenario, "poor", "heuristic"), seed=seed + 1)
    data.collect_batch(env, policy)  # compile
    start = time.time()
    for _ in range(batches):
        data.collect_batch(env, policy)
    return n_envs * batches / (time.time() - start)


def table(scenarios, fraction, seed, behaviour):
    """Generate the paper-sized datasets and print their statistics beside OG-MARL's."""
    print("| map | quality | behaviour | ε | episodes | return (ours) | win rate | mean length | return (OG-MARL) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in scenarios:
            for quality in ("good", "medium", "poor"):
                n = max(1, round(fraction * data.full_dataset_size(scenario, quality)))
                path = os.path.join(tmp, f"{scenario}-{quality}.h5")
                a = data.generate_dataset(scenario, quality, n, seed, path, behaviour, progress=False)
                og = data.OG_MARL[(scenario, quality)]
                print(f"| {scenario} | {quality} | {behaviour} | {a['epsilon']:g} | {n} | {a['return_mean']:.2f} ± "
                      f"{a['return_std']:.2f} | {a['win_rate']:.2f} | {a['length_mean']:.1f} | "
                      f"{og[0]:.2f} ± {og[1]:.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true", help="sweep the heuristic's epsilon instead")
    parser.add_argument("--behaviour", default="policies", choices=data.BEHAVIOURS, help="who plays the table's data")
    parser.add_argument("--scenarios", nargs="+", default=None,
                        help="maps (default: those with shipped policies, or all paper maps for the heuristic)")
    parser.add_argument("--epsilons", nargs="+", type=float,
                        default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0],
                        help="epsilons to sweep with --calibrate")
    parser.add_argument("--episodes", type=int, default=512, help="episodes per epsilon with --calibrate")
    parser.add_argument("--fraction", type=float, default=0.03, help="dataset size as a share of OG-MARL's")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    scenarios = args.scenarios
    if scenarios is None:
        shipped = behaviour.read_manifest()
        scenarios = [m for m in envlib.PAPER_SCENARIOS if args.behaviour == "heuristic" or args.calibrate
                     or m in shipped]
    if args.calibrate:
        calibrate(scenarios, args.epsilons, args.episodes, args.seed)
        return
    table(scenarios, args.fraction, args.seed, args.behaviour)
    for scenario in ("3m", "3s5z_vs_3s6z"):
        print(f"generation throughput {scenario}: {throughput(scenario, 256, 4, args.seed):.0f} episodes/s")


if __name__ == "__main__":
    main()
