"""The request engine against a real local OpenAI-compatible server (tests/latency_server.py) through the real
`openai:` teacher: faults, Retry-After, timeouts, concurrency bounds, rate limits, the cache, budgets."""

from __future__ import annotations

import sqlite3
import time

import pytest

from gen.engine.engine import BUDGET_EXHAUSTED, Engine, estimate_prompt_tokens
from gen.errors import UserError
from gen.teachers import load_teacher
from gen.teachers.base import ChatRequest, Completion, SamplingParams
from tests.latency_server import reply_for, request_key

PARAMS = SamplingParams(max_tokens=32, temperature=0.0)


def make_requests(n: int, prefix: str = "question") -> list[ChatRequest]:
    return [ChatRequest.make([{"role": "user", "content": f"{prefix} number {i}"}], PARAMS) for i in range(n)]


def engine_for(server, **kwargs) -> Engine:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("backoff_base", 0.05)
    return Engine(load_teacher("openai:test-model", base_url=server.v1_url), **kwargs)


def request_key_of(request: ChatRequest) -> str:
    body = {"messages": request.message_dicts(), "max_tokens": request.params.max_tokens,
            "temperature": request.params.temperature, "seed": request.params.seed}
    return request_key(body)


def expected_text(request: ChatRequest) -> str:
    return reply_for({"messages": request.message_dicts(), "max_tokens": request.params.max_tokens})[0]


def test_every_fault_retried_no_result_lost_or_duplicated(start_server):
    # Each fault kind hits several requests; the slow ones run past the per-request timeout.
    faults = "429:0.2@2,500@4,reset@6,malformed@8,slow:3@10,429:0.1@12,500@13,reset@14,malformed@15,slow:3@16"
    server = start_server("fixed:0.02", faults=faults)
    requests = make_requests(30)
    with engine_for(server, concurrency=8, timeout=1.0) as engine:
        started = time.monotonic()
        results = engine.run(requests)
        elapsed = time.monotonic() - started
        stats = dict(engine.stats)
    assert [r.ok for r in results] == [True] * 30, [r.error for r in results if not r.ok]
    assert [r.completion.text for r in results] == [expected_text(q) for q in requests]
    assert set(server.faults_served) == {"429", "500", "reset", "malformed", "slow"}
    assert sum(server.faults_served.values()) == 10
    # Every request answered by the server; retries for the faulted ones. (HTTP retries are at-least-once: on this
    # shared 2-core machine an attempt may also time out client-side after the server answered, so a few requests
    # may be answered twice. The results above hold exactly one answer per request all the same.)
    assert set(server.answered) == {request_key_of(q) for q in requests}
    assert stats["sent"] == 30 and stats["failures"] == 0
    assert server.requests >= 40 and stats["attempts"] >= 40
    assert server.requests <= 44 and stats["attempts"] <= 44
    assert stats["rate_limited"] == 2
    assert elapsed < 3.0  # the 3 s slow responses were cut at the 1 s timeout, not waited out


def test_retry_after_pauses_new_sends(start_server):
    server = start_server("fixed:0", faults="429:1@0")
    with engine_for(server, concurrency=1) as engine:
        results = engine.run(make_requests(4))
    assert all(r.ok for r in results)
    gap = server.arrivals[1] - server.arrivals[0]
    assert gap >= 1.0, f"retried after {gap:.3f} s, before Retry-After: 1"
    assert gap < 2.5


def test_concurrency_bound_and_additive_increase(start_server):
    server = start_server("fixed:0.02")
    with engine_for(server, concurrency=4, max_concurrency=4) as engine:
        assert all(r.ok for r in engine.run(make_requests(40)))
    assert server.max_in_flight == 4  # filled, never exceeded

    server.reset_stats()
    with engine_for(server, concurrency=2, max_concurrency=32) as engine:
        assert all(r.ok for r in engine.run(make_requests(120, "grow")))
        grown = engine.limiter.limit
    assert grown > 6, f"limit {grown} did not grow while healthy"
    assert server.max_in_flight > 2


def test_429s_halve_concurrency_once_per_window(start_server):
    # All 16 requests of the first window are rate limited at once: one halving, not sixteen.
    server = start_server("fixed:0.01", faults=",".join(f"429:0.05@{i}" for i in range(16)))
    with engine_for(server, concurrency=16, max_concurrency=16) as engine:
        results = engine.run(make_requests(16))
        assert all(r.ok for r in results)
        # 16 -> 8 once, then +1/limit for each of the 16 successful retries (at most +2): never below 8.
        assert 8.0 <= engine.limiter.limit <= 10.0
        assert engine.stats["rate_limited"] == 16


def test_rpm_limit(start_server):
    server = start_server("fixed:0")
    with engine_for(server, concurrency=16, rpm=600) as engine:  # 10/s, a burst of 10
        started = time.monotonic()
        assert all(r.ok for r in engine.run(make_requests(25)))
        elapsed = time.monotonic() - started
    assert elapsed >= 1.4, f"25 requests at 600 rpm took {elapsed:.2f} s"
    # After the burst of 10 the server sees at most 10 requests a second (less a little scheduling jitter; the
    # burst itself reaches the server spread out by connection set-up, so it is not the reference point).
    arrivals = sorted(server.arrivals)
    assert len(arrivals) == 25
    for n in range(11, 25):
        assert arrivals[n] - arrivals[10] >= (n - 10) / 10.0 - 0.15, (n, arrivals[n] - arrivals[10])


