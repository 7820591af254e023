"""Degeneration filters: texts that repeat themselves instead of saying something.

Pure functions over texts (and a row helper over `messages`), so `gen filter` and the methods' eliminators share one
definition. Four reasons, each with its own threshold in `RepetitionConfig`:

- `repetition`: Gopher's repetition rules (Rae et al. 2021, "Scaling Language Models", arXiv 2112.11446, Table A1),
  with the definitions of datatrove's `GopherRepetitionFilter`
  (huggingface/datatrove, src/datatrove/pipeline/filters/gopher_repetition_filter.py), written independently:
    * duplicate-line fraction (> 0.30) and duplicate-line character fraction (> 0.20): lines that equal an earlier
      line, counted and measured in characters (over the whole text's characters);
    * the same for paragraphs (blocks separated by a blank line): > 0.30 and > 0.20;
    * top 2/3/4-gram character fraction (> 0.20/0.18/0.16): characters of the most frequent word n-gram times its
      count, over the text's characters;
    * duplicated 5..10-gram character fraction (> 0.15, 0.14, ..., 0.10): characters covered by occurrences of
      word n-grams that already occurred earlier (overlaps counted once), over the text's characters.
  Deviations, and why: only lines/paragraphs of at least 2 words with a letter in them are counted, so code and
  markdown are not rejected for their braces, fences and rules ("}", "```", "---"), a number matrix for its equal
  rows ("0 0 0"), a list of labels for its repeated label ("Positive" / "Negative" / "Positive") (datatrove counts
  every line); a single word said again and again is the `stutter` rule's. Paragraphs count from 2 words or numbers
  (a block of dates or numbers printed again and again is a loop). The n-gram rules
  apply only to texts of at least `min_ngram_words` (100) words, and the top n-gram must occur at least twice (one
  occurrence is not a repetition). Gopher's own floor is 50 words (its shortest document), but instruction answers
  are short and structured: on the shipped Self-Instruct seed outputs of 55-89 words, a list's shared frame
  ("1. What is your favorite ... 2. What is your favorite ...") or a named dish said twice already crosses the
  Table A1 thresholds (6 of 175 good outputs); from 100 words on none does, while a model stuck in a loop runs
  on far past 100 words. (datatrove's filter itself, run in a side venv on the same 175 outputs, rejects 73 of
  them, 70 through the top 2/3/4-gram rule on short answers; on the texts of 100+ words of the labelled set its
  verdict and `gopher_violations`' agree on all 20.) Short degenerate texts are caught
  by the three rules below instead. So "Positive", "42" and "Paris" always pass.
- `stutter`: what small models do below Gopher's length floor: one short clause said again and again with small
  changes ("The cat is happy. The cat is very happy. The cat is happy happy.") -- at least 3 clauses that are near
  copies of one of the previous 8 clauses, and more than half of all clauses -- or a
  1-6 word unit repeated 5 times in a row ("the the the the the", "I love you I love you ..."). A near copy: word
  sequences with difflib similarity >= 0.8 that differ only by inserted or dropped words ("the cat is happy" ->
  "the cat is very happy"), or >= 0.7 when they share a run of 6+ words ("You need to make sure that the input is
  in the proper order" -> "... is clear", Gemma-270M's), or >= 0.9 whatever the change. A swapped word in a short
  frame is not a near copy: "What is your favorite food? ... favorite restaurant?" (0.8) is a list of questions.
- `enumeration_without_content`: list markers with nothing after them ("1. 2. 3. 4. ... 26.", or "*" lines): at
  least 4 items with no word in them and more than half of all items. A counting answer written as "1, 2, 3, ..., 10"
  has no list markers and passes (it may be what was asked: "Count to 10").
- `repeated_list_items`: a list whose items repeat ("- Write a sentence describing the person's hobbies." eight
  times, or the same with numbers "1. ... 2. ..." which makes every line distinct for the line rule): at least 2
  items equal (case, spacing, end punctuation ignored) to an earlier item, and more than 30% of the items.

`RepetitionConfig.scale` multiplies every fraction threshold (below 1: stricter, above 1: looser); a fraction above
1 can never be exceeded, so a large scale switches a rule off.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from difflib import SequenceMatcher
from typing import Any

REPETITION = "repetition"
STUTTER = "stutter"
ENUMERATION_WITHOUT_CONTENT = "enumeration_without_content"
REPEATED_LIST_ITEMS = "repeated_list_items"
REASONS = (REPETITION, STUTTER, ENUMERATION_WITHOUT_CONTENT, REPEATED_LIST_ITEMS)

# Gopher Table A1 (the values datatrove's GopherRepetitionFilter uses by default).
TOP_NGRAM_FRACTIONS = ((2, 0.20), (3, 0.18), (4, 0.16))
DUPLICATE_NGRAM_FRACTIONS = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

_WORD = re.compile(r"\w")
_LETTER = re.compile(r"[^\W\d_]")
# Word tokens for the n-gram rules: runs of word characters and runs of punctuation, roughly the split of the nltk
# word tokenizer datatrove uses (punctuation becomes its own token).
_TOKEN = re.compile(r"\w+|[^\w\s]+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_CLAUSE_BREAK = re.compile(r"[.!?;:,\n]+")
_WORDS = re.compile(r"[^\W_]+")
# A list marker: a bullet at the start of a line, or a number (1-3 digits) followed by "." or ")" (or wrapped in
# parentheses), not inside a word or a number: "1. ", "(2)", "<i>3.</i>" (Gemma-270M wraps its empty items in HTML).
# "3.5", "1.3.2004" and "v2." are not markers.
_MARKER = re.compile(r"(?<![\w.])(?:\(\d{1,3}\)|\d{1,3}[.)])(?![\w.])|^[ \t]*[-*•+](?:[ \t]+|[ \t]*$)", re.MULTILINE)
_ITEM_EDGES = re.compile(r"^[\s\W_]+|[\s\W_]+$")
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]{0,200}>")


def _without_tags(text: str) -> str:
    """HTML tags out (a model's "<i>1.</i>" is the item "1."), for the list and clause rules."""
    return _HTML_TAG.sub(" ", text)


@dataclass(frozen=True)
class RepetitionConfig:
    """Thresholds of the degeneration rules (see the module docstring). `scale` multiplies every fraction; set a
    rule's field to None to switch it off."""

    scale: float = 1.0
    duplicate_line_fraction: float | None = 0.30
    duplicate_line_char_fraction: float | None = 0.20
    duplicate_paragraph_fraction: float | None = 0.30
    duplicate_paragraph_char_fraction: float | None = 0.20
    ngrams: bool = True  # the top 2/3/4-gram and duplicated 5..10-gram rules, thresholds from Gopher Table A1
    min_ngram_words: int = 100
    stutter_fraction: float | None = 0.5
    stutter_min_repeats: int = 3
    stutter_similarity: float = 0.8
    stutter_run: int | None = 5  # a 1-3 word unit repeated this many times in a row
    empty_item_fraction: float | None = 0.5
    min_empty_items: int = 4
    repeated_item_fraction: float | None = 0.3
    min_repeated_items: int = 2

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"repetition scale {self.scale}: must be positive")

    def limit(self, fraction: float) -> float:
        return fraction * self.scale

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ Gopher measures


