"""Self-Instruct (Wang et al. 2022, arXiv 2212.10560): bootstrap a task pool from human seed tasks.

Inputs: seed tasks (`SeedItem`s with `task_instruction`, and `is_classification` where the file has it; the default
is the 175 tasks shipped in `gen/methods/data/`). Output: one row per generated *instance*,
`[user: instruction (+ blank line + input), assistant: output]`, `method="self_instruct"`,
`operation="classification"` (generated output-first) or `"generation"` (input-first), `round` = the bootstrap step
that produced the instruction, `parent_id` = `root_id` = the instruction's id. Rejections (with reason) go to the
`rejected` split: `unparseable`, `too_short`, `too_long`, `blacklisted`, the degeneration reasons of
`filters.repetition` (a looping instruction never enters the pool, so it is never shown as an example), and
`rouge_similar` for instructions;
`unparseable`, `duplicate_instance`, `conflicting_instance` and the degeneration reasons of `filters.repetition`
(`repetition`, `stutter`, `enumeration_without_content`, `repeated_list_items`: a looping input or output) for
instances.

The paper's pipeline, in four stages:
1. Instruction generation, step by step until `num_instructions` new ones are in the pool: each prompt shows 8 tasks
   — 6 human seed tasks and 2 generated ones once at least 2 exist (8 human before that) — and asks for more; the
   paper's sampling (temperature 0.7, top_p 0.5, presence penalty 2) is the default. A new instruction enters the
   pool only if its ROUGE-L against every pool instruction (seeds included) is below 0.7 (`filters.rouge`, bound-
   pruned, so the O(N²) of the paper's code is mostly skipped), and after the length, blacklist and form filters.
2. Classification detection: a few-shot prompt with 12 classification and 19 non-classification seed tasks.
3. Instance generation: output-first (label, then an input for it) for classification tasks, so the labels are not
   skewed toward what comes to mind first; input-first for the rest.
4. Instance filtering: exact duplicates, and instances with the same input but a different output, are dropped;
   so are degenerate inputs and outputs (kdforge's addition: small teachers loop).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gen.data.records import content_id
from gen.errors import InvalidSetting
from gen.methods.base import MethodRun
from gen.methods.inputs import SeedItem, join_instruction, load_items, load_lines, shipped_data_path
from gen.methods.parsing import cut_at_speaker_label, parse_list_reply, parse_yes_no, word_count
from gen.methods.templates import load_template
from gen.teachers.base import ChatRequest, SamplingParams

METHOD = "self_instruct"
# The paper's sampling for instruction generation.
PAPER_SAMPLING = {"temperature": 0.7, "top_p": 0.5, "presence_penalty": 2.0}
HUMAN_PER_PROMPT, MACHINE_PER_PROMPT = 6, 2
CLASSIFICATION_SHOTS, NON_CLASSIFICATION_SHOTS = 12, 19
MIN_WORDS, MAX_WORDS = 3, 150
ROUGE_THRESHOLD = 0.7

# Rejection reasons.
UNPARSEABLE = "unparseable"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
BLACKLISTED = "blacklisted"
ROUGE_SIMILAR = "rouge_similar"
DUPLICATE_INSTANCE = "duplicate_instance"
CONFLICTING_INSTANCE = "conflicting_instance"

_SPEAKER_LABEL = re.compile(r"^(?:assistant|user|ai|human)\s*:\s*", re.IGNORECASE)
_NONE_INPUTS = {"", "none", "(none)", "n/a", "no input", "none."}


def load_blacklist() -> tuple[str, ...]:
    return tuple(w.lower() for w in load_lines(shipped_data_path("self_instruct_blacklist.txt")))


def _blacklist_pattern(words: Sequence[str]) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def instruction_filter(text: str, blacklist: re.Pattern) -> str | None:
    """The paper's heuristics on a new instruction (before the ROUGE-L test): a reason, or None if it passes."""
    words = word_count(text)
    if words == 0 or not text[0].isascii() or not (text[0].isalpha() or text[0] in "\"'"):
        return UNPARSEABLE  # empty, starting with punctuation/digits, or not starting with an English letter
    if words < MIN_WORDS:
        return TOO_SHORT
    if words > MAX_WORDS:
        return TOO_LONG
    if blacklist.search(text) or text.lower().startswith("write a program"):
        return BLACKLISTED  # images, audio, files, ...: not doable by a text model (and programs can't be checked)
    return None


def first_degeneration_reason(text: str) -> str | None:
    """The first reason of `filters.repetition` for a generated instruction (a small teacher's "Write a sentence
    about X." x8 or "1. 2. 3. ..."), or None; checked before ROUGE-L, so a looping instruction is not in the pool."""
    from filters.repetition import degeneration_reasons

    return next(iter(degeneration_reasons(text)), None)


