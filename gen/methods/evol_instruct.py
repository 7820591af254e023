"""Evol-Instruct (WizardLM, Xu et al. 2023, arXiv 2304.12244): make instructions harder and more diverse, round by
round, and keep every round.

Inputs: instructions (`SeedItem`s: the shipped Self-Instruct seed tasks, a jsonl/txt file, or another run's
shards). Output: rows `[user: evolved instruction, assistant: teacher's answer]` with `method="evol_instruct"`,
`operation` = the evolution operation, `round` = 1..N, `parent_id` = the row (or input) it was evolved from,
`root_id` = the input it descends from; inputs that come with an answer are kept as round-0 rows (`operation="input"`),
as the paper's final set mixes D(0)..D(M). Rejected evolutions go to the `rejected` split with their reason.

One round (the paper's loop, §3):
1. Every live instruction gets one operation drawn with the configured weights: five in-depth operations
   (add_constraints, deepen, concretize, increase_reasoning, complicate_input — the last is in the paper but not in
   its public code) and in-breadth mutation. Default weights are equal, so in-depth gets 5/6 and in-breadth 1/6 of
   the draws (the paper gives no split; the public code's uniform choice among 4 depth ops + breadth gives 1/5).
2. The teacher rewrites it (`evol_in_depth.txt` with the operation's text, or `evol_in_breadth.txt`).
3. Cheap checks before paying for an answer: an empty rewrite (`empty_evolution`), a rewrite that leaks the
   rewriting prompt's own words (`prompt_leak`, elimination rule 4), and a MinHash near-duplicate of any instruction
   seen in any round or input (`near_duplicate`).
4. The teacher answers the survivors and, in the same batch, judges whether the evolution adds information
   (`evol_equality.txt`, rule 1: `no_information_gain` when judged the same; a reply that says neither keeps the
   evolution and is recorded as `params.judge = "unclear"`).
5. The eliminator on the answer: "sorry" in an answer shorter than 80 words (`apology`, rule 2), an answer of only
   punctuation and stop words (`only_punctuation_stopwords`, rule 3), a degenerate answer (`filters.repetition`:
   `repetition`, `stutter`, `enumeration_without_content`, `repeated_list_items`; also checked on the evolved
   instruction in step 3, before paying for its answer).
6. A surviving evolution replaces its parent in the pool; a rejected one leaves the parent in the pool unchanged, to
   be evolved again (with a freshly drawn operation) next round. A failed request (after the engine's retries) is
   not a row: the parent stays and a rerun retries the request.

Rows are committed and the manifest rewritten at the end of each round. Every choice is seeded from (seed, round,
item id), so a rerun after a kill makes the same requests (answered from the cache) and writes the same rows.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from filters.repetition import REASONS as DEGENERATION_REASONS
from gen.errors import InvalidSetting, UserError
from gen.methods.base import MethodRun
from gen.methods.inputs import SeedItem
from gen.methods.parsing import contains_any, strip_prefix_labels, word_count
from gen.methods.phases import LocalPhases, PhasedBase
from gen.methods.templates import Template, combined_hash, load_template
from gen.teachers.base import ChatRequest, Completion, SamplingParams

METHOD = "evol_instruct"
DEPTH_OPERATIONS = ("add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input")
BREADTH_OPERATIONS = ("in_breadth",)
OPERATIONS = DEPTH_OPERATIONS + BREADTH_OPERATIONS
# Equal weights: in-depth 5/6, in-breadth 1/6 of all draws (documented in the module docstring and the README).
DEFAULT_WEIGHTS: dict[str, float] = {op: 1.0 for op in OPERATIONS}

# Elimination reasons, as written into rejected rows' `filters`.
NO_INFORMATION_GAIN = "no_information_gain"  # rule 1 (teacher-judged)
APOLOGY = "apology"  # rule 2: "sorry" and shorter than 80 words
ONLY_PUNCTUATION_STOPWORDS = "only_punctuation_stopwords"  # rule 3
PROMPT_LEAK = "prompt_leak"  # rule 4: the evolution copies the rewriting prompt's words
NEAR_DUPLICATE = "near_duplicate"  # MinHash, across all rounds and inputs, before answering
EMPTY_EVOLUTION = "empty_evolution"  # nothing left after removing labels/markers
# Degenerate rewrites and answers (`filters.repetition`): repetition, stutter, enumeration_without_content,
# repeated_list_items.
REASONS = (NO_INFORMATION_GAIN, APOLOGY, ONLY_PUNCTUATION_STOPWORDS, PROMPT_LEAK, NEAR_DUPLICATE,
           EMPTY_EVOLUTION) + DEGENERATION_REASONS

APOLOGY_MAX_WORDS = 80
# Words of the rewriting prompts that must never appear in an evolved instruction: the paper's own markers (which a
# teacher trained on public Evol data may reproduce) and the markers of kdforge's templates.
LEAK_MARKERS = (
    "given prompt", "rewritten prompt", "#rewritten prompt#", "created prompt", "#created prompt#",
    "old instruction", "harder version", "sample instruction", "new instruction", "<<<", ">>>",
)
# Labels a model may put before its rewrite, echoing the last line of our prompts; removed before the checks (the
# label alone is not a leak). The paper's markers ("#Rewritten Prompt#: ...") are never stripped: they are leaks.
_ANSWER_LABELS = ("harder version", "new instruction", "instruction", "request")
_FENCE = re.compile(r"^\s*<<<\s*|\s*>>>\s*$")


def parse_weights(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """`"add_constraints=1,deepen=2,in_breadth=0.5"` -> weights; operations not named get weight 0. None: defaults."""
    if spec is None or spec == "":
        return dict(DEFAULT_WEIGHTS)
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        pairs = []
        for part in str(spec).split(","):
            name, sep, value = part.strip().partition("=")
            if not name:
                continue
            try:
                pairs.append((name.strip(), float(value) if sep else 1.0))
            except ValueError:
                raise UserError(f"weight of operation {name!r} is not a number: {value!r}") from None
    weights = {op: 0.0 for op in OPERATIONS}
    for name, value in pairs:
        if name not in weights:
            raise UserError(f"unknown operation {name!r} (expected some of: {', '.join(OPERATIONS)})")
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"weight of operation {name!r}: {value} is not a finite number >= 0")
        weights[name] = float(value)
    if sum(weights.values()) <= 0:
        raise UserError("at least one operation needs a positive weight")
    return weights


def depth_share(weights: Mapping[str, float]) -> float:
    """Fraction of draws that are in-depth operations."""
    total = sum(weights.values())
    return sum(weights.get(op, 0.0) for op in DEPTH_OPERATIONS) / total if total else 0.0


# --------------------------------------------------------------------------------------------------- the eliminator


def clean_evolution(text: str) -> str:
    """The evolved instruction out of the teacher's reply: strip a leading label and the prompt's <<< >>> fence."""
    text = strip_prefix_labels(text, _ANSWER_LABELS)
    if text.startswith("<<<") and ">>>" in text:
        text = _FENCE.sub("", text).strip()
        text = strip_prefix_labels(text, _ANSWER_LABELS)
    return text.strip()


def check_evolution(evolved: str) -> str | None:
    """Checks on the evolved instruction alone (before paying for an answer): `empty_evolution`, `prompt_leak`, and
    the first degeneration reason of `filters.repetition` (a rewrite stuck in a loop)."""
    from filters.repetition import degeneration_reasons

    if not evolved.strip() or not re.search(r"\w", evolved):
        return EMPTY_EVOLUTION
    if contains_any(evolved, LEAK_MARKERS):
        return PROMPT_LEAK
    return next(iter(degeneration_reasons(evolved)), None)


def is_short_apology(answer: str) -> bool:
    """Rule 2: the answer contains "sorry" and is short (< 80 words) — the teacher could not answer."""
    return "sorry" in answer.lower() and word_count(answer) < APOLOGY_MAX_WORDS


def check_answer(answer: str) -> list[str]:
    """Rules 2 and 3 on the teacher's answer, then the degeneration rules (`filters.repetition`); all that apply."""
    from filters.heuristics import only_punctuation_and_stopwords
    from filters.repetition import degeneration_reasons

    reasons = []
    if is_short_apology(answer):
        reasons.append(APOLOGY)
    if only_punctuation_and_stopwords(answer):
        reasons.append(ONLY_PUNCTUATION_STOPWORDS)
    return reasons + degeneration_reasons(answer)


