"""Preference data, UltraFeedback-style (Cui et al. 2023): several models answer each prompt, a judge rates every
answer, and the best and the worst rated answers become `chosen` / `rejected` (`gen.data.preferences`).

Two phases over the request engine:

1. *sample*: each candidate model (any teacher spec) answers every prompt `n` times, one engine per candidate;
   sample k of prompt p carries its own seed (derived from the run seed, the prompt and k), so the n requests are
   n distinct requests (n distinct cache keys) and a rerun sends exactly the same ones;
2. *rate*: the judge (`gen.methods.judge`, pointwise) rates every answer; chunk by chunk of prompts, each group
   (all answers to one prompt) becomes one row -- a preference pair in `train`, or in `rejected` with its reason:
   `preference_tie` when every rated answer got the same score, `too_few_rated` when fewer than two answers were
   rated (the judge's verdict could not be parsed: `judge_unparseable` is added).

`build_preferences(candidates, open_judge, inputs, out_dir, PrefsSpec(...))` runs both and writes the manifest (the
funnel, each engine's counters); `gen prefs` is its flags.

Resuming after a kill: both phases go through the request cache (OUT/.cache/requests.sqlite: one file, keyed by
teacher), so a rerun sends only what never completed; a row's id hashes what was asked (prompt, candidates, n,
judge, rubric, sampling), and the shard writer skips rows already on disk. A group with a failed request (after
the engine's retries) writes no row: the rerun retries it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen.data.inputs import InputRow
from gen.data.preferences import (
    METHOD,
    PREFERENCE_SCHEMA,
    TIE,
    TOO_FEW_RATED,
    make_preference_row,
    pick_pair,
)
from gen.data.records import content_id
from gen.engine.budget import reported_counters
from gen.methods.base import Funnel, derive_seed, total_usage
from gen.methods.judge import JUDGE_UNPARSEABLE, JudgeItem, Judgement, Rubric, judge_pointwise
from gen.teachers.base import ChatRequest, Completion, SamplingParams

# Prompts rated and committed at a time: finished groups are on disk early in a long run.
DEFAULT_CHUNK = 256
UNPARSEABLE = JUDGE_UNPARSEABLE


@dataclass(frozen=True)
class Answer:
    """One candidate's answer to one prompt (or the error that stopped it)."""

    model: str
    completion: Completion | None
    error: str | None = None


@dataclass(frozen=True)
class Judge:
    """The judge of a run: its engine (opened by the caller), a pointwise rubric whose target is the answer, and
    the verdicts' sampling params (`gen.methods.judge.judge_params`)."""

    engine: Any
    rubric: Rubric
    params: SamplingParams

    def rate(self, prompts: Sequence[Sequence[Mapping[str, str]]], answers: Sequence[str]) -> list[Judgement]:
        """One Judgement per (prompt, answer), in order, through the engine (one retry of unparseable verdicts)."""
        items = [JudgeItem.from_messages(list(prompt) + [{"role": "assistant", "content": answer}])
                 for prompt, answer in zip(prompts, answers)]
        return judge_pointwise(self.engine, items, self.rubric, self.params, desc="rate")

    @property
    def teacher_id(self) -> str:
        return str(getattr(self.engine, "teacher_id", "unknown"))


@dataclass
class PrefsOutcome:
    """What a run did: the funnel (written to the manifest), the first failure, whether a budget stopped it."""

    funnel: Funnel = field(default_factory=Funnel)
    first_error: str | None = None
    exhausted: bool = False
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)  # each engine's counters, by name
    rows_on_disk: dict[str, int] = field(default_factory=dict)  # rows in each split after the run

    @property
    def failed(self) -> int:
        return self.funnel.total.get("requests_failed", 0)


def prompt_messages(row: InputRow) -> list[dict[str, str]]:
    """The prompt as the `prompt` column stores it: the system message (if any) first, then the turns."""
    messages = [{"role": "system", "content": row.system}] if row.system else []
    return messages + [{"role": m["role"], "content": m["content"]} for m in row.messages]


def sample_requests(inputs: Sequence[InputRow], params: SamplingParams, n: int, run_seed: int, candidate: str
                    ) -> list[ChatRequest]:
    """n requests per prompt for one candidate, prompt-major; sample k's seed is derived from (run seed, candidate,
    prompt, k), so the requests are distinct and the same on every rerun."""
    requests = []
    for row in inputs:
        key = content_id(prompt_messages(row))
        for k in range(n):
            seed = derive_seed(METHOD, run_seed, params.seed, candidate, key, k)
            requests.append(ChatRequest.make(list(row.messages), params.replace(seed=seed), system=row.system))
    return requests


