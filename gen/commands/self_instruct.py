"""`gen self-instruct [--seeds FILE] --num-instructions N`: Self-Instruct's bootstrapped task pool.

Default seeds: the 175 human seed tasks of the paper, shipped with kdforge. Sampling defaults for instruction
generation are the paper's (temperature 0.7, top_p 0.5, presence penalty 2). See `gen.methods.self_instruct`.
"""

from __future__ import annotations

import argparse

from gen.commands.common import add_engine_arguments, add_sampling_arguments, add_teacher_arguments
from gen.commands.method_common import add_out_argument

HELP = "Self-Instruct: grow a task pool from seed tasks (ROUGE-L novelty, classification output-first)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", default=None, metavar="FILE",
                        help="seed tasks (.jsonl in the Self-Instruct format, or instructions in .jsonl/.json/.txt; "
                             "default: the 175 shipped seed tasks)")
    parser.add_argument("--num-instructions", type=int, default=20, metavar="N",
                        help="new instructions to add to the pool (default 20)")
    parser.add_argument("--requests-per-step", type=int, default=4, metavar="N",
                        help="prompts per bootstrap step, each showing 8 pool tasks (default 4)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N",
                        help="give up after N bootstrap steps (default: 4 + 3 x the steps N would need)")
    parser.add_argument("--instance-max-tokens", type=int, default=256, metavar="N",
                        help="token limit of an instance-generation reply (default 256)")
    add_out_argument(parser, default="runs/self-instruct")
    add_teacher_arguments(parser)
    add_engine_arguments(parser)
    add_sampling_arguments(parser, max_new_tokens=256, temperature=0.7, top_p=0.5, presence_penalty=2.0)


def run(args: argparse.Namespace) -> int:
    from gen.commands.common import sampling_from_args
    from gen.commands.method_common import finish, method_run
    from gen.errors import UserError
    from gen.methods.inputs import default_seed_tasks, load_items
    from gen.methods.self_instruct import METHOD, SelfInstruct, SelfInstructConfig

    for flag in ("num_instructions", "requests_per_step", "instance_max_tokens"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    seeds = load_items(args.seeds or default_seed_tasks())
    config = SelfInstructConfig(num_instructions=args.num_instructions, requests_per_step=args.requests_per_step,
                                max_steps=args.max_steps, instances_max_tokens=args.instance_max_tokens)
    if args.system:
        raise UserError("--system: self-instruct writes its rows from meta-prompts (the teacher plays a role), so a system "
                        "message would not be the one the rows were answered under; use it with evol, ultrachat or label")
    sampling = sampling_from_args(args)
    with method_run(args, METHOD, sampling) as run:
        SelfInstruct(run, config, sampling).generate(seeds)
        return finish(run, "self-instruct")