def _has_word(text: str) -> bool:
    return _WORD.search(text) is not None


def _counted_line(text: str) -> bool:
    """A line the duplicate rules count: 2 words or more, with a letter (see the module docstring)."""
    return len(_WORDS.findall(text)) >= 2 and _LETTER.search(text) is not None


def _counted_paragraph(text: str) -> bool:
    """A paragraph the duplicate rules count: 2 words or numbers or more (a block of numbers said again is a loop)."""
    return len(_WORDS.findall(text)) >= 2


def duplicate_fractions(parts: Sequence[str], total_chars: int, counted=_counted_line) -> tuple[float, float]:
    """(fraction of parts that equal an earlier part, their characters over `total_chars`), as datatrove's
    `find_duplicates`; only the parts `counted` accepts (lines: 2+ words with a letter; see the module docstring)."""
    parts = [p for p in parts if counted(p)]
    if not parts or total_chars == 0:
        return 0.0, 0.0
    seen: set[str] = set()
    count = chars = 0
    for part in parts:
        if part in seen:
            count += 1
            chars += len(part)
        else:
            seen.add(part)
    return count / len(parts), chars / total_chars


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def paragraphs_of(text: str) -> list[str]:
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text.strip())]


def word_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _joined_length(gram: Sequence[str]) -> int:
    return sum(len(t) for t in gram) + len(gram) - 1  # as " ".join(gram)