def sample_candidates(engines: Sequence[tuple[str, Callable[[], Any]]], inputs: Sequence[InputRow],
                      params: SamplingParams, n: int, run_seed: int, outcome: PrefsOutcome,
                      stats: dict[str, dict[str, Any]] | None = None) -> tuple[list[list[Answer]], list[str]]:
    """Phase 1. `engines`: (candidate spec, a function that opens its engine), opened and closed one at a time (two
    local models need not be loaded together). Returns the answers per prompt (candidate-major, n each) and the
    candidates' teacher ids. `stats`, if given, receives each candidate engine's counters."""
    groups: list[list[Answer]] = [[] for _ in inputs]
    teacher_ids = []
    for spec, open_engine in engines:
        engine = open_engine()
        try:
            teacher_id = str(getattr(engine, "teacher_id", spec))
            teacher_ids.append(teacher_id)
            results = engine.run(sample_requests(inputs, params, n, run_seed, teacher_id), desc=f"sample {spec}")
            outcome.exhausted = outcome.exhausted or bool(getattr(engine, "exhausted", False))
            if stats is not None:
                stats[f"candidate {teacher_id}"] = reported_counters(engine)
        finally:
            engine.close()
        outcome.funnel.add("requests", len(results))
        for i, result in enumerate(results):
            if not result.ok:
                outcome.funnel.add("requests_failed")
                outcome.first_error = outcome.first_error or result.error
            groups[i // n].append(Answer(teacher_id, result.completion, None if result.ok else result.error))
        outcome.funnel.add("answers", sum(1 for r in results if r.ok))
    return groups, teacher_ids


def rate_and_pair(inputs: Sequence[InputRow], groups: Sequence[Sequence[Answer]], judge: Judge, writers: tuple,
                  outcome: PrefsOutcome, *, asked: Mapping[str, Any], chunk_size: int = DEFAULT_CHUNK) -> None:
    """Phase 2: rate each complete group's answers, pick the pair, write one row per group to `writers` (train,
    rejected), chunk by chunk (each chunk's rows are flushed before the next is rated)."""
    train, rejected = writers
    for start in range(0, len(inputs), chunk_size):
        chunk = [(row, groups[i]) for i, row in enumerate(inputs[start:start + chunk_size], start)]
        complete = [(row, answers) for row, answers in chunk
                    if all(a.completion is not None for a in answers)]
        prompts = [prompt_messages(row) for row, answers in complete for _ in answers]
        texts = [a.completion.text for _, answers in complete for a in answers]
        ratings = judge.rate(prompts, texts) if texts else []
        outcome.exhausted = outcome.exhausted or bool(getattr(judge.engine, "exhausted", False))
        position = 0
        for row, answers in complete:
            group_ratings = ratings[position:position + len(answers)]
            position += len(answers)
            _write_group(row, answers, group_ratings, writers, outcome, judge=judge, asked=asked)
        train.flush()
        rejected.flush()


def _write_group(row: InputRow, answers: Sequence[Answer], ratings: Sequence[Judgement], writers: tuple,
                 outcome: PrefsOutcome, *, judge: Judge, asked: Mapping[str, Any]) -> None:
    train, rejected = writers
    failed = [r for r in ratings if r.status == "failed"]
    outcome.funnel.add("judged", len(ratings) - len(failed))
    if failed:  # the judge's request failed after retries (or the budget stopped it): no row, a rerun rates again
        outcome.funnel.add("requests_failed", len(failed))
        outcome.first_error = outcome.first_error or failed[0].error
        return
    scores = [r.value if r.ok else None for r in ratings]
    unparseable = sum(1 for r in ratings if r.unparseable)
    if unparseable:
        outcome.funnel.add(UNPARSEABLE, unparseable)
    prompt = prompt_messages(row)
    candidates = [{"model": a.model, "content": a.completion.text, "score": score, "scores": r.entry(),
                   "verdict": r.raw, "finish_reason": a.completion.finish_reason}
                  for a, r, score in zip(answers, ratings, scores)]
    usage = total_usage(a.completion for a in answers)
    usage["prompt_tokens"] += sum(r.prompt_tokens for r in ratings)
    usage["completion_tokens"] += sum(r.completion_tokens for r in ratings)
    row_id = content_id(METHOD, prompt, dict(asked))  # what was asked, not what came back
    picked = pick_pair(scores)
    common = dict(prompt=prompt, candidates=candidates, judge=judge.teacher_id, rubric=judge.rubric.name,
                  rubric_hash=judge.rubric.template_hash, parent_id=row.parent_id, root_id=row.root_id,
                  teacher=",".join(dict.fromkeys(a.model for a in answers)), params=dict(asked),
                  usage=usage, id=row_id)
    if isinstance(picked, tuple):
        outcome.funnel.add("kept")
        train.write(make_preference_row(pair=picked, **common))
        return
    reasons = [picked] + ([UNPARSEABLE] if picked == TOO_FEW_RATED and unparseable else [])
    for reason in reasons:
        outcome.funnel.reject(reason)
    pair = None
    if picked == TIE:  # show the tie as it is: the first and last rated answers
        rated = [i for i, score in enumerate(scores) if score is not None]
        pair = (rated[0], rated[-1])
    rejected.write(make_preference_row(pair=pair, filters=reasons, **common))


@dataclass(frozen=True)
class PrefsSpec:
    """What a preference run asks: `n` samples per prompt and candidate with `params` (their seeds are derived per
    sample from `seed`), rated with `rubric` under `judge_params`; `chunk_size` prompts rated and committed at a
    time."""

    n: int
    params: SamplingParams
    rubric: Rubric
    judge_params: SamplingParams
    seed: int = 0
    chunk_size: int = DEFAULT_CHUNK

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n {self.n}: must be at least 1")
        if self.chunk_size < 1:
            raise ValueError(f"chunk size {self.chunk_size}: must be at least 1")
        if self.rubric.pairwise or self.rubric.target != "answer":
            raise ValueError(f"rubric {self.rubric.name}: preference pairs need a rubric that scores one answer")


def asked_params(spec: PrefsSpec, candidates: Sequence[str], judge: str) -> dict[str, Any]:
    """What a row's id hashes (and its `params` column records): everything that decides its content, nothing that
    came back."""
    return {"candidates": list(candidates), "n": spec.n, "run_seed": spec.seed,
            "sampling": {k: v for k, v in spec.params.to_dict().items() if k != "seed"}, "sampling_seed": spec.params.seed,
            "judge": judge, "rubric": spec.rubric.name, "rubric_hash": spec.rubric.template_hash,
            "judge_sampling": spec.judge_params.to_dict()}


def build_preferences(candidates: Sequence[tuple[str, Callable[[], Any]]], open_judge: Callable[[], Any],
                      inputs: Sequence[InputRow], out_dir: str | Path, spec: PrefsSpec, *,
                      config: Mapping[str, Any] | None = None, log: Callable[[str], None] | None = None
                      ) -> PrefsOutcome:
    """The whole run: sample every candidate (one engine at a time), then open the judge, rate and pair chunk by
    chunk into `OUT/train` / `OUT/rejected`, and write the manifest (the funnel, each engine's counters, `config`).
    `candidates`: (spec, a function opening its engine); `open_judge` opens the judge's engine. Both phases go
    through the engines' request cache, so a rerun resumes (see the module doc)."""
    from gen.data.shards import write_manifest

    outcome = PrefsOutcome()
    outcome.funnel.add("prompts", len(inputs))
    engines: dict[str, dict[str, Any]] = {}
    groups, teacher_ids = sample_candidates(candidates, inputs, spec.params, spec.n, spec.seed, outcome,
                                            stats=engines)
    judge_engine = open_judge()
    try:
        judge = Judge(judge_engine, spec.rubric, spec.judge_params)
        asked = asked_params(spec, teacher_ids, judge.teacher_id)
        train, rejected = preference_writers(out_dir)
        rate_and_pair(inputs, groups, judge, (train, rejected), outcome, asked=asked, chunk_size=spec.chunk_size)
        engines[f"judge {judge.teacher_id}"] = reported_counters(judge_engine)
        outcome.rows_on_disk = {"train": len(train.keys), "rejected": len(rejected.keys)}
    finally:
        judge_engine.close()
    outcome.engines = engines
    write_manifest(out_dir, config=dict(config or {}), funnel=outcome.funnel.to_dict(),
                   extra={"method": METHOD, "candidates": teacher_ids, "judge": asked["judge"],
                          "rubric": {"name": spec.rubric.name, "template_hash": spec.rubric.template_hash},
                          "engines": engines})
    return outcome


def preference_writers(out_dir: str | Path):
    """The train and rejected shard writers of a preference run."""
    from gen.data.shards import ShardWriter

    metadata = {"method": METHOD}
    return (ShardWriter(out_dir, "train", schema=PREFERENCE_SCHEMA, metadata=metadata),
            ShardWriter(out_dir, "rejected", schema=PREFERENCE_SCHEMA, metadata=metadata))
