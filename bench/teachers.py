"""HTTP teacher client vs the OpenAI SDK's default client, at the engine's 256 requests in flight.

Both clients talk to the same real OpenAI-compatible server (`tests/latency_server.py`, in its own process, fixed
latency) in rounds: every round sends `--concurrency` requests at once and waits for all of them — the shape of one
generation round. Side by side, in the same run, alternating, `--repeats` times each; medians reported:

- `kdforge`: `gen.teachers.openai_api.OpenAITeacher` on its default lean aiohttp transport (one keep-alive session per
  event loop, up to 512 connections; `transport="sdk"` would measure the SDK path, which bench/engine.py reports);
- `openai-default`: `openai.AsyncOpenAI(max_retries=0)` as most tools build it (the SDK keeps 100 connections alive).

"connections" counts the TCP connections each client opened (distinct client ports towards the server, read from
/proc/net/tcp, TIME_WAIT included): a connection that is not kept alive is opened again next round — on a real API
that is a TLS handshake (one or more round trips) per request, here only a local TCP connect.

    python bench/teachers.py                     # 256 in flight x 8 rounds, 3 repeats (~1 min)
    python bench/teachers.py --concurrency 512 --rounds 16 --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_server(latency: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.latency_server", "--latency", latency, "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"latency server did not start: {line!r}")
    return proc, int(line.split()[1])


def connections_to(port: int) -> int:
    """Distinct client-side ports of TCP connections (any state) to 127.0.0.1:`port`."""
    clients = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if remote == port:
                clients.add(local)
            elif local == port and remote != 0:
                clients.add(remote)
    return len(clients)


def chat_request(i: int):
    from gen.teachers.base import ChatRequest, SamplingParams

    return ChatRequest.make([{"role": "user", "content": f"question {i}"}], SamplingParams(max_tokens=16))


async def run_kdforge(base_url: str, concurrency: int, rounds: int) -> list[float]:
    from gen.teachers.openai_api import OpenAITeacher

    teacher = OpenAITeacher("bench-model", base_url=base_url)
    latencies: list[float] = []

    async def one(i: int) -> None:
        started = time.perf_counter()
        await teacher.acomplete(chat_request(i), timeout=60)
        latencies.append(time.perf_counter() - started)

    for r in range(rounds):
        await asyncio.gather(*(one(r * concurrency + i) for i in range(concurrency)))
    await teacher.aclose()
    return latencies


async def run_openai_default(base_url: str, concurrency: int, rounds: int) -> list[float]:
    import openai

    client = openai.AsyncOpenAI(api_key="no-key-needed", base_url=base_url, max_retries=0)
    latencies: list[float] = []

    async def one(i: int) -> None:
        request = chat_request(i)
        started = time.perf_counter()
        await client.chat.completions.create(model="bench-model", messages=request.message_dicts(),
                                             max_tokens=request.params.max_tokens, timeout=60)
        latencies.append(time.perf_counter() - started)

    for r in range(rounds):
        await asyncio.gather(*(one(r * concurrency + i) for i in range(concurrency)))
    await client.close()
    return latencies


CLIENTS = {"kdforge": run_kdforge, "openai-default": run_openai_default}


def measure(name: str, latency: str, concurrency: int, rounds: int) -> dict[str, float]:
    proc, port = start_server(latency)
    try:
        started = time.perf_counter()
        latencies = asyncio.run(CLIENTS[name](f"http://127.0.0.1:{port}/v1", concurrency, rounds))
        wall = time.perf_counter() - started
        opened = connections_to(port)
    finally:
        proc.kill()
        proc.wait()
    latencies.sort()
    return {"wall": wall, "rps": len(latencies) / wall, "p50": latencies[len(latencies) // 2],
            "p99": latencies[int(len(latencies) * 0.99) - 1], "connections": opened}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", default="fixed:0.05", help="server latency per request (tests/latency_server)")
    args = parser.parse_args()

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CLIENTS}
    for _ in range(args.repeats):
        for name in CLIENTS:  # alternate, so load changes on the shared machine hit both alike
            runs[name].append(measure(name, args.latency, args.concurrency, args.rounds))

    med = {name: {key: statistics.median(r[key] for r in results) for key in results[0]}
           for name, results in runs.items()}
    total = args.concurrency * args.rounds
    print(f"\n{total} requests per run = {args.rounds} rounds x {args.concurrency} in flight, server latency "
          f"{args.latency}, medians of {args.repeats} runs\n")
    print("| client | requests/s | p50 latency (ms) | p99 latency (ms) | TCP connections opened |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, m in med.items():
        print(f"| {name} | {m['rps']:.0f} | {m['p50'] * 1000:.0f} | {m['p99'] * 1000:.0f} | {m['connections']:.0f} |")
    ours, peer = med["kdforge"], med["openai-default"]
    print(f"| ratio kdforge / openai-default | {ours['rps'] / peer['rps']:.2f} | {ours['p50'] / peer['p50']:.2f} | "
          f"{ours['p99'] / peer['p99']:.2f} | {ours['connections'] / peer['connections']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
