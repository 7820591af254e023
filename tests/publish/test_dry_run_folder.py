"""`gen publish --dry-run DIR` (issue 18 #3): only files this tool wrote, recorded with their sha256 in the export's
`.kdforge-export.json`, are replaced or removed. A folder that merely looks like an export (README.md + data/) is
refused; the user's own files in an earlier export survive a re-export; a hand-edited file is never overwritten."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from gen.publish.export import MARKER
from tests.publish.conftest import REPO, SMALL_FILE_MB
from tests.publish.runs import one_line_error, run_gen


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_that_only_looks_like_an_export_is_refused_untouched(run_dir, tmp_path):
    # The reported case: README.md and data/ of the user's own, no marker.
    folder = tmp_path / "mine"
    (folder / "data" / "other").mkdir(parents=True)
    (folder / "data" / "other" / "x.parquet").write_bytes(b"PAR1 the user's data PAR1")
    (folder / "README.md").write_text("# my own dataset\n")
    before = snapshot(folder)

    proc = run_gen("publish", str(run_dir), "--repo", REPO, "--dry-run", str(folder))
    message = one_line_error(proc, "publish")
    assert str(folder) in message and "not empty" in message and MARKER in message
    assert snapshot(folder) == before  # nothing deleted, nothing overwritten, no marker added
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left beside it


def test_a_re_export_replaces_only_its_own_files_and_keeps_the_users(run_dir, export, tmp_path):
    folder = tmp_path / "repo"
    shutil.copytree(export, folder)
    first = json.loads((folder / MARKER).read_text())["files"]
    assert first and sorted(first) == sorted(p for p in snapshot(folder) if p != MARKER)
    # The user adds files of their own, inside and beside the managed folders.
    (folder / "data" / "other").mkdir()
    (folder / "data" / "other" / "x.parquet").write_bytes(b"PAR1 the user's data PAR1")
    (folder / "data" / "evol_instruct" / "notes.md").write_text("why I kept this config")
    (folder / "CITATION.cff").write_text("cff-version: 1.2.0\n")

    # A different layout: every earlier data file is stale and must go; the user's files must not.
    proc = run_gen("publish", str(run_dir), "--repo", REPO, "--dry-run", str(folder), "--config-by", "single")
    assert proc.returncode == 0, proc.stderr
    files = snapshot(folder)
    assert files["data/other/x.parquet"] == b"PAR1 the user's data PAR1"
    assert files["data/evol_instruct/notes.md"] == b"why I kept this config"
    assert files["CITATION.cff"] == b"cff-version: 1.2.0\n"
    assert not [p for p in first if p.startswith("data/") and p in files]  # stale exported files removed
    assert not (folder / "data" / "self_instruct").exists()  # and the folders they left empty
    marker = json.loads(files[MARKER])
    assert "replacing" not in marker
    assert sorted(marker["files"]) == ["README.md", "assets/length_distribution.png",
                                       "assets/rows_per_method_round.png", "data/default/train-00000-of-00001.parquet"]
    for name, digest in marker["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name


def test_a_file_edited_after_export_is_not_overwritten(run_dir, export, tmp_path):
    folder = tmp_path / "repo"
    shutil.copytree(export, folder)
    card = folder / "README.md"
    card.write_text(card.read_text() + "\nMy notes about this dataset.\n")
    before = snapshot(folder)

    proc = run_gen("publish", str(run_dir), "--repo", REPO, "--dry-run", str(folder), "--include-rejected",
                   "--max-file-mb", SMALL_FILE_MB)
    message = one_line_error(proc, "publish")
    assert message.startswith(f"{card}: changed since `gen publish` exported it")
    assert snapshot(folder) == before


def test_a_file_of_the_users_where_the_export_would_write_is_not_replaced(run_dir, export, tmp_path):
    folder = tmp_path / "repo"
    shutil.copytree(export, folder)
    theirs = folder / "data" / "default" / "train-00000-of-00001.parquet"
    theirs.parent.mkdir()
    theirs.write_bytes(b"PAR1 not ours PAR1")
    before = snapshot(folder)

    proc = run_gen("publish", str(run_dir), "--repo", REPO, "--dry-run", str(folder), "--config-by", "single")
    assert one_line_error(proc, "publish") == (f"{theirs}: not written by `gen publish`; move it aside or choose "
                                               "another folder")
    assert snapshot(folder) == before


def test_an_export_interrupted_while_moving_in_is_still_recognised_as_ours(run_dir, export, tmp_path):
    """While files are moved in, the marker lists the outgoing bytes too (`replacing`): a folder left with a mix of
    old and new files after a kill is still entirely kdforge's, and the next export completes it."""
    folder = tmp_path / "repo"
    shutil.copytree(export, folder)
    marker = json.loads((folder / MARKER).read_text())
    # What a kill between two moves leaves: README.md already new (different bytes), the marker naming both.
    old_card = (folder / "README.md").read_bytes()
    new_card = old_card.replace(b"kdforge", b"kdforge (new)", 1)
    (folder / "README.md").write_bytes(new_card)
    marker["replacing"] = {"README.md": marker["files"]["README.md"]}
    marker["files"]["README.md"] = hashlib.sha256(new_card).hexdigest()
    (folder / MARKER).write_text(json.dumps(marker))

    proc = run_gen("publish", str(run_dir), "--repo", REPO, "--dry-run", str(folder), "--include-rejected",
                   "--max-file-mb", SMALL_FILE_MB)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "README.md").read_bytes() == old_card  # the same run and options: the same card again
    assert "replacing" not in json.loads((folder / MARKER).read_text())
