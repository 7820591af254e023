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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class SystemMessageOptions:
    """How each row's system message is chosen.

    system_messages: `orca` (the shipped list) or a file with one message per line; None: no drawn message.
    cot: append the step-by-step instruction (or send it alone when there is no system message).
    system: one fixed message for every row; wins over `system_messages`.
    seed: the run's seed, which the per-row draws derive from.
    """

    system_messages: str | None = None
    cot: bool = False
    system: str | None = None
    seed: int = 0


def pick_system(key: str, messages: Sequence[str], seed: int) -> str:
    """The system message of one row: a draw seeded by (seed, row key), stable across reruns."""
    from gen.methods.base import derive_seed

    return messages[derive_seed("orca", seed, key) % len(messages)]


def with_cot(system: str | None) -> str:
    return f"{system.rstrip()}\n\n{COT_INSTRUCTION}" if system else COT_INSTRUCTION


def system_chooser(options: SystemMessageOptions) -> Callable[[Sequence[Mapping[str, str]]], str | None] | None:
    """A function row messages -> system message; None when neither drawn messages nor CoT are asked for (the
    command then behaves exactly as before). A fixed `system` wins over `system_messages`; a row's own system
    message wins over both (the caller applies that)."""
    source, cot, fixed, seed = options.system_messages, options.cot, options.system, options.seed
    if not source and not cot:
        return None
    pool = load_system_messages(source) if source and not fixed else None

    from gen.data.records import content_id

    def choose(messages: Sequence[Mapping[str, str]]) -> str | None:
        system = fixed
        if system is None and pool:
            key = content_id([{"role": m["role"], "content": m["content"]} for m in messages])
            system = pick_system(key, pool, seed)
        return with_cot(system) if cot else system

    return choose


def label_params(options: SystemMessageOptions) -> dict[str, Any]:
    """What the options add to each row's `params` (empty when unused, so plain label rows are unchanged)."""
    params: dict[str, Any] = {}
    if options.system_messages:
        params["system_messages"] = str(options.system_messages)
    if options.cot:
        params["cot"] = True
    return params