def parse_equality(text: str) -> bool | None:
    """The judge's verdict: True = the same (no information gain), False = different, None = unclear.

    The prompt asks "Is request B the same as request A?" for one word, Same or Different; a reply that starts with
    yes/no answers that question directly."""
    words = re.findall(r"[a-z]+", text.lower())[:12]
    if words and words[0] in ("yes", "no"):
        return words[0] == "yes"
    for i, word in enumerate(words):
        negated = any(w in ("not", "isn", "aren", "no") for w in words[max(0, i - 3):i])
        if word in ("different", "differs", "unequal"):
            return negated  # "not different" = the same
        if word in ("same", "equal", "identical"):
            return not negated
    return None


# ----------------------------------------------------------------------------------------------------- the method


@dataclass
class PoolItem:
    """A live instruction: `id` is the row (or input) it is, `root_id` the input it descends from."""

    id: str
    instruction: str
    root_id: str


@dataclass(frozen=True)
class EvolConfig:
    rounds: int = 4
    weights: Mapping[str, float] = None  # type: ignore[assignment]
    judge: bool = True  # rule 1 needs one extra request per evolution
    dedup_threshold: float = 0.7
    keep_inputs: bool = True  # inputs that carry an answer become round-0 rows

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise InvalidSetting("rounds", f"rounds {self.rounds}: must be at least 1")
        if self.weights is None:
            object.__setattr__(self, "weights", dict(DEFAULT_WEIGHTS))


