"""The `scores` column: every scorer's verdict on a row, as JSON text `{scorer_name: {"value": float, ...details}}`.

One column for all scorers (a judge's rubric from `gen score --judge`, IFD from `gen score --ifd`, ...), so adding a
scorer changes no schema. Each scorer owns one entry, named after it (`quality`, `ultrafeedback`, `ifd`), and
rewrites only that entry; `value` is the number `gen filter --min-score`, `gen dedup --keep score`, `gen stats` and
the card read (None when the scorer gave no score, e.g. a verdict it could not parse). Other keys are the scorer's
details, e.g. for a judge:

    {"quality": {"value": 7.0, "aspects": {"quality": 7.0}, "rationale": "...", "judge": "openai:gpt-4o-mini",
                 "rubric": "quality", "template_hash": "3f2a9c01b2de", "raw": "{\\"quality\\": 7, ...}"}}

Rows and tables:

    row["scores"] = merge_entry(row.get("scores"), "ifd", {"value": 0.83, "model": "hf:..."})
    texts = scores_texts(table)                      # one JSON text (or None) per row; None for old shards
    table = with_scores(table, texts)                # the column replaced or added
    value = score_value(row.get("scores"), "ultrafeedback", aspect="honesty")
    name, aspect = resolve_score_name(texts, "ultrafeedback.honesty")   # or None: the only scorer present
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from gen.errors import UserError

SCORES_COLUMN = "scores"


def parse_scores(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The scores of one row as a dict ({} for null/empty). Malformed JSON is a ValueError naming it."""
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"scores column is not JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(value, dict):
        raise ValueError("scores column is not a JSON object")
    return value


def dump_scores(scores: Mapping[str, Any] | None) -> str | None:
    """Canonical JSON text of a row's scores (None for none): the same scores always give the same bytes."""
    if not scores:
        return None
    return json.dumps(scores, sort_keys=True, ensure_ascii=False, allow_nan=False)


def merge_entry(text: str | Mapping[str, Any] | None, name: str, entry: Mapping[str, Any] | None) -> str | None:
    """A row's scores with scorer `name`'s entry set to `entry` (removed when None); the other scorers' untouched."""
    scores = parse_scores(text)
    if entry is None:
        scores.pop(name, None)
    else:
        scores[name] = dict(entry)
    return dump_scores(scores)


def entry_value(entry: Mapping[str, Any] | None, aspect: str | None = None) -> float | None:
    """A scorer entry's number: its `value`, or one aspect's (`entry["aspects"][aspect]`); None when absent or not a
    finite number."""
    if not isinstance(entry, Mapping):
        return None
    value = entry.get("value") if aspect is None else (entry.get("aspects") or {}).get(aspect)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def score_value(text: str | Mapping[str, Any] | None, name: str, aspect: str | None = None) -> float | None:
    """Scorer `name`'s value of one row (or one of its aspects); None when that scorer gave this row none."""
    return entry_value(parse_scores(text).get(name), aspect)


def scores_texts(table: pa.Table) -> list[str | None]:
    """The `scores` column of a table as a list (all None when the table predates the column)."""
    if SCORES_COLUMN not in table.column_names:
        return [None] * table.num_rows
    return table.column(SCORES_COLUMN).to_pylist()


def with_scores(table: pa.Table, texts: Sequence[str | None]) -> pa.Table:
    """`table` with its `scores` column replaced by `texts` (added, where ROW_SCHEMA has it, when missing)."""
    if len(texts) != table.num_rows:
        raise ValueError(f"{len(texts)} scores for {table.num_rows} rows")
    column = pa.array(list(texts), type=pa.string())
    names = table.column_names
    if SCORES_COLUMN in names:
        return table.set_column(names.index(SCORES_COLUMN), pa.field(SCORES_COLUMN, pa.string()), column)
    return table.append_column(pa.field(SCORES_COLUMN, pa.string()), column)


