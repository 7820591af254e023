"""The atomic run rewriter shared by `gen dedup` and `gen filter`: move rows of a finished run's train split to its
rejected split (with their reasons and `duplicate_of`), in a hidden sibling directory swapped in at the end (an
atomic exchange where the OS has one), so a reader never sees a run half-rewritten.

A rewrite holds the run's lock (`gen.data.lock`) from the moment it reads the rows until the new run is in place:
rows another command appended in between would otherwise be lost. It also removes what a killed rewrite left beside
the run (`.<run>.gen-<step>-<pid>`: the half-written new run, or after the swap the whole old one; `.<run>.old-<pid>`)
when that pid is dead; a live process's sibling is never touched.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from gen.data import lock
from gen.data.rejections import Rejections, mark_rejected
from gen.data.shards import MANIFEST, ShardWriter, read_manifest, read_table, shard_paths, write_manifest
from gen.errors import UserError


def _sibling_pattern(destination: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(destination.name)}\.(gen-[a-z_]+|old)-(\d+)$")


def clean_dead_siblings(destination: Path) -> list[Path]:
    """Remove the hidden siblings of `destination` that a killed rewrite left, when their pid is dead. If the kill
    landed between the two renames of the non-atomic swap (no run at `destination`, the old one at
    `.<run>.old-<pid>`), the old run is put back first: nothing that was a run is ever deleted."""
    destination = Path(destination)
    parent = destination.parent
    if not parent.is_dir():
        return []
    pattern = _sibling_pattern(destination)
    dead = []
    for entry in sorted(parent.iterdir()):
        match = pattern.match(entry.name)
        if match and not lock.pid_alive(int(match.group(2))):
            dead.append((match.group(1), entry))
    removed = []
    for kind, entry in dead:
        if kind == "old" and not destination.exists():
            try:
                os.rename(entry, destination)
                continue
            except OSError:
                pass
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@contextmanager
def rewriting(run_dir: Path, out_dir: Path | None, step: str) -> Iterator[Path]:
    """Hold what a rewrite of `run_dir` into `out_dir` (default: in place) needs, from before its rows are read
    until its result is in place: the lock of the run (and of the destination when that is another existing run),
    after cleaning up the siblings dead rewrites left. Yields the destination. Re-entrant within one process."""
    run_dir = Path(run_dir)
    destination = Path(out_dir) if out_dir is not None else run_dir
    clean_dead_siblings(run_dir)  # may put back a run a kill left at `.<run>.old-<pid>`
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    with ExitStack() as held:
        held.enter_context(lock.run_lock(run_dir, step))
        if destination != run_dir:
            clean_dead_siblings(destination)
            if destination.is_dir():
                held.enter_context(lock.run_lock(destination, step))
        clean_dead_siblings(run_dir)
        yield destination


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
    rejected: Rejections,
    *,
    step: str,
    settings: dict[str, Any],
    funnel_entry: dict[str, Any],
) -> Path:
    """Write the run with the rows at the positions in `rejected` (with their new reasons and duplicate_of id) moved
    from train to rejected, into a hidden sibling of the destination, then swap it in.

    `step` ("dedup" / "filter") names the manifest entries: `config.filters.<step>` = settings,
    `funnel.<step>` = funnel_entry (counts per reason included).
    """
    with rewriting(run_dir, out_dir, step) as destination, ExitStack() as held:
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = destination.parent / f".{destination.name}.gen-{step}-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        try:
            _carry_over(run_dir, staging, skip={"train", "rejected", lock.LOCK_NAME})
            # Locked too: once swapped in, its lock file is the destination's, still held until we are done.
            held.enter_context(lock.run_lock(staging, step))
            _write_staging(run_dir, staging, table, rejected, step=step, settings=settings,
                           funnel_entry=funnel_entry)
            _swap_in(staging, destination)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return destination


def _write_staging(run_dir: Path, staging: Path, table, rejected: Rejections, *, step: str,
                   settings: dict[str, Any], funnel_entry: dict[str, Any]) -> None:
    """The new run in `staging`: DIR's other files, its earlier rejections, the rewritten splits, the manifest."""
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
            rejected_writer.write(mark_rejected(row, reasons, duplicate_of))
    config = dict(previous.get("config") or {})
    config["filters"] = {**dict(config.get("filters") or {}), step: settings}
    funnel = dict(previous.get("funnel") or {})
    funnel[step] = funnel_entry
    write_manifest(staging, config=config, funnel=funnel)


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
