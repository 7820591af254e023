"""Push an exported folder to the Hugging Face Hub as a dataset repo: create it if needed, then ONE commit.

    upload(folder, repo_id, private=...) -> UploadResult

Republishing is idempotent: files whose bytes the repo already has are not sent again, files under the managed
prefixes (`data/`, `assets/`) that the new export no longer has are deleted in the same commit, and when nothing
changed no commit is made at all; the owner's other files are left alone. The Hub token comes from the environment
or `huggingface_hub`'s login and is never passed on a command line.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen.data.shards import sha256_file
from gen.errors import UserError
from gen.publish.export import MARKER
from gen.publish.plan import MANAGED_PREFIXES
from gen.publish.repo_id import check_repo_id


@dataclass
class UploadResult:
    repo_url: str
    commit_url: str | None  # None: the repo already held exactly these files, no commit was made
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _same_content(remote: Any, path: Path) -> bool:
    """Does the repo already hold these bytes at this path? LFS/Xet files by sha256, regular files by git blob id."""
    if remote.size != path.stat().st_size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == sha256_file(path)
    return remote.blob_id == _git_blob_sha1(path.read_bytes())


def _transport_errors() -> type[Exception]:
    """The HTTP client's "could not reach the server" error (huggingface_hub 2.x uses httpx2, 1.x httpx)."""
    try:
        from httpx2 import TransportError
    except ImportError:
        from httpx import TransportError
    return TransportError


def _hub_error(exc: Exception, repo_id: str, repo_type: str = "dataset") -> UserError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return UserError(f"{repo_type} repo {repo_id}: the Hub request failed ({first})")


def check_hub_access(command: str = "gen publish") -> None:
    """UserError unless an upload could start: the Hub not switched off (HF_HUB_OFFLINE) and a token present. Called
    before long work (`gen train --push-to-hub` checks before training)."""
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: unset it to publish" + (
            ", or write the repo locally with --dry-run DIR" if command == "gen publish" else ""))
    if not get_token():
        raise UserError(f"no Hugging Face token: set HF_TOKEN or run `hf auth login` ({command} takes no --token)")


def upload(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    endpoint: str | None = None,
    commit_message: str = "Publish dataset with kdforge",
    commit_description: str = "",
    repo_type: str = "dataset",
    managed_prefixes: tuple[str, ...] = MANAGED_PREFIXES,
) -> UploadResult:
    """Create the dataset repo if needed and push `folder` in ONE commit (adds + deletes of stale managed files).

    The token is whatever huggingface_hub resolves (HF_TOKEN, or `hf auth login`'s stored token); `endpoint`
    defaults to HF_ENDPOINT / huggingface.co. Unchanged files are not re-sent; with nothing changed, no commit.
    `repo_type` "model" pushes a trained student (gen/publish/model_card.py); remote files under `managed_prefixes`
    that `folder` no longer has are deleted in the same commit.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.hf_api import RepoFile

    folder = Path(folder)
    check_repo_id(repo_id)
    check_hub_access("gen publish" if repo_type == "dataset" else "gen train")
    api = HfApi(endpoint=endpoint)
    local = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    local.pop(MARKER, None)  # the export's local record of what it wrote, not part of the dataset
    try:
        repo_url = api.create_repo(repo_id, repo_type=repo_type, private=True if private else None, exist_ok=True)
        try:
            remote = {f.path: f for f in api.list_repo_tree(repo_id, repo_type=repo_type, recursive=True)
                      if isinstance(f, RepoFile)}
        except HfHubHTTPError as exc:
            if exc.response is None or exc.response.status_code != 404:
                raise
            remote = {}  # a repo without a first commit has no tree yet
        unchanged = [p for p, path in local.items() if p in remote and _same_content(remote[p], path)]
        added = [p for p in local if p not in unchanged]
        deleted = sorted(p for p in remote if managed_prefixes and p.startswith(managed_prefixes) and p not in local)
        if not added and not deleted:
            return UploadResult(str(repo_url), None, [], [], unchanged)
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(local[p])) for p in added]
        operations += [CommitOperationDelete(path_in_repo=p) for p in deleted]
        info = api.create_commit(repo_id, operations, repo_type=repo_type, commit_message=commit_message,
                                 commit_description=commit_description)
    except OfflineModeIsEnabled:
        raise UserError("HF_HUB_OFFLINE is set: unset it to publish, or use --dry-run DIR") from None
    except (HfHubHTTPError, ValueError, OSError, _transport_errors()) as exc:
        raise _hub_error(exc, repo_id, repo_type) from None
    return UploadResult(str(repo_url), info.commit_url, added, deleted, unchanged)
