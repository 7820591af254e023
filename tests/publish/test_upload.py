"""`gen publish` against a real local HTTP server that speaks the Hub API and records what huggingface_hub sends:
the repo is created, the files arrive in exactly one commit with the dry run's bytes, republishing is a no-op, a
changed run replaces stale files, and no token or key ever lands in an uploaded file."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from huggingface_hub import constants as hub_constants

from gen.errors import UserError
from gen.publish.export import MARKER
from gen.publish.hub import upload
from gen.publish.pipeline import publish
from tests.publish.conftest import REPO, SMALL_FILE_MB
from tests.publish.hub_server import HubServer
from tests.publish.runs import build_run

TOKEN = "hf_kdforgeFAKEtoken0123456789abcdefXYZ"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub_env(monkeypatch):
    """The Hub token in the environment (as users set it), the test-wide offline switch lifted for this local
    endpoint, and Xet off so huggingface_hub takes the LFS path this server implements."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)


def folder_files(folder: Path) -> dict[str, bytes]:
    """The dataset files of an export folder (its marker is the export's local record, never uploaded)."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert MARKER in files
    return {p: d for p, d in files.items() if p != MARKER}


def assert_no_secret(files: dict[str, bytes], secret: str) -> None:
    """Raw bytes, and for Parquet the decompressed rows too (compression would hide a key from a byte search)."""
    for path, data in files.items():
        assert secret.encode() not in data, path
        if path.endswith(".parquet"):
            assert secret not in json.dumps(pq.read_table(io.BytesIO(data)).to_pylist()), path


def test_publish_creates_the_repo_and_pushes_one_commit(run_dir, export, hub_env):
    options = dict(include_rejected=True, max_file_bytes=int(float(SMALL_FILE_MB) * 1024 * 1024))
    expected = folder_files(export)  # the `gen publish --dry-run` of the same run with the same options
    with HubServer(TOKEN) as hub:
        result = publish(run_dir, REPO, private=True, endpoint=hub.url, **options)
        creates = hub.requests_to("POST", r"^/api/repos/create$")
        commits = hub.requests_to("POST", r"^/api/datasets/alice/kd-set/commit/main$")
        repo = hub.repo(REPO)

    assert [json.loads(r.body) for r in creates] == [
        {"name": "kd-set", "organization": "alice", "type": "dataset", "visibility": "private"}]
    assert repo.repo_type == "dataset" and repo.private
    assert len(commits) == 1 and len(repo.commits) == 2  # the Hub's initial .gitattributes commit + ours
    ours = repo.commits[-1]
    assert ours.summary.startswith("kdforge: 145 rows") and result.upload.commit_url.endswith(ours.oid)
    # Exactly the dry run's files and bytes: what `--dry-run` shows is what gets published.
    assert {p: d for p, d in repo.files.items() if p != ".gitattributes"} == expected
    assert sorted(ours.lfs) == sorted(p for p in expected if p.endswith((".parquet", ".png")))
    assert ours.added == ["README.md"] and ours.deleted == []
    lfs_puts = hub.requests_to("PUT", r"^/lfs-objects/")
    assert sorted(r.path.rsplit("/", 1)[1] for r in lfs_puts) == sorted(
        hashlib.sha256(d).hexdigest() for p, d in expected.items() if p in ours.lfs)
    # The token authenticated the API calls but is in no uploaded file and no request body.
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in creates + commits)
    assert_no_secret(repo.files, TOKEN)
    assert all(TOKEN.encode() not in r.body for r in hub.requests)


def test_republishing_is_idempotent_and_a_changed_run_replaces_stale_files(run_dir, tmp_path, hub_env):
    small = int(float(SMALL_FILE_MB) * 1024 * 1024)
    with HubServer(TOKEN) as hub:
        publish(run_dir, REPO, endpoint=hub.url, include_rejected=True, max_file_bytes=small)
        hub.repo(REPO).files["notes/mine.md"] = b"the owner's own file"  # not ours: must survive republishing
        before = len(hub.requests)

        again = publish(run_dir, REPO, endpoint=hub.url, include_rejected=True, max_file_bytes=small)
        assert again.upload.commit_url is None and again.upload.added == [] and again.upload.deleted == []
        assert len(again.upload.unchanged) == len(again.export.files)
        later = hub.requests[before:]
        assert not [r for r in later if r.method == "PUT" or "/commit/" in r.path or "/preupload/" in r.path]
        assert len(hub.repo(REPO).commits) == 2

        # A different export of the run (no rejected split, one file per split): one commit that adds the new
        # files and deletes every stale data file, and leaves the owner's file alone.
        changed = publish(run_dir, REPO, endpoint=hub.url)
        expected = folder_files(publish(run_dir, REPO, dry_run_dir=tmp_path / "dry2").export.folder)
        repo = hub.repo(REPO)
        assert len(hub.requests_to("POST", r"/commit/main$")) == 2 and len(repo.commits) == 3
        assert sorted(repo.commits[-1].deleted) == sorted(changed.upload.deleted)
        assert all("rejected-" in p or "-of-00003" in p or "-of-00002" in p for p in changed.upload.deleted)
        assert {p: d for p, d in repo.files.items() if p not in (".gitattributes", "notes/mine.md")} == expected
        assert repo.files["notes/mine.md"] == b"the owner's own file"
        assert_no_secret(repo.files, TOKEN)


def test_a_secret_in_a_row_or_the_card_stops_the_publish_before_any_request(tmp_path, hub_env, monkeypatch):
    leaky = build_run(tmp_path / "leaky", evol_roots=2, self_instruct=3, extra_text=f"my token is {TOKEN}")
    with HubServer(TOKEN) as hub:
        with pytest.raises(UserError, match=r"row si-0000 \(messages\) contains the value of HF_TOKEN") as err:
            publish(leaky, REPO, endpoint=hub.url)
        assert TOKEN not in str(err.value)
        assert hub.requests == []
    with pytest.raises(UserError, match="HF_TOKEN"):
        publish(leaky, REPO, dry_run_dir=tmp_path / "dry")
    assert not (tmp_path / "dry" / "data").exists()  # refused before writing any row

    clean = build_run(tmp_path / "clean", evol_roots=2, self_instruct=3)
    key = "sk-test-kdforge-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with pytest.raises(UserError, match=r"README\.md: contains the value of OPENAI_API_KEY") as err:
        publish(clean, REPO, dry_run_dir=tmp_path / "dry2", pretty_name=f"set {key}")
    assert str(err.value).startswith(f"{tmp_path / 'dry2' / 'README.md'}: ")
    assert not (tmp_path / "dry2").exists()  # checked before it reached the folder


def test_missing_token_offline_mode_and_a_refusing_hub_are_user_errors(export, hub_env, monkeypatch):
    folder = export
    with HubServer(TOKEN) as hub:
        monkeypatch.delenv("HF_TOKEN")
        with pytest.raises(UserError, match="no Hugging Face token: set HF_TOKEN"):
            upload(folder, REPO, endpoint=hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_wrongTOKENwrongTOKEN")
        with pytest.raises(UserError, match="dataset repo alice/kd-set: the Hub request failed"):
            upload(folder, REPO, endpoint=hub.url)
        assert hub.repos == {}
        with pytest.raises(UserError, match="dataset repo alice/kd-set: the Hub request failed"):
            upload(folder, REPO, endpoint="http://127.0.0.1:9")  # nothing listens there: one line, no traceback
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
            upload(folder, REPO, endpoint=hub.url)


def test_gen_publish_command_uploads_with_the_token_from_the_environment(run_dir):
    with HubServer(TOKEN) as hub:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                   PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, "-m", "gen.cli", "publish", str(run_dir), "--repo", "bob/cli-set"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "one commit" in proc.stdout and "bob/cli-set" in proc.stdout
        assert len(hub.requests_to("POST", r"^/api/datasets/bob/cli-set/commit/main$")) == 1
        repo = hub.repo("bob/cli-set")
        assert "README.md" in repo.files and not [p for p in repo.files if "rejected" in p]
        assert TOKEN not in proc.stdout + proc.stderr
        assert_no_secret(repo.files, TOKEN)