def rewrite_template(operation: str) -> tuple[Template, Template | None]:
    """(frame, operation text) for in-depth operations; (breadth template, None) for in-breadth."""
    if operation in BREADTH_OPERATIONS:
        return load_template("evol_in_breadth"), None
    return load_template("evol_in_depth"), load_template(f"evol_op_{operation}")


def rewrite_messages(operation: str, instruction: str) -> tuple[list[dict[str, str]], str]:
    """The rewrite request for one operation and its template hash."""
    frame, op_text = rewrite_template(operation)
    if op_text is None:
        return [{"role": "user", "content": frame.render(instruction=instruction)}], frame.hash
    content = frame.render(method=op_text.render(), instruction=instruction)
    return [{"role": "user", "content": content}], combined_hash(frame, op_text)


def judge_messages(original: str, evolved: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": load_template("evol_equality").render(original=original, evolved=evolved)}]


class EvolInstruct(PhasedBase):
    """Runs N rounds over a pool of instructions. `answer_params` are the user's sampling settings (also used for
    rewrites); the judge is greedy and short.

    A round is two phases (`gen.methods.phases`), run on the whole pool in this process or, with a `RayPhases`
    runner, on slices of it by Ray workers: `rewrite` then `answer`, with the near-duplicate rule between them.
    `index_storage`: datasketch storage config of the near-duplicate index (Redis, `--redis`): the index is then
    shared, and each phase indexes and queries it itself (on whichever worker it runs); otherwise the index is the
    driver's and it resolves the near-duplicates between the phases."""

    phases = ("rewrite", "answer")
    step = "evolve"

    def __init__(self, run: MethodRun, config: EvolConfig, rewrite_max_tokens: int | None = None, *,
                 index_storage: Mapping[str, Any] | None = None, runner: Any = None):
        self.run = run
        self.config = config
        self.rewrite_max_tokens = rewrite_max_tokens
        self.rewrite_params = run.sampling.replace(max_tokens=rewrite_max_tokens or run.sampling.max_tokens)
        self.operations = [op for op in OPERATIONS if config.weights.get(op, 0) > 0]
        self.op_weights = [config.weights[op] for op in self.operations]
        self.judge_params = SamplingParams(max_tokens=4, temperature=0.0, top_p=1.0)
        self.index_storage = dict(index_storage) if index_storage else None
        self.runner = runner or LocalPhases(run)
        self._index: Any = None

    def _draw_operation(self, round_: int, item: PoolItem) -> str:
        rng = self.run.rng("operation", round_, item.id)
        return rng.choices(self.operations, weights=self.op_weights, k=1)[0]

    def _base_params(self, operation: str, template_hash: str) -> dict[str, Any]:
        return {"template_hash": template_hash, "judge_template_hash": load_template("evol_equality").hash,
                "depth_or_breadth": "breadth" if operation in BREADTH_OPERATIONS else "depth"}

    # ---------------------------------------------------------------------------------------- the loop over rounds

    def evolve(self, items: Sequence[SeedItem]) -> list[PoolItem]:
        """Run all rounds (stopping early only if the engine's budget is exhausted); returns the final pool."""
        run, runner = self.run, self.runner
        pool = [PoolItem(id=item.id, instruction=item.instruction, root_id=item.id) for item in items]
        run.funnel.add("inputs", len(pool), round=0)
        # One index for the whole run: an evolution that near-copies any input or any earlier evolution is caught
        # before its answer is paid for.
        index = self.index()
        for pos, item in enumerate(items):
            index.add(index_key(0, pos, item.id), item.instruction)
        runner.keep_once(0, "inputs", [item.id for item in items], self.input_rows(items))
        run.commit(extra=self.extra(0))

        for round_ in range(1, self.config.rounds + 1):
            run.log(f"round {round_}/{self.config.rounds}: evolving {len(pool)} instructions{runner.describe(len(pool))}")
            outcomes = runner.run_round(self, round_, list(enumerate(pool)))
            pool = self.next_pool(round_, pool, outcomes)
            run.commit(extra={**self.extra(round_), **runner.extra()})
            if run.stopped:
                run.log(f"round {round_}/{self.config.rounds}: budget exhausted; stopping (rerun to continue)")
                break
        return pool

    def next_pool(self, round_: int, pool: Sequence[PoolItem],
                  outcomes: Sequence[Mapping[str, Any] | None]) -> list[PoolItem]:
        """The kept evolutions replace their parents; a slice that did not run (the budget) leaves its parents."""
        next_pool = list(pool)
        replaced = 0
        for outcome in outcomes:
            for pos, item in ((outcome or {}).get("replacements") or {}).items():
                next_pool[int(pos)] = PoolItem(**item)
                replaced += 1
        self.run.funnel.add("carried_over_unchanged", len(pool) - replaced, round_)
        return next_pool

    def index(self) -> Any:
        """The run's near-duplicate index: in this process, or a client of the shared one (one per process)."""
        if self._index is None:
            if self.index_storage is not None:
                self._index = shared_index(self.config.dedup_threshold, self.index_storage)
            else:
                self._index = self.new_index()
        return self._index

    def new_index(self):
        from filters.minhash import MinHashIndex

        return MinHashIndex(threshold=self.config.dedup_threshold)

    def input_rows(self, items: Sequence[SeedItem]) -> list[dict[str, Any]]:
        """Round-0 rows: the inputs that come with an answer (unless `keep_inputs` is off)."""
        rows = []
        for item in items:
            if self.config.keep_inputs and item.response:
                row = self.run.row(messages=[{"role": "user", "content": item.instruction},
                                             {"role": "assistant", "content": item.response}],
                                   operation="input", round=0, root_id=item.id, params={"source_id": item.source_id})
                row["id"], row["root_id"], row["teacher"], row["finish_reason"] = item.id, item.id, "input", None
                rows.append(row)
        return rows

    def extra(self, completed_round: int) -> dict[str, Any]:
        return {"evol": {"rounds": self.config.rounds, "completed_round": completed_round,
                         "weights": dict(self.config.weights), "depth_share": round(depth_share(self.config.weights), 4)}}

    # ------------------------------------------------------------------------- the phases (gen.methods.phases)

    def spec(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.config), "rewrite_max_tokens": self.rewrite_max_tokens,
                "index_storage": self.index_storage}

    @classmethod
    def from_spec(cls, run: MethodRun, spec: Mapping[str, Any]) -> EvolInstruct:
        return cls(run, EvolConfig(**spec["config"]), rewrite_max_tokens=spec["rewrite_max_tokens"],
                   index_storage=spec["index_storage"])

    def item_id(self, entry: tuple[int, PoolItem]) -> str:
        return entry[1].id

    def phase(self, name: str, round_: int, data: Any, given: Any) -> Any:
        if name == "rewrite":
            candidates = self.rewrite_phase(round_, data)
            if self.index_storage is not None:  # the shared index: index where the candidates are made
                for c in candidates:
                    self.index().add(c.key, c.evolved)
            return candidates
        if name == "answer":
            duplicates = given
            if duplicates is None:  # the shared index: each slice resolves its own candidates against it
                duplicates = earlier_duplicates(self.index(), data)
            return self.answer_phase(round_, data, duplicates)
        raise ValueError(f"evol_instruct has no phase {name!r}")

    def between(self, name: str, round_: int, outputs: Mapping[str, Sequence[Candidate]],
                earlier: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, str] | None]:
        """After `rewrite`: every candidate of the round is indexed (the rule needs them all), then each slice gets
        its near-duplicates (pool position -> what they copy). With the shared index the phases did both."""
        if self.index_storage is not None:
            return {key: None for key in outputs}
        index = self.index()
        for outcome in earlier:  # slices committed by an earlier run of the driver
            for key, text in outcome.get("candidates", []):
                index.add(key, text)
        for candidates in outputs.values():
            for c in candidates:
                index.add(c.key, c.evolved)
        return {key: earlier_duplicates(index, candidates) for key, candidates in outputs.items()}

    def outcome(self, round_: int, outputs: Sequence[Any]) -> dict[str, Any]:
        candidates, replacements = outputs
        return {"replacements": {pos: dataclasses.asdict(item) for pos, item in replacements.items()},
                "candidates": [(c.key, c.evolved) for c in candidates]}

    # The two halves of a round. In one process they run on the whole pool; on a Ray cluster each unit of work runs
    # them on its slice of the pool, and the near-duplicate index between them is shared (Redis) or resolved by the
    # driver. The rule is the same either way (`earlier_duplicates`), so N workers write the rows one process writes.

    def rewrite_phase(self, round_: int, entries: Sequence[tuple[int, PoolItem]]) -> list[Candidate]:
        """Rewrite each (pool position, item); cheap checks (empty, prompt leak) reject at once. Returns the
        candidates to index and answer."""
        run = self.run
        operations = [self._draw_operation(round_, item) for _, item in entries]
        rewrites, hashes = [], []
        for (_, item), op in zip(entries, operations):
            messages, template_hash = rewrite_messages(op, item.instruction)
            hashes.append(template_hash)
            rewrites.append(ChatRequest.make(messages, run.params_for("rewrite", round_, item.id, op,
                                                                      base=self.rewrite_params)))
        results = run.ask(rewrites, desc=f"round {round_} rewrite", round=round_)
        candidates: list[Candidate] = []
        for (pos, item), op, template_hash, result in zip(entries, operations, hashes, results):
            if not result.ok:
                continue  # a failed request: the parent stays; a rerun retries it (failures are never cached)
            run.funnel.add("evolved", 1, round_)
            evolved = clean_evolution(result.completion.text)
            candidate = Candidate(round=round_, pos=pos, item=item, operation=op, template_hash=template_hash,
                                  evolved=evolved, rewrite=result.completion)
            reason = check_evolution(evolved)
            if reason is not None:
                run.reject(candidate.bare_row(self), reason, round=round_)
                continue
            candidates.append(candidate)
        return candidates

    def answer_phase(self, round_: int, candidates: Sequence[Candidate],
                     duplicates: Mapping[int, str]) -> dict[int, PoolItem]:
        """Reject near-duplicates (pool position -> what they copy) unpaid; answer and judge the rest in one batch;
        the eliminator on the answers. Returns pool position -> the kept evolution that replaces its parent."""
        run = self.run
        survivors = []
        for c in candidates:
            if c.pos in duplicates:
                run.reject(c.bare_row(self), NEAR_DUPLICATE, round=round_, duplicate_of=duplicates[c.pos])
            else:
                survivors.append(c)
        answer_requests = [ChatRequest.make([{"role": "user", "content": c.evolved}],
                                            run.params_for("answer", round_, c.item.id, c.evolved), system=run.system)
                           for c in survivors]
        judge_requests = [ChatRequest.make(judge_messages(c.item.instruction, c.evolved),
                                           run.params_for("judge", round_, c.item.id, base=self.judge_params))
                          for c in survivors] if self.config.judge else []
        answered = run.ask(answer_requests + judge_requests, desc=f"round {round_} answer", round=round_)
        answers, judgements = answered[:len(survivors)], answered[len(survivors):]

        replacements: dict[int, PoolItem] = {}
        for k, c in enumerate(survivors):
            answer = answers[k]
            judgement = judgements[k] if self.config.judge else None
            if not answer.ok or (judgement is not None and not judgement.ok):
                continue  # a failed request: the parent stays; a rerun retries (failures are never cached)
            text = answer.completion.text.strip()
            params = self._base_params(c.operation, c.template_hash)
            reasons = []
            if judgement is not None:
                verdict = parse_equality(judgement.completion.text)
                params["judge"] = {True: "same", False: "different", None: "unclear"}[verdict]
                if verdict is True:
                    reasons.append(NO_INFORMATION_GAIN)
            reasons += check_answer(text)
            row = run.row(messages=[{"role": "user", "content": c.evolved}, {"role": "assistant", "content": text}],
                          operation=c.operation, round=round_, parent_id=c.item.id, root_id=c.item.root_id,
                          params=params, system=run.system,
                          completions=[c.rewrite, answer.completion,
                                       judgement.completion if judgement is not None else None],
                          finish_reason=answer.completion.finish_reason)
            if reasons:
                run.reject(row, reasons, round=round_)
                continue
            run.keep(row, round=round_)
            replacements[c.pos] = PoolItem(id=row["id"], instruction=c.evolved, root_id=c.item.root_id)
        return replacements


