"""Benchmark: requests/s of `gen --ray` with 1, 2 and 4 workers when the endpoints' latency is the limit,
and what a killed worker costs.

Setup
  - Endpoints: `tests/latency_server.py` in its own process (`--servers K` processes behind one teacher with
    `--base-url URL1,URL2,...`), every request answered after a FIXED latency L (default 0.5 s). The server is not
    the limit: one asyncio loop, one small JSON encode per request; its max in-flight is printed as a check.
  - Workers: a local Ray cluster (`ray.init` once, in this process), then `gen.scale.cluster.RayCluster` actors built
    from the same argparse flags `gen ... --ray` parses (`--teacher openai:bench-model --base-url ...
    --concurrency C --max-concurrency C --out DIR`). With a FIXED per-worker concurrency C the ideal is
    W * C / L req/s for W workers. `--out` is a temp dir, as in a real run: the driver and the workers share its
    request cache (`OUT/.cache/requests.sqlite`); every run's prompts are new, so nothing is a cache hit.
  - What is timed: only `DistributedEngine.run(requests)` (the driver's cache look-up, cutting into units, the
    Ray dispatch loop, the commits). Ray start-up and actor creation are excluded, and each cluster answers one
    warm-up unit per worker first (its TCP connections open). Each run sends W * units_per_worker * unit_size
    requests (default 4 units of 64 per worker: every worker runs several units, the run lasts about the same
    for every W, so the last unit's tail weighs the same), max_tokens 32.
  - The clusters for 1, 2 and 4 workers live side by side and the repeats are interleaved (1, 2, 4, 1, 2, 4, ...)
    so a change in the shared machine's load hits every W alike; the table shows medians.
  - Columns: req/s; ideal = W * C / L; % of ideal; scaling efficiency = req/s(W) / (W * req/s(1)) (goal >= 0.9);
    driver CPU ms/req (this process, all threads, Ray's included, during the run / N); workers CPU ms/req (all
    actor processes, from /proc); server max in flight (W * C when the client keeps every slot busy).

Recovery (a killed worker)
  - A separate 2-worker cluster against a latency server run IN this process (so its per-request answer counter can
    be read). First an undisturbed run, then the same size of run with fresh prompts during which worker 1's
    process gets SIGKILL at `--kill-at` seconds (default: 1.75 unit durations: mid-unit, never at a boundary).
  - Times come from the cluster's own log lines, time-stamped as they are emitted in the driver: "died running
    unit" (the driver noticed: Ray reported the actor's death), "started on worker ..., attempt 2" (the dead unit
    re-dispatched: it waits for the next idle worker), "is back" (Ray restarted the actor; also
    `cluster.recoveries[-1]["actor_back_s"]`). All are measured from the kill, in this process's monotonic clock.
  - Checks: every request has exactly one result and all are answers; the driver committed every unit once
    (`stats["units"]`, one redone unit); the server answered every request at least once. Requests it answered twice
    are the killed unit's requests that finished before the kill but had not reached the shared cache yet (the
    worker's cache writes are batched); the ones that had are answered from the cache on the redo.

    .venv/bin/python bench/scale.py                   # default, ~2-3 minutes on 2 shared cores
    .venv/bin/python bench/scale.py --repeats 5 --latency 1.0 --concurrency 32 --servers 2
    .venv/bin/python bench/scale.py --no-recovery     # the scaling table only
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.engine import server_stats, start_server  # noqa: E402  (reuse: one latency server process per URL)

MODEL = "bench-model"
MAX_TOKENS = 32
SERVERS: list = []  # latency server processes, killed on any exit (a stalled run, SIGTERM)


def cpu_seconds() -> float:
    """User + system CPU of this process (all its threads, Ray's core-worker threads included) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of another process (a Ray actor) from /proc; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gen_flags(urls: list[str], concurrency: int, out: Path) -> argparse.Namespace:
    """The flags `gen ... --ray` would parse for this teacher, through gen's own argument helpers."""
    from gen.commands.common import add_engine_arguments, add_sampling_arguments, add_teacher_arguments

    parser = argparse.ArgumentParser()
    add_teacher_arguments(parser)
    add_engine_arguments(parser)  # with the scale flags (--ray, --workers, --unit-size, ...)
    add_sampling_arguments(parser, temperature=0.0, max_new_tokens=MAX_TOKENS)
    parser.add_argument("--out")  # each command adds its own; the actors' shared request cache lives under it
    return parser.parse_args(["--teacher", f"openai:{MODEL}", "--base-url", ",".join(urls),
                              "--concurrency", str(concurrency), "--max-concurrency", str(concurrency),
                              "--no-progress", "--out", str(out)])


def make_requests(tag: str, n: int) -> list:
    """n distinct chat requests; `tag` makes every run's prompts new (no cache hits across runs)."""
    from gen.teachers.base import ChatRequest, SamplingParams

    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    return [ChatRequest.make([{"role": "user", "content": f"[{tag}] Write two sentences about topic {i}."}], params)
            for i in range(n)]


class TimedLog:
    """The cluster's `log` callable: keeps (monotonic time, line) so recovery events can be timed from the kill."""

    def __init__(self, echo: bool):
        self.lines: list[tuple[float, str]] = []
        self.echo = echo

    def __call__(self, line: str) -> None:
        self.lines.append((time.monotonic(), line))
        if self.echo:
            print(f"  [cluster] {line}", file=sys.stderr, flush=True)

    def first_after(self, since: float, needle: str) -> float | None:
        return next((t - since for t, line in self.lines if t >= since and needle in line), None)


class Bench:
    """One Ray cluster of `workers` actors and the helpers to time `DistributedEngine.run` on it."""

    def __init__(self, urls: list[str], workers: int, concurrency: int, unit_size: int, out: Path, log: TimedLog):
        from gen.commands.common import engine_spec_from_args, teacher_spec_from_args
        from gen.engine.engine import default_cache_path
        from gen.engine.spec import ScaleSpec
        from gen.scale.cluster import RayCluster

        self.flags = gen_flags(urls, concurrency, out)
        self.workers = workers
        self.unit_size = unit_size
        self.cluster = RayCluster(teacher_spec_from_args(self.flags), engine_spec_from_args(self.flags),
                                  ScaleSpec(address="local", workers=workers), cache_path=default_cache_path(out),
                                  log=log)
        self.runs = 0

    def engine(self):
        from gen.engine.engine import default_cache_path
        from gen.scale.request_units import DistributedEngine

        return DistributedEngine(self.cluster, cache_path=default_cache_path(self.flags.out), unit_size=self.unit_size)

    def run(self, n: int, during=None) -> dict:
        """Time one `DistributedEngine.run` of n fresh requests; `during(bench)` starts alongside (the killer)."""
        self.runs += 1
        requests = make_requests(f"w{self.workers} run{self.runs} {time.time_ns()}", n)
        engine = self.engine()
        # On a shared machine another user's `ray stop --force` kills this cluster too, and the driver then hangs
        # waiting on the dead GCS: give up loudly instead (a run takes n / ideal seconds; allow 5x plus 60 s).
        expected = n / (self.workers * self.flags.concurrency / LATENCY[0])
        watchdog = threading.Timer(60 + 5 * expected, stalled, args=(f"{self.workers}-worker run of {n} requests",))
        watchdog.daemon = True
        watchdog.start()
        pids = list(self.cluster.pids.values())
        worker_cpu = sum(process_cpu_seconds(p) for p in pids)
        try:
            if during is not None:
                during(self)
            cpu, started = cpu_seconds(), time.monotonic()
            results = engine.run(requests)
            ended = time.monotonic()
            cpu = cpu_seconds() - cpu
        finally:
            watchdog.cancel()
            engine.cache.close()  # not engine.close(): that would close the cluster
        # Restarted actors are new processes: count the old ones up to now and the new ones from birth.
        worker_cpu = sum(process_cpu_seconds(p) for p in set(pids) | set(self.cluster.pids.values())) - worker_cpu
        return {"n": n, "seconds": ended - started, "started": started, "ended": ended, "cpu": cpu,
                "worker_cpu": worker_cpu, "results": results, "stats": dict(engine.stats)}

    def close(self) -> None:
        self.cluster.close()


LATENCY = [0.5]  # --latency, for the watchdog


def stalled(what: str) -> None:
    print(f"bench/scale.py: the {what} stalled: the Ray cluster is gone (another process ran `ray stop`?) or the "
          "machine is overloaded; giving up", file=sys.stderr, flush=True)
    kill_servers()
    os._exit(3)


def kill_servers() -> None:
    for process in SERVERS:
        if process.poll() is None:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------------------------- scaling


def scaling(args, urls: list[str], tmp: Path, log: TimedLog) -> list[dict]:
    benches = {w: Bench(urls, w, args.concurrency, args.unit_size, tmp / f"w{w}", log) for w in args.workers}
    try:
        for w, bench in benches.items():  # warm-up: one unit per worker (connections, first imports)
            bench.run(w * args.unit_size)
        samples: dict[int, list[dict]] = {w: [] for w in benches}
        for repeat in range(args.repeats):
            for w, bench in benches.items():
                n = w * args.units_per_worker * args.unit_size
                for url in urls:
                    server_stats(url, reset=True)
                run = bench.run(n)
                stats = [server_stats(url) for url in urls]
                ok = sum(r.ok for r in run["results"])
                if ok != n:
                    raise RuntimeError(f"{w} workers: only {ok} of {n} requests answered")
                sample = {"rps": n / run["seconds"], "cpu_ms": 1000 * run["cpu"] / n,
                          "worker_cpu_ms": 1000 * run["worker_cpu"] / n,
                          "in_flight": sum(s["max_in_flight"] for s in stats), "n": n}
                samples[w].append(sample)
                print(f"repeat {repeat + 1} W={w}: {sample['rps']:.1f} req/s "
                      f"({100 * sample['rps'] / ideal(args, w):.0f}% of ideal), driver {sample['cpu_ms']:.2f} ms "
                      f"CPU/req, max in flight {sample['in_flight']}", file=sys.stderr, flush=True)
    finally:
        for bench in benches.values():
            bench.close()
    rows = []
    for w, runs in samples.items():
        rows.append({"workers": w, **{k: statistics.median(r[k] for r in runs) for k in runs[0]},
                     "spread": (min(r["rps"] for r in runs), max(r["rps"] for r in runs))})
    return rows


def ideal(args, workers: int) -> float:
    return workers * args.concurrency / args.latency


def render_scaling(args, rows: list[dict]) -> str:
    one = next((r["rps"] for r in rows if r["workers"] == 1), None)
    header = ["workers", "requests", "req/s (min-max)", "ideal req/s", "% of ideal", "scaling vs 1 worker",
              "driver CPU ms/req", "workers CPU ms/req", "server max in flight"]
    lines = [f"fixed latency {args.latency} s, {args.servers} server process(es), concurrency {args.concurrency} per "
             f"worker, unit size {args.unit_size}, {args.units_per_worker} units per worker, max_tokens {MAX_TOKENS}; "
             f"median of {args.repeats} interleaved run(s)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        efficiency = f"{r['rps'] / (r['workers'] * one):.2f}" if one else "-"
        lines.append("| " + " | ".join([
            str(r["workers"]), str(r["n"]), f"{r['rps']:.1f} ({r['spread'][0]:.1f}-{r['spread'][1]:.1f})",
            f"{ideal(args, r['workers']):.0f}", f"{100 * r['rps'] / ideal(args, r['workers']):.0f}%", efficiency,
            f"{r['cpu_ms']:.2f}", f"{r['worker_cpu_ms']:.2f}", str(r["in_flight"])]) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- recovery


def recovery(args, tmp: Path, log: TimedLog) -> dict:
    from tests.latency_server import LatencyServer

    workers, victim = 2, 1
    n = workers * args.recovery_units * args.unit_size
    unit_seconds = args.unit_size / args.concurrency * args.latency  # one unit at full concurrency
    kill_at = args.kill_at if args.kill_at is not None else 1.75 * unit_seconds
    with LatencyServer(f"fixed:{args.latency}", model=MODEL) as server:
        bench = Bench([server.v1_url], workers, args.concurrency, args.unit_size, tmp / "recovery", log)
        try:
            bench.run(workers * args.unit_size)  # warm-up
            undisturbed = bench.run(n)
            server.reset_stats()
            killed: dict = {}

            def kill_later(b: Bench) -> None:
                def kill() -> None:
                    killed["pid"] = b.cluster.pids[victim]
                    killed["at"] = time.monotonic()
                    os.kill(killed["pid"], signal.SIGKILL)

                timer = threading.Timer(kill_at, kill)
                timer.daemon = True
                timer.start()
                killed["timer"] = timer

            disturbed = bench.run(n, during=kill_later)
            killed["timer"].cancel()
            if "at" not in killed:
                raise RuntimeError(f"the run ended before the kill at {kill_at:.1f} s: raise --recovery-units")
            back_late = None
            if not any(t >= killed["at"] and "is back" in line for t, line in log.lines):
                # Ray restarts the actor even when the run is over; wait for it so the table can say when.
                back_late = wait_back(bench.cluster, victim, killed)
            # The server's log of answered prompts (each run's prompts are unique): answers per request.
            answers = collections.Counter(server.prompts)
            keys = [r.request.messages[-1][1] for r in disturbed["results"]]
        finally:
            bench.close()
    t0 = killed["at"]
    records = [r for r in bench.cluster.recoveries if r["died_at"] >= t0]
    back_s = None
    if records and "actor_back_s" in records[0]:
        back_s = records[0]["died_at"] - t0 + records[0]["actor_back_s"]
    results = disturbed["results"]
    units = -(-n // args.unit_size)
    return {
        "n": n, "kill_at": kill_at, "pid": killed["pid"], "unit_seconds": unit_seconds,
        "undisturbed_s": undisturbed["seconds"], "disturbed_s": disturbed["seconds"],
        "noticed_s": log.first_after(t0, "died running unit"),
        "redispatched_s": log.first_after(t0, "attempt 2"),
        "back_s": back_s, "back_late_s": back_late,
        "results": len(results), "answers_ok": sum(r.ok for r in results),
        "distinct": len({r.request.cache_key(bench.cluster.teacher_id) for r in results}),
        "units_committed": disturbed["stats"]["units"], "units": units,
        "redone_units": bench.cluster.redone_units,
        "server_answered": sum(answers[k] for k in set(keys)),
        "keys_answered": sum(1 for k in set(keys) if answers[k] >= 1),
        "keys_twice": sum(1 for k in set(keys) if answers[k] >= 2),
        "keys_more": sum(1 for k in set(keys) if answers[k] >= 3),
        "cache_hits": disturbed["stats"]["cache_hits"],
    }


def wait_back(cluster, worker: int, killed: dict, timeout: float = 60.0) -> float | None:
    """Seconds from the kill until the restarted actor answers `ready` (asked after the run ended)."""
    try:
        info = cluster.ray.get(cluster.actors[worker].ready.remote(), timeout=timeout)
    except Exception:
        return None
    return time.monotonic() - killed["at"] if info["pid"] != killed["pid"] else None


def render_recovery(args, r: dict) -> str:
    def s(value):
        return "-" if value is None else f"{value:.2f} s"

    extra = r["disturbed_s"] - r["undisturbed_s"]
    back = s(r["back_s"]) if r["back_s"] is not None else (
        f"{s(r['back_late_s'])} (after the run ended)" if r["back_late_s"] is not None else "not back")
    rows = [
        ("requests per run / units", f"{r['n']} / {r['units']} of {args.unit_size} (a unit takes ~{r['unit_seconds']:.1f} s)"),
        ("SIGKILL to worker 1 (pid)", f"at {r['kill_at']:.2f} s into the run ({r['pid']})"),
        ("kill -> driver notices (\"died running unit\")", s(r["noticed_s"])),
        ("kill -> dead unit re-dispatched (\"attempt 2\")", s(r["redispatched_s"])),
        ("kill -> Ray restarted the actor (\"is back\")", back),
        ("undisturbed run", s(r["undisturbed_s"])),
        ("run with the kill", s(r["disturbed_s"])),
        ("extra wall time", f"{extra:.2f} s ({100 * extra / r['undisturbed_s']:.0f}%)"),
        ("results / answers / distinct requests", f"{r['results']} / {r['answers_ok']} / {r['distinct']} (of {r['n']})"),
        ("units committed (redone)", f"{r['units_committed']} of {r['units']} ({r['redone_units']} redone)"),
        ("server: requests answered >= 1 time", f"{r['keys_answered']} of {r['n']}"),
        ("server: answered twice (lost with the dead worker, redone)", f"{r['keys_twice']} ({r['keys_more']} 3+ times)"),
        ("redo answered from the shared request cache", str(r["cache_hits"])),
        ("server answers in all", str(r["server_answered"])),
    ]
    lines = [f"2 workers, concurrency {args.concurrency} each, fixed latency {args.latency} s (server in the driver "
             "process)", "", "| recovery | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts to compare (default 1,2,4)")
    parser.add_argument("--latency", type=float, default=0.5, help="fixed server latency, seconds (default 0.5)")
    parser.add_argument("--concurrency", type=int, default=16, help="fixed concurrency per worker (default 16)")
    parser.add_argument("--unit-size", type=int, default=64, help="requests per unit (default 64, gen's default)")
    parser.add_argument("--units-per-worker", type=int, default=4, help="units per worker per run (default 4)")
    parser.add_argument("--servers", type=int, default=1, help="latency server processes behind the teacher")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per worker count (medians)")
    parser.add_argument("--no-recovery", action="store_true", help="skip the killed-worker measurement")
    parser.add_argument("--recovery-units", type=int, default=6, help="units per worker in the recovery runs")
    parser.add_argument("--kill-at", type=float, default=None, help="seconds into the run (default 1.75 units)")
    parser.add_argument("--deadline", type=float, default=900.0, help="give up after this many seconds")
    parser.add_argument("--verbose", action="store_true", help="echo the cluster's log lines")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]

    import logging

    import ray

    load_before = os.getloadavg()
    began = time.monotonic()
    log = TimedLog(args.verbose)
    LATENCY[0] = args.latency
    deadline = threading.Timer(args.deadline, stalled, args=(f"whole benchmark ({args.deadline:.0f} s)",))
    deadline.daemon = True  # also covers Ray start-up and actor creation, which have no timeout of their own
    deadline.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`, kill: run the cleanup below
    servers = []
    for _ in range(args.servers):
        servers.append(start_server(f"fixed:{args.latency}", 0))
        SERVERS.append(servers[-1][0])
    urls = [url for _, url in servers]
    # One local Ray runtime for every cluster below (RayCluster joins it and does not shut it down): room for all
    # the scaling clusters' actors at once (1 CPU each, as `gen --ray` asks; they mostly wait on the network).
    try:
        # address="local": a new runtime, never one RAY_ADDRESS or a stale `ray start` on this machine points at
        ray.init(address="local", num_cpus=max(sum(args.workers), 2), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        print(f"Ray up after {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="kdforge-bench-scale-") as tmp:
            rows = scaling(args, urls, Path(tmp), log)
            print(render_scaling(args, rows))
            if not args.no_recovery:
                print()
                print(render_recovery(args, recovery(args, Path(tmp), log)))
    finally:
        kill_servers()
        ray.shutdown()
    print(f"\n{os.cpu_count()} cores; load average (1/5/15 min) before {'/'.join(f'{x:.1f}' for x in load_before)},"
          f" after {'/'.join(f'{x:.1f}' for x in os.getloadavg())}; {time.monotonic() - began:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
