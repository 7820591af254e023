"""`--json-schema FILE`: answers that must follow a JSON schema (structured generation), for every command whose
answers have a fixed shape. The schema is sent as the backend's structured output (`SamplingParams.json_schema`)
and every answer is validated on return (`gen.methods.structured`): one that fails is asked once more, then
rejected with reason `schema_invalid`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gen.errors import UserError


def add_json_schema_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json-schema", default=None, metavar="FILE",
                        help="answers must be JSON following this JSON schema: sent as the backend's structured "
                             "output, validated on return; a failing answer is asked once more, then rejected "
                             "(reason schema_invalid); the parsed object is kept in the row's params.parsed")


def json_schema_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The schema of `--json-schema FILE` (None without the flag); a one-line UserError naming the file when it is
    missing, not JSON, or not a valid schema."""
    path = getattr(args, "json_schema", None)
    if not path:
        return None
    from gen.methods.structured import json_schema_check

    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--json-schema {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--json-schema {path}: cannot read it: {exc}") from None
    except ValueError as exc:
        raise UserError(f"--json-schema {path}: not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise UserError(f"--json-schema {path}: a JSON schema is an object, not {type(schema).__name__}")
    try:
        json_schema_check(schema)
    except ValueError as exc:
        raise UserError(f"--json-schema {path}: {exc}") from None
    return schema
