"""Benchmark: how close the request engine comes to what the server's latencies allow, and what it costs in CPU.

Against a local OpenAI-compatible server (`tests/latency_server.py`, its own process, backlog 4096, TCP_NODELAY)
that answers after
  - a fixed latency (default 0.2 s), and
  - a heavy-tailed lognormal latency (default median 0.4 s, sigma 0.9: mean 0.6 s, p99 3.3 s),
the same N chat requests go through, at concurrency C in (16, 64, 256):
  - kdforge `Engine` with the shipped `openai:` teacher on its default lean transport (aiohttp; SQLite cache on,
    fresh per run; concurrency fixed at C),
  - the same Engine with the teacher's `transport="sdk"` (the official openai SDK over httpx),
  - a plain asyncio client: `AsyncOpenAI` + `asyncio.Semaphore(C)` + `gather` (the floor any client must pay),
  - distilabel 1.5.3: `TextGeneration(llm=OpenAILLM(base_url=...), input_batch_size=C)` in its own venv
    (`bench/.venv-distilabel`, created on first use). Its step is driven batch by batch exactly as its pipeline
    does (`process` per `input_batch_size` batch), without the multiprocessing pipeline around it, so its start-up
    is not counted against it.
Each client runs in its own process; "CPU ms/req" = that process's CPU time (user + system, all threads) during
the run / N. The server draws each request's latency from a hash of its messages, so every client sees the same
latencies, and
  - per-slot bound = N / makespan of an ideal greedy schedule of those latencies over C slots (no client with C
    slots can beat it);
  - batch bound = N / sum over consecutive batches of C of the slowest latency (what a client that waits for the
    whole batch, like distilabel, can at best reach).

    .venv/bin/python bench/engine.py                 # default: 400 requests (a few minutes on 2 shared cores)
    .venv/bin/python bench/engine.py --full          # 1000 requests, as in the issue
    .venv/bin/python bench/engine.py --clients engine,asyncio --concurrency 64

The worker modes (`--worker ...`) are what the script runs in each client process; the distilabel worker imports
nothing from this repository.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DISTILABEL_VENV = REPO / "bench" / ".venv-distilabel"
MODEL = "bench-model"
MAX_TOKENS = 64


def prompts(n: int) -> list[str]:
    return [f"Write two sentences about topic number {i}." for i in range(n)]


def cpu_seconds() -> float:
    """User + system CPU of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------------------------------- workers


def worker_engine(url: str, n: int, concurrency: int, transport: str | None = None) -> dict:
    sys.path.insert(0, str(REPO))
    from gen.engine.engine import Engine
    from gen.teachers import load_teacher
    from gen.teachers.base import ChatRequest, SamplingParams

    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    requests = [ChatRequest.make([{"role": "user", "content": p}], params) for p in prompts(n)]
    with tempfile.TemporaryDirectory() as tmp:
        teacher = load_teacher(f"openai:{MODEL}", base_url=url, transport=transport)
        engine = Engine(teacher, cache_path=Path(tmp) / "requests.sqlite", concurrency=concurrency,
                        max_concurrency=concurrency, progress=False)
        with engine:
            cpu, wall = cpu_seconds(), time.perf_counter()
            results = engine.run(requests)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {"ok": sum(r.ok for r in results), "seconds": wall, "cpu": cpu}


def worker_engine_sdk(url: str, n: int, concurrency: int) -> dict:
    """The same Engine and teacher on the official SDK transport."""
    return worker_engine(url, n, concurrency, transport="sdk")


def worker_asyncio(url: str, n: int, concurrency: int) -> dict:
    import asyncio

    import httpx
    import openai

    async def main() -> dict:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0,
                                    http_client=openai.DefaultAsyncHttpxClient(limits=limits))
        slots = asyncio.Semaphore(concurrency)

        async def one(prompt: str) -> bool:
            async with slots:
                response = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS,
                    temperature=0.0)
                return bool(response.choices)

        cpu, wall = cpu_seconds(), time.perf_counter()
        done = await asyncio.gather(*(one(p) for p in prompts(n)))
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        await client.close()
        return {"ok": sum(done), "seconds": wall, "cpu": cpu}

    return asyncio.run(main())


def worker_distilabel(url: str, n: int, concurrency: int) -> dict:
    from distilabel.models import OpenAILLM
    from distilabel.steps.tasks import TextGeneration

    llm = OpenAILLM(model=MODEL, base_url=url, api_key="none", max_retries=0,
                    generation_kwargs={"max_new_tokens": MAX_TOKENS, "temperature": 0.0})
    task = TextGeneration(llm=llm, input_batch_size=concurrency)
    task.load()
    inputs = [{"instruction": p} for p in prompts(n)]
    ok = 0
    cpu, wall = cpu_seconds(), time.perf_counter()
    for start in range(0, n, concurrency):  # what the pipeline does: one `process` call per input batch
        for batch in task.process(inputs[start:start + concurrency]):
            ok += sum(1 for row in batch if row.get("generation"))
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    task.unload()
    return {"ok": ok, "seconds": wall, "cpu": cpu}


WORKERS = {"engine": worker_engine, "engine-sdk": worker_engine_sdk, "asyncio": worker_asyncio,
           "distilabel": worker_distilabel}


# ------------------------------------------------------------------------------------------------------- bounds


def per_slot_bound(latencies: list[float], slots: int) -> float:
    """Requests/s of an ideal greedy schedule: each request starts on the first free of `slots` slots."""
    free = [0.0] * slots
    makespan = 0.0
    for latency in latencies:
        start = heapq.heappop(free)
        heapq.heappush(free, start + latency)
        makespan = max(makespan, start + latency)
    return len(latencies) / makespan


