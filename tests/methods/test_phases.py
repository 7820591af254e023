"""The executor of a method's phases in one process (`LocalPhases`): phases in order on the round's items, the
barrier between them sees every output, rows go to the run's shards and the round's outcome comes back. (On Ray the
same method runs as units: tests/scale/test_ray_evol.py checks that the rows are those of one process.)"""

from __future__ import annotations

from dataclasses import dataclass

from gen.data.shards import read_table
from gen.methods.base import MethodRun
from gen.methods.phases import LocalPhases, PhasedBase
from gen.teachers.base import SamplingParams


@dataclass
class Item:
    id: str
    text: str


class Echo(PhasedBase):
    """Phase `words` splits each item; the barrier marks words that occur in more than one item; phase `keep` keeps
    items without such words as rows and rejects the others."""

    phases = ("words", "keep")

    def __init__(self, run: MethodRun):
        self.run = run
        self.seen: list[str] = []

    def phase(self, name, round_, data, given):
        self.seen.append(name)
        if name == "words":
            return [(item, item.text.split()) for item in data]
        kept = []
        for item, words in data:
            row = self.run.row(messages=[{"role": "user", "content": item.text}], operation="echo", round=round_)
            if given & set(words):
                self.run.reject(row, "shared_word", round=round_)
            else:
                self.run.keep(row, round=round_)
                kept.append(item.id)
        return kept

    def between(self, name, round_, outputs, earlier):
        counts: dict[str, int] = {}
        for pairs in outputs.values():
            for _, words in pairs:
                for word in set(words):
                    counts[word] = counts.get(word, 0) + 1
        shared = {w for w, n in counts.items() if n > 1}
        return {key: shared for key in outputs}

    def outcome(self, round_, outputs):
        return {"kept": outputs[-1]}


def test_local_phases_run_in_order_with_the_barrier_between(tmp_path):
    run = MethodRun(None, tmp_path, method="echo", sampling=SamplingParams(), log=lambda line: None)
    method = Echo(run)
    items = [Item("a", "red apple"), Item("b", "green pear"), Item("c", "red cherry")]
    outcomes = LocalPhases(run).run_round(method, 1, items)
    run.commit()
    assert method.seen == ["words", "keep"]
    assert outcomes == [{"kept": ["b"]}]
    assert [r["messages"][0]["content"] for r in read_table(tmp_path, "train").to_pylist()] == ["green pear"]
    rejected = read_table(tmp_path, "rejected").to_pylist()
    assert sorted(r["messages"][0]["content"] for r in rejected) == ["red apple", "red cherry"]
    assert run.funnel.total == {"rejected:shared_word": 2, "kept": 1}


def test_a_phased_method_is_rebuilt_from_its_spec_on_a_worker():
    run = MethodRun.in_memory(None, {"method": "echo", "sampling": SamplingParams(), "seed": 3, "system": None})
    method = Echo.from_spec(run, Echo(run).spec())
    assert isinstance(method, Echo) and method.run is run and method.item_id(Item("x", "y")) == "x"
    LocalPhases(run).run_round(method, 1, [Item("a", "one"), Item("b", "two")])
    assert len(run.train.rows) == 2 and run.rejected.rows == []  # collected in memory for the driver to commit