@dataclass
class Candidate:
    """An evolution that passed the cheap checks, waiting for the near-duplicate rule and its answer."""

    round: int
    pos: int  # the parent's position in the round's pool: the order the near-duplicate rule follows
    item: PoolItem
    operation: str
    template_hash: str
    evolved: str
    rewrite: Completion

    @property
    def key(self) -> str:
        return index_key(self.round, self.pos, f"r{self.round}:{self.item.id}")

    def bare_row(self, evol: EvolInstruct) -> dict[str, Any]:
        """The rejected row of an evolution that is not answered: the instruction alone."""
        return evol.run.row(messages=[{"role": "user", "content": self.evolved}], operation=self.operation,
                            round=self.round, parent_id=self.item.id, root_id=self.item.root_id,
                            params=evol._base_params(self.operation, self.template_hash), completions=[self.rewrite])


def index_key(round_: int, pos: int, label: str) -> str:
    """The near-duplicate index's key of an instruction: sortable by (round, pool position), then what to report as
    `duplicate_of` (an input's id, or `r<round>:<parent id>` for an evolution)."""
    return f"{round_:04d}:{pos:09d}|{label}"


def earlier_duplicates(index: Any, candidates: Sequence[Candidate]) -> dict[int, str]:
    """The near-duplicate rule: a candidate is a `near_duplicate` if it near-copies (exact Jaccard >= threshold) any
    indexed instruction that comes *before* it: an input, an evolution of an earlier round, or one of this round at
    an earlier pool position. Every candidate must already be in `index`. Because the rule only looks at keys, it
    gives the same answer whatever order the candidates were indexed in, by one process or by many workers sharing
    one index. Returns pool position -> the `duplicate_of` label of the most similar earlier instruction."""
    found: dict[int, str] = {}
    for c in candidates:
        earlier = [(similarity, key) for key, similarity in index.query_all(c.evolved) if str(key) < c.key]
        if earlier:
            best = max(similarity for similarity, _ in earlier)
            first = min(str(key) for similarity, key in earlier if similarity == best)  # ties: the earliest
            found[c.pos] = first.split("|", 1)[1]
    return found


_SHARED_INDEXES: dict[Any, Any] = {}


def shared_index(threshold: float, storage: Mapping[str, Any]) -> Any:
    """One client per process of the shared (Redis) near-duplicate index named by `storage` (a worker runs many
    units of one run; connecting once is enough)."""
    from filters.minhash import MinHashIndex

    key = (storage["basename"], threshold)
    if key not in _SHARED_INDEXES:
        _SHARED_INDEXES[key] = MinHashIndex(threshold=threshold, storage_config=dict(storage))
    return _SHARED_INDEXES[key]
