"""Making the offline datasets: trained behaviour policies play the simulator (paper §4.3, OG-MARL's procedure).

The paper trains on OG-MARL's SMAC datasets, which cannot be downloaded
here, so we make our own the way OG-MARL made theirs: the trained behaviour
policies of a map and quality (four independently trained seeds, shipped in
policies/ by `behaviour.py`) play SMAX epsilon-greedily with epsilon = 0.05,
sharing the episodes equally, and every step is recorded in `data.py`'s
HDF5 schema. A full dataset has OG-MARL's episode count for its map and
quality; the paper's "original" set is 3 % of it (`--fraction 0.03`): the
episodes are i.i.d. within each policy's share, so generating that many
equals subsampling a full set. `ensure_dataset` caches a dataset under a
name that carries its whole configuration.

    python datasets.py --scenario 3m --quality medium --fraction 0.03 --out runs/datasets/3m-medium.h5
"""
import argparse
import hashlib
import json
import os
import time

import h5py
import numpy as np
from tqdm import tqdm

import artifacts
import behaviour as behaviourlib
import data
import env as envlib

DEFAULT_EPISODES = 20000  # full-dataset size for maps OG-MARL does not cover
TRAINED = "trained-policies+epsilon-greedy"


def full_dataset_size(scenario, quality):
    """OG-MARL's episode count for the map and quality (the paper's full dataset)."""
    return behaviourlib.OG_MARL.get((scenario, quality), (None, None, DEFAULT_EPISODES))[2]


def collect_batch(env, policy):
    """Play one batch of B episodes to the end; returns Episodes padded to the episode limit."""
    B, N, L = env.n_envs, env.n_agents, env.episode_limit
    obs_buf = np.zeros((B, L + 1, N, env.obs_dim), dtype=np.float32)
    avail_buf = np.zeros((B, L + 1, N, env.n_actions), dtype=bool)
    actions = np.zeros((B, L, N), dtype=np.int64)
    rewards = np.zeros((B, L), dtype=np.float32)
    dones = np.zeros((B, L), dtype=bool)
    won = np.zeros(B, dtype=bool)
    obs, avail = env.reset()
    policy.reset()
    obs_buf[:, 0], avail_buf[:, 0] = obs, avail
    finished = np.zeros(B, dtype=bool)
    for t in range(L):
        action = policy(obs, avail)                            # (B, N)
        obs, avail, reward, done, won = env.step(action)
        active = ~finished                                     # (B,) still playing at step t
        actions[active, t] = action[active]
        rewards[active, t] = reward[active]
        dones[active, t] = done[active]
        obs_buf[active, t + 1], avail_buf[active, t + 1] = obs[active], avail[active]
        finished = done
        if finished.all():
            break
    lengths = actions.shape[1] - np.argmax(dones[:, ::-1], axis=1)  # terminal step + 1
    episodes = data.Episodes(obs_buf, avail_buf, actions, rewards, dones, lengths.astype(np.int32))
    return episodes, won


