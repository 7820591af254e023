"""Check a run's shards against the sha256 its manifest recorded for each of them.

A shard whose bytes changed after it was written can still be valid Arrow (a rewritten string of the same length
reads fine), so only the hash tells. `write_manifest` records `{"file", "rows", "bytes", "sha256"}` per shard under
`splits.<split>.shards`; this module reads that record and never rewrites it (rewriting the manifest would bless
the changed bytes). `gen publish` verifies before anything goes out; `gen stats --verify` does it on demand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gen.data.shards import MANIFEST, list_splits, read_manifest, sha256_file, shard_paths
from gen.errors import UserError


@dataclass(frozen=True)
class ShardProblem:
    """One shard that does not match the manifest: its path and what is wrong, in words."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class Verification:
    run_dir: Path
    checked: int  # shards whose sha256 matched the manifest
    problems: list[ShardProblem]


def _recorded_shards(run_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's shard entries, each with a run-relative `file`; a malformed record is a UserError."""
    where = run_dir / MANIFEST
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise UserError(f"{where}: records no shards to verify against (no 'splits')")
    entries = []
    for split, record in splits.items():
        shards = record.get("shards") if isinstance(record, dict) else None
        if not isinstance(shards, list):
            raise UserError(f"{where}: split {split!r} lists no shards")
        for entry in shards:
            name = entry.get("file") if isinstance(entry, dict) else None
            # A manifest is data from disk: a path leaving the run directory is a malformed manifest, not a shard.
            if not isinstance(name, str) or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
                raise UserError(f"{where}: split {split!r} has a malformed shard entry {entry!r}")
            entries.append(entry)
    return entries


def verify_run(run_dir: str | os.PathLike) -> Verification:
    """Hash every shard of the run and compare with the manifest. Also a problem: a shard the manifest does not
    list (it would go out unchecked) and a listed shard that is gone."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    recorded = _recorded_shards(run_dir, manifest)
    problems: list[ShardProblem] = []
    checked = 0
    for entry in recorded:
        path = run_dir / entry["file"]
        expected = entry.get("sha256")
        if not path.is_file():
            problems.append(ShardProblem(path, f"listed in {MANIFEST} but missing"))
        elif not isinstance(expected, str) or not expected:
            problems.append(ShardProblem(path, f"{MANIFEST} records no sha256 for it"))
        elif ("bytes" in entry and entry["bytes"] != path.stat().st_size) or sha256_file(path) != expected:
            problems.append(ShardProblem(path, f"its sha256 differs from the one in {MANIFEST}: the shard changed "
                                               "after it was written"))
        else:
            checked += 1
    listed = {run_dir / entry["file"] for entry in recorded}
    for split in list_splits(run_dir):
        for path in shard_paths(run_dir, split):
            if path not in listed:
                problems.append(ShardProblem(path, f"not listed in {MANIFEST}, so it cannot be verified"))
    return Verification(run_dir, checked, problems)


def check_run(run_dir: str | os.PathLike) -> int:
    """Raise UserError naming the first shard that does not match the manifest (and how many more); else return
    how many shards were verified."""
    result = verify_run(run_dir)
    if result.problems:
        more = len(result.problems) - 1
        raise UserError(str(result.problems[0]) + (f" (and {more} more shard(s) that do not match)" if more else ""))
    return result.checked
