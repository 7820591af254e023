"""Arrow shards on disk: an atomic, resumable writer, a memory-mapped reader and the run's manifest.

Layout of a run directory::

    OUT/
      manifest.json               counts, shard hashes, the run's config (no secrets), the funnel
      train/train-00000.arrow     Arrow IPC *file* format (random access, memory-mappable)
      rejected/rejected-00000.arrow

A shard is written to a hidden temp name in the same directory, fsynced and renamed: readers glob `*.arrow`, so they
never see a half-written shard, and a crash leaves at most a stray temp file that the next writer removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from gen.data import secrets
from gen.data.lock import pid_alive
from gen.data.records import ROW_SCHEMA, rows_to_table
from gen.errors import UserError

SHARD_SUFFIX = ".arrow"
MANIFEST = "manifest.json"
# Bounded shards: small enough to stream, hash and upload piecewise, large enough that a 1M-row run is ~100 files.
DEFAULT_MAX_BYTES = 128 * 1024 * 1024
DEFAULT_MAX_ROWS = 100_000
SPLITS = ("train", "rejected")

def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a small file (manifest, card) so that readers see the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_shard_file(final: Path, table: pa.Table) -> Path:
    """Write `table` as the Arrow IPC file `final`, atomically: a hidden temp name in the same directory, fsync,
    rename, fsync of the directory. Readers glob `*.arrow`, so they see the whole shard or none of it."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    with pa.OSFile(str(tmp), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=8192)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


class ShardWriter:
    """Append rows to one split of a run as bounded Arrow IPC shards.

    - `write(row)` buffers; a shard is committed when the buffer passes `max_rows` or `max_bytes`, on `flush()`
      (methods flush at round boundaries so finished work is on disk) and on `close()`.
    - With `key_column` (default "id"), a row whose key is already in a committed shard of *any* split of the run,
      or already written to this split in this session, is skipped: a rerun after a crash never writes a duplicate
      row, and a row that a later step moved to another split (`gen dedup`/`gen filter` move rows from train to
      rejected) counts as done: a rerun never undoes what that step decided.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        split: str = "train",
        *,
        schema: pa.Schema = ROW_SCHEMA,
        key_column: str | None = "id",
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        metadata: Mapping[str, str] | None = None,
    ):
        self.split = split
        self.directory = Path(out_dir) / split
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema.with_metadata({**(schema.metadata or {}), **{k: str(v) for k, v in (metadata or {}).items()}})
        self.key_column = key_column
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0
        self.rows_written = 0
        self.rows_skipped = 0
        for stale in self.directory.glob(".*.tmp-*"):
            stale.unlink()  # left by a writer that died mid-shard; never renamed, so never read
        existing = shard_paths(self.directory)
        self._next_index = 1 + max((_shard_index(p) for p in existing), default=-1)
        self.keys: set[str] = set()  # keys in this split (on disk and written since)
        self.done_elsewhere: set[str] = set()  # keys already committed in the run's other splits
        if key_column is not None:
            self.keys = shard_keys(existing, key_column)
            for other in list_splits(self.directory.parent):
                if other != split:
                    self.done_elsewhere |= shard_keys(shard_paths(self.directory.parent / other), key_column)

    def write(self, row: Mapping[str, Any]) -> bool:
        """Buffer one row; returns False if a row with the same key was already written."""
        if self.key_column is not None:
            key = row[self.key_column]
            if key in self.keys or key in self.done_elsewhere:
                self.rows_skipped += 1
                return False
            self.keys.add(key)
        self._buffer.append(dict(row))
        self._buffer_bytes += _approx_size(row)
        if len(self._buffer) >= self.max_rows or self._buffer_bytes >= self.max_bytes:
            self.flush()
        return True

    def write_many(self, rows: Iterable[Mapping[str, Any]]) -> int:
        return sum(self.write(row) for row in rows)

    def flush(self) -> Path | None:
        """Commit the buffered rows as one complete shard; returns its path (None if nothing was buffered)."""
        if not self._buffer:
            return None
        final = write_shard_file(self.directory / f"{self.split}-{self._next_index:05d}{SHARD_SUFFIX}",
                                 self._buffer_to_table())
        self.rows_written += len(self._buffer)
        self._next_index += 1
        self._buffer = []
        self._buffer_bytes = 0
        return final

    def _buffer_to_table(self) -> pa.Table:
        """The buffered rows as one table in `self.schema`. Subclasses whose rows hold numpy arrays (logit shards)
        override this to build columns without a per-value Python loop."""
        if self.schema.equals(ROW_SCHEMA, check_metadata=False):
            return rows_to_table(self._buffer).replace_schema_metadata(self.schema.metadata)
        return pa.Table.from_pylist(self._buffer, schema=self.schema)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception the rows of finished work are still committed: nothing already produced is lost.
        self.close()


def _approx_size(row: Mapping[str, Any]) -> int:
    size = 64
    for value in row.values():
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                size += len(item["content"]) + 16 if isinstance(item, Mapping) and "content" in item else 8
    return size


def _shard_index(path: Path) -> int:
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


# ---------------------------------------------------------------------------------------------------------- reading


def shard_paths(path: str | os.PathLike, split: str | None = None) -> list[Path]:
    """The complete shards under `path`: a run directory (with `split`), a split directory, or one `.arrow` file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if split is not None and (path / split).is_dir():
        path = path / split
    elif split is not None and path.is_dir() and not list(path.glob(f"*{SHARD_SUFFIX}")):
        return []
    if not path.exists():
        raise UserError(f"{path}: no such directory")
    return sorted(p for p in path.glob(f"*{SHARD_SUFFIX}") if not p.name.startswith("."))


