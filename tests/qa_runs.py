"""A labeled run of (question, answer) rows, as `gen label` leaves one: what the judge tests score."""

from __future__ import annotations

from gen.data.records import make_row
from gen.data.shards import ShardWriter, write_manifest


def write_qa_run(run, pairs) -> None:
    """A run directory with one `label` row per (question, answer) in `pairs` and an empty funnel."""
    rows = [make_row(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}], method="label")
            for q, a in pairs]
    with ShardWriter(run, "train") as writer:
        writer.write_many(rows)
    write_manifest(run, config={}, funnel={})
