"""`gen evol --ray`: units of a round run on Ray actors; the rows are those of a one-process run, every unit is
committed once, a killed worker or a lost node costs only its unit, and the Redis index catches a near-copy made by another
worker before its answer is paid for.

The teacher is a real OpenAI-compatible HTTP server with scripted replies (tests/scale/conftest.py): the same
request always gets the same text, so runs can be compared row for row, and two inputs are made to evolve into a
near-duplicate pair."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from gen.data.shards import read_table
from tests.scale.conftest import (
    TWIN_EVOLUTION,
    kill_ray_node,
    run_gen,
    run_gen_killing,
    run_gen_killing_worker_1,
    write_inputs,
)
from tests.servers import free_port

N_INPUTS = 8
TWINS = (1, 6)  # positions of the twin inputs: in different units for every unit size below 6


def evol_argv(server, inputs: Path, out: Path, *extra: str) -> list[str]:
    return ["evol", "--input", str(inputs), "--rounds", "2", "--teacher", f"openai:{server.model}",
            "--base-url", server.v1_url, "--max-new-tokens", "32", "--seed", "7", "--no-progress",
            "--out", str(out), *extra]


def rows(out: Path, split: str) -> dict[str, dict]:
    table = read_table(out, split)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), f"duplicate row ids in {out}/{split}"
    return {row["id"]: row for row in table.to_pylist()}


def unit_records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "units").glob("*.json"))]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return write_inputs(tmp_path_factory.mktemp("inputs") / "inputs.jsonl", N_INPUTS, twins=TWINS)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, scripted_teacher, inputs) -> Path:
    """The reference: the same command without --ray."""
    out = tmp_path_factory.mktemp("one-process") / "run"
    done = run_gen(evol_argv(scripted_teacher, inputs, out))
    assert done.rc == 0, done.stderr
    return out


def assert_same_rows(out: Path, reference: Path) -> None:
    for split in ("train", "rejected"):
        got, want = rows(out, split), rows(reference, split)
        assert got.keys() == want.keys(), split
        for key, row in want.items():
            assert got[key] == row, (split, key)


def twin_rejection(out: Path) -> dict:
    rejected = [r for r in rows(out, "rejected").values() if "near_duplicate" in r["filters"]]
    assert rejected, "the twin near-duplicate was not rejected"
    return rejected[0]


def test_reference_run_rejects_the_later_twin(one_process, inputs):
    twin = twin_rejection(one_process)
    assert twin["messages"][0]["content"] == TWIN_EVOLUTION.format("output")  # the later twin (position 6)
    first_twin_input = json.loads(inputs.read_text().splitlines()[TWINS[0]])["instruction"]
    kept = [r for r in rows(one_process, "train").values() if r["round"] == 1]
    assert any(r["messages"][0]["content"] == TWIN_EVOLUTION.format("sales") for r in kept)
    parent = twin["duplicate_of"].split(":", 1)[1]  # "r1:<id of the first twin's input>"
    assert parent in {r["parent_id"] for r in kept if "sales" in r["messages"][0]["content"]}
    assert first_twin_input  # the inputs file is what the run read


def test_two_workers_write_the_rows_of_one_process(ray_cluster, scripted_teacher, inputs, one_process, tmp_path):
    out = tmp_path / "two-workers"
    done = run_gen(evol_argv(scripted_teacher, inputs, out, "--ray", ray_cluster, "--workers", "2",
                             "--unit-size", "2"))
    assert done.rc == 0, done.stderr
    assert_same_rows(out, one_process)
    records = unit_records(out)
    # the inputs unit + 2 rounds x 4 slices, each committed once, by both workers
    assert len(records) == 1 + 2 * (N_INPUTS // 2)
    assert {r["worker"] for r in records if "worker" in r} == {0, 1}
    assert sum(r["rows"].get("train", 0) for r in records) == len(rows(out, "train"))
    shard_units = {p.stem.removeprefix("unit-") for p in (out / "train").glob("unit-*.arrow")}
    assert shard_units <= {r["unit"] for r in records}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["funnel"] == json.loads((one_process / "manifest.json").read_text())["funnel"]


def test_redis_index_catches_a_near_copy_made_by_another_worker(ray_cluster, redis_server, scripted_teacher,
                                                                inputs, one_process, tmp_path):
    import redis

    out = tmp_path / "redis"
    url = f"redis://{redis_server['host']}:{redis_server['port']}/0"
    scripted_teacher.reset_stats()
    done = run_gen(evol_argv(scripted_teacher, inputs, out, "--ray", ray_cluster, "--workers", "2",
                             "--unit-size", "4", "--redis", url))
    assert done.rc == 0, done.stderr
    # the two twins were rewritten by different workers (slices 1 and 2 of round 1 went out together)
    round1 = [r for r in unit_records(out) if r.get("round") == 1]
    by_position = {}
    for record in round1:
        for key, _text in record["candidates"]:
            by_position[int(key.split("|")[0].split(":")[1])] = record["rewrite_worker"]
    assert by_position[TWINS[0]] != by_position[TWINS[1]]
    # the later twin is rejected as a near-duplicate of the earlier one, and its answer was never requested
    twin = twin_rejection(out)
    assert twin["messages"] == [{"role": "user", "content": TWIN_EVOLUTION.format("output")}]
    assert TWIN_EVOLUTION.format("output") not in scripted_teacher.prompts
    assert TWIN_EVOLUTION.format("sales") in scripted_teacher.prompts  # the kept twin was answered
    # the index lives in Redis, and the rows are those of the one-process run
    client = redis.Redis(**redis_server)
    assert client.keys("kdforge:evol:*"), "no index keys in Redis"
    assert_same_rows(out, one_process)


def test_ray_local_starts_its_own_cluster_whatever_ray_address_says(scripted_teacher, inputs, one_process, tmp_path):
    """`--ray local` never joins another cluster: not the one RAY_ADDRESS names (here a dead address), nor the last
    `ray start` of this machine (the file Ray keeps in /tmp/ray). It once did, and then refused its own num_cpus."""
    out = tmp_path / "local"
    dead = f"127.0.0.1:{free_port()}"
    done = run_gen(evol_argv(scripted_teacher, inputs, out, "--ray", "local", "--workers", "2", "--unit-size", "4"),
                   env={"RAY_ADDRESS": dead})
    assert done.rc == 0, done.stderr
    assert "started on worker 0" in done.stderr and "started on worker 1" in done.stderr
    assert_same_rows(out, one_process)


def test_a_killed_worker_costs_only_its_unit(ray_cluster, scripted_teacher, inputs, one_process, tmp_path):
    out = tmp_path / "killed"
    done = run_gen_killing_worker_1(evol_argv(scripted_teacher, inputs, out, "--ray", ray_cluster, "--workers", "2",
                                              "--unit-size", "1"))  # a request takes 0.25 s: killed mid-unit
    assert done.rc == 0, done.stderr
    assert "died running unit" in done.stderr
    records = unit_records(out)
    assert len(records) == 1 + 2 * N_INPUTS  # every unit committed, once
    assert_same_rows(out, one_process)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["units"]["redone_after_worker_death"] >= 1


def test_a_lost_node_costs_only_its_unit(two_node_cluster, scripted_teacher, inputs, one_process, tmp_path):
    """Two workers on two Ray nodes; the second node (its raylet, agents and the worker on it) is SIGKILLed while
    that worker runs a unit. The unit is redone on the other node, the run finishes there (Ray cannot bring the
    lost worker back: no CPU is left anywhere), and the rows are those of one process."""
    address, second_node = two_node_cluster
    out = tmp_path / "lost-node"

    def kill_second_node(_worker: int, pid: int) -> bool:
        try:
            on_it = os.getsid(pid) == second_node.pid  # its workers are in the session `ray start` leads
        except ProcessLookupError:
            return False
        if on_it:
            kill_ray_node(second_node)
        return on_it

    done = run_gen_killing(evol_argv(scripted_teacher, inputs, out, "--ray", address, "--workers", "2",
                                     "--unit-size", "1"), kill_second_node)
    log = done.stderr
    assert done.rc == 0, log
    assert len(set(re.findall(r"worker \d: pid \d+ on node \S+ \(id (\w+);", log))) == 2, log  # one per node
    # One death, one unit redone: the lost worker gets no unit of any later phase or round (Ray cannot restart it,
    # and it must not be tried again unit after unit).
    assert log.count("died running unit") == 1, log
    records = unit_records(out)
    assert len(records) == 1 + 2 * N_INPUTS  # every unit committed, once
    assert_same_rows(out, one_process)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["units"]["redone_after_worker_death"] == 1
