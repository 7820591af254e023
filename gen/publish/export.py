"""Write a dataset repo's files into a local folder: Parquet per config and split, the card and its plots.

    write_export(plan, folder, repo_id=...) -> ExportResult

The folder is `gen publish --dry-run DIR` (then `datasets.load_dataset(DIR)` reads it) or the staging folder of a
real publish. The files are built in a staging folder and checked for secrets first, then moved in: a refused or
failed export leaves the folder as it was.

A folder can hold someone else's files, so an export records what it wrote in `.kdforge-export.json` (each file
with its sha256), and the next export into the same folder replaces or removes only those files, and only while
they still hold the bytes kdforge wrote. A non-empty folder without that marker is refused, and so is a recorded
file changed since it was exported (a hand-edited README.md is never overwritten silently); files kdforge did not
write are left alone.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gen.data.shards import atomic_write_bytes, sha256_file
from gen.errors import UserError
from gen.publish.card import card_facts, render_card
from gen.publish.leaks import check_files_for_secrets, check_rows_for_secrets, environment_secrets
from gen.publish.plan import ExportPlan
from gen.publish.plots import write_plots

# The export's record of what it wrote: local bookkeeping, never uploaded.
MARKER = ".kdforge-export.json"
# Row groups of 10k conversational rows are a few MB: the dataset viewer can page through them one at a time.
ROW_GROUP_ROWS = 10_000


@dataclass
class ExportResult:
    folder: Path  # for a real publish: the staging folder, removed once publish() returns
    files: list[str]  # repo-relative POSIX paths of every file in the export (not the marker)
    card: str  # README.md text
    facts: Any  # gen.publish.card.CardFacts


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Deterministic bytes for the same rows (no timestamps; pyarrow's writer is reproducible), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_statistics=True)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------- the marker


def _read_marker(folder: Path) -> dict[str, set[str]]:
    """{repo path: the sha256 values kdforge wrote there} from the folder's marker. While an export is being moved
    in, the marker lists the outgoing bytes too (`replacing`), so a crash halfway leaves every file accounted for."""
    path = folder / MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
        recorded: dict[str, set[str]] = {}
        for section in ("files", "replacing"):
            for name, digest in (marker.get(section) or {}).items():
                parts = PurePosixPath(name).parts
                if not parts or PurePosixPath(name).is_absolute() or ".." in parts or not isinstance(digest, str):
                    raise ValueError(f"bad entry {name!r}")
                recorded.setdefault(name, set()).add(digest)
        return recorded
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path}: unreadable export record ({exc}); move the folder aside and export again") from None


def _write_marker(folder: Path, repo_id: str, files: dict[str, str], replacing: dict[str, str] | None = None) -> None:
    from gen import __version__

    marker: dict[str, Any] = {"written_by": f"kdforge {__version__} (gen publish)", "repo_id": repo_id,
                              "files": dict(sorted(files.items()))}
    if replacing:
        marker["replacing"] = dict(sorted(replacing.items()))
    atomic_write_bytes(folder / MARKER, (json.dumps(marker, indent=2) + "\n").encode())


def _owned_files(folder: Path) -> dict[str, str]:
    """The files of `folder` an export may replace or remove, {repo path: sha256}: those its marker records, still
    holding the bytes kdforge wrote. UserError for a non-empty folder without a marker or a recorded file changed
    since it was exported."""
    if not folder.exists():
        return {}
    if not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a directory; choose a folder for the export")
    if not (folder / MARKER).is_file():
        if any(folder.iterdir()):
            raise UserError(f"{folder}: not empty and holds no {MARKER} (not a `gen publish --dry-run` export); "
                            "choose an empty or new folder")
        return {}
    owned = {}
    for name, digests in sorted(_read_marker(folder).items()):
        path = folder / name
        if not path.exists() and not path.is_symlink():
            continue  # removed by the user: nothing to protect, nothing to remove
        digest = sha256_file(path) if path.is_file() and not path.is_symlink() else None
        if digest not in digests:
            raise UserError(f"{path}: changed since `gen publish` exported it; move it aside (or restore it) before "
                            f"exporting into {folder} again")
        owned[name] = digest
    return owned


def _refuse_foreign(folder: Path, incoming: Iterable[str], owned: dict[str, str]) -> None:
    """UserError if a file the export would write is already there and not one kdforge wrote."""
    for name in incoming:
        path = folder / name
        if name not in owned and (path.exists() or path.is_symlink()):
            raise UserError(f"{path}: not written by `gen publish`; move it aside or choose another folder")


def _move_in(source: Path, target: Path) -> None:
    """Replace `target` by `source` atomically (a reader sees the old or the new file), across filesystems too."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)


def _remove(folder: Path, name: str) -> None:
    """Delete a file kdforge wrote, and the folders it leaves empty (up to the export folder)."""
    path = folder / name
    path.unlink(missing_ok=True)
    parent = path.parent
    while parent != folder and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _staging_folder(folder: Path) -> tempfile.TemporaryDirectory:
    """Beside the export folder (same filesystem: moving in is a rename), else the system's temp folder."""
    folder = folder.absolute()  # `.` has no name and is its own parent
    try:
        return tempfile.TemporaryDirectory(prefix=f".{folder.name}.kdforge-export-", dir=folder.parent)
    except OSError:
        return tempfile.TemporaryDirectory(prefix="kdforge-export-")


# --------------------------------------------------------------------------------------------------------- writing


def _build(plan: ExportPlan, staging: Path, card: str) -> None:
    for config in plan.configs:
        if config.aggregate:
            continue
        for part in config.parts:
            per_file = math.ceil(part.rows / len(part.files))
            for index, name in enumerate(part.files):
                _write_parquet(part.table.slice(index * per_file, per_file), staging / name)
    write_plots(plan, staging)
    (staging / "README.md").write_text(card, encoding="utf-8")


def write_export(
    plan: ExportPlan,
    folder: str | os.PathLike,
    *,
    repo_id: str,
    license: str | None = None,
    languages: Iterable[str] = ("en",),
    pretty_name: str | None = None,
) -> ExportResult:
    """Write the repo's files (Parquet, card, plots) into `folder`, checked for secrets before they get there, and
    remove the files of an earlier export there that this one no longer has."""
    folder = Path(folder)
    facts = card_facts(plan, repo_id=repo_id, license=license, languages=languages, pretty_name=pretty_name)
    secrets = environment_secrets()
    check_rows_for_secrets(plan, secrets)  # before writing: a key in a row must not land anywhere, even locally
    card = render_card(facts)
    try:
        owned = _owned_files(folder)  # refused before the (long) build if the folder is not ours to write
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _staging_folder(folder) as staging_dir:
            staging = Path(staging_dir)
            _build(plan, staging, card)
            try:
                check_files_for_secrets(staging, secrets)
            except UserError as exc:  # name the file where the user would have found it, not the staging copy
                raise UserError(str(exc).replace(str(staging), str(folder), 1)) from None
            new = {p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
            _refuse_foreign(folder, new, owned)
            folder.mkdir(exist_ok=True)
            _write_marker(folder, repo_id, new, replacing=owned)
            for name in new:
                _move_in(staging / name, folder / name)
            for name in sorted(set(owned) - set(new)):
                _remove(folder, name)
            _write_marker(folder, repo_id, new)
    except (NotADirectoryError, FileExistsError, PermissionError) as exc:
        raise UserError(f"{folder}: cannot write the export there ({exc.strerror})") from None
    return ExportResult(folder, sorted(new), card, facts)
