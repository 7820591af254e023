"""What a method starts from: seed tasks, instructions, questions, documents, and small word lists.

Thin adapters over the one input reader (`gen.data.inputs.iter_records`): every command accepts the same files
(`.jsonl`, `.json`, `.txt`, `.arrow`, `.parquet`, a run directory). Per row, the first matching field wins:

| row | one item is |
| --- | --- |
| Self-Instruct seed task | `instruction` + `instances[0].input/output` |
| `messages` (a run's row) | first user turn, last assistant turn |
| `instruction` (+ `input`, `output`/`response`) | the instruction (+ its input after a blank line) |
| `prompt`, `question`, `text` or `content` | that text |
| a line of a `.txt` file, a string in a JSON list | that text |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gen.data.inputs import Record, field_names, iter_records, iter_text_lines, parse_messages
from gen.data.records import content_id
from gen.errors import UserError

DATA_PACKAGE = "gen.methods"


@dataclass(frozen=True)
class SeedItem:
    """One starting instruction. `instruction` already includes its input (instruction + blank line + input)."""

    id: str
    instruction: str
    response: str | None = None
    is_classification: bool | None = None
    task_instruction: str = ""  # the instruction without its input (Self-Instruct shows only these in prompts)
    source_id: str | None = None  # the id the item had in its file (seed_task_12, a row id), if any
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def shipped_data_path(name: str) -> Path:
    """A file under `gen/methods/data/` shipped with the package."""
    return Path(str(resources.files(DATA_PACKAGE).joinpath("data", name)))


def join_instruction(instruction: str, input_text: str | None) -> str:
    """Self-Instruct's convention: the task instruction, then a blank line, then its input if it has one."""
    instruction = instruction.strip()
    input_text = (input_text or "").strip()
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def _optional_text(row: Mapping[str, Any], key: str, where: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    return value


def _source_id(value: Any) -> str | None:
    """The row's own id, kept as lineage: a string or a number, nothing else."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value)


def _item_from_messages(row: Mapping[str, Any], where: str) -> SeedItem:
    turns = parse_messages(where, row["messages"])
    user = next((m["content"] for m in turns if m["role"] == "user"), "")
    answer = next((m["content"] for m in reversed(turns) if m["role"] == "assistant"), None)
    if not user.strip():
        raise UserError(f"{where}: 'messages' has no user turn")
    # the id hashes the turn as written (as before), so reruns over the same file keep their ids
    return SeedItem(id=content_id("seed", user), instruction=user.strip(), response=answer,
                    task_instruction=user.strip(), source_id=_source_id(row.get("id")))


def _item_from_task(row: Mapping[str, Any], where: str) -> SeedItem:
    task = row["instruction"]
    if not isinstance(task, str) or not task.strip():
        raise UserError(f"{where}: 'instruction' must be a non-empty string")
    input_text = _optional_text(row, "input", where)
    output = _optional_text(row, "output" if row.get("output") is not None else "response", where)
    instances = row.get("instances")
    if isinstance(instances, list) and instances:
        if not isinstance(instances[0], Mapping):
            raise UserError(f"{where}: 'instances[0]' must be an object with 'input' and 'output'")
        input_text = _optional_text(instances[0], "input", f"{where} instances[0]")
        output = _optional_text(instances[0], "output", f"{where} instances[0]")
    is_clf = row.get("is_classification")
    if is_clf is not None and not isinstance(is_clf, bool):
        raise UserError(f"{where}: 'is_classification' must be true or false")
    text = join_instruction(task, input_text)
    return SeedItem(id=content_id("seed", text), instruction=text, response=output, task_instruction=task.strip(),
                    is_classification=is_clf, source_id=_source_id(row.get("id")),
                    meta={"name": row["name"]} if isinstance(row.get("name"), str) else {})


def _item_from_record(record: Record) -> SeedItem:
    row, where = record.value, record.location
    if isinstance(row, str):  # a JSON list of strings
        text = row.strip()
        if not text:
            raise UserError(f"{where}: empty string")
        return SeedItem(id=content_id("seed", text), instruction=text, task_instruction=text)
    if not isinstance(row, Mapping):
        raise UserError(f"{where}: expected a JSON object or string, got {type(row).__name__}")
    if isinstance(row.get("messages"), list) and row["messages"]:
        return _item_from_messages(row, where)
    if "instruction" in row:
        return _item_from_task(row, where)
    for key in ("prompt", "question", "text", "content"):
        if isinstance(row.get(key), str) and row[key].strip():
            text = row[key].strip()
            return SeedItem(id=content_id("seed", text), instruction=text, task_instruction=text,
                            source_id=_source_id(row.get("id")),
                            meta={k: v for k, v in row.items() if k != key and isinstance(v, (str, int, float))})
    raise UserError(f"{where}: no 'instruction', 'messages', 'prompt', 'question' or 'text' field "
                    f"(fields: {field_names(row)})")


def load_items(path: str | Path, *, limit: int | None = None) -> list[SeedItem]:
    """Instructions from a file or run directory, in file order, without exact duplicates; `limit` keeps the first N."""
    path = Path(path)
    items: list[SeedItem] = []
    seen: set[str] = set()
    for record in iter_records(path):
        item = _item_from_record(record)
        if item.id in seen:
            continue
        seen.add(item.id)
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise UserError(f"{path}: no items")
    return items


def load_lines(path: str | Path) -> list[str]:
    """A word list: one entry per non-empty line; lines starting with '#' are comments."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    lines = [line.strip() for _, line in iter_text_lines(path)]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise UserError(f"{path}: empty list")
    return lines


def default_seed_tasks() -> Path:
    """The 175 Self-Instruct seed tasks shipped with the package (Apache-2.0; see data/NOTICE.md)."""
    return shipped_data_path("self_instruct_seed_tasks.jsonl")


def load_documents(path: str | Path | None = None) -> list[dict[str, str]]:
    """Documents (UltraChat's materials sector): rows with `text` (and optional `id`) in any input format, or a
    text file of paragraphs separated by blank lines. None: the few shipped sample documents."""
    path = Path(path) if path else shipped_data_path("ultrachat_documents.jsonl")
    docs: list[dict[str, str]] = []
    for record in iter_records(path, text="paragraphs"):
        row = record.value
        text = row.get("text") if isinstance(row, Mapping) else None
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{record.location}: no 'text' field")
        doc_id = _source_id(row.get("id")) or content_id("doc", text.strip())
        docs.append({"id": doc_id, "text": text.strip()})
    if not docs:
        raise UserError(f"{path}: no documents in it")
    return docs
