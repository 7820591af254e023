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

The method itself (requests, rows, the chunked loop) is `gen.methods.label`; this module is its flags.
"""

from __future__ import annotations

import argparse
import sys

from gen.commands.common import (
    add_engine_arguments,
    add_sampling_arguments,
    add_teacher_arguments,
    print_summary,
    run_config,
    sampling_from_args,
)
from gen.commands.structured_flags import add_json_schema_argument
from gen.methods.label import DEFAULT_CHUNK

HELP = "answer the instructions of a JSONL/JSON/Arrow/Parquet file (or another run) with the teacher"

EXIT_BUDGET = 3
EXIT_FAILURES = 4


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
    add_json_schema_argument(parser)  # structured generation (gen.commands.structured_flags)


def system_message_options(args: argparse.Namespace):
    """`--system-messages`, `--cot`, `--system` and the run's seed as `gen.methods.orca.SystemMessageOptions`."""
    from gen.commands.method_common import run_seed
    from gen.methods.orca import SystemMessageOptions

    return SystemMessageOptions(system_messages=args.system_messages, cot=args.cot, system=args.system,
                                seed=run_seed(args))


def run(args: argparse.Namespace) -> int:
    from gen.commands.common import open_engine
    from gen.commands.method_common import reject_redis_flag
    from gen.commands.structured_flags import json_schema_from_args
    from gen.data import lock
    from gen.data.inputs import read_inputs
    from gen.errors import UserError
    from gen.methods import orca
    from gen.methods.label import METHOD, label_to_shards

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be at least 1")
    if args.chunk_size < 1:
        raise UserError(f"--chunk-size {args.chunk_size}: must be at least 1")
    reject_redis_flag(args, METHOD)
    inputs = read_inputs(args.input, field=args.field, limit=args.limit)
    params = sampling_from_args(args)
    schema = json_schema_from_args(args)
    check = None
    if schema is not None:
        from gen.methods.structured import json_schema_check, schema_params

        params = params.replace(json_schema=schema_params(schema))
        check = json_schema_check(schema)
    orca_options = system_message_options(args)
    system_for = orca.system_chooser(orca_options)
    lock.acquire(args.out, METHOD)  # one writer per run directory, taken before any request is sent
    try:
        engine = open_engine(args, args.out)
    except BaseException:
        lock.release(args.out)
        raise
    try:
        outcome = label_to_shards(engine, inputs, args.out, params, system=args.system, system_for=system_for,
                                  extra_params=orca.label_params(orca_options), chunk_size=args.chunk_size,
                                  config=run_config(args), check=check)
        print_summary(engine)
    finally:
        engine.close()
        lock.release(args.out)
    if outcome.first_error:
        print(f"gen label: {outcome.failed} requests failed (not written; rerun to retry); first error: "
              f"{outcome.first_error}", file=sys.stderr)
    invalid = outcome.funnel.get("rejected:schema_invalid", 0)
    if invalid:
        print(f"gen label: {invalid} answers did not follow --json-schema after one retry (in OUT/rejected, "
              f"reason schema_invalid)", file=sys.stderr)
    if outcome.exhausted:
        return EXIT_BUDGET
    return EXIT_FAILURES if outcome.failed else 0