def scorer_names(texts: Iterable[str | None]) -> dict[str, set[str]]:
    """Every scorer present in these rows, with the aspects its entries name."""
    names: dict[str, set[str]] = {}
    for text in texts:
        for name, entry in parse_scores(text).items():
            aspects = names.setdefault(name, set())
            if isinstance(entry, Mapping) and isinstance(entry.get("aspects"), Mapping):
                aspects.update(entry["aspects"])
    return names


def resolve_score_name(texts: Sequence[str | None], requested: str | None, *, where: str = "the run"
                       ) -> tuple[str, str | None]:
    """(scorer, aspect or None) from `NAME` or `NAME.ASPECT`; None picks the only scorer present. A UserError names
    the scorers there are when the request matches none (or several, with nothing requested)."""
    present = scorer_names(texts)
    if not present:
        raise UserError(f"{where}: no row has scores (run `gen score` first)")
    if requested is None:
        if len(present) > 1:
            raise UserError(f"{where}: several scorers ({', '.join(sorted(present))}); name one with --score-name")
        return next(iter(present)), None
    name, _, aspect = requested.partition(".")
    if name not in present:
        raise UserError(f"{where}: no scores named '{name}' (present: {', '.join(sorted(present))})")
    if aspect and aspect not in present[name]:
        known = ", ".join(sorted(present[name])) or "none"
        raise UserError(f"{where}: scorer '{name}' has no aspect '{aspect}' (aspects: {known})")
    return name, aspect or None


def values_of(texts: Sequence[str | None], name: str, aspect: str | None = None) -> list[float | None]:
    """One value per row (None where scorer `name` gave none)."""
    return [score_value(text, name, aspect) for text in texts]


def distribution(texts: Sequence[str | None]) -> dict[str, dict[str, Any]]:
    """Per scorer (and per aspect, as `name.aspect`): rows with a value, mean, min, median, max, and a histogram of
    the values (rounded to 2 decimals) — what `gen stats` prints and the card plots."""
    import statistics

    columns: dict[str, list[float]] = {}
    missing: dict[str, int] = {}
    for text in texts:
        for name, entry in parse_scores(text).items():
            value = entry_value(entry)
            if value is None:
                missing[name] = missing.get(name, 0) + 1
            else:
                columns.setdefault(name, []).append(value)
            aspects = entry.get("aspects") if isinstance(entry, Mapping) else None
            if isinstance(aspects, Mapping) and len(aspects) > 1:
                for aspect in aspects:
                    aspect_value = entry_value(entry, aspect)
                    if aspect_value is not None:
                        columns.setdefault(f"{name}.{aspect}", []).append(aspect_value)
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(set(columns) | set(missing)):
        values = sorted(columns.get(key, []))
        histogram: dict[str, int] = {}
        for value in values:
            label = f"{round(value, 2):g}"
            histogram[label] = histogram.get(label, 0) + 1
        out[key] = {"rows": len(values), "no_value": missing.get(key, 0),
                    "mean": round(statistics.fmean(values), 4) if values else None,
                    "min": values[0] if values else None, "median": statistics.median(values) if values else None,
                    "max": values[-1] if values else None, "histogram": histogram}
    return out


# ---------------------------------------------------------------------------------------------- one scorer's pass


@dataclass
class ScoreOutcome:
    """What one scorer did over a run's rows (by row position): `entries` to write under its name, `rejected` rows
    with their reason (e.g. `judge_unparseable`), `counts` for the funnel, `first_error` of requests that failed (a
    rerun retries them), `exhausted` when a budget stopped it, and `settings` for the manifest."""

    scorer: str
    entries: dict[int, dict[str, Any]] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    exhausted: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return int(self.counts.get("failed", 0))


def apply_scores(texts: Sequence[str | None], outcomes: Iterable[ScoreOutcome]) -> list[str | None]:
    """The `scores` texts with every outcome's entries merged in (each scorer's own entry replaced, others kept)."""
    texts = list(texts)
    for outcome in outcomes:
        for position, entry in outcome.entries.items():
            texts[position] = merge_entry(texts[position], outcome.scorer, entry)
    return texts
