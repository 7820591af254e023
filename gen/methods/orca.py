"""Orca-style system messages and chain-of-thought for `gen label` (Mukherjee et al. 2023, "Orca: Progressive
Learning from Complex Explanation Traces of GPT-4"; explanation tuning).

Orca sends each query with one of 16 hand-written system messages that ask for explanations, step-by-step
reasoning, simple language and the like, so that the teacher's answers carry reasoning traces for the student to
learn. kdforge ships its own 16 (`gen/methods/data/orca_system_messages.txt`).

- `--system-messages orca`: every row gets one of them, drawn from (run seed, row content) — the same row gets the
  same message on every rerun, so reruns hit the request cache. `--system-messages FILE` draws from your own list.
- `--system TEXT` (a shared teacher flag): one fixed system message for every row.
- `--cot`: appends a step-by-step instruction to the system message (or is the system message, if there is none);
  recorded in each row's `params` as `cot: true`, next to `system_messages`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ORCA = "orca"
COT_INSTRUCTION = ("Reason through the problem step by step and write out each step before you give the final "
                   "answer.")


def load_system_messages(source: str | Path | None = ORCA) -> list[str]:
    """`orca` (or None) -> the shipped list; anything else is a file with one system message per line."""
    from gen.methods.inputs import load_lines, shipped_data_path

    if source in (None, ORCA):
        return load_lines(shipped_data_path("orca_system_messages.txt"))
    return load_lines(source)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The label command's Orca flags (`--system` comes with the shared teacher flags)."""
    group = parser.add_argument_group("Orca-style system messages")
    group.add_argument("--system-messages", default=None, metavar="orca|FILE",
                       help="give each row a system message drawn from Orca-style messages ('orca': the 16 shipped "
                            "ones; or a file, one message per line); --system TEXT instead fixes one for all rows")
    group.add_argument("--cot", action="store_true",
                       help="ask for step-by-step reasoning (appended to the system message); recorded in params")


def pick_system(key: str, messages: Sequence[str], seed: int) -> str:
    """The system message of one row: a draw seeded by (seed, row key), stable across reruns."""
    from gen.methods.base import derive_seed

    return messages[derive_seed("orca", seed, key) % len(messages)]


def with_cot(system: str | None) -> str:
    return f"{system.rstrip()}\n\n{COT_INSTRUCTION}" if system else COT_INSTRUCTION


def system_chooser(args: argparse.Namespace) -> Callable[[Sequence[Mapping[str, str]]], str | None] | None:
    """A function row messages -> system message, from the flags; None when no flag asks for one (the command then
    behaves exactly as before). `--system` wins over `--system-messages`; a row's own system message wins over both
    (the caller applies that)."""
    source = getattr(args, "system_messages", None)
    cot = bool(getattr(args, "cot", False))
    fixed = getattr(args, "system", None)
    if not source and not cot:
        return None
    pool = load_system_messages(source) if source and not fixed else None
    seed = int(args.seed) if getattr(args, "seed", None) is not None else 0

    from gen.data.records import content_id

    def choose(messages: Sequence[Mapping[str, str]]) -> str | None:
        system = fixed
        if system is None and pool:
            key = content_id([{"role": m["role"], "content": m["content"]} for m in messages])
            system = pick_system(key, pool, seed)
        return with_cot(system) if cot else system

    return choose


def label_params(args: argparse.Namespace) -> dict[str, Any]:
    """What the flags add to each row's `params` (empty when unused, so plain label rows are unchanged)."""
    params: dict[str, Any] = {}
    if getattr(args, "system_messages", None):
        params["system_messages"] = str(args.system_messages)
    if getattr(args, "cot", False):
        params["cot"] = True
    return params
