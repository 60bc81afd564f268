"""Why a handed-back episode shows damage without a shooter (docs/fidelity.md).

    python experiments/drop_causes.py --real R.h5 --checkpoint model.pt [--k 1] [--examples 4] [--json record.json]
    python experiments/drop_causes.py --table experiments/records-drop-causes/*.json     # one row per record

D_real's episodes are noised to step k and read back by the trained network
in one call (`noise_levels.py`'s "read"). Every health drop of an enemy that
nobody attacks in the read-back (an unattacked hit of `attacks.damage_counts`)
is set beside the same step of the same episode in D_real and given the first
cause of `CAUSES` that fits:

* the enemy is not seen at t or t+1 in D_real: the read-back wrote its
  visibility bits wrong;
* D_real has that drop: the read-back kept the drop and lost its attack;
* the read-back's health at t (the largest of its viewers' readings, as the
  damage checks read it) is above D_real's by more than the damage threshold
  (half a shot), or its health at t+1 below;
* neither alone: smaller errors on both steps.

For the two "read" causes it also counts how often the agents that see the
enemy at that step disagree by more than the threshold ("one viewer off";
D_real: never); and how often the drop is D_real's, a step
early or late: D_real's enemy loses that health a step after (too low at
t+1) or before (too high at t). A network that copies health exactly shows
none of these. Over all the agents' readings of an enemy's health that both
the read-back and D_real see, it reports the share off by more than the
threshold and the mean absolute error (D_real: 0).
"""
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import attacks  # noqa: E402
import data  # noqa: E402
import diffusion  # noqa: E402
import fidelity  # noqa: E402
from experiments import noise_levels  # noqa: E402

CAUSES = ("not seen in D_real at t or t+1", "D_real's drop, its attack lost", "health at t read too high",
          "health at t+1 read too low", "smaller errors at t and t+1")
ONE_VIEWER = {2: "health at t read too high, one viewer off", 3: "health at t+1 read too low, one viewer off"}
SHIFTED = {2: "health at t read too high, D_real's drop a step before",
           3: "health at t+1 read too low, D_real's drop a step after"}


def health_views(real, back):
    """(D_real's, the read-back's) `attacks.enemy_health_views`, D_real's cut to the read-back's window:
    (E, T+1, N, K) each."""
    T = back.actions.shape[1]
    return attacks.enemy_health_views(real)[:, :T + 1], attacks.enemy_health_views(back)


