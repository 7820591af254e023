"""Units of work: a slice of the input × a round, with a deterministic id, committed exactly once.

A unit's id hashes what the unit *is* (method, run seed, round, phase and the ids of the items in its slice), never
when or where it ran: a rerun of the same command, or another worker redoing a unit whose actor died, computes the
same id. The driver is the only writer of a run directory; it commits a finished unit with `UnitStore.commit`:

    OUT/train/unit-<id>.arrow       the unit's kept rows      (absent when it kept none)
    OUT/rejected/unit-<id>.arrow    the unit's rejected rows  (absent when it rejected none)
    OUT/units/<id>.json             the commit record: counts, funnel, and the outcome the next round needs

Shards are written under a hidden temp name, fsynced and renamed (as `gen.data.shards.ShardWriter` does); the record is
written last and linked into place with `os.link`, which fails if it exists, so a unit is committed at most once
even if a second driver were started on the same directory by mistake. A crash between the shards and the record leaves shards with no record: `clean_orphans`
deletes them at the next start and the unit is redone. Readers only ever see committed shards (`*.arrow`, no dot).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from gen.data.records import content_id, rows_to_table
from gen.data.shards import SHARD_SUFFIX, SPLITS, _fsync_dir, run_keys, write_shard_file

UNIT_PREFIX = "unit-"
UNITS_DIR = "units"


def unit_id(method: str, seed: int, round: int | str, phase: str, item_ids: Iterable[str]) -> str:
    """The id of the unit that does `phase` of `round` for these items (order matters: it is the slice's order)."""
    return content_id("unit", method, int(seed), round, phase, list(item_ids))[:24]


def slices(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Consecutive slices of at most `size` items: the same input always gives the same slices."""
    if size < 1:
        raise ValueError(f"unit size {size}: must be at least 1")
    return [items[start:start + size] for start in range(0, len(items), size)]


@dataclass
class WorkUnit:
    """One unit to run on a worker: `kind` names the handler (see `gen.scale.cluster.HANDLERS`), `payload` is all
    it needs (picklable; no teacher, no engine: the worker brings its own)."""

    id: str
    kind: str
    payload: Any
    label: str = ""  # for logs: "round 2 slice 3/8"
    attempts: int = field(default=0, compare=False)


class UnitStore:
    """Commit records and per-unit shards of one run directory (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.records = self.out_dir / UNITS_DIR
        self.records.mkdir(parents=True, exist_ok=True)
        self._keys: dict[str, set[str]] = {}
        self._on_disk: set[str] | None = None

    def record_path(self, unit: str) -> Path:
        return self.records / f"{unit}.json"

    def committed(self, unit: str) -> dict[str, Any] | None:
        """The commit record of `unit`, or None if it was never committed."""
        try:
            return json.loads(self.record_path(unit).read_text())
        except FileNotFoundError:
            return None

    def committed_ids(self) -> set[str]:
        return {p.stem for p in self.records.glob("*.json")}

    def clean_orphans(self) -> list[Path]:
        """Delete unit shards whose unit has no commit record (a driver died between shard and record)."""
        done = self.committed_ids()
        removed = []
        for split in SPLITS:
            directory = self.out_dir / split
            if not directory.is_dir():
                continue
            for stray in directory.glob(f".{UNIT_PREFIX}*"):
                stray.unlink()
                removed.append(stray)
            for path in directory.glob(f"{UNIT_PREFIX}*{SHARD_SUFFIX}"):
                if path.stem[len(UNIT_PREFIX):] not in done:
                    path.unlink()
                    removed.append(path)
        return removed

    def _split_keys(self, split: str) -> set[str]:
        """Row ids not to write to `split` again: those committed in any split of the run when it started (by units
        or by a plain run; a row a later step moved to `rejected` counts as done) and those written to `split` since.
        A unit never writes a row twice, and a rerun never undoes what `gen dedup`/`gen filter` decided."""
        if split not in self._keys:
            if self._on_disk is None:
                self._on_disk = run_keys(self.out_dir)
            self._keys[split] = set(self._on_disk)
        return self._keys[split]

    def commit(self, unit: str, rows: Mapping[str, Sequence[Mapping[str, Any]]], outcome: Mapping[str, Any]) -> bool:
        """Write the unit's rows per split, then its record. False (and nothing written) if already committed."""
        if self.record_path(unit).exists():
            return False
        counts: dict[str, int] = {}
        for split, split_rows in rows.items():
            seen = self._split_keys(split)
            fresh = []
            for row in split_rows:
                if row["id"] not in seen:
                    seen.add(row["id"])
                    fresh.append(row)
            counts[split] = len(fresh)
            if fresh:
                self._write_shard(split, unit, rows_to_table(fresh))
        record = {"unit": unit, "rows": counts, **outcome}
        tmp = self.records / f".{unit}.json.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(record, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.record_path(unit))  # fails if the record exists: at most one commit per unit
        except FileExistsError:  # only if two drivers share one run directory, which is not supported
            return False
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.records)
        return True

    def _write_shard(self, split: str, unit: str, table: pa.Table) -> Path:
        directory = self.out_dir / split
        directory.mkdir(parents=True, exist_ok=True)
        return write_shard_file(directory / f"{UNIT_PREFIX}{unit}{SHARD_SUFFIX}", table)
