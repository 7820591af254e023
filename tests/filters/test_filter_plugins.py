"""The filter plug-in points (issue 12, "Filters"): a row filter returns its reasons, a pair filter returns pairs, and
one function (`gen.data.rejections.mark_rejected`) turns a verdict into the rejected row for both a method
(`MethodRun.reject`) and the run rewriter (`gen dedup`/`gen filter`)."""

from __future__ import annotations

import numpy as np

from filters.dedup import dedup
from filters.heuristics import row_quality_reasons
from filters.rouge import novelty_duplicates
from gen.data.records import make_row
from gen.data.rejections import Rejections, mark_rejected
from gen.data.shards import read_table
from gen.methods.base import MethodRun
from gen.teachers.base import SamplingParams


def test_mark_rejected_keeps_earlier_reasons_once_and_records_the_kept_row():
    row = make_row(messages=[{"role": "user", "content": "q"}], method="label", filters=["refusal"])
    marked = mark_rejected(row, ["too_long", "refusal", "too_long"], duplicate_of="abc")
    assert marked["filters"] == ["refusal", "too_long"] and marked["duplicate_of"] == "abc"
    assert row["filters"] == ["refusal"] and row["duplicate_of"] is None  # the input row is left as it was


def test_a_method_and_the_rewriter_mark_rows_the_same_way(tmp_path):
    row = make_row(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
                   method="evol_instruct", filters=["earlier"])
    run = MethodRun(engine=None, out_dir=tmp_path, method="evol_instruct", sampling=SamplingParams(),
                    log=lambda line: None)
    run.reject(row, ["empty_answer", "earlier"], duplicate_of="kept-id")
    run.rejected.flush()
    assert read_table(tmp_path, "rejected").to_pylist() == [mark_rejected(row, ["empty_answer", "earlier"], "kept-id")]


def test_a_row_filter_returns_reasons_and_verdicts_merge_per_row():
    row = {"messages": [{"role": "user", "content": "Describe this photo."}, {"role": "assistant", "content": " "}],
           "finish_reason": "length"}
    reasons = row_quality_reasons(row)
    assert {"empty_answer", "truncated", "non_text_task"} <= set(reasons)
    verdicts = Rejections()
    verdicts.add(0, reasons)
    verdicts.add(0, ["rouge_l_duplicate", "truncated"], "first-id")
    verdicts.add(0, ["minhash_duplicate"], "second-id")
    assert verdicts.get(0) == (reasons + ["rouge_l_duplicate", "minhash_duplicate"], "first-id")
    assert verdicts.counts()["truncated"] == 1 and len(verdicts) == 1


def test_rouge_novelty_is_a_pair_filter():
    texts = ["Write a poem about the sea.", "Write a poem about the sea!", "Name three rivers in Africa.", "",
             "Write a poem about the sea, please."]
    assert novelty_duplicates(texts, 0.7) == [(1, 0), (4, 0)]
    # A skipped row neither is tested nor blocks a later one.
    assert novelty_duplicates(texts, 0.7, skip={0}) == [(4, 1)]


def test_a_new_pair_filter_plugs_into_dedup_without_touching_it():
    """A throwaway pair filter (exact same text after lowercasing), as a new one would be written."""
    def same_lowercase(texts):
        first: dict[str, int] = {}
        left, right = [], []
        for i, text in enumerate(texts):
            j = first.setdefault(text.lower(), i)
            if j != i:
                left.append(j)
                right.append(i)
        return np.array(left, dtype=np.int64), np.array(right, dtype=np.int64)

    same_lowercase.settings = {"case": "insensitive"}
    result = dedup(["Hello there", "HELLO THERE", "Other"], keep="first",
                   pair_filters={"lowercase_duplicate": same_lowercase})
    assert result.kept.tolist() == [True, False, True]
    assert result.reasons[1] == ["lowercase_duplicate"] and result.duplicate_of[1] == 0
    assert result.settings["lowercase_duplicate"] == {"case": "insensitive"}
