"""Benchmark: the judge through the request engine, and what the embedded 270M judge's verdicts are worth.

1. Throughput. The same pairwise judge requests (the built-in `pairwise` rubric, both orders of `--pairs` pairs,
   temperature 0, `--max-tokens` per verdict) go to the embedded llama.cpp server (xllamacpp, the bundled
   Gemma-3-270M, `--concurrency` slots) from
     - kdforge's `Engine` with the `openai:` teacher (lean aiohttp transport, SQLite cache on and fresh per run,
       concurrency fixed at C), and
     - a plain client: `AsyncOpenAI` + `asyncio.Semaphore(C)` + `gather` (what any client must pay),
   each in its own process (CPU ms/req = that process's CPU / requests), alternating, `--repeats` times; medians.
   The bar is bench/engine.py's: at the same concurrency the engine must reach the plain client's requests/s (the
   server is the bottleneck here: 2 shared cores decode every verdict). Both send free-text requests (no JSON
   schema), so they send byte-for-byte the same work whatever the backend does with structured output.
2. Position bias. Through the engine and the judge library (`judge_pairwise`, the judge's default params: the
   verdict schema as structured output where the backend sends it), `--pairs` pairs with a known better answer
   (a right and a wrong answer to a simple question; the right one shown first in half of the pairs):
     - without the swap: each order's verdict on its own (what a one-order judge would report): how often it
       picks the right answer, how often it picks whichever answer came first;
     - with the swap: the both-order verdict (a verdict that flips with the order is a tie): accuracy with ties as
       half, and the position-flip rate.

    .venv/bin/python bench/judge.py                    # 20 pairs, C=8, 1 repeat (a few minutes on 2 shared cores)
    .venv/bin/python bench/judge.py --pairs 10 --concurrency 4 --repeats 3

The worker modes (`--worker ...`) are what the script runs in each client process.
"""

from __future__ import annotations

import argparse
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

# (question, right answer, wrong answer): kdforge's own, chosen so a judge needs no expertise to tell them apart.
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Madrid."),
    ("What is 2 + 3?", "2 + 3 = 5.", "2 + 3 = 9."),
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has three legs."),
    ("What colour is a clear daytime sky?", "A clear daytime sky is blue.", "A clear daytime sky is green."),
    ("Which is larger, 10 or 100?", "100 is larger than 10.", "10 is larger than 100."),
    ("What do bees make?", "Bees make honey.", "Bees make cheese."),
    ("What is the boiling point of water at sea level in Celsius?", "Water boils at 100 degrees Celsius.",
     "Water boils at 12 degrees Celsius."),
    ("How many days are in a week?", "A week has seven days.", "A week has four days."),
    ("What is the opposite of hot?", "The opposite of hot is cold.", "The opposite of hot is loud."),
    ("Which planet do we live on?", "We live on Earth.", "We live on the Moon, which is a planet."),
    ("What is 10 times 3?", "10 times 3 is 30.", "10 times 3 is 13."),
    ("What language is mainly spoken in Spain?", "Spanish is mainly spoken in Spain.",
     "Japanese is mainly spoken in Spain."),
    ("How many hours are in a day?", "A day has 24 hours.", "A day has 100 hours."),
    ("What animal says 'moo'?", "A cow says 'moo'.", "A cat says 'moo'."),
    ("What is frozen water called?", "Frozen water is ice.", "Frozen water is steam."),
    ("What is the first letter of the English alphabet?", "The first letter is A.", "The first letter is Q."),
    ("How many sides does a triangle have?", "A triangle has three sides.", "A triangle has five sides."),
    ("What do plants need from the sun?", "Plants need sunlight to make food by photosynthesis.",
     "Plants need moonlight and avoid the sun."),
    ("What is 9 minus 4?", "9 minus 4 is 5.", "9 minus 4 is 2."),
    ("Which is heavier, a kilogram of iron or a gram of feathers?", "The kilogram of iron is heavier.",
     "The gram of feathers is heavier."),
]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pair_items(n: int):
    """`n` PairItems with their truth: the right answer is A in even pairs, B in odd ones."""
    from gen.methods.judge import PairItem

    items, truth = [], []
    for i in range(n):
        question, right, wrong = PAIRS[i % len(PAIRS)]
        a, b = (right, wrong) if i % 2 == 0 else (wrong, right)
        items.append(PairItem(instruction=question, answer_a=a, answer_b=b))
        truth.append("A" if i % 2 == 0 else "B")
    return items, truth


