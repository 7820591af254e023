"""Turn a finished kdforge run into a Hugging Face Hub dataset: Parquet files, a card, plots, one commit.

    plan_export(run_dir, config_by=..., include_rejected=...)  -> ExportPlan   (what goes where; nothing written)
    write_export(plan, folder, repo_id=...)                     -> ExportResult (the repo's files, on local disk)
    upload(folder, repo_id, private=...)                        -> UploadResult (create repo + ONE commit, or none)
    publish(run_dir, repo_id, dry_run_dir=None, ...)            -> both, the way `gen publish` runs them

Layout of the exported folder (= the dataset repo)::

    README.md                                      card: YAML front matter (`configs:` with data_files) + body
    data/<config>/<split>-00000-of-00002.parquet   one folder per config, splits `train` and optionally `rejected`
    assets/length_distribution.png, assets/rows_per_method_round.png

Parquet only (one format per repo: `datasets` picks the builder by the majority file extension). `messages` stays
list<struct<role, content>>, so `datasets` and TRL read the rows as conversations.

Configs (`config_by`): `method` (default; one config per generation method, plus an `all` config that globs every
method's files and is the default) | `operation` (one per method+operation, e.g. `evol_instruct-deepen`, plus
`all`) | `single` (one `default` config).

Republishing is idempotent: files whose bytes the repo already has are not sent again, files under `data/` and
`assets/` that the new export no longer has are deleted in the same commit, and when nothing changed no commit is
made at all. The Hub token comes from the environment or `huggingface_hub`'s login, is never passed on a command
line, and every exported byte is checked for secrets from the environment before anything is uploaded.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gen.data.records import ROW_SCHEMA
from gen.data.shards import read_manifest, read_table, sha256_file
from gen.errors import UserError

CONFIG_BY = ("method", "operation", "single")
SPLITS = ("train", "rejected")
# Arrow (in-memory) bytes per Parquet file before a split is cut into several files. Parquet with zstd is several
# times smaller than this on disk; the Hub's viewer and `datasets` streaming like files of a few hundred MB.
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
# Row groups of 10k conversational rows are a few MB: the dataset viewer can page through them one at a time.
ROW_GROUP_ROWS = 10_000
AGGREGATE_CONFIG = "all"
# Prefixes this tool owns in the repo: stale files under them are deleted on republish; anything else (a user's own
# .gitattributes or notes) is left alone.
MANAGED_PREFIXES = ("data/", "assets/")
# Environment variables whose values must never leave the machine inside an uploaded file.
_SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")
_SECRET_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_SECRET_KEY", "_PASSWORD")
_MIN_SECRET_LEN = 8  # shorter values ("1", "true") would match everywhere and protect nothing
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


# --------------------------------------------------------------------------------------------------------- the plan


@dataclass
class SplitPart:
    """One split of one config: its rows and the repo paths of the Parquet files they will be written to."""

    split: str
    table: pa.Table
    files: list[str]

    @property
    def rows(self) -> int:
        return self.table.num_rows


@dataclass
class ConfigExport:
    """One `datasets` config. An aggregate config owns no files: its data_files glob the other configs' files."""

    name: str
    parts: list[SplitPart]
    default: bool = False
    aggregate: bool = False

    def yaml(self) -> dict[str, Any]:
        """This config's entry in the card's `configs:` list."""
        if self.aggregate:
            files = [{"split": p.split, "path": f"data/*/{p.split}-*.parquet"} for p in self.parts]
        else:
            files = [{"split": p.split, "path": f"data/{self.name}/{p.split}-*.parquet"} for p in self.parts]
        entry: dict[str, Any] = {"config_name": self.name, "data_files": files}
        if self.default:
            entry["default"] = True
        return entry


