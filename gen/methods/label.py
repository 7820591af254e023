"""Labeling: the teacher answers given instructions (yours, or another method's rows), optionally under Orca-style
system messages and chain-of-thought (`gen.methods.orca`).

One request per input row (`gen.data.inputs.InputRow`), answered through the request engine (cache, retries,
budgets), one row per answer (`method="label"`) in `OUT/train`. The rows' own system message wins over `system`.
Inputs are sent in chunks of `chunk_size` requests and each chunk's rows are committed as a shard, so a long run has
its finished work on disk early; a rerun re-sends only what never completed (the rest comes from the request cache)
and writes no duplicate row (a row's id hashes its prompt, system, teacher and sampling parameters).

    outcome = label_to_shards(engine, inputs, out_dir, params, system="Be brief.", config=run_config)
    outcome.funnel, outcome.first_error, outcome.exhausted

Extending: a method that labels with its own system messages or prompt templates builds its `ChatRequest`s, runs
them through the engine and turns the results into rows with `rows_from_results(...)` (or calls `label`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gen.data.inputs import InputRow
from gen.engine.budget import BUDGET_EXHAUSTED
from gen.teachers.base import ChatRequest, SamplingParams

if TYPE_CHECKING:  # gen.methods.structured pulls pyarrow in (gen.methods.base); `gen --help` must not
    from gen.methods.structured import AnswerCheck

METHOD = "label"
# Requests handed to the engine at a time: shards are committed per chunk, so a long run has rows on disk early.
DEFAULT_CHUNK = 4096

SystemFor = Callable[[Sequence[Mapping[str, str]]], "str | None"]


def build_requests(inputs: Sequence[InputRow], params: SamplingParams, system: str | None,
                   system_for: SystemFor | None = None) -> list[ChatRequest]:
    """One ChatRequest per InputRow; the row's own system message wins over `system`. `system_for(messages)`, if
    given (Orca-style system messages / chain-of-thought, see `gen.methods.orca`), chooses a row's system message
    instead."""

    def row_system(row: InputRow) -> str | None:
        if row.system:
            return row.system
        return system_for(row.messages) if system_for is not None else system

    return [ChatRequest.make(list(row.messages), params, system=row_system(row)) for row in inputs]


def rows_from_results(inputs: Sequence[InputRow], results: Sequence[Any], teacher_id: str, *, method: str = METHOD,
                      operation: str | None = None, extra_params: Mapping[str, Any] | None = None
                      ) -> list[dict[str, Any]]:
    """Rows (ROW_SCHEMA dicts) for the successful results; failed ones are left out (a rerun retries them).

    The id hashes what was asked (method, operation, system, prompt messages, teacher, params), not the answer:
    asking the same thing twice never makes two rows.
    """
    return [label_row(row, result.request, result.completion, teacher_id, method=method, operation=operation,
                      extra_params=extra_params)
            for row, result in zip(inputs, results) if result.ok]


def label_row(row: InputRow, asked: ChatRequest, completion: Any, teacher_id: str, *, method: str = METHOD,
              operation: str | None = None, extra_params: Mapping[str, Any] | None = None,
              answer_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The row of one answer to `asked` (a ROW_SCHEMA dict). Its id hashes what was asked; `answer_params` are
    recorded in `params` beside it but do not change the id (what came back: a parsed answer, a re-ask's seed)."""
    from gen.data.records import content_id, make_row  # pyarrow: imported when rows are made, not by `gen --help`

    system = next((content for role, content in asked.messages if role == "system"), None)
    params = {**asked.params.to_dict(), **(extra_params or {})}
    prompt = [dict(m) for m in row.messages]
    row_id = content_id(method, operation, system, prompt, teacher_id, params)  # what was asked, not sent
    if completion.sent is not None:  # what the backend really sent, where it differs from what was asked
        params = {**params, "sent": dict(completion.sent)}
    params.update(answer_params or {})
    return make_row(
        id=row_id,
        messages=prompt + [{"role": "assistant", "content": completion.text}],
        method=method,
        operation=operation,
        parent_id=row.parent_id,
        root_id=row.root_id,
        system=system,
        teacher=teacher_id,
        params=params,
        usage=completion.usage,
        finish_reason=completion.finish_reason,
    )