def drop_causes(real, back, threshold, views=None):
    """real, back: Episodes of the same episodes, D_real's and handed back (back's T may be shorter than real's:
    the windows); threshold: attacks.damage_threshold(D_real). -> Counter {"hits": drops in the read-back over
    the steps t whose t+1 lies inside both episodes, "unattacked": those nobody attacks, cause: count (CAUSES),
    ONE_VIEWER's and SHIFTED's: count, "readings": the agents' readings of an enemy's health both see,
    "readings_off": those off by more than the threshold, "reading_error_sum": their summed absolute error}.
    `views`: `health_views(real, back)`, when the caller has them already."""
    T = back.actions.shape[1]
    views_r, views_b = views or health_views(real, back)                           # (E, T+1, N, K) each
    drop, seen = attacks.enemy_health_drops(back, views_b)                          # (E, T, K) each
    lengths = np.minimum(real.lengths, back.lengths)                                # (E,) inside both
    inside = data.valid_steps(lengths - 1, T)[..., None]
    hits = seen & inside & (drop > threshold)
    unattacked = hits & ~attacks.attacked_enemies(back.actions, drop.shape[-1])
    h_r, h_b = np.fmax.reduce(views_r, axis=2), np.fmax.reduce(views_b, axis=2)    # (E, T+1, K)
    spread = np.nan_to_num(h_b - np.fmin.reduce(views_b, axis=2))                  # the viewers' disagreement
    with np.errstate(invalid="ignore"):                                            # NaN: not seen, compares False
        real_drop = h_r[:, :-1] - h_r[:, 1:] > threshold                            # (E, T, K)
        conditions = [np.isnan(h_r[:, :-1]) | np.isnan(h_r[:, 1:]), real_drop,
                      h_b[:, :-1] - h_r[:, :-1] > threshold,
                      h_r[:, 1:] - h_b[:, 1:] > threshold]
    cause = np.select(conditions, range(len(conditions)), default=len(conditions))[unattacked]
    one_off = {2: (spread[:, :-1] > threshold)[unattacked], 3: (spread[:, 1:] > threshold)[unattacked]}
    no_step = np.zeros_like(real_drop[:, :1])
    shifted = {2: np.concatenate([no_step, real_drop[:, :-1]], axis=1)[unattacked],      # D_real's drop at t-1
               3: np.concatenate([real_drop[:, 1:], no_step], axis=1)[unattacked]}       # D_real's drop at t+1
    # every reading both see, inside both episodes: how far the read-back's is from D_real's
    seen_both = data.valid_steps(lengths, T + 1)[..., None, None] \
        & ~np.isnan(views_r) & ~np.isnan(views_b)                                  # (E, T+1, N, K)
    error = np.abs(views_b - views_r)[seen_both]
    counts = collections.Counter({"hits": int(hits.sum()), "unattacked": int(unattacked.sum()),
                                  "readings": int(error.size), "readings_off": int((error > threshold).sum()),
                                  "reading_error_sum": float(error.sum())})
    counts.update({name: int((cause == i).sum()) for i, name in enumerate(CAUSES)})
    counts.update({name: int(((cause == i) & one_off[i]).sum()) for i, name in ONE_VIEWER.items()})
    counts.update({name: int(((cause == i) & shifted[i]).sum()) for i, name in SHIFTED.items()})
    return counts


def health_examples(real, back, index, threshold, n, views=None):
    """Up to n episodes of the batch (`index`: their numbers in D_real) whose read-back misreads an enemy that loses
    health in D_real: [{"episode", "enemy", "agent", "real", "back"}], the enemy's health as that agent reads it in
    each, step by step (None where it is not seen), for the first such (enemy, viewer) of each episode; `views` as
    in `drop_causes`."""
    if n <= 0:
        return []
    views_r, views_b = views or health_views(real, back)
    examples = []
    for e in range(len(index)):
        end = min(real.lengths[e], back.lengths[e]) + 1
        r, b = views_r[e, :end], views_b[e, :end]                                   # (steps, N, K)
        lowest = np.fmin.reduce(r, axis=0)                                          # (N, K), NaN: never seen
        with np.errstate(invalid="ignore"):
            misread = (lowest < 1.0 - threshold) & (np.abs(b - r) > threshold).any(axis=0)          # (N, K)
        if misread.any() and len(examples) < n:
            agent, enemy = map(int, np.argwhere(misread)[0])
            examples.append({"episode": int(index[e]), "enemy": enemy, "agent": agent,
                             **{name: [None if np.isnan(x) else round(float(x), 2) for x in v[:, agent, enemy]]
                                for name, v in (("real", r), ("back", b))}})
    return examples


def causes_report(path, real, k=1, how="read", seed=0, examples=0, build=diffusion.build):
    """The checkpoint at `path` (trained on D_real, Episodes; `build`: diffusion.load_checkpoint's) hands D_real back
    from step k: drop_causes summed, and `examples` misread enemies (`health_examples`)."""
    model, horizons = fidelity.load_for_judging(path, real, build=build)
    prepared = diffusion.prepare(real, model.normalizer)
    layout, threshold = data.layout_of(real), attacks.damage_threshold(real)
    reward_range = fidelity.reward_range(model.normalizer, layout)
    counts, shown = collections.Counter(), []
    for index, out in noise_levels.handed_back_batches(model.ema, model.normalizer, prepared, horizons, k, how,
                                                       seed=seed):
        back, batch = data.matrix_to_episodes(out, layout, reward_range, attrs=real.attrs), real.select(index)
        views = health_views(batch, back)                                           # read once for both
        counts.update(drop_causes(batch, back, threshold, views))
        shown += health_examples(batch, back, index, threshold, examples - len(shown), views)
    return {"checkpoint": path, "model_steps": model.step, "k": k, "how": how, "counts": dict(counts),
            "examples": shown}