@dataclass
class Instruction:
    """An instruction in the pool. `step` is the bootstrap step that generated it (0 for seeds)."""

    text: str
    step: int
    id: str = ""
    is_classification: bool | None = None
    human: bool = False
    completions: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = content_id("instruction", self.text)


@dataclass(frozen=True)
class SelfInstructConfig:
    num_instructions: int = 20
    requests_per_step: int = 4  # prompts per bootstrap step (the paper: 5)
    new_per_request: int = 8  # the paper's prompt shows 8 and the model continues to 16
    max_steps: int | None = None  # default: enough for num_instructions with a slack for rejections
    instances_max_tokens: int = 256

    def steps_limit(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        per_step = max(1, self.requests_per_step)
        return 4 + 3 * -(-self.num_instructions // per_step)


def classification_examples(seeds: Sequence[SeedItem]) -> list[dict[str, Any]]:
    """12 classification + 19 non-classification seed instructions, interleaved in a fixed order. Seeds without an
    `is_classification` flag (a plain text file) fall back to the shipped seed tasks."""
    flagged = [s for s in seeds if s.is_classification is not None]
    clf = [s for s in flagged if s.is_classification][:CLASSIFICATION_SHOTS]
    other = [s for s in flagged if not s.is_classification][:NON_CLASSIFICATION_SHOTS]
    if len(clf) < 2 or len(other) < 2:
        return classification_examples(load_items(shipped_data_path("self_instruct_seed_tasks.jsonl")))
    examples, ci, oi = [], 0, 0
    # Spread the classification examples through the non-classification ones so neither answer dominates the end.
    while ci < len(clf) or oi < len(other):
        if oi < len(other):
            examples.append(other[oi])
            oi += 1
        if ci < len(clf) and (oi * len(clf) >= (ci + 1) * len(other) or oi >= len(other)):
            examples.append(clf[ci])
            ci += 1
    # Reversed so the prompt ends on non-classification examples: a small model leans toward the last answer it saw,
    # and most tasks are not classification.
    return [{"instruction": s.task_instruction or s.instruction, "is_classification": bool(s.is_classification)}
            for s in reversed(examples)]


def parse_new_instructions(text: str, first_number: int) -> list[str]:
    """New tasks out of the continuation of the numbered list (items numbered below `first_number` are repeats)."""
    items = parse_list_reply(text, first_number)  # the prompt ends with "9.": the reply may start without it
    # One task per line: a multi-line item is the task plus chatter; keep its first line, without a speaker label
    # that a base model may copy from the chat transcript.
    tasks = [re.sub(r"\s+", " ", item.split("\n")[0]).strip() for item in items]
    return [_SPEAKER_LABEL.sub("", task).strip().strip('"') for task in tasks]


def parse_input_first(text: str) -> list[tuple[str, str]] | None:
    """(input, output) pairs from 'Example N / Input: / Output:' text. The prompt ends with "Example 1\nInput:", so
    the reply may start with the first input itself. As in the paper's post-processing, a reply with no "Output:"
    at all is one instance without input whose output is the whole reply (tasks that need no input are often answered
    directly). None when nothing is left."""
    text = text.strip()
    if not re.search(r"(?im)^\s*output\s*:", "\n" + text) and not re.search(r"(?i)\boutput\s*:", text):
        direct = cut_at_speaker_label("\n" + re.split(r"(?im)^\s*(?:task\s*:|example\s*\d+)", text)[0])
        return [("", direct)] if direct else None
    if not re.match(r"(?i)(example\s*\d|input\s*:)", text):
        text = "Input: " + text
    blocks = re.split(r"(?im)^\s*example\s*\d+\s*:?\s*$", text)
    pairs = []
    for block in blocks:
        match = re.search(r"(?is)input\s*:\s*(.*?)\s*output\s*:\s*(.*)", block)
        if not match:
            continue
        input_text = cut_at_speaker_label(match.group(1).strip())
        output = cut_at_speaker_label(re.split(r"(?im)^\s*task\s*:", match.group(2))[0].strip())
        if input_text.lower() in _NONE_INPUTS:
            input_text = ""
        pairs.append((input_text, output))
    return pairs or None


def parse_output_first(text: str) -> list[tuple[str, str]] | None:
    """(input, label) pairs from 'Label: / Input:' text (the prompt ends with 'Label:'); None when nothing parses."""
    text = text.strip()
    if not re.match(r"(?i)label\s*:", text):
        text = "Label: " + text
    pairs = []
    for match in re.finditer(r"(?is)label\s*:\s*(.*?)\n\s*input\s*:\s*(.*?)(?=\n\s*label\s*:|\n\s*task\s*:|\Z)", text):
        label, input_text = match.group(1).strip(), match.group(2).strip()
        if label and input_text:
            pairs.append((input_text, label))
    return pairs or None


def filter_instances(pairs: Sequence[tuple[str, str]]) -> list[tuple[tuple[str, str], str | None]]:
    """Each (input, output) with None (kept) or its rejection reason: an empty output is `unparseable`, a repeat of
    an earlier pair is `duplicate_instance`, and every instance whose input also appears with a different output is
    `conflicting_instance` (which output is right cannot be told). A degenerate input or output (`filters.repetition`)
    gets its first degeneration reason and takes no part in the other two rules."""
    from filters.repetition import texts_degeneration_reasons

    degenerate = {pair: next(iter(texts_degeneration_reasons(pair)), None) for pair in pairs}
    outputs_by_input: dict[str, set[str]] = {}
    for input_text, output in pairs:
        if output.strip() and degenerate[(input_text, output)] is None:
            outputs_by_input.setdefault(input_text.strip().lower(), set()).add(output.strip().lower())
    seen: set[tuple[str, str]] = set()
    verdicts = []
    for input_text, output in pairs:
        key = (input_text.strip().lower(), output.strip().lower())
        if not output.strip():
            verdicts.append(((input_text, output), UNPARSEABLE))
        elif degenerate[(input_text, output)] is not None:
            verdicts.append(((input_text, output), degenerate[(input_text, output)]))
        elif len(outputs_by_input[key[0]]) > 1:
            verdicts.append(((input_text, output), CONFLICTING_INSTANCE))
        elif key in seen:
            verdicts.append(((input_text, output), DUPLICATE_INSTANCE))
        else:
            seen.add(key)
            verdicts.append(((input_text, output), None))
    return verdicts


class SelfInstruct:
    def __init__(self, run: MethodRun, config: SelfInstructConfig, generation_params: SamplingParams):
        self.run = run
        self.config = config
        self.generation_params = generation_params
        self.blacklist = _blacklist_pattern(load_blacklist())
        self.clf_params = SamplingParams(max_tokens=3, temperature=0.0)
        self.instance_params = SamplingParams(max_tokens=config.instances_max_tokens, temperature=0.0,
                                              presence_penalty=1.5)

    # ---------------------------------------------------------------------------------------------- stage 1
    def bootstrap(self, seeds: Sequence[SeedItem]) -> list[Instruction]:
        """Grow the pool until `num_instructions` machine instructions are in it (or the step limit)."""
        from filters.rouge import RougeLNovelty

        run, cfg = self.run, self.config
        if len(seeds) < HUMAN_PER_PROMPT + MACHINE_PER_PROMPT:
            raise InvalidSetting("seeds", f"need at least {HUMAN_PER_PROMPT + MACHINE_PER_PROMPT} seed tasks, got "
                                          f"{len(seeds)}")
        human = [s.task_instruction or s.instruction for s in seeds]
        novelty = RougeLNovelty(threshold=ROUGE_THRESHOLD)
        for text in human:
            novelty.add(text)
        run.funnel.add("seed_tasks", len(human))
        template = load_template("self_instruct_generate")
        machine: list[Instruction] = []
        step = 0
        while len(machine) < cfg.num_instructions and step < cfg.steps_limit() and not run.stopped:
            step += 1
            requests = []
            for b in range(cfg.requests_per_step):
                rng = run.rng("prompt", step, b)
                if len(machine) >= MACHINE_PER_PROMPT:
                    shown = rng.sample(human, HUMAN_PER_PROMPT) + [m.text for m in rng.sample(machine, MACHINE_PER_PROMPT)]
                else:
                    shown = rng.sample(human, HUMAN_PER_PROMPT + MACHINE_PER_PROMPT)
                rng.shuffle(shown)
                content = template.render(tasks=shown, num_new=cfg.new_per_request)
                stop = (f"\n{len(shown) + cfg.new_per_request + 1}.",)
                requests.append(ChatRequest.make([{"role": "user", "content": content}],
                                                 run.params_for("generate", step, b, base=self.generation_params,
                                                                stop=stop)))
            results = run.ask(requests, desc=f"step {step}: instructions", round=step)
            run.log(f"step {step}: pool has {len(machine)}/{cfg.num_instructions} new instructions")
            for result in results:
                if not result.ok:
                    continue
                candidates = parse_new_instructions(result.completion.text, HUMAN_PER_PROMPT + MACHINE_PER_PROMPT + 1)
                if not candidates:
                    run.funnel.add("replies_without_a_task", 1, step)
                    self._reject_instruction(result.completion.text.strip()[:2000], UNPARSEABLE, step, result.completion)
                for text in candidates:
                    if len(machine) >= cfg.num_instructions:
                        run.funnel.add("not_needed", 1, step)  # target reached: not evaluated, not kept
                        continue
                    run.funnel.add("instructions_generated", 1, step)
                    reason = instruction_filter(text, self.blacklist) or first_degeneration_reason(text)
                    extra: dict[str, Any] = {}
                    if reason is None:
                        novel, score, match = novelty.check_and_add(text)
                        if not novel:
                            reason, extra = ROUGE_SIMILAR, {"rouge_l": round(score, 4), "most_similar": match}
                    if reason is not None:
                        self._reject_instruction(text, reason, step, result.completion, extra)
                        continue
                    run.funnel.add("instructions_kept", 1, step)
                    machine.append(Instruction(text=text, step=step, completions=[result.completion]))
            run.commit(extra={"self_instruct": {"step": step, "pool_machine": len(machine), "pool_human": len(human)}})
        return machine

    def _reject_instruction(self, text: str, reason: str, step: int, completion: Any,
                            extra: dict[str, Any] | None = None) -> None:
        iid = content_id("instruction", text)
        row = self.run.row(messages=[{"role": "user", "content": text}], operation="instruction", round=step,
                           parent_id=iid, root_id=iid,
                           params={"template_hash": load_template("self_instruct_generate").hash, **(extra or {})},
                           completions=[completion])
        self.run.reject(row, reason, round=step)

    # ---------------------------------------------------------------------------------------------- stage 2
    def detect_classification(self, machine: list[Instruction], seeds: Sequence[SeedItem]) -> None:
        """Sets `is_classification` on each instruction (None where the request failed)."""
        template = load_template("self_instruct_is_classification")
        examples = classification_examples(seeds)
        requests = [ChatRequest.make([{"role": "user", "content": template.render(examples=examples,
                                                                                  instruction=ins.text)}],
                                     self.run.params_for("classify", ins.id, base=self.clf_params))
                    for ins in machine]
        for ins, result in zip(machine, self.run.ask(requests, desc="classification?")):
            if result.ok:
                # An unclear answer counts as "not classification": input-first is the safe default.
                ins.is_classification = bool(parse_yes_no(result.completion.text))
                ins.completions.append(result.completion)
                self.run.funnel.add("classification" if ins.is_classification else "non_classification")

    # ---------------------------------------------------------------------------------------------- stage 3+4
    def generate_instances(self, machine: list[Instruction]) -> None:
        run = self.run
        todo = [ins for ins in machine if ins.is_classification is not None]
        requests = []
        for ins in todo:
            name = "self_instruct_output_first" if ins.is_classification else "self_instruct_input_first"
            content = load_template(name).render(instruction=ins.text)
            requests.append(ChatRequest.make([{"role": "user", "content": content}],
                                             run.params_for("instances", ins.id, base=self.instance_params,
                                                            stop=("\nTask:",))))
        for ins, result in zip(todo, run.ask(requests, desc="instances")):
            if not result.ok:
                continue
            self._instance_rows(ins, result.completion)

    def _instance_rows(self, ins: Instruction, completion: Any) -> None:
        run = self.run
        output_first = bool(ins.is_classification)
        template = load_template("self_instruct_output_first" if output_first else "self_instruct_input_first")
        operation = "classification" if output_first else "generation"
        params = {"template_hash": template.hash, "instance_order": "output_first" if output_first else "input_first",
                  "is_classification": output_first,
                  "instruction_template_hash": load_template("self_instruct_generate").hash}
        pairs = (parse_output_first if output_first else parse_input_first)(completion.text)
        usage_completions = ins.completions + [completion]
        if not pairs:
            row = run.row(messages=[{"role": "user", "content": ins.text},
                                    {"role": "assistant", "content": completion.text.strip()}],
                          operation=operation, round=ins.step, parent_id=ins.id, root_id=ins.id, params=params,
                          completions=usage_completions)
            run.reject(row, UNPARSEABLE, round=ins.step)
            return
        for (input_text, output), reason in filter_instances(pairs):
            run.funnel.add("instances_generated", 1, ins.step)
            row = run.row(messages=[{"role": "user", "content": join_instruction(ins.text, input_text)},
                                    {"role": "assistant", "content": output.strip()}],
                          operation=operation, round=ins.step, parent_id=ins.id, root_id=ins.id, params=params,
                          completions=usage_completions)
            if reason is None:
                run.keep(row, round=ins.step)
            else:
                run.reject(row, reason, round=ins.step)

    def generate(self, seeds: Sequence[SeedItem]) -> list[Instruction]:
        machine = self.bootstrap(seeds)
        if not self.run.stopped:
            self.detect_classification(machine, seeds)
            self.run.commit()
        if not self.run.stopped:
            self.generate_instances(machine)
        self.run.commit(extra={"self_instruct": {"pool_machine": len(machine), "pool_human": len(seeds),
                                                 "pool": [m.text for m in machine]}})
        return machine
