"""`gen self-chat [--seeds FILE]`: Baize-style self-chat — one teacher plays both sides, turn by turn, from a seed
question, until [END], `--max-turns` or `--max-tokens-per-dialog`. See `gen.methods.self_chat`."""

from __future__ import annotations

import argparse

from gen.commands.common import add_engine_arguments, add_sampling_arguments, add_teacher_arguments
from gen.commands.method_common import add_out_argument

HELP = "Baize self-chat: the teacher plays both the person and the assistant, seeded from questions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", default=None, metavar="FILE",
                        help="seed questions: .txt one per line, or .jsonl/.json with question/instruction/prompt "
                             "(default: 30 shipped questions)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use the first N seeds")
    parser.add_argument("--max-turns", type=int, default=4, metavar="N",
                        help="assistant turns per dialogue at most (default 4)")
    parser.add_argument("--max-tokens-per-dialog", type=int, default=1024, metavar="N",
                        help="completion tokens per dialogue at most (default 1024)")
    add_out_argument(parser, default="runs/self-chat")
    add_teacher_arguments(parser)
    add_engine_arguments(parser)
    add_sampling_arguments(parser, max_new_tokens=160, temperature=0.7)


def run(args: argparse.Namespace) -> int:
    from gen.commands.common import sampling_from_args
    from gen.commands.method_common import finish, method_run
    from gen.errors import UserError
    from gen.methods.inputs import load_items, shipped_data_path
    from gen.methods.self_chat import METHOD, SelfChat, SelfChatConfig

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be at least 1")
    seeds = load_items(args.seeds or shipped_data_path("self_chat_questions.txt"), limit=args.limit)
    config = SelfChatConfig(max_turns=args.max_turns, max_tokens_per_dialog=args.max_tokens_per_dialog)
    if args.system:
        raise UserError("--system: self-chat writes its rows from meta-prompts (the teacher plays a role), so a system "
                        "message would not be the one the rows were answered under; use it with evol, ultrachat or label")
    sampling = sampling_from_args(args)
    with method_run(args, METHOD, sampling) as run:
        SelfChat(run, config).generate(seeds)
        return finish(run, "self-chat")
