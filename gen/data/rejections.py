"""How a row is marked rejected, in one place: by a method while it generates (`MethodRun.reject`) and by a step
over a finished run (`gen dedup`, `gen filter` through `gen.data.rewrite`).

A filter only decides: a row filter returns the reasons a row fails (`filters.heuristics.row_quality_reasons`), a
pair filter returns pairs (row, the row kept in its place: `filters.dedup`, `filters.rouge.novelty_duplicates`).
Everything written follows from those verdicts: `mark_rejected` gives the row as it goes to the `rejected` split
(`filters`, `duplicate_of`), `Rejections` collects the verdicts of several filters over one run and counts them for
the funnel, and the manifest's `stats.<split>.by_reason` is counted from the shards' `filters` column
(`gen.data.shards.write_manifest`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def mark_rejected(row: Mapping[str, Any], reasons: Iterable[str], duplicate_of: str | None = None) -> dict[str, Any]:
    """A copy of `row` as the `rejected` split stores it: the reasons it already had (a run rejected earlier, a
    previous filter) followed by the new ones, each once; `duplicate_of` = the id of the row kept in its place."""
    marked = dict(row)
    previous = list(marked.get("filters") or [])
    marked["filters"] = previous + [r for r in dict.fromkeys(reasons) if r not in previous]
    if duplicate_of is not None:
        marked["duplicate_of"] = duplicate_of
    return marked


class Rejections:
    """The verdicts of the filters run over one table, by row position: reasons merged across filters (a row may
    fail several), the first `duplicate_of` wins."""

    def __init__(self) -> None:
        self.by_position: dict[int, tuple[list[str], str | None]] = {}

    def add(self, position: int, reasons: Iterable[str], duplicate_of: str | None = None) -> None:
        old, old_duplicate_of = self.by_position.get(position, ([], None))
        self.by_position[position] = (old + [r for r in reasons if r not in old],
                                      old_duplicate_of if old_duplicate_of is not None else duplicate_of)

    def __contains__(self, position: int) -> bool:
        return position in self.by_position

    def __len__(self) -> int:
        return len(self.by_position)

    def get(self, position: int) -> tuple[list[str], str | None] | None:
        return self.by_position.get(position)

    def counts(self) -> dict[str, int]:
        """Rejected rows per reason (a row with two reasons counts for both), for the funnel."""
        counts: dict[str, int] = {}
        for reasons, _ in self.by_position.values():
            for reason in reasons:
                counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items()))

    def funnel_entry(self, rows_in: int, **extra: Any) -> dict[str, Any]:
        """The step's entry in the manifest's funnel (`funnel.dedup`, `funnel.filter`): rows in, kept, rejected, and
        rejected per reason, plus what else the step counts."""
        return {"rows_in": rows_in, "kept": rows_in - len(self), "rejected": len(self), "by_reason": self.counts(),
                **extra}