def top_ngram_fraction(tokens: Sequence[str], n: int, total_chars: int) -> float:
    """Characters of the most frequent n-gram times its count, over `total_chars` (datatrove's
    `find_top_duplicate`); 0 when no n-gram occurs twice."""
    grams = _ngrams(tokens, n)
    if not grams or total_chars == 0:
        return 0.0
    gram, count = Counter(grams).most_common(1)[0]
    return 0.0 if count < 2 else _joined_length(gram) * count / total_chars


def duplicate_ngram_fraction(tokens: Sequence[str], n: int, total_chars: int) -> float:
    """Characters covered by occurrences of n-grams seen earlier in the text, overlaps counted once, over
    `total_chars` (Gopher's "duplicate n-gram character fraction"; datatrove's `find_all_duplicate` measures the
    same by skipping n tokens after each repeat)."""
    if len(tokens) < n or total_chars == 0:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(tokens)
    for i, gram in enumerate(_ngrams(tokens, n)):
        if gram in seen:
            covered[i:i + n] = [True] * n
        else:
            seen.add(gram)
    # Token characters only, no separators: datatrove joins the n-gram's words with "" here (and with " " for the
    # top n-gram rule).
    return sum(len(t) for t, c in zip(tokens, covered) if c) / total_chars


def gopher_measures(text: str, min_ngram_words: int = 100) -> dict[str, float]:
    """Every Gopher repetition measure of a text (name -> value); the n-gram ones only from `min_ngram_words`."""
    total = len(text)
    measures: dict[str, float] = {}
    measures["duplicate_line_fraction"], measures["duplicate_line_char_fraction"] = \
        duplicate_fractions(lines_of(text), total)
    measures["duplicate_paragraph_fraction"], measures["duplicate_paragraph_char_fraction"] = \
        duplicate_fractions(paragraphs_of(text), total, _counted_paragraph)
    tokens = word_tokens(text)
    if sum(1 for t in tokens if _has_word(t)) >= min_ngram_words:
        for n, _ in TOP_NGRAM_FRACTIONS:
            measures[f"top_{n}_gram_char_fraction"] = top_ngram_fraction(tokens, n, total)
        for n, _ in DUPLICATE_NGRAM_FRACTIONS:
            measures[f"duplicate_{n}_gram_char_fraction"] = duplicate_ngram_fraction(tokens, n, total)
    return measures


def gopher_violations(text: str, config: RepetitionConfig = RepetitionConfig()) -> list[str]:
    """Names of the Gopher measures above their (scaled) thresholds."""
    limits: dict[str, float | None] = {
        "duplicate_line_fraction": config.duplicate_line_fraction,
        "duplicate_line_char_fraction": config.duplicate_line_char_fraction,
        "duplicate_paragraph_fraction": config.duplicate_paragraph_fraction,
        "duplicate_paragraph_char_fraction": config.duplicate_paragraph_char_fraction,
    }
    if config.ngrams:
        limits.update({f"top_{n}_gram_char_fraction": f for n, f in TOP_NGRAM_FRACTIONS})
        limits.update({f"duplicate_{n}_gram_char_fraction": f for n, f in DUPLICATE_NGRAM_FRACTIONS})
    measures = gopher_measures(text, config.min_ngram_words if config.ngrams else 1 << 60)
    return [name for name, value in measures.items()
            if limits.get(name) is not None and value > config.limit(limits[name])]