def open_shard(path: str | os.PathLike) -> pa.Table:
    """Memory-map one shard (zero-copy); a corrupt or foreign file is a UserError naming it."""
    path = Path(path)
    try:
        source = pa.memory_map(str(path), "r")
        return pa.ipc.open_file(source).read_all()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise UserError(f"{path}: not a readable Arrow shard ({str(exc).splitlines()[0]})") from None


def read_table(path: str | os.PathLike, split: str = "train", columns: list[str] | None = None) -> pa.Table:
    """All rows of one split as one (memory-mapped) table; an empty table with the row schema if there are none."""
    tables = [open_shard(p) for p in shard_paths(path, split)]
    if not tables:
        empty = ROW_SCHEMA.empty_table()
        return empty.select(columns) if columns else empty
    table = pa.concat_tables(tables, promote_options="default")
    return table.select(columns) if columns else table


def iter_rows(
    path: str | os.PathLike, split: str = "train", columns: list[str] | None = None, batch_size: int = 1024
) -> Iterator[dict[str, Any]]:
    """Stream rows as dicts, one shard and one record batch at a time."""
    for shard in shard_paths(path, split):
        table = open_shard(shard)
        if columns:
            table = table.select(columns)
        for batch in table.to_batches(max_chunksize=batch_size):
            yield from batch.to_pylist()


def shard_keys(paths: Iterable[Path], key_column: str = "id") -> set[str]:
    """The values of `key_column` in these shards (shards without that column contribute none)."""
    keys: set[str] = set()
    for path in paths:
        table = open_shard(path)
        if key_column in table.column_names:
            keys.update(table.column(key_column).to_pylist())
    return keys


def run_keys(run_dir: str | os.PathLike, key_column: str = "id") -> set[str]:
    """Row keys committed in every split of a run: what a resumed run counts as done, wherever a row now lives."""
    keys: set[str] = set()
    for split in list_splits(run_dir):
        keys |= shard_keys(shard_paths(Path(run_dir) / split), key_column)
    return keys


def list_splits(run_dir: str | os.PathLike) -> list[str]:
    run_dir = Path(run_dir)
    return sorted(d.name for d in run_dir.iterdir() if d.is_dir() and any(d.glob(f"*{SHARD_SUFFIX}")))


# --------------------------------------------------------------------------------------------------------- manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shard_entry(path: Path, name: str, recorded: Mapping[str, Any] | None) -> dict[str, Any]:
    """A shard's manifest entry. Its rows and sha256 are taken from the previous manifest when the file's size and
    mtime_ns are still the recorded ones (shards are written once, under a new name or by an atomic replace, which
    changes both), so a commit reads only the shards added since the last one: a long run stays linear, not
    quadratic. A shard whose size or mtime changed is read and hashed again."""
    stat = path.stat()
    if (recorded is not None and recorded.get("bytes") == stat.st_size and recorded.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(recorded.get("sha256"), str) and isinstance(recorded.get("rows"), int)):
        return {"file": name, "rows": recorded["rows"], "bytes": stat.st_size, "sha256": recorded["sha256"],
                "mtime_ns": stat.st_mtime_ns}
    rows = open_shard(path).num_rows
    return {"file": name, "rows": rows, "bytes": stat.st_size, "sha256": sha256_file(path),
            "mtime_ns": stat.st_mtime_ns}


