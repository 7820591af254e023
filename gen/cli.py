"""`gen`: one command line for generation, filtering, publishing, logit capture and training.

Each subcommand lives in `gen/commands/<name>.py` with `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int`. Those modules import their heavy dependencies inside `run`, so `gen --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gen import __version__
from gen.errors import UserError

# name on the command line -> module under gen/commands/
COMMANDS = {
    "self-instruct": "self_instruct",
    "evol": "evol",
    "ultrachat": "ultrachat",
    "self-chat": "self_chat",
    "label": "label",
    "logits": "logits",
    "dedup": "dedup",
    "decontaminate": "decontaminate",
    "filter": "filter",
    "publish": "publish",
    "card": "card",
    "train": "train",
    "stats": "stats",
}


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line, like every other error of `gen` (argparse would print the whole usage first);
    subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gen", description="kdforge: teacher -> data -> student.")
    parser.add_argument("--version", action="version", version=f"kdforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"gen.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"gen.commands.{module_name}":
                continue  # a subcommand not built yet in this checkout
            raise
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        from gen.commands.common import flag_error
        from gen.engine.spec import InvalidSetting

        if isinstance(exc, InvalidSetting):  # the library names a setting; the user set it with a flag
            exc = flag_error(exc)
        print(f"gen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gen {args.command}: interrupted; finished work is committed, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
