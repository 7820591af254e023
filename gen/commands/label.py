"""`gen label --input FILE --teacher SPEC --out DIR`: the teacher answers every instruction of FILE.

The simplest method, and the engine's end-to-end proof: one request per input row (`gen.data.inputs`), answered
through the request engine (cache, retries, budgets), one row per answer (`method="label"`) in `OUT/train`.
`--system TEXT` sends a system message with every request (a row's own `system` wins).

Resuming: a rerun of the same command re-sends only the requests that never completed (the rest come from
`OUT/.cache/requests.sqlite`) and writes no duplicate row (a row's id hashes its prompt, system, teacher and
sampling parameters; rows already in a shard are skipped).

Exit status: 0 every row answered; 3 a budget (--max-tokens/--max-cost) stopped the run (rows so far committed:
rerun with a larger budget to finish from the cache); 4 some requests failed after all retries (not written; a
rerun retries them); 2 a user error.

Extending: a method that labels with its own system messages or prompt templates builds its `ChatRequest`s and
runs them through the engine and turns the results into rows with `rows_from_results(...)` (or calls `label`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from gen.commands.common import (
    add_engine_arguments,
    add_sampling_arguments,
    add_teacher_arguments,
    print_summary,
    run_config,
    sampling_from_args,
)

HELP = "answer the instructions of a JSONL/JSON/Arrow/Parquet file (or another run) with the teacher"

METHOD = "label"
EXIT_BUDGET = 3
EXIT_FAILURES = 4
# Requests handed to the engine at a time: shards are committed per chunk, so a long run has rows on disk early.
DEFAULT_CHUNK = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="FILE",
                        help=".jsonl/.json/.arrow/.parquet with `instruction` or `messages` per row, or a run dir")
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory (created; reruns resume)")
    parser.add_argument("--field", default=None, metavar="NAME",
                        help="take the instruction from this field instead of `instruction`/`messages`")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N rows")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, metavar="N",
                        help=f"requests per engine call and shard commit (default {DEFAULT_CHUNK})")
    add_teacher_arguments(parser)
    add_engine_arguments(parser)
    add_sampling_arguments(parser)
    group = parser.add_argument_group("Orca-style system messages")  # see gen.methods.orca
    group.add_argument("--system-messages", default=None, metavar="orca|FILE",
                       help="give each row a system message drawn from Orca-style messages ('orca': the 16 shipped "
                            "ones; or a file, one message per line); --system TEXT instead fixes one for all rows")
    group.add_argument("--cot", action="store_true",
                       help="ask for step-by-step reasoning (appended to the system message); recorded in params")


def system_message_options(args: argparse.Namespace):
    """`--system-messages`, `--cot`, `--system` and the run's seed as `gen.methods.orca.SystemMessageOptions`."""
    from gen.commands.method_common import run_seed
    from gen.methods.orca import SystemMessageOptions

    return SystemMessageOptions(system_messages=args.system_messages, cot=args.cot, system=args.system,
                                seed=run_seed(args))


def build_requests(inputs, params, system: str | None, system_for=None):
    """One ChatRequest per InputRow; the row's own system message wins over `system`. `system_for(messages)`, if
    given (Orca-style system messages / --cot, see `gen.methods.orca`), chooses a row's system message instead."""
    from gen.teachers.base import ChatRequest

    def row_system(row):
        if row.system:
            return row.system
        return system_for(row.messages) if system_for is not None else system

    return [ChatRequest.make(list(row.messages), params, system=row_system(row)) for row in inputs]


def rows_from_results(inputs, results, teacher_id: str, *, method: str = METHOD, operation: str | None = None,
                      extra_params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows (ROW_SCHEMA dicts) for the successful results; failed ones are left out (a rerun retries them).

    The id hashes what was asked (method, operation, system, prompt messages, teacher, params), not the answer:
    asking the same thing twice never makes two rows.
    """
    from gen.data.records import content_id, make_row

    rows = []
    for row, result in zip(inputs, results):
        if not result.ok:
            continue
        request = result.request
        system = next((content for role, content in request.messages if role == "system"), None)
        params = {**request.params.to_dict(), **(extra_params or {})}
        prompt = [dict(m) for m in row.messages]
        completion = result.completion
        row_id = content_id(method, operation, system, prompt, teacher_id, params)  # what was asked, not sent
        if completion.sent is not None:
            params = {**params, "sent": dict(completion.sent)}
        rows.append(make_row(
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
        ))
    return rows


def run(args: argparse.Namespace) -> int:
    from gen.commands.common import open_engine
    from gen.data.inputs import read_inputs
    from gen.data.shards import ShardWriter, write_manifest
    from gen.errors import UserError
    from gen.methods import orca

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be at least 1")
    if args.chunk_size < 1:
        raise UserError(f"--chunk-size {args.chunk_size}: must be at least 1")
    from gen.commands.method_common import reject_redis_flag

    reject_redis_flag(args, METHOD)
    inputs = read_inputs(args.input, field=args.field, limit=args.limit)
    params = sampling_from_args(args)
    orca_options = system_message_options(args)
    system_for = orca.system_chooser(orca_options)
    funnel = {"inputs": len(inputs), "answered": 0, "failed": 0, "not_sent_budget": 0, "rows_written": 0,
              "rows_already_on_disk": 0}
    first_error: str | None = None
    from gen.data import lock

    lock.acquire(args.out, METHOD)  # one writer per run directory, taken before any request is sent
    try:
        engine = open_engine(args, args.out)
    except BaseException:
        lock.release(args.out)
        raise
    try:
        with ShardWriter(args.out, "train", metadata={"method": METHOD}) as writer:
            for start in range(0, len(inputs), args.chunk_size):
                chunk = inputs[start:start + args.chunk_size]
                requests = build_requests(chunk, params, args.system, system_for=system_for)
                results = engine.run(requests, desc=METHOD)
                for result in results:
                    if result.ok:
                        funnel["answered"] += 1
                    elif result.error == "budget exhausted":
                        funnel["not_sent_budget"] += 1
                    else:
                        funnel["failed"] += 1
                        first_error = first_error or result.error
                writer.write_many(rows_from_results(chunk, results, engine.teacher_id,
                                                    extra_params=orca.label_params(orca_options) or None))
                writer.flush()  # a committed shard per chunk: finished work is on disk
                if engine.exhausted:
                    funnel["not_sent_budget"] += len(inputs) - start - len(chunk)
                    break
        funnel["rows_written"] = writer.rows_written
        funnel["rows_already_on_disk"] = writer.rows_skipped
        funnel["engine"] = {k: v for k, v in engine.stats.items() if k != "seconds"}
        write_manifest(args.out, config=run_config(args), funnel=funnel,
                       extra={"teacher": engine.teacher_id, "params": json.loads(json.dumps(params.to_dict()))})
        print_summary(engine)
    finally:
        engine.close()
        lock.release(args.out)
    if first_error:
        print(f"gen label: {funnel['failed']} requests failed (not written; rerun to retry); first error: "
              f"{first_error}", file=sys.stderr)
    if engine.exhausted:
        return EXIT_BUDGET
    return EXIT_FAILURES if funnel["failed"] else 0


def label(inputs: Sequence, engine, params, system: str | None = None) -> list[dict[str, Any]]:
    """Library use: answer `inputs` (InputRows) with `engine`; returns the rows (not written)."""
    results = engine.run(build_requests(inputs, params, system), desc=METHOD)
    return rows_from_results(inputs, results, engine.teacher_id)
