"""What a finished kdforge run becomes on the Hub, decided before anything is written: configs, splits, file names.

    plan_export(run_dir, config_by=..., include_rejected=...) -> ExportPlan

Layout of the dataset repo the plan describes (written by gen.publish.export, pushed by gen.publish.hub)::

    README.md                                      card: YAML front matter (`configs:` with data_files) + body
    data/<config>/<split>-00000-of-00002.parquet   one folder per config, splits `train` and optionally `rejected`
    assets/length_distribution.png, assets/rows_per_method_round.png

Parquet only (one format per repo: `datasets` picks the builder by the majority file extension). `messages` stays
list<struct<role, content>>, so `datasets` and TRL read the rows as conversations.

Configs (`config_by`): `method` (default; one config per generation method, plus an `all` config that globs every
method's files and is the default) | `operation` (one per method+operation, e.g. `evol_instruct-deepen`, plus
`all`) | `single` (one `default` config).

Before planning, every shard is checked against the sha256 the run's manifest recorded (gen.data.verify): a shard
changed after it was written never goes out, even when it is still valid Arrow.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gen.data.preferences import PREFERENCE_SCHEMA, is_preference_table
from gen.data.records import ROW_SCHEMA
from gen.data.shards import read_manifest, read_table
from gen.data.verify import check_run
from gen.errors import UserError

CONFIG_BY = ("method", "operation", "single")
SPLITS = ("train", "rejected")
# Arrow (in-memory) bytes per Parquet file before a split is cut into several files. Parquet with zstd is several
# times smaller than this on disk; the Hub's viewer and `datasets` streaming like files of a few hundred MB.
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
AGGREGATE_CONFIG = "all"
# Prefixes this tool owns in the Hub repo: stale files under them are deleted on republish; anything else (a user's
# own .gitattributes or notes) is left alone.
MANAGED_PREFIXES = ("data/", "assets/")


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


def _as_row_schema(table: pa.Table, where: str, schema: pa.Schema = ROW_SCHEMA) -> pa.Table:
    """The run's rows in exactly `schema` (ROW_SCHEMA, or PREFERENCE_SCHEMA for a `gen prefs` run; column order,
    types, no shard metadata): every Parquet file of the repo then has one schema, which `datasets` needs to read
    configs that glob several methods' files."""
    required = ("id", "prompt", "chosen", "rejected", "method") if schema is PREFERENCE_SCHEMA else \
        ("id", "messages", "method")
    missing = [name for name in required if name not in table.column_names]
    if missing and table.num_rows:
        kind = "preference" if schema is PREFERENCE_SCHEMA else "conversation"
        raise UserError(f"{where}: shards lack the column(s) {', '.join(missing)}; not a kdforge {kind} run")
    columns = []
    for fld in schema:
        if fld.name in table.column_names:
            column = table.column(fld.name)
            columns.append(column if column.type == fld.type else column.cast(fld.type))
        else:
            columns.append(pa.nulls(table.num_rows, fld.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _run_schema(run_dir: Path) -> pa.Schema:
    """PREFERENCE_SCHEMA for a preference run (`gen prefs`: prompt/chosen/rejected in any split), else ROW_SCHEMA."""
    for split in SPLITS:
        table = read_table(run_dir, split)
        if table.num_rows:
            return PREFERENCE_SCHEMA if is_preference_table(table) else ROW_SCHEMA
    return ROW_SCHEMA


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

    Raises UserError if the run has no manifest, a shard whose bytes differ from the sha256 the manifest recorded,
    no kept rows, or a manifest whose counts disagree with its shards (the card would publish wrong numbers).
    """
    run_dir = Path(run_dir)
    if config_by not in CONFIG_BY:
        raise UserError(f"config_by {config_by!r}: choose one of {', '.join(CONFIG_BY)}")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    manifest = read_manifest(run_dir)
    check_run(run_dir)
    schema = _run_schema(run_dir)
    tables = {split: _as_row_schema(read_table(run_dir, split), f"{run_dir}/{split}", schema) for split in SPLITS}
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