# ------------------------------------------------------------------------------------ what small models do besides


def clause_words(text: str) -> list[list[str]]:
    """Each clause (split at . ! ? ; : , and newlines; list markers removed) as its lowercase words; clauses of fewer
    than 2 words dropped (a lone "yes" or a number is no clause to stutter)."""
    clauses = (_WORDS.findall(part.lower()) for part in _CLAUSE_BREAK.split(_MARKER.sub(" ", _without_tags(text))))
    return [words for words in clauses if len(words) >= 2]


_ANY_CHANGE_SIMILARITY = 0.9
_LONG_SHARED_RUN = 6  # words said verbatim again: "You need to make sure that the input is ..."
_LONG_RUN_SIMILARITY = 0.7


def is_near_copy(earlier: Sequence[str], words: Sequence[str], similarity: float = 0.8) -> bool:
    """Word sequences that say the same: difflib ratio >= `similarity` with only words inserted or dropped, or
    >= 0.9 with any change (see the module docstring)."""
    matcher = SequenceMatcher(None, earlier, words, autojunk=False)
    lowest = min(similarity, _LONG_RUN_SIMILARITY)
    if matcher.real_quick_ratio() < lowest or matcher.quick_ratio() < lowest:  # cheap upper bounds of ratio()
        return False
    ratio = matcher.ratio()
    if ratio >= max(similarity, _ANY_CHANGE_SIMILARITY):
        return True
    if matcher.find_longest_match(0, len(earlier), 0, len(words)).size >= _LONG_SHARED_RUN:
        return ratio >= _LONG_RUN_SIMILARITY
    return ratio >= similarity and all(tag != "replace" for tag, *_ in matcher.get_opcodes())


def near_repeat_clauses(clauses: Sequence[Sequence[str]], similarity: float = 0.8, window: int = 8) -> int:
    """How many clauses are near copies (`is_near_copy`) of one of the `window` clauses before them."""
    return sum(1 for i, words in enumerate(clauses)
               if any(is_near_copy(earlier, words, similarity) for earlier in clauses[max(0, i - window):i]))


def longest_unit_run(text: str, max_unit: int = 6) -> int:
    """The most times a unit of 1..max_unit alphabetic words repeats back to back ("the the the" -> 3;
    "<input> <output> <value> <input> <output> <value>" -> 2). Numbers are not words here: "0 0 0 0" in a matrix is
    content."""
    words = [w for w in _WORDS.findall(text.lower())]
    best = 1 if words else 0
    for n in range(1, max_unit + 1):
        i = 0
        while i + 2 * n <= len(words):
            unit = words[i:i + n]
            if not all(w.isalpha() for w in unit):
                i += 1
                continue
            run, j = 1, i + n
            while words[j:j + n] == unit:
                run, j = run + 1, j + n
            best = max(best, run)
            i = j if run > 1 else i + 1
    return best


def is_stutter(text: str, config: RepetitionConfig = RepetitionConfig()) -> bool:
    if config.stutter_run is not None and longest_unit_run(text) >= config.stutter_run:
        return True
    if config.stutter_fraction is None:
        return False
    clauses = clause_words(text)
    if len(clauses) < config.stutter_min_repeats + 1:
        return False
    repeats = near_repeat_clauses(clauses, config.stutter_similarity)
    return repeats >= config.stutter_min_repeats and repeats / len(clauses) > config.limit(config.stutter_fraction)


