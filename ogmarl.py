"""The paper's own data: OG-MARL's SMAC datasets converted into our HDF5 schema (paper §4.3).

The paper trains on OG-MARL's SMAC v1 datasets. OG-MARL ships each one as a
flashbax "vault": a folder such as `vaults/og_marl/smac_v1/3m.vlt/Good/`
holding `metadata.json` (the tree of arrays, their shapes and dtypes) and one
tensorstore OCDBT key-value store (`manifest.ocdbt`, `d/...`). Each array is
a zarr array in that store, keyed by its tree path with a trailing dot:

    observations.    float32 (1, T_total, N, O)
    actions.         int     (1, T_total, N)
    rewards.         float32 (1, T_total, N)     the team reward, copied to every agent, SMAC's 0-20 scale
    terminals.       (1, T_total, N)             1 at an episode's last step (a timeout is terminal too)
    truncations.     (1, T_total, N)
    infos.legals.    float 0/1 (1, T_total, N, A)
    infos.state.     float32 (1, T_total, S)     SMAC's global state (not used here)
    vault_index      int32 (1,)                  how many time rows are valid (the arrays are declared longer)

Episodes follow each other along time; one ends at the row where every
agent's terminal (or truncation) is 1. `convert` cuts them there, checks
(before writing anything) that the agents' reward copies agree and keeps one, turns legal masks into
booleans, and writes our schema (`data.py`) streaming in chunks of rows, so
a full dataset (about a million rows) never sits in memory at once. Two
facts of the format are handled explicitly:

* the observation after an episode's last step is not stored: our schema's
  obs[:, length] (and its legal actions) are zeros, and the attrs say so
  (`final_observation: "absent (zeros)"`); no learner reads it, because the
  done flag stops bootstrapping, and Eq. 4 does not contain it;
* a trailing episode without a terminal row is unfinished: it is dropped and
  its rows counted (`dropped_unfinished_rows`).

SMAC's action layout differs from SMAX's: no-op (0), stop (1), 4 moves,
then one attack per enemy (6 on); a dead agent may only no-op. The learners
and the diffusion model run on such a file unchanged; evaluating a learner
on it needs StarCraft II (`--backend smac`), and the figures read the
attack actions from the dataset's backend.

`--fraction 0.03` converts a random 3 % of the episodes (the paper's
"original" set), chosen with `--seed` after a first pass over the terminal
flags alone.

    python ogmarl.py vaults/og_marl/smac_v1/3m.vlt/Good --fraction 0.03 --out runs/datasets/ogmarl-3m-good-f0.03.h5
"""
import argparse
import json
import os

import numpy as np

import artifacts
import data
import datasets
import env as envlib

LEAVES = {"observations": "observations.", "actions": "actions.", "rewards": "rewards.",
          "terminals": "terminals.", "truncations": "truncations.", "legals": "infos.legals."}
QUALITY_NAMES = {"Good": "good", "Medium": "medium", "Poor": "poor"}
# SMAC v1's episode limits (its map registry) for the paper's maps.
SMAC_LIMITS = {"3m": 60, "8m": 120, "5m_vs_6m": 70, "2s3z": 120, "3s5z_vs_3s6z": 170}
SMAC_FIRST_ATTACK = 6
CHUNK_ROWS = 100_000


def smac_sizes(scenario):
    """(agents, actions) of a SMAC map: SMAX has the same units, SMAC has 6 + one attack per enemy."""
    smax_env, _ = envlib._import_smax()
    s = smax_env.map_name_to_scenario(scenario)
    return s.num_allies, SMAC_FIRST_ATTACK + s.num_enemies


class Vault:
    """Read access to one OG-MARL vault's arrays (tensorstore, no jax needed)."""

    def __init__(self, path):
        import tensorstore as ts
        self.path = path.rstrip("/")
        meta_path = os.path.join(self.path, "metadata.json")
        if not os.path.isdir(self.path) or not os.path.exists(meta_path) \
                or not os.path.exists(os.path.join(self.path, "manifest.ocdbt")):
            raise artifacts.InputError(f"{path}: not a flashbax vault (expected metadata.json and manifest.ocdbt "
                                       f"in a folder such as vaults/og_marl/smac_v1/3m.vlt/Good)")
        try:
            with open(meta_path) as f:
                self.metadata = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise artifacts.InputError(f"{meta_path}: not readable JSON ({err})") from None
        self._ts = ts
        self.arrays = {name: self._open(key) for name, key in LEAVES.items()}
        self.rows = int(self._open("vault_index").read().result()[0])
        if self.rows < 1:
            raise artifacts.InputError(f"{path}: the vault holds no rows (vault_index = {self.rows})")
        for name, key in LEAVES.items():          # the index must lie inside what the arrays store (one row read)
            try:
                self._open(key, fill_missing=False)[0, self.rows - 1:self.rows].read().result()
            except Exception:                     # tensorstore: NOT_FOUND for a chunk that was never stored
                raise artifacts.InputError(f"{path}: vault_index says {self.rows} rows but its {name} array stores "
                                           f"fewer; a damaged vault") from None
        self.n_agents = self.arrays["observations"].shape[2]
        self.obs_dim = self.arrays["observations"].shape[3]
        self.n_actions = self.arrays["legals"].shape[3]

    def _open(self, key, fill_missing=True):
        """One array of the vault; with fill_missing=False, reading a chunk that was never stored is an error."""
        spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{os.path.abspath(self.path)}",
                                              "path": key}, "fill_missing_data_reads": fill_missing}
        try:
            return self._ts.open(spec, open=True, read=True).result()
        except Exception as err:   # tensorstore raises ValueError/RuntimeError subclasses of its own
            raise artifacts.InputError(f"{self.path}: the vault has no readable array {key!r} "
                                       f"({str(err).splitlines()[0][:120]})") from None

    def read(self, name, start, stop):
        """Rows [start, stop) of one array, batch row 0: (rows, ...) numpy."""
        return np.asarray(self.arrays[name][0, start:stop].read().result())


