"""Training speed of the offline learners on this machine (paper §4.1; docs/learners.md).

    python experiments/learners.py --dataset runs/datasets/3m-medium-s0.h5 [--dataset runs/eaq/synthetic.h5]

Prints iterations per CPU-second of QMIX+CQL and QMIX+BCQ (batch 32
episodes, no evaluation, one thread: the process's CPU time, so a busy
machine does not slow the count) after a few warm-up iterations, on the
union of the datasets given (e.g. the headline's D_real and D_syn).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bcq  # noqa: E402
import cql  # noqa: E402
import learner  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", action="append", required=True, help="HDF5 dataset; repeat for a union")
    p.add_argument("--iters", type=int, default=100, help="timed iterations per learner")
    p.add_argument("--batch-size", type=int, default=32, help="episodes per minibatch")
    p.add_argument("--algos", nargs="+", default=["cql", "bcq"], choices=["cql", "bcq"], help="learners to time")
    args = p.parse_args()
    learner.use_learner_threads()
    attrs, buffer = learner.load_buffer(args.dataset)
    for cls in [{"cql": cql.QmixCQL, "bcq": bcq.QmixBCQ}[a] for a in args.algos]:
        model = cls(attrs["n_agents"], attrs["obs_dim"], attrs["n_actions"])
        learner.train_loop(model, buffer, 5, args.batch_size, 3e-4, 0, progress=False)
        start = time.process_time()
        learner.train_loop(model, buffer, args.iters, args.batch_size, 3e-4, 0, progress=False)
        rate = args.iters / (time.process_time() - start)
        print(f"{attrs['scenario']} {cls.__name__}: {rate:.1f} iterations per CPU-second "
              f"({15000 / rate / 60:.0f} min for the paper's 15 000)")


if __name__ == "__main__":
    main()