def checked_rows(inputs: Sequence[InputRow], requests: Sequence[ChatRequest], answers: Sequence[Any],
                 teacher_id: str, *, extra_params: Mapping[str, Any] | None = None
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept rows, rejected rows) of answers checked by `gen.methods.structured.ask_checked`: a valid answer's row
    carries the parsed object in `params["parsed"]`; one that failed twice goes to `rejected` with the check's
    reason and its message in `params["check_error"]`; an unanswered request makes no row (a rerun retries it)."""
    from gen.data.rejections import mark_rejected

    kept, rejected = [], []
    for row, asked, answer in zip(inputs, requests, answers):
        if not answer.ok and not answer.invalid:
            continue
        completion = answer.result.completion
        extra: dict[str, Any] = {}
        if answer.retried:
            extra["retry_seed"] = answer.result.request.params.seed
        if answer.ok:
            extra["parsed"] = answer.value
            kept.append(label_row(row, asked, completion, teacher_id, extra_params=extra_params, answer_params=extra))
        else:
            extra["check_error"] = answer.error
            made = label_row(row, asked, completion, teacher_id, extra_params=extra_params, answer_params=extra)
            rejected.append(mark_rejected(made, [answer.reason]))
    return kept, rejected


@dataclass
class LabelOutcome:
    """What a labeling run did: the funnel written to the manifest, the first failure (if any), and whether the
    budget stopped it."""

    funnel: dict[str, Any] = field(default_factory=dict)
    first_error: str | None = None
    exhausted: bool = False

    @property
    def failed(self) -> int:
        return int(self.funnel.get("failed", 0))


def label_to_shards(engine: Any, inputs: Sequence[InputRow], out_dir: str | Path, params: SamplingParams, *,
                    system: str | None = None, system_for: SystemFor | None = None,
                    extra_params: Mapping[str, Any] | None = None, chunk_size: int = DEFAULT_CHUNK,
                    config: Mapping[str, Any] | None = None, check: AnswerCheck | None = None) -> LabelOutcome:
    """Answer `inputs` chunk by chunk, commit each chunk's rows to `OUT/train`, then write the manifest (`config`:
    the run's redacted configuration). Stops after the chunk in which the engine's budget ran out.

    `check` (answers of a fixed shape, e.g. `structured.json_schema_check`): every answer is parsed and validated,
    one that fails is asked once more, and one that fails twice goes to `OUT/rejected` with the check's reason."""
    from gen.data.shards import ShardWriter, write_manifest

    if chunk_size < 1:
        raise ValueError(f"chunk size {chunk_size}: must be at least 1")
    funnel: dict[str, Any] = {"inputs": len(inputs), "answered": 0, "failed": 0, "not_sent_budget": 0,
                              "rows_written": 0, "rows_already_on_disk": 0}
    outcome = LabelOutcome(funnel=funnel)
    rejected_writer = ShardWriter(out_dir, "rejected", metadata={"method": METHOD}) if check is not None else None
    if check is not None:
        funnel.update({"retried": 0, f"rejected:{check.reason}": 0})
    with ShardWriter(out_dir, "train", metadata={"method": METHOD}) as writer:
        for start in range(0, len(inputs), chunk_size):
            chunk = inputs[start:start + chunk_size]
            requests = build_requests(chunk, params, system, system_for=system_for)
            if check is not None:
                from gen.methods.structured import ask_checked

                answers = ask_checked(lambda batch: engine.run(batch, desc=METHOD), requests, check)
                results = [a.result for a in answers]
                kept, rejected = checked_rows(chunk, requests, answers, engine.teacher_id,
                                              extra_params=extra_params or None)
                funnel["retried"] += sum(1 for a in answers if a.retried)
                funnel[f"rejected:{check.reason}"] += len(rejected)
                writer.write_many(kept)
                rejected_writer.write_many(rejected)
                rejected_writer.flush()
            else:
                results = engine.run(requests, desc=METHOD)
            for result in results:
                if result.ok:
                    funnel["answered"] += 1
                elif result.error == BUDGET_EXHAUSTED:
                    funnel["not_sent_budget"] += 1
                else:
                    funnel["failed"] += 1
                    outcome.first_error = outcome.first_error or result.error
            if check is None:
                writer.write_many(rows_from_results(chunk, results, engine.teacher_id,
                                                    extra_params=extra_params or None))
            writer.flush()  # a committed shard per chunk: finished work is on disk
            if engine.exhausted:
                funnel["not_sent_budget"] += len(inputs) - start - len(chunk)
                break
    funnel["rows_written"] = writer.rows_written
    funnel["rows_already_on_disk"] = writer.rows_skipped
    funnel["engine"] = {k: v for k, v in engine.stats.items() if k != "seconds"}
    write_manifest(out_dir, config=dict(config or {}), funnel=funnel,
                   extra={"teacher": engine.teacher_id, "params": json.loads(json.dumps(params.to_dict()))})
    outcome.exhausted = bool(engine.exhausted)
    return outcome


def label(inputs: Sequence[InputRow], engine: Any, params: SamplingParams, system: str | None = None
          ) -> list[dict[str, Any]]:
    """Library use: answer `inputs` with `engine`; returns the rows (not written)."""
    results = engine.run(build_requests(inputs, params, system), desc=METHOD)
    return rows_from_results(inputs, results, engine.teacher_id)
