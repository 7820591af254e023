"""The atomic run rewriter shared by `gen dedup` and `gen filter`: move rows of a finished run's train split to its
rejected split (with their reasons and `duplicate_of`), in a hidden sibling directory swapped in at the end (an
atomic exchange where the OS has one), so a reader never sees a run half-rewritten."""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path
from typing import Any

from gen.data.shards import MANIFEST, ShardWriter, read_manifest, read_table, shard_paths, write_manifest
from gen.errors import UserError


def load_train(run_dir: Path):
    """DIR's train split as one table; a UserError when DIR is not a conversational run."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not shard_paths(run_dir, "train"):
        raise UserError(f"{run_dir}: no train shards (expected {run_dir}/train/*.arrow)")
    table = read_table(run_dir, "train")
    for column in ("id", "messages"):
        if column not in table.column_names:
            raise UserError(f"{run_dir}/train: shards have no '{column}' column (not a conversational run)")
    return table


def rewrite_run(
    run_dir: Path,
    out_dir: Path | None,
    table,
    rejected: dict[int, tuple[list[str], str | None]],
    *,
    step: str,
    settings: dict[str, Any],
    funnel_entry: dict[str, Any],
) -> Path:
    """Write the run with the rows at positions `rejected` (position -> (new reasons, duplicate_of id)) moved from
    train to rejected, into a hidden sibling of the destination, then swap it in.

    `step` ("dedup" / "filter") names the manifest entries: `config.filters.<step>` = settings,
    `funnel.<step>` = funnel_entry (counts per reason included).
    """
    destination = Path(out_dir) if out_dir is not None else run_dir
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.gen-{step}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        _carry_over(run_dir, staging, skip={"train", "rejected"})
        previous = read_manifest(run_dir) if (run_dir / MANIFEST).exists() else {}
        # Rows DIR had already rejected stay where they are (hard links: same bytes, no copy).
        (staging / "rejected").mkdir(parents=True)
        for path in shard_paths(run_dir, "rejected"):
            _link_or_copy(path, staging / "rejected" / path.name)
        schema = table.schema
        rows = table.to_pylist()
        # key_column=None: every row is written exactly once, none is ever skipped as "already on disk".
        with ShardWriter(staging, "train", schema=schema, key_column=None) as kept_writer, \
                ShardWriter(staging, "rejected", schema=schema, key_column=None) as rejected_writer:
            for position, row in enumerate(rows):
                verdict = rejected.get(position)
                if verdict is None:
                    kept_writer.write(row)
                    continue
                reasons, duplicate_of = verdict
                previous_reasons = list(row.get("filters") or [])
                row["filters"] = previous_reasons + [r for r in reasons if r not in previous_reasons]
                if duplicate_of is not None:
                    row["duplicate_of"] = duplicate_of
                rejected_writer.write(row)
        config = dict(previous.get("config") or {})
        config["filters"] = {**dict(config.get("filters") or {}), step: settings}
        funnel = dict(previous.get("funnel") or {})
        funnel[step] = funnel_entry
        write_manifest(staging, config=config, funnel=funnel)
        _swap_in(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return destination


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _carry_over(run_dir: Path, staging: Path, skip: set[str]) -> None:
    """Everything of DIR except the rewritten splits (request cache, card, other splits), hard-linked."""
    staging.mkdir(parents=True)
    for entry in run_dir.iterdir():
        if entry.name in skip or entry.name.startswith(".gen-"):
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name, copy_function=_link_or_copy_str)
        else:
            _link_or_copy(entry, staging / entry.name)


def _link_or_copy_str(source: str, target: str) -> None:
    _link_or_copy(Path(source), Path(target))


def _swap_in(staging: Path, destination: Path) -> None:
    """Make `staging` appear at `destination` in one step: renameat2(RENAME_EXCHANGE) where Linux offers it, so a
    reader sees the old run or the new one; otherwise two renames (a crash between them leaves the old run at
    `.<name>.old-*` beside it)."""
    if not destination.exists():
        os.rename(staging, destination)
        return
    if _exchange(staging, destination):
        shutil.rmtree(staging)  # now holds the old run
        return
    old = destination.parent / f".{destination.name}.old-{os.getpid()}"
    os.rename(destination, old)
    os.rename(staging, destination)
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def count_reasons(rejected: dict[int, tuple[list[str], str | None]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reasons, _ in rejected.values():
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def add_rejections(target: dict[int, tuple[list[str], str | None]], position: int, reasons: list[str],
                   duplicate_of: str | None = None) -> None:
    """Merge reasons for one row (several filters may reject the same row)."""
    old, old_dup = target.get(position, ([], None))
    target[position] = (old + [r for r in reasons if r not in old], old_dup if old_dup is not None else duplicate_of)
