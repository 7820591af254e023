"""Fixtures for the request-engine tests: real local servers, JSONL inputs, and a `gen` subprocess runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.latency_server import LatencyServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def start_server():
    """`start_server(latency="fixed:0", faults=None, seed=0)` -> a running LatencyServer, stopped after the test."""
    servers = []

    def start(latency: str = "fixed:0", **kwargs) -> LatencyServer:
        server = LatencyServer(latency, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def write_instructions(path: Path, n: int, prefix: str = "Explain item") -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"instruction": f"{prefix} {i} in one sentence."}) + "\n")
    return path


def gen_env(**extra: str) -> dict[str, str]:
    """The environment of a `gen` subprocess: this repo importable, no API keys unless a test passes one."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def gen_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gen.cli", *args]


def run_gen(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(gen_command(*args), cwd=REPO, env=env or gen_env(), capture_output=True, text=True,
                          timeout=timeout)