@dataclass
class ExportPlan:
    """What a run becomes on the Hub. `train`/`rejected`: all rows of the run (ROW_SCHEMA), whether or not the
    rejected split is published (the card's funnel and duplicate rate need them); `configs`: what is published."""

    run_dir: Path
    manifest: dict[str, Any]
    train: pa.Table
    rejected: pa.Table
    configs: list[ConfigExport]
    config_by: str
    include_rejected: bool

    def configs_yaml(self) -> list[dict[str, Any]]:
        return [c.yaml() for c in self.configs]

    def data_files(self) -> list[str]:
        return [f for c in self.configs if not c.aggregate for p in c.parts for f in p.files]


def config_name(name: str) -> str:
    """A value as a config / folder name: letters, digits, `_`, `-`, `.` (anything else becomes `-`)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "-", str(name)).strip("-.")
    return cleaned or "default"


def _as_row_schema(table: pa.Table, where: str) -> pa.Table:
    """The run's rows in exactly ROW_SCHEMA (column order, types, no shard metadata): every Parquet file of the repo
    then has one schema, which `datasets` needs to read configs that glob several methods' files."""
    missing = [name for name in ("id", "messages", "method") if name not in table.column_names]
    if missing:
        raise UserError(f"{where}: shards lack the column(s) {', '.join(missing)}; not a kdforge conversation run")
    columns = []
    for fld in ROW_SCHEMA:
        if fld.name in table.column_names:
            column = table.column(fld.name)
            columns.append(column if column.type == fld.type else column.cast(fld.type))
        else:
            columns.append(pa.nulls(table.num_rows, fld.type))
    return pa.Table.from_arrays(columns, schema=ROW_SCHEMA)


def _group_keys(table: pa.Table, config_by: str) -> list[str]:
    if config_by == "single":
        return ["default"] * table.num_rows
    methods = table.column("method").to_pylist()
    if config_by == "method":
        return [config_name(m) for m in methods]
    operations = table.column("operation").to_pylist()
    return [config_name(f"{m}-{o}" if o else m) for m, o in zip(methods, operations)]


def _file_names(config: str, split: str, table: pa.Table, max_file_bytes: int) -> list[str]:
    count = max(1, math.ceil(table.nbytes / max(1, max_file_bytes)))
    count = min(count, max(1, table.num_rows))
    return [f"data/{config}/{split}-{i:05d}-of-{count:05d}.parquet" for i in range(count)]