def names_from_path(path):
    """('3m', 'good') from .../3m.vlt/Good, or (None, None) where the path does not say."""
    parent, uid = os.path.split(os.path.abspath(path).rstrip("/"))
    scenario = os.path.basename(parent)
    scenario = scenario[:-4] if scenario.endswith(".vlt") else None
    return scenario, QUALITY_NAMES.get(uid)


def episode_bounds(vault):
    """First pass, over the small arrays only: [(start, stop)] rows of each finished episode, and the
    number of unfinished trailing rows; refuses agents' reward copies that disagree."""
    bounds, start = [], 0
    for lo in range(0, vault.rows, CHUNK_ROWS):
        hi = min(lo + CHUNK_ROWS, vault.rows)
        rewards = vault.read("rewards", lo, hi)                                  # (rows, N)
        disagree = ~np.isclose(rewards, rewards[:, :1]).all(-1)
        if disagree.any():
            raise artifacts.InputError(f"{vault.path}: the agents' reward copies differ at row "
                                       f"{lo + int(np.flatnonzero(disagree)[0])}; not a cooperative team reward")
        ends = (vault.read("terminals", lo, hi) > 0).all(-1) | (vault.read("truncations", lo, hi) > 0).all(-1)
        for row in np.flatnonzero(ends) + lo:
            bounds.append((start, int(row) + 1))
            start = int(row) + 1
    return bounds, vault.rows - start


def episodes_of_rows(vault, rows, picked, T, path):
    """Second pass for one chunk: Episodes padded to T steps for the picked (start, stop) bounds in rows (lo, hi)."""
    lo, hi = rows
    obs, actions = vault.read("observations", lo, hi), vault.read("actions", lo, hi)
    rewards, legals = vault.read("rewards", lo, hi), vault.read("legals", lo, hi) > 0.5
    if not np.issubdtype(actions.dtype, np.integer) and not np.array_equal(actions, np.round(actions)):
        raise artifacts.InputError(f"{path}: actions are not whole numbers")
    E, N = len(picked), vault.n_agents
    out = data.Episodes(obs=np.zeros((E, T + 1, N, vault.obs_dim), np.float32),
                        avail=np.zeros((E, T + 1, N, vault.n_actions), bool),
                        actions=np.zeros((E, T, N), np.int64), rewards=np.zeros((E, T), np.float32),
                        dones=np.zeros((E, T), bool), lengths=np.zeros(E, np.int32))
    for e, (start, stop) in enumerate(picked):
        a, b, n = start - lo, stop - lo, stop - start
        out.obs[e, :n], out.avail[e, :n] = obs[a:b], legals[a:b]       # obs[:, n] stays zero: not stored
        out.actions[e, :n], out.rewards[e, :n] = actions[a:b], rewards[a:b, 0]
        out.dones[e, n - 1], out.lengths[e] = True, n
    return out