def judge_requests(n: int, max_tokens: int, structured: bool):
    """The judge's requests for `n` pairs in both orders (what `judge_pairwise` sends, retries aside)."""
    from gen.methods.judge import judge_params, load_rubric, rubric_request
    from gen.teachers.base import SamplingParams

    rubric = load_rubric("pairwise")
    params = judge_params(rubric, SamplingParams(max_tokens=max_tokens, temperature=0.0), structured=structured)
    items, _ = pair_items(n)
    return [rubric_request(rubric, item.variables(swapped=swapped), params) for item in items
            for swapped in (False, True)]


# ------------------------------------------------------------------------------------------------------- workers


def worker_engine(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    from gen.engine.engine import Engine
    from gen.teachers import load_teacher

    requests = judge_requests(n, max_tokens, structured=False)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(load_teacher(f"openai:{model}", base_url=url), cache_path=Path(tmp) / "requests.sqlite",
                        concurrency=concurrency, max_concurrency=concurrency, progress=False)
        with engine:
            cpu, wall = cpu_seconds(), time.perf_counter()
            results = engine.run(requests)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {"ok": sum(r.ok for r in results), "seconds": wall, "cpu": cpu,
            "completion_tokens": sum(r.completion.completion_tokens for r in results if r.ok)}


def worker_plain(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    import asyncio

    import httpx
    import openai

    requests = judge_requests(n, max_tokens, structured=False)

    async def main() -> dict:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600,
                                    http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=600))
        slots = asyncio.Semaphore(concurrency)

        async def one(request) -> tuple[bool, int]:
            async with slots:
                response = await client.chat.completions.create(
                    model=model, messages=request.message_dicts(), max_tokens=request.params.max_tokens,
                    temperature=request.params.temperature, top_p=request.params.top_p)
                return bool(response.choices), response.usage.completion_tokens if response.usage else 0

        cpu, wall = cpu_seconds(), time.perf_counter()
        done = await asyncio.gather(*(one(r) for r in requests))
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        await client.close()
        return {"ok": sum(ok for ok, _ in done), "seconds": wall, "cpu": cpu,
                "completion_tokens": sum(tokens for _, tokens in done)}

    return asyncio.run(main())


WORKERS = {"engine": worker_engine, "plain": worker_plain}