def plan_export(
    run_dir: str | os.PathLike,
    *,
    config_by: str = "method",
    include_rejected: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> ExportPlan:
    """Read a run (manifest + train/rejected shards) and decide its configs and files. Writes nothing.

    Raises UserError if the run has no manifest, no kept rows, or a manifest whose counts disagree with its shards
    (the card would publish wrong numbers).
    """
    run_dir = Path(run_dir)
    if config_by not in CONFIG_BY:
        raise UserError(f"--config-by {config_by!r}: choose one of {', '.join(CONFIG_BY)}")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    manifest = read_manifest(run_dir)
    tables = {split: _as_row_schema(read_table(run_dir, split), f"{run_dir}/{split}") for split in SPLITS}
    for split, table in tables.items():
        recorded = (manifest.get("splits") or {}).get(split, {}).get("rows")
        if recorded is not None and int(recorded) != table.num_rows:
            raise UserError(f"{run_dir}/manifest.json: says {recorded} {split} rows but the shards hold "
                            f"{table.num_rows}; the run is unfinished or the manifest is stale")
    if tables["train"].num_rows == 0:
        raise UserError(f"{run_dir}/train: no kept rows to publish")

    published = [s for s in SPLITS if s == "train" or include_rejected]
    groups: dict[str, dict[str, pa.Table]] = {}
    for split in published:
        table = tables[split]
        if table.num_rows == 0:
            continue
        keys = pa.array(_group_keys(table, config_by), pa.string())
        for key in sorted(set(keys.to_pylist())):
            groups.setdefault(key, {})[split] = table.filter(pc.equal(keys, key))

    configs = []
    for name in sorted(groups):
        parts = [SplitPart(split, groups[name][split], _file_names(name, split, groups[name][split], max_file_bytes))
                 for split in SPLITS if split in groups[name]]
        configs.append(ConfigExport(name, parts))
    if len(configs) > 1:
        aggregate_name = AGGREGATE_CONFIG if AGGREGATE_CONFIG not in groups else f"{AGGREGATE_CONFIG}_configs"
        parts = [SplitPart(split, tables[split], []) for split in published if tables[split].num_rows]
        configs.insert(0, ConfigExport(aggregate_name, parts, default=True, aggregate=True))
    else:
        configs[0].default = True
    return ExportPlan(run_dir, manifest, tables["train"], tables["rejected"], configs, config_by, include_rejected)


# ------------------------------------------------------------------------------------------------------- secrets


def environment_secrets() -> dict[str, str]:
    """{name: value} of the credentials present in this process: the usual API-key variables, any variable named
    like one (`*_API_KEY`, `*_TOKEN`, ...), and the Hub token huggingface_hub would send."""
    found = {}
    for name, value in os.environ.items():
        if (name in _SECRET_ENV or name.endswith(_SECRET_SUFFIXES)) and len(value or "") >= _MIN_SECRET_LEN:
            found[name] = value
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # a broken login file must not stop a dry run; it would fail at upload with its own error
        token = None
    if token and len(token) >= _MIN_SECRET_LEN and token not in found.values():
        found["the Hugging Face login token"] = token
    return found


def _string_arrays(array: pa.Array) -> Iterable[pa.Array]:
    """Every string leaf of a (nested) Arrow array, flattened: where a secret could hide in a row."""
    if isinstance(array, pa.ChunkedArray):
        for chunk in array.chunks:
            yield from _string_arrays(chunk)
    elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        yield array
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        yield from _string_arrays(array.flatten())
    elif pa.types.is_struct(array.type):
        for i in range(array.type.num_fields):
            yield from _string_arrays(array.field(i))


def check_rows_for_secrets(plan: ExportPlan, secrets: dict[str, str]) -> None:
    """Raise UserError naming the split, row and column if any published row contains a secret's value.

    Rows are checked as Arrow strings, before Parquet compresses them (compressed bytes would hide a key). The
    message names the variable, never its value.
    """
    for config in plan.configs:
        if config.aggregate:
            continue
        for part in config.parts:
            for name, value in secrets.items():
                for column in part.table.column_names:
                    if any(pc.any(pc.match_substring(a, value)).as_py() for a in _string_arrays(part.table[column])):
                        raise UserError(f"{plan.run_dir}/{part.split}: row {_first_row_with(part.table, value)} "
                                        f"({column}) contains the value of {name}; refusing to publish it")


def check_files_for_secrets(folder: Path, secrets: dict[str, str]) -> None:
    """Raise UserError naming the file if any exported file's bytes (the card, the plots) contain a secret's value."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            for name, value in secrets.items():
                if value.encode() in data:
                    raise UserError(f"{path}: contains the value of {name}; refusing to publish it")


def _first_row_with(table: pa.Table, value: str) -> str:
    for row in table.to_pylist():
        if value in repr(row):
            return str(row.get("id"))
    return "?"


# ---------------------------------------------------------------------------------------------------------- writing


@dataclass
class ExportResult:
    folder: Path  # for a real publish: the staging folder, removed once publish() returns
    files: list[str]  # repo-relative POSIX paths of every file in the export
    card: str  # README.md text
    facts: Any  # gen.publish.card.CardFacts


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Deterministic bytes for the same rows (no timestamps; pyarrow's writer is reproducible), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_statistics=True)
    os.replace(tmp, path)


def _prepare_folder(folder: Path) -> None:
    """An export folder is empty or a previous export (its managed folders are replaced); never someone's files."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = [p for p in folder.iterdir()]
    if entries and not ((folder / "README.md").is_file() and (folder / "data").is_dir()):
        raise UserError(f"{folder}: not empty and not a previous `gen publish --dry-run` export; choose another folder")
    for prefix in MANAGED_PREFIXES:
        shutil.rmtree(folder / prefix.rstrip("/"), ignore_errors=True)


def write_export(
    plan: ExportPlan,
    folder: str | os.PathLike,
    *,
    repo_id: str,
    license: str | None = None,
    languages: Iterable[str] = ("en",),
    pretty_name: str | None = None,
) -> ExportResult:
    """Write the repo's files (Parquet, card, plots) into `folder`, then check them for secrets."""
    from gen.publish.card import card_facts, render_card, write_plots

    folder = Path(folder)
    facts = card_facts(plan, repo_id=repo_id, license=license, languages=languages, pretty_name=pretty_name)
    secrets = environment_secrets()
    check_rows_for_secrets(plan, secrets)  # before writing: a key in a row must not land anywhere, even locally
    _prepare_folder(folder)
    for config in plan.configs:
        if config.aggregate:
            continue
        for part in config.parts:
            per_file = math.ceil(part.rows / len(part.files))
            for index, name in enumerate(part.files):
                _write_parquet(part.table.slice(index * per_file, per_file), folder / name)
    write_plots(plan, folder)
    card = render_card(facts)
    (folder / "README.md").write_text(card, encoding="utf-8")
    check_files_for_secrets(folder, secrets)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return ExportResult(folder, files, card, facts)


# ---------------------------------------------------------------------------------------------------------- upload


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


def _hub_error(exc: Exception, repo_id: str) -> UserError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return UserError(f"--repo {repo_id}: the Hub request failed ({first})")


def upload(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    endpoint: str | None = None,
    commit_message: str = "Publish dataset with kdforge",
    commit_description: str = "",
) -> UploadResult:
    """Create the dataset repo if needed and push `folder` in ONE commit (adds + deletes of stale managed files).

    The token is whatever huggingface_hub resolves (HF_TOKEN, or `hf auth login`'s stored token); `endpoint`
    defaults to HF_ENDPOINT / huggingface.co. Unchanged files are not re-sent; with nothing changed, no commit.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.hf_api import RepoFile

    folder = Path(folder)
    if constants.is_offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: unset it to publish, or write the repo locally with --dry-run DIR")
    if not get_token():
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (gen publish takes no --token)")
    api = HfApi(endpoint=endpoint)
    local = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    try:
        repo_url = api.create_repo(repo_id, repo_type="dataset", private=True if private else None, exist_ok=True)
        try:
            remote = {f.path: f for f in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True)
                      if isinstance(f, RepoFile)}
        except HfHubHTTPError as exc:
            if exc.response is None or exc.response.status_code != 404:
                raise
            remote = {}  # a repo without a first commit has no tree yet
        unchanged = [p for p, path in local.items() if p in remote and _same_content(remote[p], path)]
        added = [p for p in local if p not in unchanged]
        deleted = sorted(p for p in remote if p.startswith(MANAGED_PREFIXES) and p not in local)
        if not added and not deleted:
            return UploadResult(str(repo_url), None, [], [], unchanged)
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(local[p])) for p in added]
        operations += [CommitOperationDelete(path_in_repo=p) for p in deleted]
        info = api.create_commit(repo_id, operations, repo_type="dataset", commit_message=commit_message,
                                 commit_description=commit_description)
    except OfflineModeIsEnabled:
        raise UserError("HF_HUB_OFFLINE is set: unset it to publish, or use --dry-run DIR") from None
    except (HfHubHTTPError, ValueError, OSError, _transport_errors()) as exc:
        raise _hub_error(exc, repo_id) from None
    return UploadResult(str(repo_url), info.commit_url, added, deleted, unchanged)


# --------------------------------------------------------------------------------------------------------- publish


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
    if not _REPO_ID.match(repo_id or ""):
        raise UserError(f"--repo {repo_id!r}: expected OWNER/NAME")
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
    return PublishResult(plan, export, result)
