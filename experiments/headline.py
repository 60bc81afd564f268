"""The headline command from nothing: wall time per stage, peak memory and D_syn's fidelity (docs/headline.md).

    python experiments/headline.py                          # python train.py --scenario 3m --quality poor --lam 0.1
    python experiments/headline.py -- --bucket-width 0      # extra train.py flags after --

Runs train.py in a fresh temporary --out (nothing cached) under
`/usr/bin/time -v`, then prints the total wall time, the peak resident
memory of the whole run, each stage's seconds (results.json), D_syn against
D_real (attack share, action-histogram distance, confident dones, legal
before repair, mean length, wins, damage with a shooter, health gained, the
copy test) with the fidelity verdict, and the final return.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADLINE = ["--scenario", "3m", "--quality", "poor", "--lam", "0.1"]


def peak_rss_gib(time_output):
    """Peak resident memory in GiB from `/usr/bin/time -v`'s report."""
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_output)
    return int(match.group(1)) / 2 ** 20 if match else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", default=None, help="use this --out folder and keep it (default: a temporary one)")
    p.add_argument("extra", nargs="*", help="train.py flags after --, added to the headline's")
    args = p.parse_args()
    out = args.keep or tempfile.mkdtemp(prefix="eaq-headline-")
    command = [sys.executable, "train.py", *HEADLINE, "--out", out, *args.extra]
    start = time.time()
    run = subprocess.run(["/usr/bin/time", "-v", *command], cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - start
    if run.returncode:
        sys.exit(f"train.py failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    results_path = next(os.path.join(d, "results.json") for d, _, files in os.walk(os.path.join(out, "results"))
                        if "results.json" in files)
    with open(results_path) as f:
        results = json.load(f)
    print("command: " + " ".join(command[1:]))
    print(f"wall time {wall / 60:.1f} min, peak resident memory {peak_rss_gib(run.stderr):.2f} GiB")
    print("stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in results["seconds"].items()))
    report = results.get("augmentation_report")
    if report:
        real, syn = report["real"], report["synthetic"]
        for key in ("attack_share", "ended_share", "legal_before_repair", "length_mean", "return_mean",
                    "focus_fire_share", "win_share", "damage_with_shooter", "health_gain_share"):
            print(f"  {key:22s} D_real {real[key]:8.3f}   D_syn {syn[key]:8.3f}")
        print(f"  action-histogram TV distance {report['action_tv_distance']:.3f}; "
              f"{report['model_steps']} diffusion steps, {report['sampler']}, mean window "
              f"{report['mean_window']:.1f} of T = {report['horizon']}; copy test at k = 1: "
              f"{report['copy']['1']['action_accuracy']:.3f}")
        print("  " + ("meets the fidelity bar" if not report["fidelity_misses"]
                      else "MISSES the fidelity bar: " + "; ".join(report["fidelity_misses"])))
    final = results["final"]
    print(f"final return {final['return_mean']:.2f} ± {final['return_std']:.2f} "
          f"(held-out {results['heldout']['return_mean']:.2f}); D_real {results['dataset']['return_mean']:.2f}")


if __name__ == "__main__":
    main()
