"""`gen publish` end to end: plan the export, write it (to the dry-run folder or a staging folder), upload it.

    publish(run_dir, repo_id, dry_run_dir=None, ...) -> PublishResult

Every shard is verified against the run's manifest while planning, and every exported byte is checked for secrets
from the environment before anything is written or uploaded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from gen.publish.export import ExportResult, write_export
from gen.publish.hub import UploadResult, upload
from gen.publish.plan import DEFAULT_MAX_FILE_BYTES, ExportPlan, plan_export
from gen.publish.repo_id import check_repo_id


@dataclass
class PublishResult:
    plan: ExportPlan
    export: ExportResult
    upload: UploadResult | None  # None for a dry run


def publish(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    dry_run_dir: str | os.PathLike | None = None,
    config_by: str = "method",
    include_rejected: bool = False,
    license: str | None = None,
    languages: Iterable[str] = ("en",),
    pretty_name: str | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    endpoint: str | None = None,
) -> PublishResult:
    """`gen publish`: plan, export (to `dry_run_dir`, or a temp folder), and unless dry-running upload it."""
    check_repo_id(repo_id)
    plan = plan_export(run_dir, config_by=config_by, include_rejected=include_rejected, max_file_bytes=max_file_bytes)
    options = dict(repo_id=repo_id, license=license, languages=languages, pretty_name=pretty_name)
    if dry_run_dir is not None:
        return PublishResult(plan, write_export(plan, dry_run_dir, **options), None)
    with tempfile.TemporaryDirectory(prefix="kdforge-publish-") as staging:
        export = write_export(plan, staging, **options)
        rows = sum(p.rows for c in plan.configs if not c.aggregate for p in c.parts)
        message = f"kdforge: {rows:,} rows in {len(plan.data_files())} Parquet file(s)"
        description = (f"Published from a kdforge run (kdforge {plan.manifest.get('kdforge_version', '?')}, "
                       f"manifest updated {plan.manifest.get('updated', '?')}).")
        result = upload(staging, repo_id, private=private, endpoint=endpoint, commit_message=message,
                        commit_description=description)
    record_publication(run_dir, repo_id, result)
    return PublishResult(plan, export, result)


# The run's record of where it was published: a model card of a student trained on the run links the dataset repo.
PUBLISHED = "published.json"


def record_publication(run_dir: str | os.PathLike, repo_id: str, result: UploadResult) -> None:
    """Write `run_dir/published.json` ({repo_id, url, commit_url}) after an upload; a read-only run dir is not an
    error (the dataset is published either way)."""
    import json
    from pathlib import Path

    from gen.data.shards import atomic_write_bytes

    record = {"repo_id": repo_id, "url": result.repo_url, "commit_url": result.commit_url}
    try:
        atomic_write_bytes(Path(run_dir) / PUBLISHED, (json.dumps(record, indent=2) + "\n").encode())
    except OSError:
        pass


def published_repo(run_dir: str | os.PathLike) -> str | None:
    """The Hub dataset repo id `gen publish` last pushed `run_dir` to, or None."""
    import json
    from pathlib import Path

    try:
        record = json.loads((Path(run_dir) / PUBLISHED).read_text())
    except (OSError, ValueError):
        return None
    repo_id = record.get("repo_id") if isinstance(record, dict) else None
    return repo_id if isinstance(repo_id, str) else None
