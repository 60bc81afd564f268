"""The dataset tables of docs/datasets.md (paper §4.3).

    python experiments/dataset_table.py                          # 3 % datasets from the shipped trained policies
    python experiments/dataset_table.py --behaviour heuristic    # the same for the heuristic ε-mixture (ablation)

(The heuristic's calibration: `python experiments/heuristic_data.py --calibrate`.)

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
import behaviour as behaviour_lib  # noqa: E402
import datasets  # noqa: E402
import env as envlib  # noqa: E402
from experiments import heuristic_data  # noqa: E402


def throughput(scenario, n_envs, batches, seed):
    """Episodes/s of batched collection with the poor heuristic mixture, after compilation."""
    env = envlib.make_env(scenario, n_envs=n_envs, seed=seed)
    policy = heuristic_data.HeuristicPolicy(env, heuristic_data.heuristic_epsilon(scenario, "poor"), seed=seed + 1)
    datasets.collect_batch(env, policy)  # compile
    start = time.time()
    for _ in range(batches):
        datasets.collect_batch(env, policy)
    return n_envs * batches / (time.time() - start)


def table(scenarios, fraction, seed, behaviour):
    """Generate the paper-sized datasets and print their statistics beside OG-MARL's."""
    print("| map | quality | behaviour | ε | episodes | return (ours) | win rate | mean length | return (OG-MARL) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in scenarios:
            for quality in ("good", "medium", "poor"):
                n = datasets.dataset_size(scenario, quality, fraction)
                path = os.path.join(tmp, f"{scenario}-{quality}.h5")
                make = heuristic_data.generate if behaviour == "heuristic" else datasets.generate_dataset
                a = make(scenario, quality, n, seed, path, progress=False)
                og = behaviour_lib.OG_MARL[(scenario, quality)]
                print(f"| {scenario} | {quality} | {behaviour} | {a['epsilon']:g} | {n} | {a['return_mean']:.2f} ± "
                      f"{a['return_std']:.2f} | {a['win_rate']:.2f} | {a['length_mean']:.1f} | "
                      f"{og[0]:.2f} ± {og[1]:.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--behaviour", default="policies", choices=("policies", "heuristic"),
                        help="who plays the table's data: the shipped policies, or the heuristic ablation")
    parser.add_argument("--scenarios", nargs="+", default=None,
                        help="maps (default: those with shipped policies, or all paper maps for the heuristic)")
    parser.add_argument("--fraction", type=float, default=0.03, help="dataset size as a share of OG-MARL's")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    scenarios = args.scenarios
    if scenarios is None:
        shipped = behaviour_lib.read_manifest()
        scenarios = [m for m in envlib.PAPER_SCENARIOS if args.behaviour == "heuristic" or m in shipped]
    table(scenarios, args.fraction, args.seed, args.behaviour)
    for scenario in ("3m", "3s5z_vs_3s6z"):
        print(f"generation throughput {scenario}: {throughput(scenario, 256, 4, args.seed):.0f} episodes/s")


if __name__ == "__main__":
    main()
