"""Benchmark decontamination: the n-gram rule on crafted texts, agreement with a plain Python-set reference,
hash collisions confirmed away, and `gen decontaminate` end to end through the command line on real run
directories against .jsonl, .parquet and `datasets` benchmark files."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filters.decontaminate import BenchmarkIndex, find_contamination, normalized_words
from gen.data.lock import LOCK_NAME
from gen.data.records import make_row
from gen.data.shards import ShardWriter, read_manifest, read_table, write_manifest
from tests.filters.conftest import WORDS

ROOT = Path(__file__).resolve().parents[2]

# 20 words; its 13-word windows are what a contaminated row copies.
ITEM = ("Natalia sold clips to forty eight of her friends in April and then she sold half as many clips in May "
        "altogether")
ITEM_WORDS = ITEM.lower().split()


def window(start: int, length: int) -> str:
    return " ".join(ITEM.split()[start:start + length])


# ---------------------------------------------------------------------------------------------- crafted texts


def test_an_exact_13_gram_hits_and_a_12_gram_does_not():
    texts = [
        "Please solve: " + window(3, 13) + " thanks",       # 0: exactly 13 shared words
        "Please solve: " + window(3, 12) + " thanks",       # 1: 12 shared words, then a different word
        window(0, 12) + " banana " + window(13, 7),          # 2: the item with one word replaced in the middle
        "unrelated text about rivers and mountains " * 5,    # 3
    ]
    result = find_contamination(texts, {"gsm": [ITEM]})
    assert sorted(result.matches) == [0]
    match = result.matches[0][0]
    assert (match.benchmark, match.item) == (0, 0)
    assert match.ngram == " ".join(ITEM_WORDS[3:16])
    assert result.rows_matched == [1] and result.unconfirmed_hits == 0
    # --ngram is configurable: with 12 the near miss is a hit.
    assert sorted(find_contamination(texts, {"gsm": [ITEM]}, n=12).matches) == [0, 1, 2]


def test_case_punctuation_accents_and_spacing_do_not_hide_a_hit():
    shouted = window(0, 15).upper().replace(" ", " ,  ").replace("CLIPS", "«CLIPS»")
    accented = window(2, 14).replace("Natalia", "Natália").replace("friends", "friends!!")
    texts = [shouted, "Q:\n" + accented + "\n\nA: 72", "natalia-sold-clips-to-forty-eight-of-her-friends-in-april-and-then"]
    result = find_contamination(texts, {"gsm": [ITEM]})
    assert sorted(result.matches) == [0, 1, 2]
    assert normalized_words("It's Café-TIME… naïve_x C++") == ["it", "s", "cafe", "time", "naive", "x", "c"]


def test_items_shorter_than_n_words_are_skipped_and_counted():
    index = BenchmarkIndex(13)
    stats = index.add("short", ["What is the capital of France?", "Paris", "", None, ITEM])
    assert (stats.items, stats.indexed, stats.too_short) == (5, 1, 2)
    result = index.scan(["Tell me: what is the capital of France? Paris, of course.", "Short row", ""])
    assert result.matches == {}  # the short item is not matched even when a row contains all of it


def test_an_ngram_never_spans_two_rows_or_two_items():
    # Row 0 ends with the item's first 7 words, row 1 starts with the next 6: 13 in a row only across the boundary.
    rows = ["intro words here " + window(0, 7), window(7, 6) + " and more words"]
    assert find_contamination(rows, {"gsm": [ITEM]}).matches == {}
    # Likewise an item cut in two halves that only meet across the item boundary matches nothing.
    halves = [window(0, 10), window(10, 10)]
    assert find_contamination([ITEM], {"gsm": halves}).matches == {}


def test_every_benchmark_a_row_overlaps_is_reported_in_benchmark_order():
    other = "the mitochondria is the powerhouse of the cell and it makes most of the chemical energy"
    texts = [other + " and " + window(0, 14), "nothing", window(5, 13)]
    result = find_contamination(texts, {"gsm": ["filler item that is long enough to have many thirteen word windows "
                                                "in it for sure yes", ITEM], "bio": [other]})
    assert sorted(result.matches) == [0, 2]
    assert [(m.benchmark, m.item) for m in result.matches[0]] == [(0, 1), (1, 0)]
    assert result.rows_matched == [2, 1]


def _reference_words(text: str) -> list[str]:
    """Written independently of filters.decontaminate: character by character with unicodedata."""
    out = []
    for ch in unicodedata.normalize("NFD", (text or "").lower()):
        category = unicodedata.category(ch)
        if category in ("Mn", "Cf"):
            continue
        out.append(" " if category[0] in "PSZ" or category == "Cc" else ch)
    return "".join(out).split()


def _reference(texts: list[str], items: list[str], n: int) -> set[int]:
    """The plain definition: a Python set of every item's n-gram strings, each row's n-grams looked up in it."""
    grams = set()
    for item in items:
        words = _reference_words(item)
        grams.update(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    flagged = set()
    for row, text in enumerate(texts):
        words = _reference_words(text)
        if any(" ".join(words[i:i + n]) in grams for i in range(len(words) - n + 1)):
            flagged.add(row)
    return flagged


@pytest.mark.parametrize("n", [5, 8, 13])
def test_agrees_with_a_python_set_of_ngram_strings(n):
    rng = random.Random(n)
    decorations = ["", ",", ".", "!", " -", "’s", "é", "É", "…", " (x)", "“", "\u00ad"]

    def sentence(k: int) -> str:
        return " ".join(rng.choice(WORDS) + rng.choice(decorations) for _ in range(k))

    items = [sentence(rng.randint(3, 40)) for _ in range(200)]
    texts = []
    for _ in range(600):
        text = sentence(rng.randint(0, 60))
        if rng.random() < 0.3:  # plant a window of an item, of a length around n, with its case changed
            words = rng.choice(items).split()
            start = rng.randint(0, max(0, len(words) - 1))
            piece = " ".join(words[start:start + rng.randint(n - 2, n + 2)])
            text = text + " " + (piece.upper() if rng.random() < 0.5 else piece) + " " + sentence(rng.randint(0, 5))
        texts.append(text)
    index = BenchmarkIndex(n)
    index.add("bench", items)
    # Small batches: rows of one scan are cut into many segments, so batch edges are exercised too.
    result = index.scan(texts, batch_chars=2000)
    expected = _reference(texts, items, n)
    assert 30 < len(expected) < len(texts)
    assert set(result.matches) == expected
    for row, (match,) in result.matches.items():
        assert match.ngram in " ".join(_reference_words(texts[row]))
        assert match.ngram in " ".join(_reference_words(items[match.item]))


def test_hash_collisions_are_confirmed_on_the_words_and_never_reported():
    # 8-bit hashes: a row n-gram collides with some item n-gram about every 256 / (item n-grams) tries.
    rng = random.Random(7)
    items = [" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(50)]
    rows = [" ".join(f"zz{rng.randrange(10**6)}" for _ in range(40)) for _ in range(300)]  # share no word at all
    rows.append("lead in " + " ".join(items[31].split()[4:17]) + " tail")  # one true hit, at row 300
    narrow = BenchmarkIndex(13, hash_bits=8)
    narrow.add("bench", items)
    result = narrow.scan(rows)
    assert result.unconfirmed_hits > 1000  # many hash hits ...
    assert list(result.matches) == [300]  # ... none reported but the true one,
    assert result.matches[300][0].item == 31  # named by the item whose words match, among many sharing its hash
    assert result.matches[300][0].ngram == " ".join(items[31].split()[4:17])
    # With the full 64 bits nothing collides at all.
    full = BenchmarkIndex(13)
    full.add("bench", items)
    assert full.scan(rows).unconfirmed_hits == 0


# ------------------------------------------------------------------------------------------------- end to end


def conversation(question: str, answer: str, **extra) -> dict:
    return make_row(messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                    method="label", finish_reason="stop", teacher="llamacpp:test", **extra)


MMLU_Q = "Which of the following best describes the function of the enzyme catalase inside the peroxisomes of liver cells"
GSM_A = "She sold 48 clips in April and 24 clips in May so altogether she sold 72 clips in April and May"


def build_run(path: Path) -> list[dict]:
    rows = [
        conversation("Answer this: " + MMLU_Q.upper() + "?", "It breaks down hydrogen peroxide."),      # 0 mmlu (question)
        conversation("How many clips did Natalia sell?", "Let me think. " + GSM_A + ". Done."),         # 1 gsm (answer)
        conversation("Write a haiku about autumn leaves.", "Red leaves drift and fall / ..."),          # 2
        conversation(" ".join(MMLU_Q.split()[:12]) + " cells?", "Near miss: twelve words."),            # 3 12 words only
        conversation("Explain the enzyme catalase.", "Catalase splits peroxide."),                     # 4
        # 5: the instruction ends and the answer starts one 13-gram of the gsm answer: joined, it is a hit.
        conversation("Repeat: she sold 48 clips in April and 24", "clips in May so altogether she"),
    ]
    with ShardWriter(path, "train", max_rows=4) as writer:
        writer.write_many(rows)
    with ShardWriter(path, "rejected") as writer:
        writer.write(conversation("Describe this photo.", "I can't see photos.", filters=["refusal"]))
    write_manifest(path, config={"method": "label", "teacher": "llamacpp:test"}, funnel={"generated": 7})
    return rows


def write_benchmarks(tmp_path: Path) -> tuple[Path, Path]:
    jsonl = tmp_path / "gsm8k_test.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Tom has three apples and buys two more apples at the market; how many now?", "answer": "5"},
        {"question": "Natalia sold clips to 48 of her friends in April, and then half as many in May.",
         "answer": GSM_A},
    ]) + "\n")
    parquet = tmp_path / "mmlu_biology.parquet"
    pq.write_table(pa.table({"question": ["What is two plus two?", MMLU_Q + "?"],
                             "choices": [["3", "4", "5", "6"], ["It makes ATP", "It splits H2O2", "None", "All"]],
                             "answer": [1, 1]}), parquet)
    return jsonl, parquet


def gen_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gen.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def run_files(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_NAME}


def rows_by_id(run: Path, split: str) -> dict[str, dict]:
    return {r["id"]: r for r in read_table(run, split).to_pylist()}


def test_gen_decontaminate_end_to_end(tmp_path):
    run = tmp_path / "run"
    rows = build_run(run)
    ids = [r["id"] for r in rows]
    jsonl, parquet = write_benchmarks(tmp_path)
    done = gen_cli("decontaminate", str(run), "--against", str(jsonl), str(parquet))
    assert done.returncode == 0, done.stderr
    assert "gsm8k_test.jsonl: 2 items (fields question, answer)" in done.stdout
    # "What is two plus two?" with its four choices is 9 words: skipped, and said so.
    assert "mmlu_biology.parquet: 2 items (fields question, choices, answer), 1 shorter than 13 words (skipped)" \
        in done.stdout
    train, rejected = rows_by_id(run, "train"), rows_by_id(run, "rejected")
    assert set(train) == {ids[2], ids[3], ids[4]}
    assert rejected[ids[0]]["filters"] == ["contaminated"]
    assert rejected[ids[0]]["duplicate_of"] == "mmlu_biology.parquet#1"
    assert rejected[ids[1]]["duplicate_of"] == "gsm8k_test.jsonl#1"
    assert rejected[ids[5]]["duplicate_of"] == "gsm8k_test.jsonl#1"
    assert any(r["filters"] == ["refusal"] for r in rejected.values())  # the earlier rejection is kept
    assert len(train) + len(rejected) == len(rows) + 1
    manifest = read_manifest(run)
    entry = manifest["funnel"]["decontaminate"]
    assert manifest["funnel"]["generated"] == 7
    assert (entry["rows_in"], entry["kept"], entry["rejected"]) == (6, 3, 3)
    assert entry["by_reason"] == {"contaminated": 3}
    assert entry["by_benchmark"]["gsm8k_test.jsonl"]["rows_contaminated"] == 2
    assert entry["by_benchmark"]["gsm8k_test.jsonl"]["rate"] == round(2 / 6, 6)
    assert entry["by_benchmark"]["mmlu_biology.parquet"]["rows_contaminated"] == 1
    assert entry["unconfirmed_hash_hits"] == 0
    assert manifest["config"]["filters"]["decontaminate"]["ngram"] == 13
    assert manifest["stats"]["rejected"]["by_reason"]["contaminated"] == 3
    assert 'mmlu_biology.parquet#1: "which of the following best describes' in done.stdout

    # A rerun finds nothing new: the run is left exactly as it was (but for the lock file naming its last holder).
    before = run_files(run)
    again = gen_cli("decontaminate", str(run), "--against", str(jsonl), str(parquet))
    assert again.returncode == 0, again.stderr
    assert "nothing new" in again.stdout
    assert run_files(run) == before

    # The dataset card shows the rates, and contaminated rows are not counted as duplicates.
    card = tmp_path / "README.md"
    done = gen_cli("card", str(run), "--repo", "someone/decont-test", "--include-rejected", "-o", str(card))
    assert done.returncode == 0, done.stderr
    text = card.read_text()
    assert "### Benchmark contamination" in text
    assert "| gsm8k_test.jsonl | 2 | 2 | 33.33% |" in text
    assert "| mmlu_biology.parquet | 2 | 1 | 16.67% |" in text
    assert "Duplicates rejected: 0 of 7" in text


def test_out_folder_field_and_ngram_flags(tmp_path):
    run = tmp_path / "run"
    rows = build_run(run)
    ids = [r["id"] for r in rows]
    jsonl, _ = write_benchmarks(tmp_path)
    out = tmp_path / "clean"
    # Only the question column: the gsm answers, which rows 1 and 5 copy, are not indexed, so no row matches.
    done = gen_cli("decontaminate", str(run), "--against", str(jsonl), "--field", "question", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "(fields question)" in done.stdout
    assert len(rows_by_id(out, "train")) == 6 and len(rows_by_id(run, "train")) == 6
    # --ngram 12 turns row 3's 12-word near miss into a hit.
    _, parquet = write_benchmarks(tmp_path)
    done = gen_cli("decontaminate", str(run), "--against", str(parquet), "--ngram", "12", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert {ids[0], ids[3]} <= set(rows_by_id(out, "rejected"))
    assert read_manifest(out)["config"]["filters"]["decontaminate"]["ngram"] == 12


def test_datasets_folders_as_benchmarks(tmp_path):
    datasets = pytest.importorskip("datasets")
    run = tmp_path / "run"
    rows = build_run(run)
    ids = [r["id"] for r in rows]
    single = tmp_path / "mmlu_saved"
    datasets.Dataset.from_dict({"prompt": ["nothing to see here at all", MMLU_Q]}).save_to_disk(str(single))
    split = tmp_path / "gsm_dict"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"question": ["unrelated training question about apples"],
                                             "answer": ["no"]}),
        "test": datasets.Dataset.from_dict({"question": ["How many clips?"], "answer": [GSM_A]}),
    }).save_to_disk(str(split))
    done = gen_cli("decontaminate", str(run), "--against", str(single), str(split))
    assert done.returncode == 0, done.stderr
    rejected = rows_by_id(run, "rejected")
    assert rejected[ids[0]]["duplicate_of"] == "mmlu_saved#1"
    assert rejected[ids[1]]["duplicate_of"] == "gsm_dict/test#0"
    by_benchmark = read_manifest(run)["funnel"]["decontaminate"]["by_benchmark"]
    assert set(by_benchmark) == {"mmlu_saved", "gsm_dict/train", "gsm_dict/test"}
    assert by_benchmark["gsm_dict/train"]["rows_contaminated"] == 0


def test_bad_benchmark_files_are_one_line_errors_and_change_nothing(tmp_path):
    run = tmp_path / "run"
    build_run(run)
    before = run_files(run)
    no_text = tmp_path / "ids.jsonl"
    no_text.write_text('{"id": 1, "label": 3}\n')
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "fine"}\n{"question": \n')
    jsonl, _ = write_benchmarks(tmp_path)
    cases = [
        ([str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file or directory"),
        ([str(no_text)], "ids.jsonl: none of the usual text columns (columns: id, label); name them with --field"),
        ([str(jsonl), "--field", "prompt"], "gsm8k_test.jsonl: no column 'prompt' (columns: question, answer)"),
        ([str(broken)], "broken.jsonl:2: malformed JSON"),
        ([str(tmp_path / "empty")], "empty: a folder with no benchmark files"),
    ]
    (tmp_path / "empty").mkdir()
    for extra, message in cases:
        done = gen_cli("decontaminate", str(run), "--against", *extra)
        assert done.returncode == 2, (extra, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gen decontaminate: error: "), done.stderr
        assert message in lines[0], lines[0]
    assert run_files(run) == before