def format_table(report):
    counts = report["counts"]
    lines = [f"{report['checkpoint']} ({report['model_steps']} steps), D_real {report['how']} back from k = "
             f"{report['k']}: {counts['unattacked']} of {counts['hits']} health drops with no shooter "
             f"(damage with a shooter {1 - counts['unattacked'] / max(counts['hits'], 1):.3f}); of "
             f"{counts['readings']} readings of an enemy's health, {counts['readings_off'] / counts['readings']:.3f} "
             f"off by more than half a shot, mean error {counts['reading_error_sum'] / counts['readings']:.3f}",
             "| cause | drops | share of those with no shooter |", "|---|---|---|"]
    for name in CAUSES[:3] + (ONE_VIEWER[2], SHIFTED[2], CAUSES[3], ONE_VIEWER[3], SHIFTED[3], CAUSES[4]):
        lines.append(f"| {name} | {counts[name]} | {counts[name] / max(counts['unattacked'], 1):.3f} |")
    for x in report.get("examples", []):
        def cells(values):
            return " ".join("  - " if v is None else f"{v:4.2f}" for v in values)
        lines += [f"episode {x['episode']}, enemy {x['enemy']} as agent {x['agent']} reads its health:",
                  f"  D_real    {cells(x['real'])}", f"  read back {cells(x['back'])}"]
    return "\n".join(lines)


def summary_table(reports):
    """One row per report: the model, its damage with a shooter read back, its readings off and the causes' shares
    (of the drops with no shooter)."""
    lines = ["| checkpoint | steps | k | damage with a shooter | readings off by > half a shot | mean reading error "
             "| too high at t | too low at t+1 | one viewer off | D_real's drop a step off | smaller errors | "
             "attack lost or not seen |", "|---" * 12 + "|"]
    for r in reports:
        c = r["counts"]

        def share(*names):
            return f"{sum(c[n] for n in names) / max(c['unattacked'], 1):.3f}"
        lines.append(f"| {r['checkpoint']} | {r['model_steps']} | {r['k']} | {1 - c['unattacked'] / c['hits']:.3f} | "
                     f"{c['readings_off'] / c['readings']:.3f} | {c['reading_error_sum'] / c['readings']:.3f} | "
                     f"{share(CAUSES[2])} | {share(CAUSES[3])} | {share(*ONE_VIEWER.values())} | "
                     f"{share(*SHIFTED.values())} | {share(CAUSES[4])} | {share(*CAUSES[:2])} |")
    return "\n".join(lines)


def main(argv=None):
    p = noise_levels.checkpoint_parser(__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=1, help="the diffusion step D_real is noised to")
    p.add_argument("--how", default="read", choices=noise_levels.HOWS, help="handed back in one call or by DDIM")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--examples", type=int, default=0, help="print this many misread enemies' health, step by step")
    args = p.parse_args(argv)
    if args.table:
        with artifacts.one_line_errors():
            print(summary_table([noise_levels.read_record(path, "drop-cause") for path in args.table]))
        return
    with artifacts.parser_errors(p):
        if not (args.real and args.checkpoint):
            raise artifacts.InputError("give --real R.h5 and --checkpoint model.pt (or --table records)")
        artifacts.require_flags(at_least_one={"--k": args.k}, seeds={"--seed": args.seed})
        if args.examples < 0:
            raise artifacts.InputError(f"--examples must be >= 0, got {args.examples}")
        build = noise_levels.f_theta_build(args)
    with artifacts.one_line_errors():
        report = causes_report(args.checkpoint, data.load_dataset(args.real), args.k, args.how, args.seed,
                               args.examples, build)
        if args.json:
            artifacts.write_json(args.json, report)
    print(format_table(report))


if __name__ == "__main__":
    main()
