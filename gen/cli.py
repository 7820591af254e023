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

# The commands every kdforge install has, in the order `gen --help` lists them. Any other module of gen/commands/ with
# HELP, add_arguments and run is a command too (named after its module, `_` -> `-`), listed after these: a new method
# is its module in gen/methods/ and its command module, nothing else.
CORE_COMMANDS = ("self-instruct", "evol", "ultrachat", "self-chat", "label", "logits", "dedup", "decontaminate",
                 "filter", "publish", "card", "train", "stats")


def command_module(command: str) -> str:
    return command.replace("-", "_")


def discover_commands() -> dict[str, str]:
    """Command name -> module name under gen/commands/: the core commands first (a missing one is a BrokenInstall),
    then every other module there that defines HELP, add_arguments and run, by name."""
    import pkgutil

    import gen.commands

    found = {info.name for info in pkgutil.iter_modules(gen.commands.__path__)}
    commands = {}
    for command in CORE_COMMANDS:
        load_command(command_module(command))  # raises BrokenInstall when its module is missing
        commands[command] = command_module(command)
    for name in sorted(found - set(commands.values())):
        module = load_command(name)
        if all(hasattr(module, attribute) for attribute in ("HELP", "add_arguments", "run")):
            commands[name.replace("_", "-")] = name
    return commands


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line, like every other error of `gen` (argparse would print the whole usage first);
    subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class BrokenInstall(ImportError):
    """A registered subcommand's module is missing: the install is broken, and saying so beats hiding the command."""


def load_command(module_name: str):
    """`gen.commands.<module_name>`; a missing module is a BrokenInstall naming it (never skipped silently)."""
    try:
        return importlib.import_module(f"gen.commands.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"gen.commands.{module_name}":
            raise  # the module exists but one of its imports is missing: that traceback says which
        raise BrokenInstall(f"the module gen/commands/{module_name}.py is missing: a broken kdforge install "
                            "(reinstall it)", name=exc.name) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gen", description="kdforge: teacher -> data -> student.")
    parser.add_argument("--version", action="version", version=f"kdforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in discover_commands().items():
        module = load_command(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def os_error_line(exc: OSError) -> str | None:
    """`PATH: reason` for an OSError about a file (what the user can fix), None for any other."""
    if exc.filename is None:
        return None
    path = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    return f"{path}: {exc.strerror or exc}"


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except BrokenInstall as exc:
        print(f"gen: error: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        from gen.commands.common import flag_error
        from gen.errors import InvalidSetting

        if isinstance(exc, InvalidSetting):  # the library names a setting; the user set it with a flag
            exc = flag_error(exc)
        print(f"gen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The safety net under the commands' own checks: an unwritable or missing path named by the OS becomes one
        # line. OSErrors without a file (a dropped connection) and every other exception keep their traceback.
        line = os_error_line(exc)
        if line is None:
            raise
        print(f"gen {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gen {args.command}: interrupted; finished work is committed, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
