"""Reading what a method starts from: seed tasks, instructions, questions, documents, and small word lists.

Accepted inputs (the first matching field wins, per row):

| file | one item is |
| --- | --- |
| `*.jsonl` / `*.json` (list) | Self-Instruct seed task (`instruction` + `instances[0].input/output`), or a row with `instruction` (+ `input`, `output`/`response`), `prompt`, `question`, `text`, or `messages` (first user turn, last assistant turn) |
| `*.txt` | one item per non-empty line |
| a run directory / `*.arrow` shard | rows of the `train` split (first user turn, last assistant turn): another run's output |
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gen.data.inputs import iter_jsonl
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


def _item_from_record(record: Any, where: str) -> SeedItem:
    if isinstance(record, str):
        text = record.strip()
        return SeedItem(id=content_id("seed", text), instruction=text, task_instruction=text)
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object or string, got {type(record).__name__}")
    source_id = record.get("id")
    if isinstance(record.get("messages"), list) and record["messages"]:
        user = next((m.get("content", "") for m in record["messages"] if m.get("role") == "user"), "")
        answer = next((m.get("content", "") for m in reversed(record["messages"]) if m.get("role") == "assistant"), None)
        if not user.strip():
            raise UserError(f"{where}: 'messages' has no user turn")
        return SeedItem(id=content_id("seed", user), instruction=user.strip(), response=answer,
                        task_instruction=user.strip(), source_id=source_id)
    if "instruction" in record:
        task = str(record["instruction"] or "")
        input_text, output = record.get("input"), record.get("output", record.get("response"))
        instances = record.get("instances")
        if isinstance(instances, list) and instances:
            input_text, output = instances[0].get("input"), instances[0].get("output")
        text = join_instruction(task, input_text)
        if not text.strip():
            raise UserError(f"{where}: empty 'instruction'")
        is_clf = record.get("is_classification")
        return SeedItem(id=content_id("seed", text), instruction=text, response=output, task_instruction=task.strip(),
                        is_classification=bool(is_clf) if is_clf is not None else None, source_id=source_id,
                        meta={"name": record["name"]} if "name" in record else {})
    for key in ("prompt", "question", "text", "content"):
        if isinstance(record.get(key), str) and record[key].strip():
            text = record[key].strip()
            return SeedItem(id=content_id("seed", text), instruction=text, task_instruction=text, source_id=source_id,
                            meta={k: v for k, v in record.items() if k != key and isinstance(v, (str, int, float))})
    raise UserError(f"{where}: no 'instruction', 'messages', 'prompt', 'question' or 'text' field")


def _records(path: Path) -> Iterator[tuple[Any, str]]:
    if path.is_dir() or path.suffix == ".arrow":
        from gen.data.shards import iter_rows

        for n, row in enumerate(iter_rows(path, "train", columns=["id", "messages"])):
            yield row, f"{path} row {n}"
        return
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        for n, record in iter_jsonl(path):
            yield record, f"{path}:{n}"
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of items")
        for n, record in enumerate(data):
            yield record, f"{path}[{n}]"
    else:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip() and not line.lstrip().startswith("#"):  # '#' lines are comments
                    yield line, f"{path}:{n}"


def load_items(path: str | Path, *, limit: int | None = None) -> list[SeedItem]:
    """Instructions from a file or run directory, in file order, without exact duplicates; `limit` keeps the first N."""
    path = Path(path)
    items: list[SeedItem] = []
    seen: set[str] = set()
    for record, where in _records(path):
        item = _item_from_record(record, where)
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
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise UserError(f"{path}: empty list")
    return lines


def default_seed_tasks() -> Path:
    """The 175 Self-Instruct seed tasks shipped with the package (Apache-2.0; see data/NOTICE.md)."""
    return shipped_data_path("self_instruct_seed_tasks.jsonl")