def list_items(text: str) -> list[str]:
    """The items of the lists in a text: the text after each list marker up to the next marker (or line end for a
    bullet), normalized (lowercase, spacing collapsed, leading/trailing punctuation removed, HTML tags out). []
    without markers."""
    text = _without_tags(text)
    markers = list(_MARKER.finditer(text))
    items = []
    for k, marker in enumerate(markers):
        end = markers[k + 1].start() if k + 1 < len(markers) else len(text)
        body = text[marker.end():end]
        if marker.group().lstrip()[:1] in "-*•+":
            body = body.split("\n", 1)[0]  # a bullet item ends at its line; what follows may be prose
        items.append(" ".join(_ITEM_EDGES.sub("", body.lower()).split()))
    return items


# A line of filler punctuation only ("...", "- - -", "***"): an item with no content even without a list marker.
# Brackets, pipes and semicolons are left out, so code ("}", "];") and Markdown tables never count.
_FILLER_LINE = re.compile(r"^[ \t.…\-*_~=#,·•]+$")


def is_enumeration_without_content(text: str, config: RepetitionConfig = RepetitionConfig()) -> bool:
    """Most list items are empty ("1. 2. 3. ... 26."), or most lines are filler punctuation ("[name]\n...\n...")."""
    if config.empty_item_fraction is None:
        return False
    items = list_items(text)
    empty = sum(1 for item in items if not re.search(r"[^\W\d_]", item))  # no letter: "", "...", "27"
    if empty >= config.min_empty_items and empty / len(items) > config.limit(config.empty_item_fraction):
        return True
    lines = [line for line in text.splitlines() if line.strip()]
    filler = sum(1 for line in lines if _FILLER_LINE.match(line))
    return filler >= config.min_empty_items and filler / len(lines) > config.limit(config.empty_item_fraction)


def has_repeated_list_items(text: str, config: RepetitionConfig = RepetitionConfig()) -> bool:
    if config.repeated_item_fraction is None:
        return False
    items = [item for item in list_items(text) if re.search(r"[^\W\d_]", item)]
    if len(items) < config.min_repeated_items + 1:
        return False
    repeated = len(items) - len(set(items))
    return repeated >= config.min_repeated_items and repeated / len(items) > config.limit(config.repeated_item_fraction)


# ----------------------------------------------------------------------------------------------- the filter API


def degeneration_reasons(text: str, config: RepetitionConfig = RepetitionConfig()) -> list[str]:
    """The degeneration reasons of one text, in `REASONS` order (empty list: fine)."""
    if not text.strip():
        return []
    reasons = []
    if gopher_violations(text, config):
        reasons.append(REPETITION)
    if is_stutter(text, config):
        reasons.append(STUTTER)
    if is_enumeration_without_content(text, config):
        reasons.append(ENUMERATION_WITHOUT_CONTENT)
    if has_repeated_list_items(text, config):
        reasons.append(REPEATED_LIST_ITEMS)
    return reasons


def texts_degeneration_reasons(texts: Iterable[str], config: RepetitionConfig = RepetitionConfig()) -> list[str]:
    """The union of `degeneration_reasons` over several texts (a dialogue's turns), in `REASONS` order."""
    found: set[str] = set()
    for text in texts:
        found.update(degeneration_reasons(text, config))
    return [r for r in REASONS if r in found]


def row_degeneration_reasons(row: Mapping[str, Any], config: RepetitionConfig = RepetitionConfig()) -> list[str]:
    """Degeneration reasons of a conversational row: every user and assistant message is checked (user turns are
    teacher-written too in Self-Instruct, Evol-Instruct, UltraChat and self-chat)."""
    messages = row.get("messages") or []
    return texts_degeneration_reasons(
        (m.get("content") or "" for m in messages if m.get("role") in ("user", "assistant")), config)


def dialogue_degeneration_reasons(messages: Sequence[Mapping[str, Any]],
                                  config: RepetitionConfig = RepetitionConfig()) -> list[str]:
    """Degeneration reasons of a dialogue's generated turns: every message after the opening one (the opening is a
    seed or carries a user's document; the turns after it are the teacher's, on both sides)."""
    return texts_degeneration_reasons((m.get("content") or "" for m in messages[1:]), config)