def batch_bound(latencies: list[float], size: int) -> float:
    """Requests/s of a client that sends batches of `size` and waits for each whole batch."""
    total = sum(max(latencies[i:i + size]) for i in range(0, len(latencies), size))
    return len(latencies) / total


# ------------------------------------------------------------------------------------------------------- driver


def start_server(latency: str, seed: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "tests.latency_server", "--latency", latency, "--seed",
                                str(seed)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"latency server did not start: {line!r}")
    return process, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def server_stats(url: str, reset: bool = False) -> dict:
    import urllib.request

    base = url.rsplit("/v1", 1)[0]
    if reset:
        request = urllib.request.Request(base + "/_reset", data=b"{}", method="POST")
        return json.loads(urllib.request.urlopen(request, timeout=10).read())
    return json.loads(urllib.request.urlopen(base + "/_stats", timeout=30).read())


def ensure_distilabel_venv() -> Path | None:
    python = DISTILABEL_VENV / "bin" / "python"
    if python.exists():
        return python
    print(f"creating {DISTILABEL_VENV} (distilabel 1.5.3) ...", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(DISTILABEL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "distilabel[openai]==1.5.3", "requests"],
                       check=True)
    except subprocess.CalledProcessError as exc:
        print(f"could not create the distilabel venv ({exc}); skipping distilabel", file=sys.stderr)
        return None
    return python


def run_client(client: str, url: str, n: int, concurrency: int, python: str) -> dict:
    command = [python, str(Path(__file__).resolve()), "--worker", client, "--url", url, "--requests", str(n),
               "--concurrency", str(concurrency)]
    env = {**os.environ, "PYTHONPATH": str(REPO)} if client != "distilabel" else {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(command, cwd=REPO if client != "distilabel" else tempfile.gettempdir(), env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{client} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--full", action="store_true", help="1000 requests (the issue's setting)")
    parser.add_argument("--concurrency", default="16,64,256")
    parser.add_argument("--latency", action="append", default=None,
                        help="latency spec(s) for the server (default: fixed:0.2 and lognormal:0.4:0.9)")
    parser.add_argument("--clients", default="engine,engine-sdk,asyncio,distilabel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell; the table shows medians")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.url, args.requests, int(args.concurrency))))
        return 0

    n = 1000 if args.full else args.requests
    latencies = args.latency or ["fixed:0.2", "lognormal:0.4:0.9"]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    clients = args.clients.split(",")
    pythons = {"engine": sys.executable, "engine-sdk": sys.executable, "asyncio": sys.executable}
    if "distilabel" in clients:
        python = ensure_distilabel_venv()
        if python is None:
            clients.remove("distilabel")
        else:
            pythons["distilabel"] = str(python)

    sys.path.insert(0, str(REPO))
    from tests.latency_server import latency_for

    load_before = os.getloadavg()
    rows = []
    for spec in latencies:
        server, url = start_server(spec, args.seed)
        try:
            drawn = [latency_for(spec, args.seed, [{"role": "user", "content": p}]) for p in prompts(n)]
            for concurrency in concurrencies:
                row = {"latency": spec, "C": concurrency, "bound": per_slot_bound(drawn, concurrency),
                       "batch_bound": batch_bound(drawn, concurrency)}
                for client in clients:
                    runs = []
                    for _ in range(args.repeats):
                        server_stats(url, reset=True)
                        result = run_client(client, url, n, concurrency, pythons[client])
                        stats = server_stats(url)
                        if result["ok"] != n:
                            raise RuntimeError(f"{client}: only {result['ok']} of {n} requests succeeded")
                        if abs(sum(stats["latencies"]) - sum(drawn)) > 1e-6 * n:  # waited what the bound assumes
                            raise RuntimeError(f"{client}: server latencies differ from the precomputed ones")
                        runs.append({"rps": n / result["seconds"], "cpu_ms": 1000 * result["cpu"] / n,
                                     "max_in_flight": stats["max_in_flight"]})
                    row[client] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                    print(f"{spec} C={concurrency} {client}: {row[client]['rps']:.1f} req/s, "
                          f"{row[client]['cpu_ms']:.2f} ms CPU/req (bound {row['bound']:.1f})", file=sys.stderr)
                rows.append(row)
        finally:
            server.kill()
            server.wait()
    print(render(rows, clients, n, args.repeats))
    # The clients share the machine's cores with the server and whatever else runs: say how busy it was.
    print(f"\n{os.cpu_count()} cores; load average (1/5/15 min) before {'/'.join(f'{x:.1f}' for x in load_before)},"
          f" after {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


def render(rows: list[dict], clients: list[str], n: int, repeats: int = 1) -> str:
    names = {"engine": "kdforge Engine (aiohttp)", "engine-sdk": "Engine + SDK transport", "asyncio": "plain AsyncOpenAI",
             "distilabel": "distilabel 1.5.3"}
    header = ["latency", "C", "per-slot bound", "batch bound"]
    for client in clients:
        header += [f"{names[client]} req/s (% bound)", f"{names[client]} CPU ms/req"]
    ratios = [c for c in ("engine", "engine-sdk") if c in clients and "distilabel" in clients]
    header += [f"{names[c]} / distilabel" for c in ratios]
    lines = [f"{n} requests, max_tokens {MAX_TOKENS}, {repeats} run(s) per cell (medians)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["latency"], str(row["C"]), f"{row['bound']:.1f}", f"{row['batch_bound']:.1f}"]
        for client in clients:
            r = row[client]
            cells += [f"{r['rps']:.1f} ({100 * r['rps'] / row['bound']:.0f}%)", f"{r['cpu_ms']:.2f}"]
        cells += [f"{row[c]['rps'] / row['distilabel']['rps']:.1f}x" for c in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