def test_tpm_limit_counts_true_usage(start_server):
    server = start_server("fixed:0")
    requests = make_requests(20)
    with engine_for(server, concurrency=8, tpm=6000) as engine:  # 100 tokens/s, a burst of 100
        started = time.monotonic()
        assert all(r.ok for r in engine.run(requests))
        elapsed = time.monotonic() - started
        spent = engine.stats["prompt_tokens"] + engine.stats["completion_tokens"]
    estimate = 20 * (estimate_prompt_tokens(requests[0]) + PARAMS.max_tokens)
    assert 200 < spent < estimate / 2
    # Paced by the tokens really spent (the burst of 100 comes free; the last request may overdraw by ~53)...
    assert elapsed >= (spent - 100 - 60) / 100.0, (elapsed, spent)
    # ...not by the pre-send estimates (prompt estimate + max_tokens), which would take (estimate - 100) / 100 s.
    assert elapsed < (estimate - 100) / 100.0 * 0.6, (elapsed, estimate)


def test_cache_hits_are_not_sent_and_failures_are_not_cached(start_server, tmp_path):
    server = start_server("fixed:0", faults="400@0")
    cache = tmp_path / "requests.sqlite"
    requests = make_requests(10)
    with engine_for(server, cache_path=cache) as engine:
        first = engine.run(requests)
    assert not first[0].ok and first[0].error.startswith("PermanentError: 400")
    assert all(r.ok for r in first[1:])
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == 9
    server.faults = None  # the bad request is fine now
    server.reset_stats()
    with engine_for(server, cache_path=cache) as engine:
        second = engine.run(requests + requests[:3])  # duplicates within one call are sent once
        assert engine.stats["cache_hits"] == 11 and engine.stats["sent"] == 1
    assert all(r.ok for r in second)
    assert [r.cached for r in second] == [False] + [True] * 9 + [False, True, True]
    assert server.requests == 1  # only the request that failed before
    assert second[0].completion.text == expected_text(requests[0])


def test_token_budget_stops_cleanly_and_resumes_from_cache(start_server, tmp_path):
    server = start_server("fixed:0.01")
    cache = tmp_path / "requests.sqlite"
    requests = make_requests(30)
    with engine_for(server, cache_path=cache, concurrency=4, max_total_tokens=150) as engine:
        results = engine.run(requests)
        spent = engine.stats["prompt_tokens"] + engine.stats["completion_tokens"]
        assert engine.exhausted
    done = [r for r in results if r.ok]
    assert 0 < len(done) < 30
    assert all(r.error == BUDGET_EXHAUSTED for r in results if not r.ok)
    assert spent >= 150 and spent < 150 + 60  # overshoot bounded by one request's worst case
    server.reset_stats()
    with engine_for(server, cache_path=cache, concurrency=4) as engine:
        again = engine.run(requests)
    assert all(r.ok for r in again)
    assert server.requests == 30 - len(done)


def test_max_cost_needs_a_price(start_server):
    server = start_server("fixed:0")
    teacher = load_teacher("openai:test-model", base_url=server.v1_url)
    # The library names what is wrong (no price for this teacher), not a CLI flag; `gen label` adds the flag
    # (tests/engine/test_label_cli.py).
    with pytest.raises(UserError, match="no known price for teacher 'openai:test-model'") as caught:
        Engine(teacher, max_cost=1.0)
    assert "--" not in str(caught.value)
    teacher.close()


def test_cost_budget_with_given_price(start_server):
    from gen.teachers.pricing import Price

    server = start_server("fixed:0.01")
    price = Price(1000.0, 2000.0)  # $ per 1M tokens: ~$0.03 a request here
    with engine_for(server, concurrency=2, max_cost=0.2, price=price) as engine:
        results = engine.run(make_requests(40))
        cost = engine.stats["cost"]
        assert engine.exhausted
    done = sum(r.ok for r in results)
    assert 3 <= done < 40
    assert 0.2 <= cost < 0.2 + 0.09  # stops at the budget, overshooting by at most one request's worst case ($0.085)
    assert cost == pytest.approx(sum(price.cost(r.completion.prompt_tokens, r.completion.completion_tokens)
                                     for r in results if r.ok))


def test_teacher_capacity_hint_caps_concurrency(start_server):
    server = start_server("fixed:0.02")
    teacher = load_teacher("openai:test-model", base_url=server.v1_url)
    teacher.max_in_flight = 3  # what a backend that knows its server's slots declares
    with Engine(teacher, concurrency=16, max_concurrency=64, progress=False) as engine:
        assert all(r.ok for r in engine.run(make_requests(30)))
        assert engine.limiter.maximum == 3
    assert server.max_in_flight == 3


def test_the_cache_keeps_what_was_sent_and_opens_a_cache_made_before_it(tmp_path):
    """`Completion.sent` survives the cache (buffered and committed); a cache file written before the column
    existed is opened as it is: its rows read with sent None, new rows keep theirs."""
    from gen.engine.cache import RequestCache

    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE completions (key TEXT PRIMARY KEY, teacher TEXT NOT NULL, text TEXT NOT NULL, "
               "finish_reason TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, "
               "created REAL NOT NULL)")
    db.execute("INSERT INTO completions VALUES ('k0', 't', 'old answer', 'stop', 1, 2, 0)")
    db.commit()
    db.close()
    with RequestCache(old) as cache:
        cache.put("k1", "t", Completion("new", "stop", 3, 4, sent={"temperature": 0.3}))
        buffered = cache.get_many(["k0", "k1"])
        assert buffered["k0"] == Completion("old answer", "stop", 1, 2) and buffered["k0"].sent is None
        assert buffered["k1"].sent == {"temperature": 0.3}
        cache.commit_unit("u", "t", {"k2": Completion("unit", "stop", 1, 1, sent={"top_p": 0.5})})
    with RequestCache(old) as cache:
        found = cache.get_many(["k0", "k1", "k2"])
    assert found["k0"].sent is None and found["k1"].sent == {"temperature": 0.3} and found["k2"].sent == {"top_p": 0.5}
