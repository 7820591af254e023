"""Fixtures for the Ray tests: ONE local Ray cluster for the module (started with `ray start`, as on a real head
node; each `gen ... --ray ADDRESS` joins it), a scripted OpenAI-compatible teacher (a real HTTP server whose
replies the test chooses), redis-server, and `gen` run as a real subprocess whose log lines can be watched."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.latency_server import LatencyServer
from tests.servers import free_port, llamacpp_server, redis_server  # noqa: F401  (session fixtures)

BIN = Path(sys.executable).parent


def start_ray_node(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """`ray start ... --block` in its own process group (its raylet, agents and workers are in it too)."""
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *argv],
                            env=env or ray_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:  # the GCS answers on the port once the head is up
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("ray start --head did not come up") from None
            time.sleep(0.2)


def stop_ray_node(process: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` alone: it stops the raylet, GCS and workers it started (~5 s; the same signal
    sent to the whole group takes ~60 s). Anything of the group still alive after that is killed. Never `ray stop`,
    which would stop every Ray cluster of the user."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_ray_node(process: subprocess.Popen) -> None:
    """SIGKILL everything the node started, as losing the machine would: `ray start`, its raylet and agents (its
    process group) and its worker processes (each in a group of its own, all in the session `ray start` leads)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == process.pid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def wait_for_nodes(address: str, count: int, timeout: float = 120) -> None:
    """Until the cluster at `address` has `count` nodes alive (asked from a separate driver process)."""
    probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True, env=ray_env(),
                              timeout=120)
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster at {address} never had {count} nodes alive: {done.stdout[-300:]}")
        time.sleep(1)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """`ray start --head --block` on this machine with 4 CPUs, in its own process group; yields the address to pass
    as `--ray`."""
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    head = start_ray_node(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=4",
                           "--include-dashboard=false", f"--temp-dir={temp}"])
    wait_for_port(port, head)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_ray_node(head)


@pytest.fixture()
def two_node_cluster():
    """Two Ray nodes on this machine, one CPU each (so one 1-CPU actor fits on each): a head, and a second node that
    joins it, each `ray start --block` in its own session. Yields (address, the second node's process); a test may
    `kill_ray_node` it, which is what losing a machine looks like to Ray. The head's GCS checks node
    health every 0.5 s (Ray's default is 3 s) so that a lost node is declared dead within seconds."""
    import shutil
    import tempfile

    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths under it must stay under 108 bytes
    env = {**ray_env(), "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3",
           "RAY_health_check_timeout_ms": "500", "RAY_health_check_initial_delay_ms": "0"}
    head = start_ray_node(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                           "--include-dashboard=false", f"--temp-dir={temp}"], env=env)
    nodes = [head]
    try:
        wait_for_port(port, head)
        address = f"127.0.0.1:{port}"
        nodes.append(start_ray_node([f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1"]))
        wait_for_nodes(address, 2)
        yield address, nodes[1]
    finally:
        for node in reversed(nodes):
            stop_ray_node(node)
        shutil.rmtree(temp, ignore_errors=True)


# ---------------------------------------------------------------------------------------- a scripted evol teacher

REWRITE_PREFIXES = ("You rewrite instructions", "You invent instructions")
JUDGE_PREFIX = "Compare the two requests"
# Inputs whose rewrites the script makes near-identical (one word differs in 26): a near-duplicate pair.
TWIN_MARKERS = ("alpha-twin", "omega-twin")
# Twice the same 44 words but for the last one: exact Jaccard of word 5-shingles 35/45 = 0.78 >= 0.7.
TWIN_EVOLUTION = ("Describe step by step how a small family bakery in a busy town could plan its weekly bread "
                  "production together with the staff shifts, the flour and butter orders, the oven schedule and the "
                  "delivery routes to cafes while keeping unsold bread and other waste below five percent of {}")


def scripted_reply(body: dict) -> str:
    """Rewrite -> an instruction made from the input's topic word (twin inputs -> near-identical instructions);
    judge -> 'Different'; anything else (an answer) -> an answer that names what it answers."""
    user = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    if user.startswith(REWRITE_PREFIXES):
        for n, marker in enumerate(TWIN_MARKERS):
            if marker in user:
                return TWIN_EVOLUTION.format("sales" if n == 0 else "output")
        topics = re.findall(r"topic\d+", user)
        topic = topics[-1] if topics else "bread"
        if "careful comparison" in user:  # round 2 rewrites a round-1 evolution
            return f"Plan a week-long study schedule covering {topic} with daily goals, readings and a final quiz"
        return (f"Write a careful comparison of {topic} and its history, with three concrete examples and one "
                "counterexample")
    if user.startswith(JUDGE_PREFIX):
        return "Different"
    return "Here is a full answer about: " + " ".join(user.split()[:12])


@pytest.fixture(scope="module")
def scripted_teacher():
    """A real OpenAI-compatible server with 0.25 s of latency per request and scripted replies."""
    with LatencyServer("fixed:0.25", reply=scripted_reply) as server:
        yield server


def write_inputs(path: Path, n: int, twins: tuple[int, int] | None = None) -> Path:
    """n instructions (`topicK` each); with `twins=(i, j)` inputs i and j carry the twin markers."""
    lines = []
    for k in range(n):
        marker = ""
        if twins is not None and k in twins:
            marker = f" ({TWIN_MARKERS[twins.index(k)]})"
        lines.append(f'{{"instruction": "Tell me about topic{k} and why it matters{marker}."}}')
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------- gen as a process


@dataclass
class Proc:
    rc: int
    stdout: str
    stderr: str


def ray_env() -> dict[str, str]:
    """The test cluster listens on 127.0.0.1 only, so Ray's token authentication (on by default in Ray 2.60, with a
    token per cluster that `ray start` and the drivers would have to share through a file) is turned off for it."""
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def gen_env() -> dict[str, str]:
    return {**ray_env(), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_gen(argv: list[str], timeout: float = 300, env: dict[str, str] | None = None) -> Proc:
    done = subprocess.run([str(BIN / "gen"), *argv], capture_output=True, text=True, env={**gen_env(), **(env or {})},
                          timeout=timeout)
    return Proc(done.returncode, done.stdout, done.stderr)


def start_gen(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "gen"), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=gen_env(), bufsize=1)


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 120) -> tuple[re.Match, list[str]]:
    """Read the process's stderr until a line matches `pattern`; returns the match and the lines read."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match, seen
    raise AssertionError(f"no line matching {pattern!r}; stderr so far:\n{''.join(seen)}")


def run_gen_killing(argv: list[str], kill: Callable[[int, int], bool]) -> Proc:
    """Run `gen argv`; for each "unit ... started on worker W (pid P)" line call `kill(W, P)` until it returns True
    (it killed something, mid-unit: every request of the tests' teachers takes a while); returns how the run
    ended, its stderr whole."""
    proc = start_gen(argv)
    seen: list[str] = []
    try:
        while True:
            match, lines = wait_for_line(proc, r"started on worker (\d+) \(pid (\d+)\)")
            seen += lines
            if kill(int(match.group(1)), int(match.group(2))):
                break
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Proc(proc.returncode, stdout, "".join(seen) + stderr)


def run_gen_killing_worker_1(argv: list[str]) -> Proc:
    """Run `gen argv` and SIGKILL worker 1's process as soon as it starts a unit."""
    def kill(worker: int, pid: int) -> bool:
        if worker == 1:
            os.kill(pid, signal.SIGKILL)
        return worker == 1

    return run_gen_killing(argv, kill)
