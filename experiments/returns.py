"""How D_syn's episode returns compare with D_real's (docs/where-the-wins-went.md).

    python experiments/returns.py --real runs/datasets/<D_real>.h5 --syn runs/eaq/<run>/synthetic.h5 [--syn ...]

(each D_syn's row is numbered in the order of the --syn flags).

For each dataset: percentiles of the episode return, the share of
episodes at a win's level (return ≥ 18 of 20; in our data that is the win
rate), and the share whose largest one-step reward reaches half the win
bonus (≥ 5: SMAX pays 1 × REWARD_SCALE = 10 on the step an episode is
won, while damage comes in small steps), and the mean ± std of the
reward on each episode's last step. A D_syn can match D_real's mean
return and still have no wins: a model that gives every episode the
data's *average* terminal reward (wins' and losses' mixed) does.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import data  # noqa: E402
import fidelity  # noqa: E402
import env as envlib  # noqa: E402

PERCENTILES = (5, 25, 50, 75, 95, 99)
SPIKE = 0.5 * envlib.REWARD_SCALE            # half the win bonus, paid in one step


def return_profile(episodes):
    """{percentile: return}, win-level share, win-spike share and last-step rewards of one dataset
    (`data.Episodes`)."""
    returns = episodes.returns()                                    # (E,)
    return {"percentiles": dict(zip(PERCENTILES, np.percentile(returns, PERCENTILES))),
            "mean": float(returns.mean()), "std": float(returns.std()),
            "win_level": fidelity.win_share(returns),
            "win_spike": float(np.mean(episodes.rewards.max(axis=1) >= SPIKE)),
            "last_step": episodes.rewards[np.arange(episodes.n_episodes), episodes.lengths - 1]}   # (E,)


def profile_line(label, profile):
    cells = [f"{profile['percentiles'][q]:.1f}" for q in PERCENTILES]
    return (f"| {label} | {profile['mean']:.2f} ± {profile['std']:.2f} | " + " | ".join(cells)
            + f" | {profile['win_level']:.3f} | {profile['win_spike']:.3f} | "
            f"{profile['last_step'].mean():.2f} ± {profile['last_step'].std():.2f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", required=True, help="D_real (HDF5 made by datasets.py)")
    p.add_argument("--syn", action="append", default=[], help="a D_syn (synthetic.h5); repeat for several")
    args = p.parse_args(argv)
    header = (["data", "return"] + [f"p{q}" for q in PERCENTILES]
              + [f"return ≥ {fidelity.WIN_RETURN:g}", f"a step ≥ {SPIKE:g}", "last step's reward"])
    with artifacts.one_line_errors():                               # a missing or damaged file: one line
        lines = [profile_line("D_real", return_profile(data.load_dataset(args.real)))]
        for i, path in enumerate(args.syn, 1):                      # every file checked before any line prints
            syn = data.load_dataset(path)
            if not syn.attrs.get("synthetic"):
                p.error(f"--syn {path} is not a synthetic dataset (no 'synthetic' attribute); pass eaq.py's "
                        "synthetic.h5")
            lines.append(profile_line(f"D_syn {i} (λ={syn.attrs['lam']:g})", return_profile(syn)))
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
