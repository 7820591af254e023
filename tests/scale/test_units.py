"""UnitStore: a unit is committed at most once, a half-committed unit (shards without a record) is cleaned up and
redone, rows already in the split are never written twice; unit ids depend on what the unit is, not when it ran."""

from __future__ import annotations

from gen.data.records import make_row, rows_to_table
from gen.data.shards import read_table
from gen.scale.units import UnitStore, slices, unit_id


def row(text: str) -> dict:
    return make_row(messages=[{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}],
                    method="evol_instruct", operation="deepen", round=1, teacher="t")


def test_a_unit_is_committed_once_with_its_rows_and_record(tmp_path):
    store = UnitStore(tmp_path)
    uid = unit_id("evol_instruct", 0, 1, "evolve", ["a", "b"])
    assert store.commit(uid, {"train": [row("one"), row("two")], "rejected": [row("three")]}, {"round": 1})
    assert not store.commit(uid, {"train": [row("four")]}, {"round": 1})  # never twice
    assert sorted(r["messages"][0]["content"] for r in read_table(tmp_path, "train").to_pylist()) == ["one", "two"]
    assert read_table(tmp_path, "rejected").num_rows == 1
    record = store.committed(uid)
    assert record["rows"] == {"train": 2, "rejected": 1} and record["round"] == 1
    # a new store on the same directory (a rerun of the driver) sees the commit
    assert UnitStore(tmp_path).committed(uid) == record


def test_shards_without_a_record_are_removed_and_the_unit_redone(tmp_path):
    store = UnitStore(tmp_path)
    done = unit_id("m", 0, 1, "p", ["a"])
    half = unit_id("m", 0, 1, "p", ["b"])
    store.commit(done, {"train": [row("kept")]}, {})
    store._write_shard("train", half, rows_to_table([row("x")]))  # a driver died before the record
    assert read_table(tmp_path, "train").num_rows == 2  # the half-committed shard is visible until cleaned
    removed = UnitStore(tmp_path).clean_orphans()
    assert [p.name for p in removed] == [f"unit-{half}.arrow"]
    assert read_table(tmp_path, "train").num_rows == 1
    assert UnitStore(tmp_path).commit(half, {"train": [row("x")]}, {})  # redone and committed
    assert read_table(tmp_path, "train").num_rows == 2


def test_rows_already_in_the_split_are_not_written_again(tmp_path):
    store = UnitStore(tmp_path)
    store.commit(unit_id("m", 0, 1, "p", ["a"]), {"train": [row("same")]}, {})
    store.commit(unit_id("m", 0, 1, "p", ["b"]), {"train": [row("same"), row("new")]}, {})
    ids = read_table(tmp_path, "train").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 2


def test_unit_ids_and_slices_are_deterministic():
    assert unit_id("m", 1, 2, "p", ["a", "b"]) == unit_id("m", 1, 2, "p", ["a", "b"])
    assert len({unit_id("m", 1, 2, "p", ["a", "b"]), unit_id("m", 1, 3, "p", ["a", "b"]),
                unit_id("m", 2, 2, "p", ["a", "b"]), unit_id("m", 1, 2, "p", ["b", "a"])}) == 4
    assert slices(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
