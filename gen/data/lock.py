"""One writer per run directory: an OS file lock on `OUT/.lock`, held for as long as a command writes the run.

Two commands writing one run (two `gen label` with different chunk sizes, a `gen dedup` during a `gen label`) would
duplicate rows or lose a manifest entry, so every command that writes a run takes this lock first. The second one
stops at once with a one-line error naming the holder's pid: waiting would only make it redo or undo the first
one's work.

`flock` locks belong to the open file, so the kernel drops the lock when the holder exits, however it dies
(SIGKILL, OOM): a stale `.lock` file never blocks the next run, and nobody needs to delete it (deleting it would
let two processes lock two different files). The holder writes its pid and command into the file for the message.

Within one process the lock is re-entrant (a command that takes it and then calls a library function that takes it
again), counted per directory.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gen.data.outdir import open_run_dir
from gen.errors import UserError

LOCK_NAME = ".lock"

_held: dict[str, tuple[int, int]] = {}  # realpath of the run dir -> (fd, how many times this process took it)
_guard = threading.Lock()


class RunLocked(UserError):
    """Another live process holds the run directory's lock."""


def _holder(path: Path) -> str:
    """What the holder wrote into the lock file; it writes right after locking, so wait a moment for it."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        if text or time.monotonic() > deadline:
            return text
        time.sleep(0.02)


def acquire(run_dir: str | os.PathLike, command: str) -> None:
    """Take the lock of `run_dir` (created if missing) or raise RunLocked naming the process that holds it."""
    run_dir = Path(run_dir)
    key = os.path.realpath(run_dir)
    with _guard:
        if key in _held:
            fd, count = _held[key]
            _held[key] = (fd, count + 1)
            return
        path = run_dir / LOCK_NAME
        open_run_dir(run_dir)  # a file, a path under a file, a read-only place: one line, nothing created
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(f"{run_dir}: cannot write a run here ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if not isinstance(exc, BlockingIOError):
                raise UserError(f"{path}: cannot lock it ({exc.strerror or exc}); is the run on a file system "
                                "without file locks?") from None
            holder = _holder(path)
            pid, _, what = holder.partition(" ")
            who = f"pid {pid} ({what})" if pid.isdigit() and what else f"pid {pid}" if pid.isdigit() else \
                "another process"
            raise RunLocked(f"{run_dir}: in use by {who}; wait for it to finish (one command writes a run at a "
                            "time)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        _held[key] = (fd, 1)


def release(run_dir: str | os.PathLike) -> None:
    key = os.path.realpath(run_dir)
    with _guard:
        fd, count = _held[key]
        if count > 1:
            _held[key] = (fd, count - 1)
            return
        del _held[key]
        # Closing the file drops the flock. The pid stays in the file: it is only read while the lock is held.
        os.close(fd)


@contextmanager
def run_lock(run_dir: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the lock of `run_dir` for the duration of the block; yields the run directory."""
    acquire(run_dir, command)
    try:
        yield Path(run_dir)
    finally:
        release(run_dir)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a leftover named after a dead one can go)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
