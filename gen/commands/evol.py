"""`gen evol --rounds N [--input FILE]`: Evol-Instruct — evolve instructions round by round, keep every round.

Default input: the first 8 of the 175 Self-Instruct seed tasks shipped with kdforge (`--limit 0` for all), sized
so that `gen evol --rounds 4` on the embedded llama.cpp teacher finishes on a laptop CPU in a few minutes.
See `gen.methods.evol_instruct` for the method and its eliminator.
"""

from __future__ import annotations

import argparse

from gen.commands.common import add_engine_arguments, add_sampling_arguments, add_teacher_arguments, finite_float
from gen.commands.method_common import add_out_argument

HELP = "Evol-Instruct: evolve instructions in depth and breadth for N rounds (default 4), with an eliminator"
DEFAULT_LIMIT_SHIPPED = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=4, metavar="N", help="evolution rounds (default 4)")
    parser.add_argument("--input", default=None, metavar="FILE",
                        help="instructions: seed-task/instruction .jsonl, .json, .txt, or another run's directory "
                             "(default: the shipped Self-Instruct seed tasks)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help=f"use the first N inputs (default: {DEFAULT_LIMIT_SHIPPED} of the shipped seeds, all of "
                             "--input; 0 = all)")
    parser.add_argument("--ops", default=None, metavar="OP=W,...",
                        help="operations and weights, e.g. add_constraints=1,deepen=1,concretize=1,"
                             "increase_reasoning=1,complicate_input=1,in_breadth=1 (the default: in-depth 5/6, "
                             "in-breadth 1/6); operations left out get weight 0")
    parser.add_argument("--no-judge", action="store_true",
                        help="skip the teacher-judged 'no information gain' check (one request less per evolution)")
    parser.add_argument("--dedup-threshold", type=finite_float, default=0.7, metavar="J",
                        help="MinHash Jaccard threshold for near-duplicate evolutions across all rounds (default 0.7)")
    parser.add_argument("--no-inputs", action="store_true",
                        help="do not keep inputs that carry an answer as round-0 rows")
    parser.add_argument("--rewrite-max-tokens", type=int, default=96, metavar="N",
                        help="token limit of a rewrite (an evolved instruction; default 96)")
    add_out_argument(parser, default="runs/evol")
    add_teacher_arguments(parser)
    add_engine_arguments(parser)
    # Sized so that `gen evol --rounds 4` on the embedded Gemma-270M finishes in a few minutes on a 2-core CPU; raise
    # --max-new-tokens for a strong teacher's full answers.
    add_sampling_arguments(parser, max_new_tokens=128, temperature=0.7)


def run(args: argparse.Namespace) -> int:
    from gen.commands.common import sampling_from_args
    from gen.commands.method_common import finish, method_run
    from gen.errors import UserError
    from gen.methods.evol_instruct import METHOD, EvolConfig, EvolInstruct, parse_weights
    from gen.methods.inputs import default_seed_tasks, load_items

    if args.limit is not None and args.limit < 0:
        raise UserError(f"--limit {args.limit}: must be >= 0")
    if not 0.0 < args.dedup_threshold <= 1.0:
        raise UserError(f"--dedup-threshold {args.dedup_threshold}: must be within (0, 1]")
    limit = args.limit if args.limit is not None else (None if args.input else DEFAULT_LIMIT_SHIPPED)
    items = load_items(args.input or default_seed_tasks(), limit=limit or None)
    try:
        weights = parse_weights(args.ops)
    except UserError as exc:
        raise UserError(f"--ops {args.ops!r}: {exc}") from None
    config = EvolConfig(rounds=args.rounds, weights=weights, judge=not args.no_judge,
                        dedup_threshold=args.dedup_threshold, keep_inputs=not args.no_inputs)
    sampling = sampling_from_args(args)
    with method_run(args, METHOD, sampling) as run:
        storage = None
        if args.redis:
            from gen.scale.redis_index import redis_index_storage

            storage = redis_index_storage(args.redis, run.seed, items, config.dedup_threshold)
        runner = None
        if getattr(args, "ray", None):  # the rounds' phases as units on the cluster behind the run's engine
            from gen.scale.phase_units import RayPhases

            runner = RayPhases(run, unit_size=args.unit_size)
        EvolInstruct(run, config, rewrite_max_tokens=args.rewrite_max_tokens, index_storage=storage,
                     runner=runner).evolve(items)
        return finish(run, "evol")
