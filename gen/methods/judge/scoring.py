"""A judge as a scorer of a run's rows (`gen score --judge`): judgements turned into `scores` entries, rejections
and funnel counts (`gen.data.scores.ScoreOutcome`), which the command writes through the run rewriter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gen.data.scores import ScoreOutcome
from gen.engine.budget import BUDGET_EXHAUSTED
from gen.methods.judge.pointwise import judge_rows
from gen.methods.judge.rubric import Rubric
from gen.methods.judge.verdict import JUDGE_UNPARSEABLE
from gen.teachers.base import SamplingParams


def judge_scores(engine: Any, rows: Sequence[Mapping[str, Any]], rubric: Rubric, params: SamplingParams,
                 *, desc: str | None = None) -> ScoreOutcome:
    """Score `rows` (common schema) with `rubric` through `engine`. Scored rows get the rubric's entry; rows whose
    verdict stays unparseable after the retry are rejected (`judge_unparseable`, their entry records the raw reply);
    rows whose request failed or was not sent (budget) are left as they are (a rerun asks again); rows with nothing
    to judge (no answer) are counted and left unscored."""
    judgements = judge_rows(engine, rows, rubric, params, desc=desc or f"judge:{rubric.name}")
    outcome = ScoreOutcome(scorer=rubric.name, settings={
        "judge": str(getattr(engine, "teacher_id", "unknown")), "rubric": rubric.name, "rubric_source": rubric.source,
        "template_hash": rubric.template_hash, "structured_output": params.json_schema is not None,
        "max_tokens": params.max_tokens, "temperature": params.temperature})
    counts = {"rows": len(rows), "scored": 0, "unparseable": 0, "retried": 0, "failed": 0, "not_sent_budget": 0,
              "nothing_to_judge": 0}
    for position, judgement in enumerate(judgements):
        counts["retried"] += len(judgement.replies) > 1
        if judgement.ok:
            counts["scored"] += 1
            outcome.entries[position] = judgement.entry()
        elif judgement.unparseable:
            counts["unparseable"] += 1
            outcome.entries[position] = judgement.entry()
            outcome.rejected[position] = JUDGE_UNPARSEABLE
        elif judgement.status == "failed":
            if judgement.error == BUDGET_EXHAUSTED:
                counts["not_sent_budget"] += 1
            else:
                counts["failed"] += 1
                outcome.first_error = outcome.first_error or judgement.error
        else:
            counts["nothing_to_judge"] += 1
    outcome.counts = counts
    outcome.exhausted = bool(getattr(engine, "exhausted", False))
    return outcome