def convert(vault_path, out, scenario=None, quality=None, fraction=1.0, seed=0, progress=True):
    """Convert an OG-MARL vault (or a random `fraction` of its episodes) into our HDF5 schema at `out`."""
    from tqdm import tqdm
    vault = Vault(vault_path)
    path_scenario, path_quality = names_from_path(vault_path)
    for flag, given, found in (("--scenario", scenario, path_scenario), ("--quality", quality, path_quality)):
        if given and found and given != found:
            raise artifacts.InputError(f"{vault_path}: a vault of {found}, not {given} (from its path); "
                                       f"check {flag}")
    scenario, quality = scenario or path_scenario, quality or path_quality
    if scenario not in SMAC_LIMITS or quality not in data.QUALITIES:
        raise artifacts.InputError(f"{vault_path}: cannot tell the map and quality from the path; pass --scenario "
                                   f"({', '.join(SMAC_LIMITS)}) and --quality ({', '.join(data.QUALITIES)})")
    n_agents, n_actions = smac_sizes(scenario)
    if (vault.n_agents, vault.n_actions) != (n_agents, n_actions):
        raise artifacts.InputError(f"{vault_path}: {vault.n_agents} agents and {vault.n_actions} actions, but SMAC's "
                                   f"{scenario} has {n_agents} and {n_actions}: a vault of another map")
    bounds, unfinished = episode_bounds(vault)
    if not bounds:
        raise artifacts.InputError(f"{vault_path}: no finished episode in {vault.rows} rows")
    limit = SMAC_LIMITS[scenario]
    longest = max(b - a for a, b in bounds)
    if longest > limit:
        raise artifacts.InputError(f"{vault_path}: an episode of {longest} steps, longer than {scenario}'s limit "
                                   f"of {limit}; not a {scenario} vault, or a damaged one")
    keep = np.arange(len(bounds))
    if fraction < 1.0:
        n = max(1, int(round(fraction * len(bounds))))
        keep = np.sort(np.random.default_rng(seed).choice(len(bounds), n, replace=False))
    picked = [bounds[i] for i in keep]
    attrs = {"scenario": scenario, "quality": quality, "backend": "smac", "n_agents": n_agents,
             "obs_dim": vault.obs_dim, "n_actions": n_actions, "behaviour": "og-marl", "source": "og-marl",
             "source_vault": os.path.abspath(vault_path), "epsilon": 0.05, "seed": seed, "fraction": fraction,
             "synthetic": False, "final_observation": "absent (zeros)", "dropped_unfinished_rows": int(unfinished),
             "vault_episodes": len(bounds), "format_version": data.FORMAT_VERSION}
    returns, lengths = [], []
    with artifacts.atomic_path(out) as tmp:
        import h5py
        with h5py.File(tmp, "w") as f:
            writer = data.EpisodeWriter(f, longest, n_agents, vault.obs_dim, n_actions)
            with tqdm(total=len(picked), desc=f"{scenario}-{quality}", unit="ep", disable=not progress) as bar:
                i = 0
                while i < len(picked):
                    lo = picked[i][0]                          # a chunk of whole episodes from row lo
                    j = i
                    while j < len(picked) and (picked[j][1] - lo <= CHUNK_ROWS or j == i):
                        j += 1
                    chunk = episodes_of_rows(vault, (lo, picked[j - 1][1]), picked[i:j], longest, vault_path)
                    problem = data.schema_problem(chunk, n_agents, vault.obs_dim, n_actions)
                    if problem:
                        raise artifacts.InputError(f"{vault_path}: {problem} (in episodes {i}..{j - 1})")
                    writer.append(chunk)
                    returns.append(chunk.returns())
                    lengths.append(chunk.lengths)
                    bar.update(j - i)
                    i = j
            returns, lengths = np.concatenate(returns), np.concatenate(lengths)
            writer.finish(int(lengths.max()))
            attrs.update(return_mean=float(returns.mean()), return_std=float(returns.std()),
                         length_mean=float(lengths.mean()))
            f.attrs.update(attrs)
    return attrs


def main(argv=None):
    p = argparse.ArgumentParser(description="Convert an OG-MARL SMAC vault (the paper's data) into this "
                                            "project's HDF5 dataset schema.")
    p.add_argument("vault", help="a vault folder, e.g. vaults/og_marl/smac_v1/3m.vlt/Good")
    p.add_argument("--out", required=True, help="output HDF5 path")
    p.add_argument("--scenario", default=None, help="map (default: from the path, e.g. 3m.vlt -> 3m)")
    p.add_argument("--quality", default=None, choices=data.QUALITIES,
                   help="quality (default: from the path, Good/Medium/Poor)")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="share of the episodes to keep, chosen at random (the paper's 'original' set: 0.03)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --fraction subset")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    args = p.parse_args(argv)
    if not 0.0 < args.fraction <= 1.0:
        p.error(f"--fraction must be in (0, 1], got {args.fraction}")
    with artifacts.parser_errors(p):
        artifacts.require_flags(seeds={"--seed": args.seed})
    if os.path.exists(args.out) and not args.overwrite:
        p.error(f"{args.out} exists; pass --overwrite to replace it")
    with artifacts.one_line_errors():
        artifacts.prepare_output_dir(os.path.dirname(os.path.abspath(args.out)), "--out's folder")
        attrs = convert(args.vault, args.out, args.scenario, args.quality, args.fraction, args.seed)
    print("OG-MARL " + datasets.describe(attrs))
    print(f"wrote {args.out} ({attrs['dropped_unfinished_rows']} unfinished trailing rows dropped)")


if __name__ == "__main__":
    main()
