"""The per-run request cache: one SQLite row per *completed* request, so a rerun pays for nothing twice.

Key: `ChatRequest.cache_key(teacher_id)` (teacher, model, messages, sampling params). Value: the completion's text,
finish reason, token usage, and the sampling parameters the backend really sent where they differ from the request's
(`Completion.sent`, JSON; rows record it, so a row built from a cache hit equals the first run's). Nothing else is
stored: no API key, no headers, no base URL. Failed requests are
never stored, so a rerun retries them.

Durability without per-request cost: the database runs in WAL mode with `synchronous=NORMAL`, where a commit
appends to the write-ahead log without an fsync. That survives the process being killed (`kill -9`: the log is in
the OS page cache) though not a power cut, which is the failure a resumable generation run has to survive. `put`
buffers; the buffer is committed when it holds `batch_rows` rows or is older than `max_delay` seconds (the engine
also calls `flush` from a timer and at the end of every run), so a kill loses at most the last fraction of a second.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from gen.errors import UserError
from gen.teachers.base import Completion

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    teacher TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL,
    sent TEXT
)
"""
# Column order of an inserted completion row (named, so that caches made before `sent` existed take them too).
_INSERT = ("INSERT OR IGNORE INTO completions (key, teacher, text, finish_reason, prompt_tokens, completion_tokens, "
           "created, sent) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
# Units of requests answered by Ray workers (`gen.scale.request_units`), committed together with their completions.
_UNITS_SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    id TEXT PRIMARY KEY,
    requests INTEGER NOT NULL,
    created REAL NOT NULL
)
"""
# What sqlite3 says of a file that is not a database or is damaged inside ("file is not a database", "database disk
# image is malformed"): the only errors the cache turns into a recovery hint.
_CORRUPT_WORDS = ("not a database", "malformed", "corrupt")
# SQLite's default limit on host parameters in one statement is 32766 (999 before 3.32): stay well below both.
_LOOKUP_CHUNK = 900


class RequestCache:
    """`get_many(keys) -> {key: Completion}`, `put(key, teacher_id, completion)`, `flush()`, `close()`.

    A path of None keeps the cache in memory (nothing survives the process; used when no run directory exists).
    """

    def __init__(self, path: str | os.PathLike | None, *, batch_rows: int = 256, max_delay: float = 0.2):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: the engine may drive its loop from a helper thread when called inside a running
        # event loop; it never uses the connection from two threads at once.
        try:
            self._db = sqlite3.connect(str(self.path) if self.path else ":memory:", isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.OperationalError as exc:  # e.g. the path is a directory
            raise UserError(f"{self.path}: cannot open the request cache ({exc})") from None
        with self._unusable_file_is_a_user_error():
            self._prepare()
        self.batch_rows = batch_rows
        self.max_delay = max_delay
        self._pending: list[tuple] = []
        self._oldest = 0.0

    def _prepare(self, give_up_after: float = 60.0) -> None:
        """WAL mode and the tables. Several processes may open one fresh cache at the same instant (the Ray workers
        of a run, on one machine). Switching a new file to WAL and creating the tables each read the header under a
        SHARED lock and then need an EXCLUSIVE one; when two connections both hold SHARED and both want EXCLUSIVE,
        SQLite answers one of them "database is locked" at once instead of waiting (waiting could deadlock), so the
        busy timeout does not cover it. Retry the whole setup (each step is idempotent) after a short random pause."""
        self._db.execute("PRAGMA busy_timeout=10000")
        deadline = time.monotonic() + give_up_after
        while True:
            try:
                if self.path is not None:
                    self._db.execute("PRAGMA journal_mode=WAL")
                    self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(_SCHEMA)
                self._db.execute(_UNITS_SCHEMA)
                self._add_sent_column()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.02, 0.2))

    def _add_sent_column(self) -> None:
        """A cache written before completions recorded `sent` gets the (nullable) column; its rows read as None."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(completions)")}
        if "sent" in columns:
            return
        try:
            self._db.execute("ALTER TABLE completions ADD COLUMN sent TEXT")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # another process added it first
                raise

    @contextmanager
    def _unusable_file_is_a_user_error(self) -> Iterator[None]:
        """A cache file that is not an SQLite database (garbage bytes) or is damaged inside: one line saying what is
        wrong and how to recover, instead of sqlite3's traceback. Locks and I/O errors keep theirs."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            message = str(exc)
            if self.path is None or not any(word in message for word in _CORRUPT_WORDS):
                raise
            self._close_quietly()
            raise UserError(f"{self.path}: the request cache is damaged ({message}); move it aside "
                            f"(mv {self.path} {self.path}.damaged) and rerun: the rows already in the run's shards "
                            "stay, requests not in a cache are sent again") from None

    def _close_quietly(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def get_many(self, keys: Iterable[str]) -> dict[str, Completion]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, Completion] = {}
        with self._unusable_file_is_a_user_error():
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start:start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, text, finish_reason, prompt_tokens, completion_tokens, sent FROM completions "
                    f"WHERE key IN ({marks})", chunk,
                ).fetchall()
                for key, text, finish_reason, prompt_tokens, completion_tokens, sent in rows:
                    found[key] = Completion(text=text, finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                                            completion_tokens=completion_tokens, sent=_load_sent(sent))
        for key, _teacher, text, finish_reason, prompt_tokens, completion_tokens, _created, sent in self._pending:
            found.setdefault(key, Completion(text, finish_reason, prompt_tokens, completion_tokens, _load_sent(sent)))
        return found

    def put(self, key: str, teacher_id: str, completion: Completion) -> None:
        """Buffer one completed request; committed by the next `flush` (at the latest `max_delay` seconds later)."""
        now = time.monotonic()
        if not self._pending:
            self._oldest = now
        self._pending.append((key, teacher_id, completion.text, completion.finish_reason,
                              int(completion.prompt_tokens or 0), int(completion.completion_tokens or 0), time.time(),
                              _dump_sent(completion.sent)))
        if len(self._pending) >= self.batch_rows or now - self._oldest >= self.max_delay:
            self.flush()

    def flush(self) -> int:
        """Commit buffered rows in one transaction; returns how many."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, []
        # IMMEDIATE takes the write lock up front, where the busy timeout applies (as in commit_unit): other
        # processes (Ray workers, the driver) write to the same file.
        with self._unusable_file_is_a_user_error(), self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(_INSERT, pending)
        return len(pending)

    def commit_unit(self, unit_id: str, teacher_id: str, completions: Mapping[str, Completion]) -> bool:
        """A unit of requests answered by a worker (`gen.scale`): its completions and its record in ONE transaction,
        so the unit is either wholly in the cache or not at all. False (nothing changed) if it was committed."""
        self.flush()
        now = time.time()
        rows = [(key, teacher_id, c.text, c.finish_reason, int(c.prompt_tokens or 0), int(c.completion_tokens or 0),
                 now, _dump_sent(c.sent)) for key, c in completions.items()]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if self._db.execute("SELECT 1 FROM units WHERE id = ?", (unit_id,)).fetchone():
                return False
            self._db.execute("INSERT INTO units VALUES (?, ?, ?)", (unit_id, len(rows), now))
            self._db.executemany(_INSERT, rows)
        return True

    def unit_committed(self, unit_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM units WHERE id = ?", (unit_id,)).fetchone() is not None

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0] + len(self._pending)

    def close(self) -> None:
        if self._db is None:
            return
        try:
            self.flush()
        finally:
            if self._db is not None:  # None when a damaged file was found (and closed) while flushing
                self._db.close()
                self._db = None

    def __enter__(self) -> RequestCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _dump_sent(sent: Mapping | None) -> str | None:
    return json.dumps(dict(sent), sort_keys=True) if sent is not None else None


def _load_sent(text: str | None) -> dict | None:
    return json.loads(text) if text is not None else None
