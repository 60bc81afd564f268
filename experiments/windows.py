"""OG-MARL's 20-step windows in our learner (docs/ogmarl-peer.md).

    python experiments/windows.py --window 20 [train.py's flags], e.g.
    python experiments/windows.py --window 20 --scenario 3m --quality medium --algo bcq --aug none \
        --bcq-execution greedy --no-last-action

OG-MARL's systems train on windows of 20 consecutive steps sampled from the
stream of steps (flashbax: `sequence_length: 20`, `sample_period: 1`), their
GRUs starting from zeros at each window's first step; ours train on whole
episodes (`learner.EpisodeBuffer`). `WindowBuffer` samples as theirs do: a
window's first step is drawn uniformly from all the data's steps (so an
episode is drawn in proportion to its length) and the window runs `--window`
steps or to its episode's end, whichever comes first; a window that stops
before the end has no done and bootstraps from the next observation. (Theirs
can also run past an episode's end into the next; ours stop there.)

Everything else is train.py's: its flags, stages and caches, and its
results.json, written to runs/windows/<train.py's run name>-window<W>/ with
"window" in its config.
"""
import argparse
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import artifacts  # noqa: E402
import data  # noqa: E402
import learner  # noqa: E402
import train  # noqa: E402


class WindowBuffer(learner.EpisodeBuffer):
    """Episodes sampled as windows of at most `window` steps, starting at a uniformly drawn step of the data."""

    def __init__(self, episodes, window):
        super().__init__(episodes)
        self.window = window
        self.ends = torch.cumsum(self.lengths, 0)                                  # (E,) steps up to each end

    def sample(self, batch_size, generator):
        step = torch.randint(int(self.ends[-1]), (batch_size,), generator=generator)  # (B,) over all steps
        index = torch.searchsorted(self.ends, step, right=True)                       # (B,) its episode
        start = step - (self.ends[index] - self.lengths[index])                       # (B,) its step there
        lengths = torch.clamp(self.lengths[index] - start, max=self.window)           # (B,) to the end at most
        return self.minibatch(self.offsets[index] + start, lengths)


def load_window_buffer(paths, window):
    """learner.load_buffer's datasets, sampled in windows: (first file's attrs, WindowBuffer)."""
    attrs = learner.check_datasets(paths)
    return attrs, WindowBuffer((chunk for path in paths for chunk in data.dataset_chunks(path)), window)


def window_dir(args, window):
    """runs/windows/<train.py's results name>-window<W>."""
    return os.path.join(args.out, "windows", os.path.basename(train.result_dir(args)) + f"-window{window}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " Every other flag is train.py's.",
                                add_help=False)
    p.add_argument("--window", type=int, default=20, help="steps per window (OG-MARL: 20)")
    own, rest = p.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        p.print_help()
        print()
    with artifacts.parser_errors(p):
        artifacts.require_flags(at_least_one={"--window": own.window})
    args = train.parse_args(rest)
    with artifacts.one_line_errors():
        make_buffer = functools.partial(load_window_buffer, window=own.window)
        results = train.run(args, window_dir(args, own.window), make_buffer, {"window": own.window})
    print("\n".join(train.summary_lines(results)))
    print(f"results in {window_dir(args, own.window)}")


if __name__ == "__main__":
    main()
