"""Issue 12, "Flags stop at the CLI": the flags become typed, picklable specs once (`gen.commands.common`); the
engine, the Ray workers and the methods take specs; library errors name the setting, the CLI names the flag."""

from __future__ import annotations

import pickle

import pytest

from gen.cli import build_parser, main
from gen.commands.common import engine_spec_from_args, sampling_from_args, scale_spec_from_args, teacher_spec_from_args
from gen.engine.engine import Engine, build_engine
from gen.engine.spec import EngineSpec, ScaleSpec
from gen.errors import InvalidSetting, UserError
from gen.methods import orca
from gen.methods.evol_instruct import parse_weights
from gen.scale.cluster import WorkerContext, gpus_per_worker, run_handler
from gen.scale.units import WorkUnit
from gen.teachers import load_teacher
from gen.teachers.base import ChatRequest, SamplingParams
from gen.teachers.pricing import Price
from gen.teachers.spec import TeacherSpec
from tests.engine.conftest import write_instructions

UNREACHABLE = "http://127.0.0.1:9/v1"  # nothing listens: teachers open without connecting


def parse(*argv: str):
    return build_parser().parse_args(["label", "--input", "x.jsonl", "--out", "out", *argv])


def test_flags_become_typed_picklable_specs():
    args = parse("--teacher", "openai:m", "--base-url", UNREACHABLE, "--transport", "sdk", "--concurrency", "3",
                 "--max-concurrency", "9", "--rpm", "60", "--timeout", "5", "--max-retries", "2", "--max-tokens", "100",
                 "--max-cost", "0.5", "--price", "1:2", "--no-progress", "--ray", "auto", "--workers", "3",
                 "--unit-size", "7", "--gpus-per-worker", "0.5", "--temperature", "0.2", "--seed", "4")
    teacher, engine, scale = teacher_spec_from_args(args), engine_spec_from_args(args), scale_spec_from_args(args)
    sampling = sampling_from_args(args)
    assert teacher == TeacherSpec("openai:m", base_url=UNREACHABLE, transport="sdk")
    assert engine == EngineSpec(concurrency=3, max_concurrency=9, rpm=60.0, timeout=5.0, max_retries=2,
                                max_total_tokens=100, max_cost=0.5, price=Price(1.0, 2.0), progress=False)
    assert scale == ScaleSpec(address="auto", workers=3, unit_size=7, gpus_per_worker=0.5)
    assert sampling == SamplingParams(max_tokens=512, temperature=0.2, top_p=1.0, seed=4)
    for spec in (teacher, engine, scale, sampling):  # what travels to Ray actors
        assert pickle.loads(pickle.dumps(spec)) == spec
    assert scale_spec_from_args(parse()) is None  # no --ray: one process


def test_worker_engine_has_no_budget_and_no_bar():
    spec = EngineSpec(concurrency=5, max_total_tokens=10, max_cost=1.0, price=Price(1, 1), progress=True)
    assert spec.for_worker() == EngineSpec(concurrency=5, price=Price(1, 1), progress=False)


def test_gpus_per_worker_default_follows_the_teacher():
    assert gpus_per_worker(TeacherSpec("openai:m"), ScaleSpec()) == 0.0
    assert gpus_per_worker(TeacherSpec("vllm:m", tensor_parallel_size=2), ScaleSpec(gpus_per_worker=0.25)) == 0.25