def write_manifest(
    run_dir: str | os.PathLike,
    *,
    config: Mapping[str, Any] | None = None,
    funnel: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """(Re)write `manifest.json` from what is on disk, so it always agrees with the shards.

    Counts per split, each shard's rows/bytes/sha256, tokens spent, rows by method and round, rejections by reason,
    plus the run's config (redacted) and the method's funnel (generated -> filtered -> kept).
    """
    run_dir = Path(run_dir)
    previous = read_manifest(run_dir) if (run_dir / MANIFEST).exists() else {}
    recorded = {entry.get("file"): entry for split in (previous.get("splits") or {}).values()
                if isinstance(split, Mapping) for entry in split.get("shards") or [] if isinstance(entry, Mapping)}
    splits: dict[str, Any] = {}
    for split in list_splits(run_dir):
        shards = [_shard_entry(path, f"{split}/{path.name}", recorded.get(f"{split}/{path.name}"))
                  for path in shard_paths(run_dir, split)]
        splits[split] = {"rows": sum(s["rows"] for s in shards), "shards": shards}
    # What a later step (`gen dedup`, `gen filter`) recorded stays when the run's own command commits again: its rows
    # stay where the step put them, so its settings (`config.filters`) and counts (`funnel.<step>`) stay too.
    steps = (previous.get("config") or {}).get("filters") if isinstance(previous.get("config"), Mapping) else None
    if isinstance(steps, Mapping) and steps:
        if config is not None and "filters" not in config:
            config = {**config, "filters": steps}
        previous_funnel = previous.get("funnel") if isinstance(previous.get("funnel"), Mapping) else {}
        if funnel is not None:
            funnel = {**{k: v for k, v in previous_funnel.items() if k in steps}, **funnel}
    manifest = {
        "kdforge_version": _version(),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": secrets.redact(dict(config)) if config is not None else previous.get("config", {}),
        "splits": splits,
        "stats": _stats(run_dir),
        "funnel": dict(funnel) if funnel is not None else previous.get("funnel", {}),
    }
    for key, value in (extra or {}).items():
        manifest[key] = secrets.redact(value)
    for key, value in previous.items():
        manifest.setdefault(key, value)
    for stale in run_dir.glob(f".{MANIFEST}.tmp-*"):  # a writer killed mid-write left it; never read
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    atomic_write_bytes(run_dir / MANIFEST, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    return manifest


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no manifest (is this a kdforge run directory?)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: malformed manifest ({exc})") from None


def _stats(run_dir: Path) -> dict[str, Any]:
    """Tokens and row counts by method/round/reason, read from the shards' columns (only conversational splits)."""
    stats: dict[str, Any] = {}
    for split in list_splits(run_dir):
        parts = [part for part in (_shard_stats(path) for path in shard_paths(run_dir, split)) if part is not None]
        if not parts:
            continue
        by_method_round: dict[str, int] = {}
        reasons: dict[str, int] = {}
        for part in parts:
            for label, n in part["by_method_round"].items():
                by_method_round[label] = by_method_round.get(label, 0) + n
            for reason, n in part["by_reason"].items():
                reasons[reason] = reasons.get(reason, 0) + n
        entry = {
            "rows": sum(part["rows"] for part in parts),
            "prompt_tokens": sum(part["prompt_tokens"] for part in parts),
            "completion_tokens": sum(part["completion_tokens"] for part in parts),
            "by_method_round": dict(sorted(by_method_round.items())),
        }
        if split != "train" or any(part["any_filters"] for part in parts):
            entry["by_reason"] = dict(sorted(reasons.items()))
        stats[split] = entry
    return stats


# One process commits many times (a method flushes every round): each shard's counts are read once, kept here under
# its identity (path, inode, size, mtime), and summed at every commit.
_SHARD_STATS: dict[tuple[str, int, int, int], dict[str, Any] | None] = {}


def _shard_stats(path: Path) -> dict[str, Any] | None:
    """The counts `_stats` sums, for one shard (None for a shard without a `usage` column: not conversational)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _SHARD_STATS:
        return _SHARD_STATS[key]
    table = open_shard(path)
    part = None
    if "usage" in table.column_names:
        usage = table.column("usage").to_pylist()
        by_method_round: dict[str, int] = {}
        for method, rnd in zip(table.column("method").to_pylist(), table.column("round").to_pylist()):
            label = f"{method}/round {rnd}" if rnd is not None else str(method)
            by_method_round[label] = by_method_round.get(label, 0) + 1
        filters = table.column("filters").to_pylist()
        reasons: dict[str, int] = {}
        for row_filters in filters:
            for reason in row_filters or []:
                reasons[reason] = reasons.get(reason, 0) + 1
        part = {
            "rows": table.num_rows,
            "prompt_tokens": sum((u or {}).get("prompt_tokens") or 0 for u in usage),
            "completion_tokens": sum((u or {}).get("completion_tokens") or 0 for u in usage),
            "by_method_round": by_method_round,
            "by_reason": reasons,
            "any_filters": any(filters),
        }
    _SHARD_STATS[key] = part
    return part


def _version() -> str:
    from gen import __version__

    return __version__
