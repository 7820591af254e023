"""Output directories (a run, a training run, a dry-run export): refused with one line before anything is written.

`check_out_dir(path)` writes nothing: a command that writes late (training, an export) calls it first, so a bad
`--out` fails in a second instead of after an hour. `open_run_dir(path)` checks and creates the directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from gen.errors import UserError


def check_out_dir(path: str | os.PathLike) -> Path:
    """`path` is an existing writable directory, or one that can be created: else a UserError naming it."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise UserError(f"{path}: exists and is not a directory")
        _check_writable(path, path)
        return path
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{path}: cannot be created: {ancestor} is not a directory")
    _check_writable(ancestor, path)
    return path


def open_run_dir(path: str | os.PathLike) -> Path:
    """Check `path` (see `check_out_dir`) and create it with its parents."""
    path = check_out_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create the directory ({exc.strerror or exc})") from None
    return path


def _check_writable(directory: Path, path: Path) -> None:
    # os.access answers for the real user and the mount (root passes permission bits, not a read-only mount or an
    # immutable directory); statvfs tells a read-only file system apart from missing permission.
    if os.access(directory, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    reason = "a read-only file system" if read_only else "permission denied"
    where = "" if directory == path else f" in {directory}"
    raise UserError(f"{path}: cannot write{where} ({reason})")
