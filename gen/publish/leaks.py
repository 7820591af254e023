"""No secret leaves the machine: published rows and exported files are checked for the credentials present in
this process (API keys, tokens, the Hub login) before anything is written or uploaded.

    environment_secrets()                      -> {name: value} of the credentials to look for
    check_rows_for_secrets(plan, secrets)      rows of every published split, as Arrow strings (before compression)
    check_files_for_secrets(folder, secrets)   the bytes of every exported file (the card, the plots)

Each raises UserError naming where the value was found and which variable it belongs to, never the value.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from gen.data.secrets import MIN_SECRET_LEN
from gen.data.secrets import environment_secrets as _environment_secrets
from gen.errors import UserError

if TYPE_CHECKING:
    from gen.publish.plan import ExportPlan

def environment_secrets() -> dict[str, str]:
    """{name: value} of the credentials present in this process (`gen.data.secrets.environment_secrets`: the same
    list the manifest and the engine redact), and the Hub token huggingface_hub would send."""
    found = _environment_secrets()
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # a broken login file must not stop a dry run; it would fail at upload with its own error
        token = None
    if token and len(token) >= MIN_SECRET_LEN and token not in found.values():
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


def check_rows_for_secrets(plan: ExportPlan, secrets: dict[str, str], action: str = "publish") -> None:
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
                                        f"({column}) contains the value of {name}; refusing to {action} it")


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