def shipped_sources(env, scenario, quality, epsilon, seed, n_episodes, policy_dir=behaviourlib.POLICY_DIR):
    """The shipped policies of the map and quality and how many episodes each plays: ([(policy, count)], attrs).

    One policy per training seed, each checked against the manifest's sha256,
    sharing the episodes equally (the first n % K play one more).
    """
    entries = behaviourlib.shipped_policies(scenario, quality, policy_dir)
    K = len(entries)
    sources, files, digests = [], [], []
    for k, entry in enumerate(entries):
        path = os.path.join(policy_dir, entry["file"])
        policy = behaviourlib.TrainedPolicy(path, env, epsilon, seed=seed + 1 + k)   # refuses a bad file
        if behaviourlib.file_sha256(path) != entry["sha256"]:
            manifest = os.path.join(policy_dir, behaviourlib.MANIFEST)
            raise artifacts.InputError(f"{path}: its contents differ from the manifest's sha256 ({manifest}): the "
                                       f"file and the manifest disagree; restore both with `git checkout -- {path} "
                                       f"{manifest}`, or retrain and ship them with `python behaviour.py "
                                       f"--scenario {scenario}`")
        sources.append((policy, n_episodes // K + (k < n_episodes % K)))
        files.append(entry["file"])
        digests.append(entry["sha256"])
    return sources, {"behaviour": TRAINED, "policy_files": json.dumps(files), "policy_sha256": json.dumps(digests)}


def write_dataset(env, sources, scenario, quality, made_by, path, progress=True):
    """Play each (policy, count) of `sources` in `env`'s batches and stream the episodes into `path`.

    The HDF5 file is written under a temporary name and renamed at the end;
    its attrs name the map, the shapes and `made_by` (behaviour, epsilon,
    seed...), plus the return, win and length statistics. Returns the attrs.
    """
    attrs = {"scenario": scenario, "quality": quality, "backend": env.backend, "n_agents": env.n_agents,
             "obs_dim": env.obs_dim, "n_actions": env.n_actions, **made_by, "synthetic": False,
             "format_version": data.FORMAT_VERSION}
    returns, lengths, wins = [], [], []
    with artifacts.atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        writer = data.EpisodeWriter(f, env.episode_limit, env.n_agents, env.obs_dim, env.n_actions)
        with tqdm(total=sum(count for _, count in sources), desc=f"{scenario}-{quality}",
                  unit="ep", disable=not progress) as bar:
            for policy, count in sources:
                done = 0
                while done < count:
                    batch, won = collect_batch(env, policy)
                    keep = min(env.n_envs, count - done)
                    batch = batch.select(np.arange(keep))
                    writer.append(batch)
                    returns.append(batch.returns())
                    lengths.append(batch.lengths)
                    wins.append(won[:keep])
                    done += keep
                    bar.update(keep)
        returns, lengths = np.concatenate(returns), np.concatenate(lengths)
        writer.finish(int(lengths.max()))
        attrs.update(return_mean=float(returns.mean()), return_std=float(returns.std()),
                     win_rate=float(np.concatenate(wins).mean()), length_mean=float(lengths.mean()))
        f.attrs.update(attrs)
    return attrs


def generate_dataset(scenario, quality, n_episodes, seed, path, epsilon=behaviourlib.EPSILON, n_envs=256,
                     progress=True, policy_dir=behaviourlib.POLICY_DIR):
    """Play `n_episodes` with the shipped policies of `quality` and write them to `path`; returns its attrs.

    Episodes are collected in batches of `n_envs` per behaviour policy.
    Deterministic for a given (seed, n_envs).
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be at least 1, got {n_episodes}")
    env = envlib.make_env(scenario, "smax", n_envs=min(n_envs, n_episodes), seed=seed)
    sources, made_by = shipped_sources(env, scenario, quality, float(epsilon), seed, n_episodes, policy_dir)
    return write_dataset(env, sources, scenario, quality, {**made_by, "epsilon": float(epsilon), "seed": seed},
                         path, progress)


def dataset_size(scenario, quality, fraction):
    """Episodes of a configuration: round(fraction x OG-MARL's count), at least one."""
    return max(1, round(fraction * full_dataset_size(scenario, quality)))


def policies_tag(scenario, quality, policy_dir=behaviourlib.POLICY_DIR):
    """'pol' + 6 hex digits of the shipped policies' sha256s (part of a dataset's name)."""
    digests = [e["sha256"] for e in behaviourlib.shipped_policies(scenario, quality, policy_dir)]
    return "pol" + hashlib.sha1("".join(digests).encode()).hexdigest()[:6]


def dataset_path(scenario, quality, fraction, seed, root=os.path.join("runs", "datasets"),
                 policy_dir=behaviourlib.POLICY_DIR):
    """Where `ensure_dataset` keeps this configuration's dataset (its name is the whole configuration)."""
    n, tag = dataset_size(scenario, quality, fraction), policies_tag(scenario, quality, policy_dir)
    return os.path.join(root, f"{scenario}-{quality}-{tag}-eps{behaviourlib.EPSILON:g}-n{n}-s{seed}.h5")


def ensure_dataset(scenario, quality, fraction, seed, root=os.path.join("runs", "datasets"),
                   policy_dir=behaviourlib.POLICY_DIR):
    """Path of the dataset for this configuration, generated on first use and reused after.

    The name carries the whole configuration (a digest of the policies'
    files included), so a different one never reuses the wrong file. A
    cached file that no longer loads (damaged, truncated) is made again.
    """
    path = dataset_path(scenario, quality, fraction, seed, root, policy_dir)
    if os.path.exists(path):
        try:
            data.load_dataset(path, scenario=scenario, quality=quality)
            return path
        except artifacts.InputError as err:       # a damaged cache of our own: make it again
            print(f"rebuilding the cached dataset: {err}")
    os.makedirs(root, exist_ok=True)
    generate_dataset(scenario, quality, dataset_size(scenario, quality, fraction), seed, path,
                     policy_dir=policy_dir)
    return path


def describe(attrs):
    """One line of dataset statistics, beside OG-MARL's when known."""
    line = (f"{attrs['scenario']}-{attrs['quality']} ({attrs.get('behaviour', '?')}, epsilon {attrs['epsilon']}): "
            f"return {attrs['return_mean']:.2f} ± {attrs['return_std']:.2f}, win rate "
            f"{attrs.get('win_rate', float('nan')):.2f}, mean length {attrs.get('length_mean', float('nan')):.1f}")
    og = behaviourlib.OG_MARL.get((attrs["scenario"], attrs["quality"]))
    return line + (f" (OG-MARL: {og[0]:.2f} ± {og[1]:.2f})" if og else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate an offline SMAX dataset with the shipped behaviour "
                                                 "policies (paper §4.3).")
    parser.add_argument("--scenario", default="3m", help="map name (paper: 3m, 5m_vs_6m, 8m, 2s3z, 3s5z_vs_3s6z)")
    parser.add_argument("--quality", default="poor", choices=data.QUALITIES, help="behaviour policy quality")
    parser.add_argument("--episodes", type=int, default=None,
                        help="episodes to generate (default: OG-MARL's count for the map and quality "
                             "times --fraction)")
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="share of the full dataset to generate; the paper's 'original' set is 0.03")
    parser.add_argument("--epsilon", type=float, default=behaviourlib.EPSILON,
                        help="random-action probability (OG-MARL: 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--n-envs", type=int, default=256, help="episodes played in parallel")
    parser.add_argument("--out", required=True, help="output HDF5 path")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    envlib.require_scenario(parser, args.scenario)
    if not 0.0 < args.fraction <= 1.0:
        parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
    if not 0.0 <= args.epsilon <= 1.0:
        parser.error(f"--epsilon must be in [0, 1], got {args.epsilon}")
    with artifacts.parser_errors(parser):
        artifacts.require_flags(at_least_one={"--episodes": args.episodes, "--n-envs": args.n_envs},
                                seeds={"--seed": args.seed})
    if os.path.exists(args.out) and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")
    n = args.episodes or dataset_size(args.scenario, args.quality, args.fraction)
    with artifacts.one_line_errors():
        artifacts.prepare_output_dir(os.path.dirname(os.path.abspath(args.out)), "--out's folder")
        start = time.time()
        attrs = generate_dataset(args.scenario, args.quality, n, args.seed, args.out, args.epsilon,
                                 n_envs=args.n_envs)
    seconds = time.time() - start
    print(describe(attrs))
    print(f"wrote {n} episodes to {args.out} in {seconds:.1f}s ({n / seconds:.1f} episodes/s)")


if __name__ == "__main__":
    main()