@pytest.mark.parametrize("argv,expect", [
    (["--concurrency", "0"], "--concurrency 0: must be at least 1"),
    (["--max-concurrency", "0"], "--max-concurrency 0: must be at least 1"),
    (["--max-retries", "-1"], "--max-retries -1: must be at least 0"),
    (["--timeout", "0"], "--timeout 0.0: must be positive"),
    (["--rpm", "-5"], "--rpm -5.0: must be positive"),
    (["--max-tokens", "0"], "--max-tokens 0: must be positive"),
    (["--max-cost", "0"], "--max-cost 0.0: must be positive"),
    (["--price", "1"], "--price '1': expected IN:OUT"),
    (["--tensor-parallel-size", "0"], "--tensor-parallel-size 0: must be at least 1"),
    (["--ray", "--workers", "0"], "--workers 0: must be at least 1"),
    (["--ray", "--unit-size", "0"], "--unit-size 0: must be at least 1"),
    (["--ray", "--cpus-per-worker", "-1"], "--cpus-per-worker -1.0: must be at least 0"),
    (["--max-cost", "1"], "--max-cost: no known price for teacher 'openai:m'"),  # the engine's error, flag added
])
def test_cli_names_the_flag(argv, expect, tmp_path, capsys):
    inputs = write_instructions(tmp_path / "in.jsonl", 2)
    rc = main(["label", "--input", str(inputs), "--out", str(tmp_path / "out"), "--teacher", "openai:m",
               "--base-url", UNREACHABLE, "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("gen label: error: ") and expect in err, err
    assert not (tmp_path / "out" / "train").exists()


def test_library_errors_name_the_setting_not_a_flag():
    teacher = load_teacher(TeacherSpec("openai:m", base_url=UNREACHABLE))
    try:
        for kwargs, setting in [({"concurrency": 0}, "concurrency"), ({"timeout": -1.0}, "timeout"),
                                ({"max_cost": float("nan")}, "max_cost"), ({"tpm": float("inf")}, "tpm"),
                                ({"max_total_tokens": 0}, "max_total_tokens"), ({"max_cost": 1.0}, "max_cost")]:
            with pytest.raises(InvalidSetting) as caught:
                Engine(teacher, own_teacher=False, **kwargs)
            assert caught.value.setting == setting and "--" not in str(caught.value), caught.value
    finally:
        teacher.close()
    for bad in ("deepen=x", "shorten=1", "deepen=-1", "deepen=nan", "deepen=0"):
        with pytest.raises(UserError) as caught:
            parse_weights(bad)
        assert "--" not in str(caught.value)


def test_evol_names_the_ops_flag(tmp_path, capsys):
    assert main(["evol", "--out", str(tmp_path / "out"), "--teacher", "openai:m", "--base-url", UNREACHABLE,
                 "--ops", "deepen=nan"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("gen evol: error: --ops 'deepen=nan': weight of operation 'deepen': nan is not a finite number "
                   ">= 0"), err


def test_load_teacher_takes_a_spec_or_a_name():
    spec = TeacherSpec("openai:m", base_url=UNREACHABLE)
    with load_teacher(spec) as a, load_teacher("openai:m", base_url=UNREACHABLE) as b:
        assert a.teacher_id == b.teacher_id == "openai:m"
    with pytest.raises(UserError, match="--base-url"):  # the backend's own check still applies to a spec
        load_teacher(TeacherSpec("vllm:some/model", base_url=UNREACHABLE))


def test_build_engine_from_specs_and_a_worker_from_specs(start_server, tmp_path):
    server = start_server("fixed:0")
    teacher = TeacherSpec("openai:test-model", base_url=server.v1_url)
    requests = [ChatRequest.make([{"role": "user", "content": f"item {i}"}], SamplingParams(max_tokens=8))
                for i in range(4)]
    with build_engine(teacher, EngineSpec(concurrency=2, progress=False), tmp_path / "cache.sqlite") as engine:
        assert engine.concurrency == 2 and all(r.ok for r in engine.run(requests))
    # What a Ray actor does, in this process: its engine from the same specs, without budget, sharing the cache.
    worker = WorkerContext(teacher, EngineSpec(max_cost=1.0, price=Price(1, 1)).for_worker(), 0,
                           str(tmp_path / "cache.sqlite"))
    try:
        assert worker.engine.budget.max_cost is None and not worker.engine.budget.limited
        assert worker.engine.progress is False
        outcome = run_handler(worker, WorkUnit(id="u1", kind="requests", payload=requests))
    finally:
        worker.close()
    assert len(outcome["answers"]) == 4 and outcome["engine"]["cache_hits"] == 4 and server.requests == 4


def test_orca_takes_typed_options():
    options = orca.SystemMessageOptions(system_messages="orca", cot=True, seed=3)
    choose = orca.system_chooser(options)
    first = choose([{"role": "user", "content": "hi"}])
    assert first.endswith(orca.COT_INSTRUCTION) and first == choose([{"role": "user", "content": "hi"}])
    assert orca.label_params(options) == {"system_messages": "orca", "cot": True}
    assert orca.label_params(orca.SystemMessageOptions()) == {}


@pytest.mark.parametrize("argv,expect", [
    (["evol", "--rounds", "0"], "--rounds 0: must be at least 1"),
    (["self-chat", "--max-turns", "0"], "--max-turns 0: must be at least 1"),
    (["self-chat", "--max-tokens-per-dialog", "0"], "--max-tokens-per-dialog 0: must be at least 1"),
    (["ultrachat", "--min-turns", "0"], "--min-turns 0: must be at least 1"),
    (["ultrachat", "--min-turns", "5", "--max-turns", "3"],
     "--max-turns 3: must be at least the smallest turn budget, 5"),
    (["ultrachat", "--num-dialogues", "0"], "--num-dialogues 0: must be at least 1"),
    (["self-instruct", "--seeds", "SEEDS"], "--seeds: need at least 8 seed tasks, got 2"),
])
def test_method_settings_name_the_flag(argv, expect, tmp_path, capsys):
    """The methods' configs name their setting (`rounds 0: ...`); `gen.cli` names the flag."""
    seeds = write_instructions(tmp_path / "seeds.jsonl", 2)
    argv = [str(seeds) if a == "SEEDS" else a for a in argv]
    rc = main([*argv, "--out", str(tmp_path / "out"), "--teacher", "openai:m", "--base-url", UNREACHABLE,
               "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"gen {argv[0]}: error: {expect}", err


def test_method_configs_name_the_setting_not_a_flag():
    from gen.methods.evol_instruct import EvolConfig
    from gen.methods.self_chat import SelfChatConfig
    from gen.methods.ultrachat import UltraChatConfig

    for make, setting in [(lambda: EvolConfig(rounds=0), "rounds"),
                          (lambda: SelfChatConfig(max_turns=0), "max_turns"),
                          (lambda: UltraChatConfig(min_turns=4, max_turns=2), "max_turns")]:
        with pytest.raises(InvalidSetting) as caught:
            make()
        assert caught.value.setting == setting and "--" not in str(caught.value)
