"""`openai:<model>` over several endpoints (`--base-url URL1,URL2`): balancing by in-flight load, the per-endpoint
circuit breaker, and the all-down error — against real servers only: two FaultProxy endpoints in front of the one
session llama.cpp server, and LatencyServers for the faults that need no model."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from gen.cli import main
from gen.data.shards import read_manifest, read_table
from gen.engine.engine import Engine
from gen.errors import UserError
from gen.teachers import load_teacher
from gen.teachers.base import ChatRequest, PermanentError, RateLimited, SamplingParams, TransientError
from gen.teachers.endpoints import EndpointPool
from gen.teachers.openai_api import OpenAITeacher
from tests.faultproxy import Fault, FaultProxy, always
from tests.latency_server import LatencyServer
from tests.servers import llamacpp_server  # noqa: F401

K = 3  # failures that take an endpoint out (the default)


def requests(n: int, prefix: str = "Name a color", max_tokens: int = 4) -> list[ChatRequest]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return [ChatRequest.make([{"role": "user", "content": f"{prefix} ({i})."}], params) for i in range(n)]


@pytest.fixture
def latency_servers():
    """`start(latency, faults=None)` -> a running LatencyServer, all stopped after the test."""
    started: list[LatencyServer] = []

    def start(latency: str = "fixed:0", faults=None) -> LatencyServer:
        server = LatencyServer(latency, faults=faults).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def two_proxies(llamacpp_server):  # noqa: F811 - the session fixture imported above
    """Two endpoints that are the same llama.cpp server behind two FaultProxies."""
    with FaultProxy(llamacpp_server.base_url) as a, FaultProxy(llamacpp_server.base_url) as b:
        yield a, b


# ---------------------------------------------------------------------------------------------------- the spec

def test_comma_separated_base_url_builds_a_pool_with_the_single_endpoint_teacher_id():
    pool = load_teacher("openai:replica", base_url="http://127.0.0.1:9/v1, http://127.0.0.1:10/v1")
    single = load_teacher("openai:replica", base_url="http://127.0.0.1:9/v1")
    try:
        assert isinstance(pool, EndpointPool) and isinstance(single, OpenAITeacher)
        assert pool.base_urls == ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"]
        # Replicas of one model: the cache key must not depend on which endpoint answered.
        assert pool.teacher_id == single.teacher_id == "openai:replica"
        request = requests(1)[0]
        assert request.cache_key(pool.teacher_id) == request.cache_key(single.teacher_id)
        assert set(pool.endpoint_stats()) == set(pool.base_urls)
    finally:
        pool.close()
        single.close()


@pytest.mark.parametrize("value, named", [
    ("http://127.0.0.1:9/v1,ftp://host/v1", "'ftp://host/v1'"),
    ("http://127.0.0.1:9/v1,localhost:8000", "'localhost:8000'"),
    ("http://127.0.0.1:9/v1,,http://127.0.0.1:10/v1", "empty URL"),
    ("http://127.0.0.1:9/v1,http://127.0.0.1:9/v1/", "given twice"),
    ("http://127.0.0.1:9/v1,http://127.0.0.1:99999/v1", "invalid port"),
])
def test_a_bad_url_in_the_list_is_a_one_line_user_error_naming_it(value, named):
    with pytest.raises(UserError) as caught:
        load_teacher("openai:replica", base_url=value)
    message = str(caught.value)
    assert named in message and "\n" not in message and message.startswith("--base-url")


# ---------------------------------------------------------------------------------------------------- LatencyServer

def test_balancing_by_in_flight_load_sends_less_to_the_slow_replica(latency_servers):
    fast, slow = latency_servers("fixed:0.02"), latency_servers("fixed:0.5")
    pool = OpenAITeacher.pool("latency-test", [fast.v1_url, slow.v1_url])
    with Engine(pool, concurrency=8, max_concurrency=8, progress=False) as engine:
        results = engine.run(requests(96))
        stats = engine.stats["endpoints"]
    assert all(r.ok for r in results)
    assert fast.requests + slow.requests == 96  # every request answered once, no retries
    # Equal in-flight shares drain ~25x faster at the fast replica; round robin would give 48/48.
    assert fast.requests >= 4 * slow.requests > 0, (fast.requests, slow.requests)
    assert stats[fast.v1_url]["requests"] == fast.requests and stats[slow.v1_url]["requests"] == slow.requests
    assert all(s["failures"] == 0 and s["healthy"] and s["in_flight"] == 0 for s in stats.values())


def test_max_in_flight_is_per_endpoint_and_caps_the_engine(latency_servers):
    a, b = latency_servers("fixed:0.05"), latency_servers("fixed:0.05")
    pool = OpenAITeacher.pool("latency-test", [a.v1_url, b.v1_url], max_in_flight=2)
    assert pool.max_in_flight == 4
    with Engine(pool, concurrency=16, progress=False) as engine:
        assert engine.max_concurrency == 4
        assert all(r.ok for r in engine.run(requests(24)))
    assert a.max_in_flight == b.max_in_flight == 2 and a.requests + b.requests == 24


def test_all_endpoints_down_raises_transient_then_one_probe_each_after_the_cooldown(latency_servers):
    a, b = latency_servers(faults="500%1.0"), latency_servers(faults="500%1.0")
    pool = OpenAITeacher.pool("latency-test", [a.v1_url, b.v1_url], failures_to_eject=2, cooldown=0.4, max_cooldown=0.8)
    request = requests(1)[0]

    async def scenario() -> dict:
        seen = {}
        for _ in range(4):  # 2 failures each (round robin over idle endpoints) take both out
            with pytest.raises(TransientError, match="500"):
                await pool.acomplete(request, 5.0)
        assert (a.requests, b.requests) == (2, 2)
        # Both out: refused without touching a server, with the wait until the first probe.
        with pytest.raises(TransientError, match=r"all 2 endpoints unavailable; next retry in 0\.\d s") as caught:
            await pool.acomplete(request, 5.0)
        assert (a.requests, b.requests) == (2, 2)
        assert float(str(caught.value).split()[-2]) <= 0.4
        await asyncio.sleep(0.45)
        # Cooldown over: exactly one probe per endpoint; both fail, the cooldown doubles to 0.8 s.
        for _ in range(2):
            with pytest.raises(TransientError, match="500"):
                await pool.acomplete(request, 5.0)
        assert (a.requests, b.requests) == (3, 3)
        with pytest.raises(TransientError, match=r"all 2 endpoints unavailable; next retry in 0\.\d s") as caught:
            await pool.acomplete(request, 5.0)
        assert 0.4 < float(str(caught.value).split()[-2]) <= 0.8  # the cooldown doubled
        seen["after_failed_probes"] = pool.endpoint_stats()
        a.faults = None  # heal one endpoint
        await asyncio.sleep(0.85)
        # One probe each again (in rotation order): a's succeeds and puts it back, b's fails.
        outcomes = [await _outcome(pool.acomplete(request, 5.0)) for _ in range(2)]
        assert (a.requests, b.requests) == (4, 4)
        seen["texts"] = [o.text for o in outcomes if not isinstance(o, BaseException)]
        assert sum(isinstance(o, TransientError) for o in outcomes) == 1
        seen["healed"] = pool.endpoint_stats()
        await pool.aclose()
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        pool.close()
    out = seen["after_failed_probes"]
    assert all(not s["healthy"] and s["ejections"] == 2 and s["probes"] == 1 and s["failures"] == 3
               for s in out.values())
    assert len(seen["texts"]) == 1 and seen["texts"][0].startswith("answer to:")
    assert seen["healed"][a.v1_url]["healthy"] and not seen["healed"][b.v1_url]["healthy"]


async def _outcome(awaitable):
    """The awaited value, or the exception it raised."""
    try:
        return await awaitable
    except Exception as exc:
        return exc


def test_429_and_4xx_pass_through_without_counting_toward_ejection(latency_servers):
    limited = latency_servers("fixed:0", faults="429:1@0,429:1@1,429:1@2,400@3")
    other = latency_servers("fixed:0.3")
    pool = OpenAITeacher.pool("latency-test", [limited.v1_url, other.v1_url], failures_to_eject=1)
    request = requests(1)[0]

    async def scenario() -> None:
        # A fresh pool starts its rotation at `limited`; both are idle, so `limited` gets the first request.
        with pytest.raises(RateLimited) as caught:
            await pool.acomplete(request, 5.0)
        assert caught.value.retry_after == 1.0 and limited.v1_url in str(caught.value)
        # For its Retry-After, `limited` is passed over although `other` is busier: 4 concurrent requests all go there.
        await asyncio.gather(*(pool.acomplete(r, 5.0) for r in requests(4)))
        assert (limited.requests, other.requests) == (1, 4)
        # Once the Retry-After has passed it is in service as before: of two concurrent requests it gets one.
        for expected in (RateLimited, RateLimited, PermanentError):
            await asyncio.sleep(1.05)
            outcomes = await asyncio.gather(*(_outcome(pool.acomplete(r, 5.0)) for r in requests(2, "Again")))
            assert sorted(type(o).__name__ for o in outcomes) == sorted([expected.__name__, "Completion"])
        assert (limited.requests, other.requests) == (4, 7)
        await pool.aclose()

    try:
        asyncio.run(scenario())
    finally:
        pool.close()
    stats = pool.endpoint_stats()[limited.v1_url]
    assert stats["rate_limited"] == 3 and stats["failures"] == 0 and stats["ejections"] == 0 and stats["healthy"]


def test_timeouts_count_as_failures_and_the_engine_completes_on_the_other_endpoint(latency_servers):
    hung, fine = latency_servers("fixed:30"), latency_servers("fixed:0.01")
    # K=2: the engine's first 4 requests go 2 and 2, and both of the hung endpoint's time out.
    pool = OpenAITeacher.pool("latency-test", [hung.v1_url, fine.v1_url], failures_to_eject=2, cooldown=30.0)
    with Engine(pool, concurrency=4, max_concurrency=4, timeout=1.0, backoff_base=0.02, progress=False) as engine:
        results = engine.run(requests(24))
        stats = engine.stats["endpoints"]
    assert all(r.ok for r in results)
    assert stats[hung.v1_url] == {**stats[hung.v1_url], "failures": 2, "ejections": 1, "healthy": False,
                                  "in_flight": 0}
    assert hung.requests == 2 and fine.requests == 24


# ---------------------------------------------------------------------------------------------------- llama.cpp

def pool_over(proxies, model: str, **options) -> EndpointPool:
    return OpenAITeacher.pool(model, [p.base_url + "/v1" for p in proxies], **options)


def test_two_llamacpp_endpoints_answer_every_request_once_and_both_are_used(llamacpp_server, two_proxies):  # noqa: F811
    a, b = two_proxies
    pool = pool_over(two_proxies, llamacpp_server.model)
    with Engine(pool, concurrency=4, max_concurrency=4, progress=False) as engine:
        results = engine.run(requests(6, max_tokens=2))
        stats = engine.stats["endpoints"]
    assert all(r.ok and r.completion.completion_tokens >= 1 for r in results)
    assert a.counts["forwarded"] >= 1 and b.counts["forwarded"] >= 1
    assert a.counts["requests"] + b.counts["requests"] == 6  # each answered once, none sent twice
    asked = sorted(json.loads(r.body)["messages"][0]["content"] for p in (a, b) for r in p.received)
    assert asked == sorted(r.messages[0][1] for r in requests(6))
    assert [s["requests"] for s in stats.values()] == [a.counts["requests"], b.counts["requests"]]


def test_a_slow_llamacpp_endpoint_gets_clearly_fewer_requests(llamacpp_server, two_proxies):  # noqa: F811
    fast, slow = two_proxies
    pool = pool_over(two_proxies, llamacpp_server.model)
    with Engine(pool, concurrency=4, max_concurrency=4, progress=False) as engine:
        # llama.cpp's own time per request (L) depends on how busy the shared cores are: measure it, then make
        # the slow endpoint add 3 L. With requests in flight kept equal, the fast one should answer ~4x as many.
        # (At most 4 s: llama.cpp closes idle keep-alive connections after ~5 s, which the proxy's upstream pool
        # would then trip over.)
        started = time.monotonic()
        assert all(r.ok for r in engine.run(requests(4, "Warm up", max_tokens=2)))
        latency = time.monotonic() - started
        fast.reset()
        slow.reset(always(Fault.slow(min(4.0, max(0.5, 3 * latency)))))
        results = engine.run(requests(12, "Name an animal", max_tokens=2))
    assert all(r.ok for r in results)
    answered = fast.counts["forwarded"], slow.counts["forwarded"]
    assert sum(answered) == 12
    assert answered[0] >= 2 * answered[1] > 0, (latency, fast.counts, slow.counts)


def test_an_always_500_endpoint_is_taken_out_then_used_again_once_healed(llamacpp_server, two_proxies):  # noqa: F811
    good, bad = two_proxies
    bad.plan = always(Fault.server_error(500))
    pool = pool_over(two_proxies, llamacpp_server.model, cooldown=0.5, max_cooldown=2.0)
    bad_url = bad.base_url + "/v1"
    with Engine(pool, concurrency=4, max_concurrency=4, backoff_base=0.05, progress=False) as engine:
        results = engine.run(requests(8, "Name a fruit", max_tokens=2))
        assert all(r.ok for r in results)
        out = engine.stats["endpoints"][bad_url]
        assert not out["healthy"] and out["ejections"] >= 1
        # K failures take it out; after that it only sees one probe per (doubling) cooldown.
        assert bad.counts["requests"] == out["requests"] <= K + out["probes"]
        assert bad.counts["server_error"] == bad.counts["requests"] and bad.counts["forwarded"] == 0
        assert good.counts["forwarded"] == 8

        bad.reset(None)  # healed
        time.sleep(out["retry_in_s"] + 0.05)
        results = engine.run(requests(2, "Name a city", max_tokens=2))
        probed = engine.stats["endpoints"][bad_url]
        assert all(r.ok for r in results)
        # The first request was its probe, which put it back.
        assert probed["healthy"] and probed["probes"] == out["probes"] + 1 and bad.counts["forwarded"] >= 1
        # Back in regular service: 4 requests at once over two idle endpoints go 2 and 2 (more to `bad` only if
        # one of `good`'s is retried: the proxies' stale upstream keep-alive connections, on a loaded machine).
        forwarded_before = bad.counts["forwarded"]
        results = engine.run(requests(4, "Name a river", max_tokens=2))
    assert all(r.ok for r in results)
    assert bad.counts["forwarded"] - forwarded_before >= 2
    assert good.counts["forwarded"] + bad.counts["forwarded"] == 8 + 2 + 4  # every request answered once


def test_gen_label_cli_over_two_endpoints(llamacpp_server, two_proxies, tmp_path: Path, capsys):  # noqa: F811
    a, b = two_proxies
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"instruction": f"Say a number ({i})."}) + "\n" for i in range(4)))
    urls = f"{a.base_url}/v1,{b.base_url}/v1"
    out = tmp_path / "out"
    code = main(["label", "--input", str(inputs), "--out", str(out), "--teacher", f"openai:{llamacpp_server.model}",
                 "--base-url", urls, "--max-new-tokens", "2", "--temperature", "0", "--concurrency", "4",
                 "--no-progress"])
    assert code == 0
    table = read_table(out, "train")
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 4
    assert set(table.column("teacher").to_pylist()) == {f"openai:{llamacpp_server.model}"}
    assert a.counts["forwarded"] >= 1 and b.counts["forwarded"] >= 1
    assert a.counts["requests"] + b.counts["requests"] == 4
    endpoints = read_manifest(out)["funnel"]["engine"]["endpoints"]
    assert {url: e["requests"] for url, e in endpoints.items()} == {
        f"{a.base_url}/v1": a.counts["requests"], f"{b.base_url}/v1": b.counts["requests"]}
    summary = capsys.readouterr().err
    assert f"endpoint {a.base_url}/v1: {a.counts['requests']} requests" in summary
    assert f"endpoint {b.base_url}/v1: {b.counts['requests']} requests" in summary
