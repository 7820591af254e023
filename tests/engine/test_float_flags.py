"""Issue 18 finding 14: `--max-cost nan` was accepted and turned the budget off (NaN compares false with everything).
Every float flag of every `gen` subcommand refuses nan, inf and -inf with one line naming the flag, through the real
CLI (`python -m gen.cli`); and no float flag can be added without the finite type (the parser is walked)."""

from __future__ import annotations

import argparse

import pytest

from gen.cli import build_parser
from gen.commands.common import finite_float
from tests.engine.conftest import run_gen, write_instructions


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _is_float_flag(action: argparse.Action) -> bool:
    """Takes a float: its type is float or the finite type, or it has a float default (a flag whose `type=` was
    forgotten, or given as a lambda)."""
    return action.type in (float, finite_float) or (isinstance(action.default, float) and action.type is not int)


def finite_flags() -> list[tuple[str, str]]:
    return [(name, action.option_strings[-1]) for name, parser in subcommands().items()
            for action in parser._actions if action.option_strings and action.type is finite_float]


def test_every_float_flag_is_finite():
    plain = [f"gen {name} {action.option_strings[-1]}" for name, parser in subcommands().items()
             for action in parser._actions
             if action.option_strings and _is_float_flag(action) and action.type is not finite_float]
    assert not plain, f"float flags without gen.commands.common.finite_float: {plain}"
    flags = finite_flags()
    # The walk finds the shared engine/sampling/scale flags of every generating command and the others' own.
    for expected in [("label", "--max-cost"), ("evol", "--dedup-threshold"), ("dedup", "--threshold"),
                     ("filter", "--rouge-l"), ("card", "--max-file-mb"), ("self-chat", "--temperature")]:
        assert expected in flags


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "-Infinity"])
def test_finite_float_refuses_non_finite_numbers(value):
    with pytest.raises(argparse.ArgumentTypeError, match="not a finite number"):
        finite_float(value)
    assert finite_float("0.25") == 0.25 and finite_float("-1e3") == -1000.0


@pytest.mark.parametrize("command,flag", finite_flags())
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_float_flag_exits_2_with_one_line(command, flag, value, tmp_path):
    out = tmp_path / "out"
    argv = [command, f"{flag}={value}"]  # `=`: argparse would read a separate "-inf" as an option
    if any("--out" in a.option_strings for a in subcommands()[command]._actions):
        argv += ["--out", str(out)]
    done = run_gen(*argv)
    err = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, err)
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"gen {command}: error: ") and f"argument {flag}: '{value}' is not a finite number" in err
    assert not out.exists()  # refused before anything was opened or written


def test_max_cost_nan_no_longer_runs_without_a_budget(start_server, tmp_path):
    """The finding itself: with a price, `--max-cost nan` used to run every request (exit 0, no budget)."""
    server = start_server("fixed:0")
    inputs = write_instructions(tmp_path / "in.jsonl", 3)
    base = ["label", "--input", str(inputs), "--teacher", "openai:test-model", "--base-url", server.v1_url,
            "--price", "1:1", "--max-new-tokens", "8", "--no-progress"]
    done = run_gen(*base, "--out", str(tmp_path / "nan"), "--max-cost", "nan")
    assert done.returncode == 2 and "argument --max-cost: 'nan' is not a finite number" in done.stderr
    assert server.requests == 0 and not (tmp_path / "nan").exists()
    # A price made of non-finite numbers is refused the same way (it would make every cost NaN).
    done = run_gen(*base, "--out", str(tmp_path / "price"), "--max-cost", "1", "--price", "nan:1")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "--price 'nan:1': prices must be finite numbers" in done.stderr
    # A finite budget still runs.
    done = run_gen(*base, "--out", str(tmp_path / "ok"), "--max-cost", "1")
    assert done.returncode == 0, done.stderr
    assert server.requests == 3
