"""Benchmark: the judge through the request engine, and what the embedded 270M judge's verdicts are worth.

1. Throughput. The same pairwise judge requests (the built-in `pairwise` rubric, both orders of
   `--throughput-pairs` pairs, free text, temperature 0, `--max-tokens` per verdict) go to the embedded llama.cpp
   server (xllamacpp, the bundled Gemma-3-270M, `--concurrency` slots) from
     - kdforge's `Engine` with the `openai:` teacher (lean aiohttp transport, SQLite cache on and fresh per run,
       concurrency fixed at C), and
     - a plain client: `AsyncOpenAI` + `asyncio.Semaphore(C)` + `gather` (what any client must pay),
   each in its own process (CPU ms/req = that process's CPU / requests), after one unmeasured warm-up pass,
   alternating, `--repeats` times; medians.
   The bar is bench/engine.py's: at the same concurrency the engine must reach the plain client's requests/s (here
   the server is the bottleneck: 2 shared cores decode every verdict, so the machine's load moves both).
2. Position bias, on `--pairs` pairs with a known right answer (a right and a wrong answer to a simple question;
   the right one shown first in half of the pairs), asked in both orders:
     - directly with llama.cpp's JSON-schema constrained decoding (`response_format`), replies read by the judge
       library's parser: what the judge says when it must answer in the verdict's shape;
     - through the engine and the judge library (`judge_pairwise` with the judge's default params: the verdict
       schema goes out only where the backend sends structured output; one retry of an unparseable reply).
   Without the swap: each order's verdict on its own (what a one-order judge would report): how often it names the
   right answer, how often it picks whichever answer came first. With the swap: the both-order verdict (a verdict
   that flips with the order is a tie): accuracy with ties as half, and the position-flip rate.

    .venv/bin/python bench/judge.py                    # ~10 min on 2 busy shared cores
    .venv/bin/python bench/judge.py --pairs 10 --repeats 1 --skip-engine-bias

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
        # timeout as the plain client's: on 2 busy cores a verdict can take minutes, and a retried request is
        # decoded twice
        engine = Engine(load_teacher(f"openai:{model}", base_url=url), cache_path=Path(tmp) / "requests.sqlite",
                        concurrency=concurrency, max_concurrency=concurrency, timeout=600, progress=False)
        with engine:
            cpu, wall = cpu_seconds(), time.perf_counter()
            results = engine.run(requests)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            attempts = engine.stats["attempts"]
    return {"ok": sum(r.ok for r in results), "seconds": wall, "cpu": cpu, "attempts": attempts,
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
        return {"ok": sum(ok for ok, _ in done), "seconds": wall, "cpu": cpu, "attempts": len(requests),
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


def _accuracy(pairs) -> float | None:
    """Share of verdicts naming the right answer (a tie counts half)."""
    if not pairs:
        return None
    return sum(1.0 if w == t else 0.5 if w == "tie" else 0.0 for w, t in pairs) / len(pairs)


def _bias_numbers(orders: list[tuple[str | None, str | None]], truth: list[str]) -> dict:
    """From each pair's two single-order verdicts (winner as shown: "A" = the answer shown first; None when
    unparseable): the one-order and both-order numbers."""
    swap = {"A": "B", "B": "A", "tie": "tie"}
    judged = [(first, swap[second], t) for (first, second), t in zip(orders, truth)
              if first is not None and second is not None]
    one_order = [(f, t) for f, _, t in judged] + [(s, t) for _, s, t in judged]
    shown_first = [first == "A" for first, second in orders if first is not None and second is not None] + \
                  [second == "A" for first, second in orders if first is not None and second is not None]
    both = [(f if f == s else "tie", t) for f, s, t in judged]
    return {"judged": len(judged), "unparseable": len(orders) - len(judged),
            "single_order": {"verdicts": len(one_order), "accuracy": _accuracy(one_order),
                             "ties": sum(w == "tie" for w, _ in one_order),
                             "picks_first_shown": sum(shown_first) / len(shown_first) if shown_first else None},
            "both_orders": {"verdicts": len(both), "accuracy": _accuracy(both),
                            "ties": sum(w == "tie" for w, _ in both),
                            "position_flip_rate": sum(f != s for f, s, _ in judged) / len(judged) if judged else None}}


def bias_through_engine(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    """The product path: `judge_pairwise` through the engine with the judge's default params (the verdict schema
    in `SamplingParams.json_schema`, sent as structured output where the backend sends it; one retry)."""
    from gen.engine.engine import Engine
    from gen.methods.judge import judge_pairwise, judge_params, load_rubric
    from gen.teachers import load_teacher
    from gen.teachers.base import SamplingParams

    rubric = load_rubric("pairwise")
    params = judge_params(rubric, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    items, truth = pair_items(n)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(load_teacher(f"openai:{model}", base_url=url), cache_path=Path(tmp) / "requests.sqlite",
                        concurrency=concurrency, max_concurrency=concurrency, timeout=600, progress=False)
        with engine:
            verdicts = judge_pairwise(engine, items, rubric, params)
    orders = [tuple(j.verdict.winner if j.ok else None for j in v.orders) for v in verdicts]
    return {**_bias_numbers(orders, truth), "sample_raw": [j.raw for j in verdicts[0].orders] if verdicts else []}


def bias_with_schema(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    """The same requests sent directly with llama.cpp's JSON-schema constrained decoding (`response_format`), read
    by the judge library's parser: what the judge says when it must answer in the verdict's shape."""
    import asyncio

    import openai

    from gen.methods.judge import VerdictError, load_rubric, parse_verdict

    rubric = load_rubric("pairwise")
    requests = judge_requests(n, max_tokens, structured=True)
    _, truth = pair_items(n)

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
        slots = asyncio.Semaphore(concurrency)

        async def one(request) -> str:
            async with slots:
                response = await client.chat.completions.create(
                    model=model, messages=request.message_dicts(), max_tokens=request.params.max_tokens,
                    temperature=0.0, response_format={"type": "json_schema", "json_schema": {
                        "name": "verdict", "schema": json.loads(request.params.json_schema), "strict": True}})
                return response.choices[0].message.content or ""

        replies = await asyncio.gather(*(one(r) for r in requests))
        await client.close()
        return replies

    replies = asyncio.run(main())

    def winner(text: str) -> str | None:
        try:
            return parse_verdict(rubric, text).winner
        except VerdictError:
            return None

    orders = [(winner(replies[2 * i]), winner(replies[2 * i + 1])) for i in range(n)]
    return {**_bias_numbers(orders, truth), "sample_raw": replies[:2]}


# ----------------------------------------------------------------------------------------------------------- main


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20, help="pairs for the position-bias part (default 20)")
    parser.add_argument("--throughput-pairs", type=int, default=10,
                        help="pairs for the throughput part (x 2 orders = requests; default 10)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per verdict (default 32)")
    parser.add_argument("--repeats", type=int, default=4, help="runs per client, alternating; medians (default 4)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-engine-bias", action="store_true",
                        help="skip the position bias through the engine (slow when the backend sends no schema)")
    parser.add_argument("--skip-bias", action="store_true", help="throughput only")
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
    n_requests = 2 * args.throughput_pairs
    runs: dict[str, list[dict]] = {"engine": [], "plain": []}
    bias: dict[str, dict] = {}
    try:
        if not args.skip_throughput:
            # One unmeasured pass first: a fresh llama.cpp server's first requests are slower (cold caches), which
            # would otherwise be billed to whichever client runs first.
            run_client("plain", server.openai_base_url, server.model, args.throughput_pairs, args.concurrency,
                       args.max_tokens)
            for repeat in range(args.repeats):
                order = ("engine", "plain") if repeat % 2 == 0 else ("plain", "engine")
                for client in order:
                    result = run_client(client, server.openai_base_url, server.model, args.throughput_pairs,
                                        args.concurrency, args.max_tokens)
                    if result["ok"] != n_requests:
                        raise RuntimeError(f"{client}: only {result['ok']} of {n_requests} requests succeeded")
                    runs[client].append({"rps": n_requests / result["seconds"],
                                         "cpu_ms": 1000 * result["cpu"] / n_requests,
                                         "tokens": result["completion_tokens"], "attempts": result["attempts"]})
                    print(f"{client}: {runs[client][-1]['rps']:.3f} req/s, {runs[client][-1]['cpu_ms']:.1f} ms "
                          f"CPU/req, {result['completion_tokens']} completion tokens, {result['attempts']} attempts",
                          file=sys.stderr)
        if not args.skip_bias:
            bias["schema"] = bias_with_schema(server.openai_base_url, server.model, args.pairs, args.concurrency,
                                              args.max_tokens)
            print(f"schema bias: {bias['schema']}", file=sys.stderr)
        if not (args.skip_bias or args.skip_engine_bias):
            bias["engine"] = bias_through_engine(server.openai_base_url, server.model, args.pairs, args.concurrency,
                                                 args.max_tokens)
            print(f"engine bias: {bias['engine']}", file=sys.stderr)
    finally:
        server.close()

    lines = []
    if runs["engine"]:
        median = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for c, rs in runs.items()}
        lines += [f"Throughput: {n_requests} pairwise judge requests ({args.throughput_pairs} pairs x 2 orders, free "
                  f"text), max_tokens {args.max_tokens}, C={args.concurrency}, embedded llama.cpp (Gemma-3-270M "
                  f"Q4_K_M), {args.repeats} run(s) per client alternating (medians)", "",
                  "| client | req/s | CPU ms/req | completion tokens | attempts | req/s vs plain |",
                  "|---|---|---|---|---|---|"]
        for client, name in (("engine", "kdforge Engine (openai:, aiohttp)"), ("plain", "plain AsyncOpenAI")):
            m = median[client]
            lines.append(f"| {name} | {m['rps']:.3f} | {m['cpu_ms']:.1f} | {m['tokens']:.0f} | {m['attempts']:.0f} | "
                         f"{m['rps'] / median['plain']['rps']:.2f}x |")
        lines.append("")
    names = {"schema": "llama.cpp json_schema (response_format), sent directly",
             "engine": "engine + judge_pairwise (schema sent only where the backend sends it; 1 retry)"}
    if bias:
        lines += [f"Position bias: {args.pairs} pairs with a known right answer (the right answer shown first in "
                  f"half), max_tokens {args.max_tokens}", "",
                  "| path | mode | judged pairs | unparseable | right answer wins (ties half) | ties | picks the answer "
                  "shown first | position-flip rate |", "|---|---|---|---|---|---|---|---|"]
    for key, numbers in bias.items():
        s, b = numbers["single_order"], numbers["both_orders"]
        lines.append(f"| {names[key]} | without the swap (each order alone) | {numbers['judged']} | "
                     f"{numbers['unparseable']} | {_pct(s['accuracy'])} | {s['ties']} | {_pct(s['picks_first_shown'])} "
                     f"| - |")
        lines.append(f"| {names[key]} | with the swap (flip = tie) | {numbers['judged']} | {numbers['unparseable']} | "
                     f"{_pct(b['accuracy'])} | {b['ties']} | - | {_pct(b['position_flip_rate'])} |")
    lines.append("")
    for key, numbers in bias.items():
        lines.append(f"{key}: first pair's raw verdicts: {json.dumps(numbers['sample_raw'])[:240]}")
    lines.append(f"{os.cpu_count()} cores; load average before {'/'.join(f'{x:.1f}' for x in load_before)}, after "
                 f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
