"""A method's rerun never undoes what `gen filter`/`gen dedup` decided (issue 18 #1): rows they moved to `rejected`
count as done, so the rerun (all from the cache) writes nothing, in one process (`MethodRun`'s shard writers) as on
Ray (`UnitStore`). Before, "done" meant "in train" and every rejected row came back to train."""

from __future__ import annotations

import shutil

from gen.cli import main
from gen.data.records import make_row
from gen.data.shards import ShardWriter, read_manifest, read_table
from gen.engine.engine import Engine
from gen.methods import evol_instruct as evol
from gen.methods.base import MethodRun
from gen.scale.units import UnitStore
from gen.teachers.base import SamplingParams
from tests.methods.conftest import EVOL_ARGV, run_gen, teacher_argv
from tests.methods.test_evol_loop_reasons import ScriptedTeacher, _items


def ids_by_split(out) -> dict[str, list[str]]:
    return {split: sorted(read_table(out, split).column("id").to_pylist()) for split in ("train", "rejected")}


def reject_the_longest_answers(out) -> None:
    """`gen filter` with a length bound that rejects at least the longest answer still in train."""
    lengths = [len(row["messages"][-1]["content"].strip()) for row in read_table(out, "train").to_pylist()]
    assert lengths and max(lengths) > 1, lengths
    assert main(["filter", str(out), "--keep-truncated", "--copies-question", "0", "--keep-refusals",
                 "--keep-non-text", "--keep-trivial", "--max-chars", str(max(lengths) - 1)]) == 0


def evolve_scripted(out) -> ScriptedTeacher:
    teacher = ScriptedTeacher()
    engine = Engine(teacher, cache_path=out / ".cache" / "requests.sqlite", progress=False)
    run = MethodRun(engine, out, method=evol.METHOD, sampling=SamplingParams(max_tokens=32), seed=0,
                    log=lambda line: None)
    evol.EvolInstruct(run, evol.EvolConfig(rounds=2, weights=evol.parse_weights("deepen=1"))).evolve(_items())
    run.commit()
    engine.close()
    return teacher


def test_scripted_evol_rerun_after_dedup_and_filter_writes_nothing(tmp_path):
    out = tmp_path / "run"
    assert evolve_scripted(out).calls > 0
    first = ids_by_split(out)
    n = len(first["train"]) + len(first["rejected"])

    # The scripted teacher gives the surviving evolutions the same answer: near-duplicates on the answers.
    assert main(["dedup", str(out), "--on", "answer", "--shingle", "char"]) == 0
    deduped = ids_by_split(out)
    assert len(deduped["rejected"]) > len(first["rejected"])
    assert evolve_scripted(out).calls == 0  # everything from the cache ...
    assert ids_by_split(out) == deduped  # ... and nothing moved back to train, nothing duplicated

    reject_the_longest_answers(out)
    filtered = ids_by_split(out)
    assert len(filtered["rejected"]) > len(deduped["rejected"])
    evolve_scripted(out)
    assert ids_by_split(out) == filtered
    assert len(set(filtered["train"] + filtered["rejected"])) == len(filtered["train"] + filtered["rejected"]) == n
    manifest = read_manifest(out)
    assert manifest["funnel"]["dedup"]["rejected"] == len(deduped["rejected"]) - len(first["rejected"])
    assert manifest["funnel"]["filter"]["rejected"] == len(filtered["rejected"]) - len(deduped["rejected"])


def test_unit_store_counts_rows_in_every_split_as_done(tmp_path):
    """The Ray driver's commit path: a unit never writes a row that another split already holds."""
    rows = [make_row(messages=[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
                     method="evol_instruct") for i in range(3)]
    with ShardWriter(tmp_path, "train") as writer:
        writer.write(rows[0])
    with ShardWriter(tmp_path, "rejected") as writer:
        writer.write({**rows[1], "filters": ["too_long"]})  # moved there by `gen filter`
    store = UnitStore(tmp_path)
    assert store.commit("u1", {"train": rows, "rejected": []}, {})
    assert ids_by_split(tmp_path) == {"train": sorted([rows[0]["id"], rows[2]["id"]]), "rejected": [rows[1]["id"]]}


def test_evol_cli_rerun_after_filter_on_llamacpp(evol_run, llamacpp_server, tmp_path):  # noqa: F811
    out = tmp_path / "evol"
    shutil.copytree(evol_run.out, out)  # the session's run (with its request cache), left as it is for other tests
    reject_the_longest_answers(out)
    filtered = ids_by_split(out)
    again = run_gen(EVOL_ARGV + teacher_argv(llamacpp_server), out)
    assert again.rc == 0
    assert again.engine()["sent"] == 0
    assert ids_by_split(out) == filtered
