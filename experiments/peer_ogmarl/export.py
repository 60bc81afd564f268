"""Our HDF5 datasets as an OG-MARL vault: the inverse of ogmarl.py's import (OG-MARL's learners as a peer).

    python experiments/peer_ogmarl/export.py runs/datasets/3m-poor-...-s0.h5 [runs/eaq/<run>/synthetic.h5 ...] \
        --out runs/vaults/3m.vlt/Poor

writes the episodes of every file given (D_real, or D_real ∪ D_syn), one
after another along time, in the layout `ogmarl.py` reads and OG-MARL's
flashbax vaults use (its docstring lists the arrays): for each episode its
`length` rows of observations, actions, the team reward copied to every
agent, terminals (1 on every agent at the last row), truncations (0) and
legal actions as 0/1 floats. Two facts of the format are handled here:

* OG-MARL's QMIX mixes with SMAC's global state (`infos.state`); our data
  have none, so the state written is the joint observation (the agents'
  observations concatenated), which is what our own mixer reads;
* the observation after an episode's last step is not stored (the vault
  has no row for it), as in OG-MARL's own vaults.

The vault is written into a temporary folder and renamed when complete.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import artifacts  # noqa: E402
import data  # noqa: E402

KEYS = {"observations": "observations.", "actions": "actions.", "rewards": "rewards.", "terminals": "terminals.",
        "truncations": "truncations.", "legals": "infos.legals.", "state": "infos.state."}
DECLARED_ROWS = int(10e12)      # flashbax declares its arrays this long and records the filled length in vault_index


def episode_rows(episodes):
    """Episodes -> the vault's arrays for them, {name: (rows, ...)} with the episodes' valid steps one after another."""
    valid = data.valid_steps(episodes.lengths, episodes.rewards.shape[1])            # (E, T)
    T, N = valid.shape[1], episodes.n_agents
    obs = episodes.obs[:, :T][valid]                                                  # (rows, N, O)
    terminals = np.repeat(episodes.dones[valid].astype(np.float32)[:, None], N, axis=1)   # (rows, N)
    return {"observations": obs.astype(np.float32), "actions": episodes.actions[valid].astype(np.int32),
            "rewards": np.repeat(episodes.rewards[valid][:, None], N, axis=1).astype(np.float32),
            "terminals": terminals, "truncations": np.zeros_like(terminals),
            "legals": episodes.avail[:, :T][valid].astype(np.float32), "state": obs.reshape(len(obs), -1)}


def write_vault(path, chunks):
    """A flashbax vault at `path` from an iterable of `episode_rows` dicts: metadata.json, one zarr array per
    key in one OCDBT store, and vault_index (the rows written). Written to a temporary folder, then renamed."""
    import tensorstore as ts
    tmp = path.rstrip("/") + ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    base, stores, rows = f"file://{os.path.abspath(tmp)}", {}, 0
    try:
        for chunk in chunks:
            for name, array in chunk.items():
                if name not in stores:
                    stores[name] = ts.open({"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": base,
                                                                          "path": KEYS[name]},
                                            "metadata": {"compressor": {"id": "gzip", "level": 5}}},
                                           shape=(1, DECLARED_ROWS) + array.shape[1:], dtype=array.dtype,
                                           create=True).result()
                stores[name][:, rows:rows + len(array)].write(array[None]).result()
            rows += len(chunk["actions"])
        index = ts.open({"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": base, "path": "vault_index"},
                         "metadata": {}}, shape=(1,), dtype=np.int32, create=True).result()
        index.write(np.array([rows], np.int32)).result()
        shapes, dtypes = {}, {}
        for name, store in stores.items():
            parts = KEYS[name].rstrip(".").split(".")
            (shapes.setdefault("infos", {}) if len(parts) > 1 else shapes)[parts[-1]] = str((1, rows) + store.shape[2:])
            (dtypes.setdefault("infos", {}) if len(parts) > 1 else dtypes)[parts[-1]] = store.dtype.numpy_dtype.name
        with open(os.path.join(tmp, "metadata.json"), "w") as f:
            json.dump({"version": 1.2, "structure_shape": shapes, "structure_dtype": dtypes}, f)
        del stores, index
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def export(datasets, out):
    """Every episode of the HDF5 files `datasets` (one layout) into one vault at `out`; returns (episodes, rows)."""
    layouts = {path: data.layout_of(data.load_dataset(path, episodes=slice(0, 1))) for path in datasets}
    if len(set(layouts.values())) > 1:
        raise artifacts.InputError("the datasets have different layouts (agents, observation size, actions): "
                                   + "; ".join(f"{p}: {lay}" for p, lay in layouts.items()))
    count = [0]

    def chunks():
        for path in datasets:
            for episodes in data.dataset_chunks(path):
                count[0] += episodes.n_episodes
                yield episode_rows(episodes)
    rows = write_vault(out, chunks())
    return count[0], rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("datasets", nargs="+", help="HDF5 datasets of one map (e.g. D_real and its D_syn)")
    p.add_argument("--out", required=True, help="the vault folder, e.g. runs/vaults/3m.vlt/Poor")
    p.add_argument("--overwrite", action="store_true", help="replace an existing vault")
    args = p.parse_args(argv)
    if os.path.exists(args.out) and not args.overwrite:
        p.error(f"{args.out} exists; pass --overwrite to replace it")
    with artifacts.one_line_errors():
        episodes, rows = export(args.datasets, args.out)
    print(f"wrote {args.out}: {episodes} episodes, {rows} rows")


if __name__ == "__main__":
    main()
