"""The audit's folder: results shards written atomically, a record per finished shard, and the
check that a rerun continues the same job.

``DIR/results/part-00000.parquet`` holds the rows of images 0..shard_size-1, and so on. A
shard is written to a temporary name starting with ``.`` (invisible to Parquet readers) and
renamed when complete, after its record ``DIR/shards/part-00000.json`` (its errors, its
timing): a shard counts as finished exactly when its Parquet file exists, and a rerun never
rewrites one.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any, Dict, List, Sequence, Set

from ..adapters.files import atomic_path
from ..core.errors import InvalidInputError

RESULTS, RECORDS, JOB_FILE = "results", "shards", "audit.json"
#: Everything an audit writes in DIR (``--overwrite`` removes exactly these).
OUTPUTS = (RESULTS, RECORDS, JOB_FILE, "clusters.parquet", "errors.csv", "report.html", "summary.json")


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}"


class ShardStore:
    """The shards of one audit in ``out``."""

    def __init__(self, out: str, fingerprint: Dict[str, Any], overwrite: bool = False):
        self.out = os.path.abspath(out)
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise InvalidInputError(f"--out {out!r} is a file: give a folder for the audit")
        if overwrite:
            self.clear()
        self._check(fingerprint)
        for folder in (RESULTS, RECORDS):
            os.makedirs(os.path.join(self.out, folder), exist_ok=True)
            for stale in glob.glob(os.path.join(self.out, folder, ".cnnlens-*")):  # a killed run's temporaries
                os.remove(stale)

    def clear(self) -> None:
        """Remove what an audit wrote in ``out`` (nothing else)."""
        for name in OUTPUTS:
            path = os.path.join(self.out, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)

    def _check(self, fingerprint: Dict[str, Any]) -> None:
        path = os.path.join(self.out, JOB_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                try:
                    previous = json.load(handle)
                except ValueError:
                    previous = {}
            if previous != fingerprint:
                changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
                detail = ", ".join(changed)
                if "settings" in changed:
                    old, new = previous.get("settings", {}), fingerprint["settings"]
                    detail += " (" + ", ".join(k for k in new if old.get(k) != new.get(k)) + ")"
                raise InvalidInputError(f"{self.out} holds an audit of a different job ({detail} changed): rerun with "
                                        f"--overwrite to start again, or give another --out")
            return
        os.makedirs(self.out, exist_ok=True)
        with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
            json.dump(fingerprint, handle, indent=2)

    def path(self, shard: int) -> str:
        return os.path.join(self.out, RESULTS, shard_name(shard) + ".parquet")

    def finished(self) -> Set[int]:
        """The shards whose Parquet file is complete."""
        done = set()
        for name in os.listdir(os.path.join(self.out, RESULTS)):
            if name.startswith("part-") and name.endswith(".parquet"):
                done.add(int(name[5:-8]))
        return done

    def write(self, shard: int, table: Any, errors: Sequence[Dict[str, Any]], record: Dict[str, Any]) -> None:
        """Write shard ``shard``: its record first, then its table under a temporary name renamed
        when complete."""
        import pyarrow.parquet as pq

        if os.path.exists(self.path(shard)):
            raise FileExistsError(f"shard {shard_name(shard)} is already finished; shards are never rewritten")
        with atomic_path(os.path.join(self.out, RECORDS, shard_name(shard) + ".json")) as temporary:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump({**record, "errors": list(errors)}, handle)
        with atomic_path(self.path(shard)) as temporary:
            pq.write_table(table, temporary)

    def records(self) -> List[Dict[str, Any]]:
        """The records of the finished shards, in shard order."""
        out = []
        for shard in sorted(self.finished()):
            path = os.path.join(self.out, RECORDS, shard_name(shard) + ".json")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as handle:
                    out.append(json.load(handle))
        return out

    def output(self, name: str) -> str:
        return os.path.join(self.out, name)


def shard_of(index: int, shard_size: int) -> int:
    return index // shard_size


def pending(items: Sequence[Any], shard_size: int, done: Set[int]) -> Dict[int, List[Any]]:
    """Shard -> its items, for the shards not finished yet (in order)."""
    out: Dict[int, List[Any]] = {}
    for item in items:
        shard = shard_of(item.index, shard_size)
        if shard not in done:
            out.setdefault(shard, []).append(item)
    return out
