"""Shared pieces of the method tests: ONE real llama.cpp server for the session (tests.servers), the `gen` CLI run
in-process with its stdout captured, and each method's small end-to-end run done once per session so that the
structure tests and the datasets/SFTTrainer loading test read the same real shards."""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import llamacpp_server, tiny_llama_dir  # noqa: F401  (session fixtures)


@dataclass
class GenRun:
    out: Path
    rc: int
    stdout: str

    def engine(self) -> dict[str, int]:
        """The CLI summary's `engine: requests=.. sent=.. cache_hits=..` line as numbers."""
        line = next(line for line in self.stdout.splitlines() if line.startswith("engine: "))
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def teacher_argv(server) -> list[str]:
    """The real llama.cpp server through the OpenAI-compatible backend (the path the embedded teacher also takes)."""
    return ["--teacher", f"openai:{server.model}", "--base-url", server.openai_base_url, "--no-progress"]


def run_gen(argv: list[str], out: Path) -> GenRun:
    from gen.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = main(argv + ["--out", str(out)])
    return GenRun(out=out, rc=rc, stdout=buffer.getvalue())


# Small, fast settings: Gemma-270M on 2 shared CPU cores does ~100 tok/s over concurrent requests.
EVOL_ARGV = ["evol", "--rounds", "2", "--limit", "3", "--max-new-tokens", "24", "--rewrite-max-tokens", "40"]
SELF_INSTRUCT_ARGV = ["self-instruct", "--num-instructions", "2", "--requests-per-step", "2", "--max-steps", "3",
                      "--max-new-tokens", "96", "--instance-max-tokens", "48"]
ULTRACHAT_ARGV = ["ultrachat", "--num-dialogues", "3", "--min-turns", "3", "--max-turns", "4",
                  "--subtopics-per-topic", "2", "--questions-per-subtopic", "2", "--max-new-tokens", "16",
                  "--user-max-tokens", "16"]
SELF_CHAT_ARGV = ["self-chat", "--limit", "3", "--max-turns", "3", "--max-tokens-per-dialog", "64",
                  "--max-new-tokens", "24"]


@pytest.fixture(scope="session")
def methods_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("methods")


@pytest.fixture(scope="session")
def evol_run(llamacpp_server, methods_dir) -> GenRun:  # noqa: F811
    return run_gen(EVOL_ARGV + teacher_argv(llamacpp_server), methods_dir / "evol")


@pytest.fixture(scope="session")
def self_instruct_run(llamacpp_server, methods_dir) -> GenRun:  # noqa: F811
    return run_gen(SELF_INSTRUCT_ARGV + teacher_argv(llamacpp_server), methods_dir / "self-instruct")


@pytest.fixture(scope="session")
def ultrachat_run(llamacpp_server, methods_dir) -> GenRun:  # noqa: F811
    return run_gen(ULTRACHAT_ARGV + teacher_argv(llamacpp_server), methods_dir / "ultrachat")


@pytest.fixture(scope="session")
def self_chat_run(llamacpp_server, methods_dir) -> GenRun:  # noqa: F811
    return run_gen(SELF_CHAT_ARGV + teacher_argv(llamacpp_server), methods_dir / "self-chat")
