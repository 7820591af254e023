"""`gen eval`'s work: the student answers held-out prompts, a baseline answers them too (a run's rows, or another
model), and a judge compares the two answers of every prompt in both orders (`gen.methods.judge.pairwise`).

Every model call goes through the engine and its request cache in the output directory (`OUT/.cache/...`): a rerun
sends nothing already answered, and a killed run resumes where it stopped. In-process generators (`hf:`, `vllm:`)
answer a whole engine round at once and the cache is written when the round returns, so prompts go to them in
rounds of `round_size`: a kill loses at most one round.

A prompt without a verdict is never a win or a loss: it is written to `rejected.jsonl` with its reason
(`student_failed`, `no_baseline_answer`, `baseline_failed`, `judge_unparseable`, `judge_failed`) and counted in
`eval.json`'s `rejected`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen.data.inputs import InputRow, iter_records, parse_messages, read_inputs
from gen.engine.engine import Engine, build_engine, default_cache_path
from gen.engine.spec import EngineSpec
from gen.errors import UserError
from gen.methods.evaluation import stats
from gen.methods.judge.pairwise import PairItem, judge_pairwise, position_flip_rate
from gen.methods.judge.pointwise import judge_params
from gen.methods.judge.rubric import load_rubric
from gen.teachers.base import ChatRequest, SamplingParams
from gen.teachers.spec import TeacherSpec

JUDGE_UNPARSEABLE = "judge_unparseable"


@dataclass(frozen=True)
class EvalSpec:
    """What `gen eval` compares and how.

    student: the student's generator (`hf:PATH` or `vllm:PATH`). baseline_run: a run directory whose rows hold the
    baseline's answers (matched to the prompts by conversation), or baseline_model: a model that answers the
    prompts now (exactly one of the two). judge: the judge model; rubric: a pairwise rubric name or file.
    params: the sampling of the student's (and a baseline model's) answers. judge_max_tokens: the judge's reply
    budget (None: the judge library's default). bootstrap / seed: resamples and seed of the win-rate interval.
    round_size: prompts per engine round of in-process generators (what a kill can lose).
    student_options: backend options of the student's generator (`batch_size` of `hf:`).
    """

    student: TeacherSpec
    judge: TeacherSpec
    baseline_run: str | None = None
    baseline_model: TeacherSpec | None = None
    engine: EngineSpec = field(default_factory=EngineSpec)
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_tokens=512, temperature=0.0))
    rubric: str = "pairwise"
    judge_max_tokens: int | None = None
    bootstrap: int = 2000
    seed: int = 0
    round_size: int = 64
    student_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.baseline_run is None) == (self.baseline_model is None):
            raise ValueError("give exactly one of baseline_run and baseline_model")


def prompt_key(messages: Sequence[Mapping[str, str]], system: str | None) -> str:
    """A prompt's identity for matching a baseline run's rows: its system message and its turns."""
    return json.dumps([system or None, [[m["role"], m["content"]] for m in messages]], ensure_ascii=False)


def read_prompts(source: str | Path, limit: int | None = None) -> list[InputRow]:
    """The held-out prompts: any input `gen label` reads (JSONL/JSON/text/Arrow/Parquet, or a run directory, whose
    rows' trailing answers are dropped)."""
    return read_inputs(source, limit=limit, flag="--prompts")


def baseline_answers_from_run(run_dir: str | Path) -> tuple[dict[str, str], dict[str, str], str | None]:
    """The last assistant turn of every row of `run_dir`, by the prompt it answers: ({prompt_key: answer},
    {key of the turns alone (no system): answer}, the teacher that wrote them if the rows say so)."""
    path = Path(run_dir)
    exact: dict[str, str] = {}
    by_turns: dict[str, str] = {}
    teachers: Counter[str] = Counter()
    for record in iter_records(path, flag="--baseline"):
        row = record.value
        if not isinstance(row, Mapping) or row.get("messages") is None:
            continue
        turns = parse_messages(record.location, row["messages"])
        system = row.get("system") if isinstance(row.get("system"), str) else None
        if turns and turns[0]["role"] == "system":
            system = system or turns.pop(0)["content"]
        if not turns or turns[-1]["role"] != "assistant":
            continue
        answer = turns.pop()["content"]
        exact.setdefault(prompt_key(turns, system), answer)
        by_turns.setdefault(prompt_key(turns, None), answer)
        if isinstance(row.get("teacher"), str):
            teachers[row["teacher"]] += 1
    if not exact:
        raise UserError(f"--baseline {path}: no rows with an assistant answer")
    return exact, by_turns, teachers.most_common(1)[0][0] if teachers else None


def answer_requests(prompts: Sequence[InputRow], params: SamplingParams) -> list[ChatRequest]:
    return [ChatRequest.make(list(p.messages), params, system=p.system) for p in prompts]


def generate_answers(engine: Engine, requests: Sequence[ChatRequest], round_size: int, desc: str
                     ) -> list[tuple[str | None, str | None]]:
    """(answer, error) per request, through `engine` in rounds of `round_size` (each round is cached when it ends)."""
    answers: list[tuple[str | None, str | None]] = []
    for start in range(0, len(requests), round_size):
        for result in engine.run(requests[start:start + round_size], desc=desc):
            answers.append((result.completion.text, None) if result.ok else (None, result.error))
    return answers


@dataclass
class EvalResult:
    """The report (`summary`, written as eval.json), the judged pairs and the rejected prompts."""

    summary: dict[str, Any]
    judged: list[dict[str, Any]]
    rejected: list[dict[str, Any]]


def _open(teacher: TeacherSpec, spec: EvalSpec, out: Path, options: Mapping[str, Any] | None = None) -> Engine:
    from gen.teachers import load_teacher

    return build_engine(load_teacher(teacher, **options) if options else teacher, spec.engine,
                        default_cache_path(out))


def evaluate(prompts: Sequence[InputRow], out: str | Path, spec: EvalSpec) -> EvalResult:
    """Answer, judge and score (see the module doc). Writes only the request cache under `out`; the caller
    writes the reports (`gen.methods.evaluation.report`)."""
    out = Path(out)
    rubric = load_rubric(spec.rubric)
    if not rubric.pairwise:
        raise UserError(f"--rubric {spec.rubric}: gen eval needs a pairwise rubric (target: pair), this one scores "
                        f"one answer")
    requests = answer_requests(prompts, spec.params)
    with _open(spec.student, spec, out, spec.student_options) as engine:
        student_id = engine.teacher_id
        student = generate_answers(engine, requests, spec.round_size, "student answers")

    if spec.baseline_run is not None:
        exact, by_turns, baseline_id = baseline_answers_from_run(spec.baseline_run)
        baseline: list[tuple[str | None, str | None]] = []
        for p in prompts:
            answer = exact.get(prompt_key(p.messages, p.system)) or by_turns.get(prompt_key(p.messages, None))
            baseline.append((answer, None) if answer is not None else (None, "no_baseline_answer"))
        baseline_name = f"run {spec.baseline_run}" + (f" ({baseline_id})" if baseline_id else "")
    else:
        assert spec.baseline_model is not None
        with _open(spec.baseline_model, spec, out) as engine:
            baseline_name = engine.teacher_id
            baseline = generate_answers(engine, requests, spec.round_size, "baseline answers")

    rejected: list[dict[str, Any]] = []
    to_judge: list[tuple[int, PairItem]] = []
    for index, (prompt, (mine, my_error), (theirs, their_error)) in enumerate(zip(prompts, student, baseline)):
        base = _prompt_entry(prompt, mine, theirs)
        if mine is None:
            rejected.append({**base, "rejected": "student_failed", "detail": my_error})
        elif theirs is None:
            reason = "no_baseline_answer" if their_error == "no_baseline_answer" else "baseline_failed"
            rejected.append({**base, "rejected": reason, "detail": None if reason == their_error else their_error})
        else:
            context = ([{"role": "system", "content": prompt.system}] if prompt.system else []) + list(prompt.messages)
            to_judge.append((index, PairItem.from_messages(context, mine, theirs)))

    params = judge_params(rubric)
    if spec.judge_max_tokens is not None:
        params = params.replace(max_tokens=spec.judge_max_tokens)
    with _open(spec.judge, spec, out) as engine:
        judge_id = engine.teacher_id
        verdicts = judge_pairwise(engine, [pair for _, pair in to_judge], rubric, params,
                                  desc="judge (both orders)") if to_judge else []

    judged: list[dict[str, Any]] = []
    for (index, _), verdict in zip(to_judge, verdicts):
        base = _prompt_entry(prompts[index], student[index][0], baseline[index][0])
        entry = {**base, "verdict": verdict.entry()}
        if verdict.ok:
            judged.append({**entry, "outcome": stats.OUTCOME_OF_WINNER[verdict.winner]})
        elif verdict.status == "unparseable":
            rejected.append({**entry, "rejected": JUDGE_UNPARSEABLE})
        else:
            errors = [j.error for j in verdict.orders if j.error]
            rejected.append({**entry, "rejected": "judge_failed", "detail": errors[0] if errors else None})

    outcomes = [j["outcome"] for j in judged]
    differences = [j["student_length"] - j["baseline_length"] for j in judged]
    ci = stats.bootstrap_ci(outcomes, resamples=spec.bootstrap, seed=spec.seed)
    summary: dict[str, Any] = {
        "n": len(judged),
        **stats.counts(outcomes),
        "win_rate": stats.win_rate(outcomes),
        "win_rate_ci": list(ci) if ci else None,
        "lc_win_rate": stats.lc_win_rate(outcomes, differences),
        "position_flip_rate": position_flip_rate(verdicts),
        "mean_length": {"student": _mean([j["student_length"] for j in judged]),
                        "baseline": _mean([j["baseline_length"] for j in judged]), "unit": "characters"},
        "prompts": len(prompts),
        "rejected": {"count": len(rejected), "reasons": dict(Counter(r["rejected"] for r in rejected))},
        "student": student_id,
        "baseline": baseline_name,
        "judge": judge_id,
        "rubric": {"name": rubric.name, "template_hash": rubric.template_hash},
        "bootstrap": {"resamples": spec.bootstrap, "seed": spec.seed, "level": 0.95},
        "sampling": spec.params.to_dict(),
    }
    return EvalResult(summary, judged, rejected)


def _prompt_entry(prompt: InputRow, student: str | None, baseline: str | None) -> dict[str, Any]:
    return {"location": prompt.location, "system": prompt.system, "messages": [dict(m) for m in prompt.messages],
            "student": student, "baseline": baseline,
            "student_length": len(student) if student is not None else None,
            "baseline_length": len(baseline) if baseline is not None else None}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