def run_client(client: str, url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", client, "--url", url, "--model", model,
                          "--pairs", str(n), "--concurrency", str(concurrency), "--max-tokens", str(max_tokens)],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise RuntimeError(f"{client} worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- position bias


def position_bias(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    from gen.engine.engine import Engine
    from gen.methods.judge import first_position_rate, judge_pairwise, judge_params, load_rubric, position_flip_rate
    from gen.teachers import load_teacher
    from gen.teachers.base import SamplingParams

    rubric = load_rubric("pairwise")
    params = judge_params(rubric, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    items, truth = pair_items(n)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(load_teacher(f"openai:{model}", base_url=url), cache_path=Path(tmp) / "requests.sqlite",
                        concurrency=concurrency, max_concurrency=concurrency, progress=False)
        with engine:
            verdicts = judge_pairwise(engine, items, rubric, params)
    judged = [(v, t) for v, t in zip(verdicts, truth) if v.ok]
    one_order = [(v.first, t) for v, t in judged] + [(v.second, t) for v, t in judged]
    shown_first = []  # per single-order verdict: did it pick the answer shown first?
    for v, _ in judged:
        shown_first += [v.orders[0].verdict.winner == "A", v.orders[1].verdict.winner == "A"]

    def accuracy(pairs) -> float | None:
        if not pairs:
            return None
        return sum(1.0 if w == t else 0.5 if w == "tie" else 0.0 for w, t in pairs) / len(pairs)

    return {"pairs": n, "judged": len(judged), "unparseable": sum(v.status == "unparseable" for v in verdicts),
            "failed": sum(v.status == "failed" for v in verdicts),
            "single_order": {"verdicts": len(one_order), "accuracy": accuracy(one_order),
                             "ties": sum(w == "tie" for w, _ in one_order),
                             "picks_first_shown": first_position_rate(verdicts)},
            "both_orders": {"verdicts": len(judged), "accuracy": accuracy([(v.winner, t) for v, t in judged]),
                            "ties": sum(v.winner == "tie" for v, _ in judged),
                            "position_flip_rate": position_flip_rate(verdicts)},
            "structured": params.json_schema is not None,
            "sample_raw": [j.raw for j in verdicts[0].orders] if verdicts else []}


# ----------------------------------------------------------------------------------------------------------- main


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per verdict (default 48)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per client; the table shows medians")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.url, args.model, args.pairs, args.concurrency, args.max_tokens)))
        return 0

    from gen.teachers.llamacpp import BUNDLED_MODEL, EmbeddedServer, bundled_gguf_path

    load_before = os.getloadavg()
    server = EmbeddedServer(bundled_gguf_path(), BUNDLED_MODEL, "transcript", n_parallel=args.concurrency,
                            ctx_per_slot=2048)
    n_requests = 2 * args.pairs
    try:
        runs: dict[str, list[dict]] = {"engine": [], "plain": []}
        if not args.skip_throughput:
            for repeat in range(args.repeats):
                order = ("engine", "plain") if repeat % 2 == 0 else ("plain", "engine")
                for client in order:
                    result = run_client(client, server.openai_base_url, server.model, args.pairs, args.concurrency,
                                        args.max_tokens)
                    if result["ok"] != n_requests:
                        raise RuntimeError(f"{client}: only {result['ok']} of {n_requests} requests succeeded")
                    runs[client].append({"rps": n_requests / result["seconds"],
                                         "cpu_ms": 1000 * result["cpu"] / n_requests,
                                         "tokens": result["completion_tokens"]})
                    print(f"{client}: {runs[client][-1]['rps']:.2f} req/s, {runs[client][-1]['cpu_ms']:.1f} ms "
                          f"CPU/req, {result['completion_tokens']} completion tokens", file=sys.stderr)
        bias = position_bias(server.openai_base_url, server.model, args.pairs, args.concurrency, args.max_tokens)
    finally:
        server.close()

    lines = []
    if runs["engine"]:
        median = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for c, rs in runs.items()}
        lines += [f"Throughput: {n_requests} pairwise judge requests ({args.pairs} pairs x 2 orders), max_tokens "
                  f"{args.max_tokens}, C={args.concurrency}, embedded llama.cpp (Gemma-3-270M Q4_K_M), "
                  f"{args.repeats} run(s) per client (medians)", "",
                  "| client | req/s | CPU ms/req | completion tokens | req/s vs plain |", "|---|---|---|---|---|"]
        for client, name in (("engine", "kdforge Engine (openai:, aiohttp)"), ("plain", "plain AsyncOpenAI")):
            m = median[client]
            lines.append(f"| {name} | {m['rps']:.2f} | {m['cpu_ms']:.1f} | {m['tokens']:.0f} | "
                         f"{m['rps'] / median['plain']['rps']:.2f}x |")
        lines.append("")
    s, b = bias["single_order"], bias["both_orders"]
    lines += [f"Position bias: {bias['pairs']} pairs with a known right answer (right answer first in half), judged "
              f"through the engine; structured output sent: {'yes' if bias['structured'] else 'no'}; "
              f"judged {bias['judged']}, unparseable {bias['unparseable']}, failed {bias['failed']}", "",
              "| mode | verdicts | right answer wins (ties half) | ties | picks the answer shown first | "
              "position-flip rate |", "|---|---|---|---|---|---|",
              f"| without the swap (each order alone) | {s['verdicts']} | {_pct(s['accuracy'])} | {s['ties']} | "
              f"{_pct(s['picks_first_shown'])} | - |",
              f"| with the swap (flip = tie) | {b['verdicts']} | {_pct(b['accuracy'])} | {b['ties']} | - | "
              f"{_pct(b['position_flip_rate'])} |", "",
              f"First pair's raw verdicts: {json.dumps(bias['sample_raw'])[:300]}",
              f"{os.cpu_count()} cores; load average before {'/'.join(f'{x:.1f}' for x in load_before)}, after "
              f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
