"""One trained generator, sampled with coarser or finer samplers, judged by the fidelity suite (docs/fidelity.md).

    python experiments/samplers.py --real R.h5 --checkpoint runs/frontier/<setting>/model-90.0min.pt \
        --ddim-steps 10 20 50 100 --json experiments/records-samplers/<name>.json
    python experiments/samplers.py --table experiments/records-samplers/*.json     # one row per sampler

Training is untouched: the same network draws the same number of episodes
(D_real's windows, one seed) with each sampler in turn — DDIM (eta = 0) on n
evenly spaced steps of 1..K, or with 0 ancestral DDPM over all K steps, the
paper's — and each D_syn is judged by `fidelity.checkpoint_report`, with the
CPU time its sampling and judging took. It asks whether the health
bookkeeping is lost to the sampler's coarse steps (DDIM-20 makes its last
estimate before k = 1 at k = 54) or is the network's.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import data  # noqa: E402
import diffusion  # noqa: E402
import fidelity  # noqa: E402
from experiments import frontier, noise_levels  # noqa: E402


def sampler_name(ddim_steps):
    """DDIM-n, or DDPM for 0."""
    return f"DDIM-{ddim_steps}" if ddim_steps else "DDPM (all K)"


def judge_samplers(checkpoint, real, ddim_steps, episodes, seed=0, build=diffusion.build, on_judged=None):
    """{checkpoint, model_steps, samplers: [{ddim_steps, cpu_seconds, report}, ...]}, one per entry of
    `ddim_steps` (0: DDPM; cpu_seconds: its sampling and judging), the checkpoint loaded with `build`;
    `on_judged(record)` after each (the record so far)."""
    record = {"checkpoint": checkpoint, "episodes": episodes, "seed": seed, "samplers": []}
    for n in ddim_steps:
        clock = artifacts.Clock()
        report = fidelity.checkpoint_report(checkpoint, real, n_episodes=episodes, ddim_steps=n, seed=seed,
                                            progress=False, build=build)
        record["model_steps"] = report["model_steps"]
        record["samplers"].append({"ddim_steps": n, "cpu_seconds": clock.cpu(), "report": report})
        if on_judged:
            on_judged(record)
    return record


def format_table(records):
    """One markdown row per (record, sampler): the frontier's columns and the bar's misses."""
    lines = ["| checkpoint | steps | sampler | CPU-s | " + " | ".join(n for n, _ in frontier.COLUMNS)
             + " | misses |",
             "|---" * (len(frontier.COLUMNS) + 5) + "|"]
    for record in records:
        for s in record["samplers"]:
            r = s["report"]
            cells = " | ".join(f"{get(r):.3f}" for _, get in frontier.COLUMNS)
            lines.append(f"| {record['checkpoint']} | {record['model_steps']} | {sampler_name(s['ddim_steps'])} | "
                         f"{s['cpu_seconds']:.0f} | {cells} | {len(r['fidelity_misses'])} |")
    return "\n".join(lines)


def main(argv=None):
    p = noise_levels.checkpoint_parser(__doc__.splitlines()[0])
    p.add_argument("--ddim-steps", type=int, nargs="+", default=[10, 20, 50, 100],
                   help="the samplers: DDIM steps over all K; 0 = ancestral DDPM, all K")
    p.add_argument("--episodes", type=int, default=1000, help="episodes drawn with each sampler")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and the copy test's noise")
    args = p.parse_args(argv)
    with artifacts.parser_errors(p):
        if args.table:
            records = [noise_levels.read_record(path, "sampler") for path in args.table]
        else:
            if not (args.real and args.checkpoint):
                raise artifacts.InputError("--real and --checkpoint are needed (or --table RECORD...)")
            artifacts.require_flags(at_least_one={"--episodes": args.episodes})
            if any(n < 0 for n in args.ddim_steps):
                raise artifacts.InputError(f"--ddim-steps must be >= 0 (0: DDPM), got {args.ddim_steps}")
            build = noise_levels.f_theta_build(args)
    if args.table:
        print(format_table(records))
        return
    with artifacts.one_line_errors():
        real = data.load_dataset(args.real)
        save = (lambda record: artifacts.write_json(args.json, record)) if args.json else None
        record = judge_samplers(args.checkpoint, real, args.ddim_steps, args.episodes, args.seed, build, save)
    print(format_table([record]))


if __name__ == "__main__":
    main()
