"""Logit shards (gen/logit_records.py): schema, atomic multi-shard round-trip, zero-copy reading, resume, stats, and
the chat tokenization with assistant-only labels that capture and training share."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from gen.data.shards import open_shard, shard_paths
from gen.errors import UserError
from gen.logits.records import (
    LogitShardWriter,
    conversation,
    load_logit_columns,
    logit_metadata,
    logit_shard_stats,
    make_logit_row,
    read_logit_metadata,
    tokenize_conversation,
)

K = 5


def random_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        T = int(rng.integers(1, 40))
        ids = np.stack([rng.choice(1000, K, replace=False) for _ in range(T)]).astype(np.int32)
        logprobs = np.sort(rng.normal(-3, 2, (T, K)), axis=1)[:, ::-1].astype(np.float16)
        rows.append(make_logit_row(f"row-{i}", rng.integers(0, 1000, T), np.where(rng.random(T) < 0.5, -100,
                                   rng.integers(0, 1000, T)), ids, logprobs, rng.normal(-1, 0.5, T)))
    return rows


def metadata() -> dict:
    return logit_metadata(teacher="hf:/models/t", tokenizer_hash="abc", vocab_size=1000, k=K,
                          tail_source="full_distribution")


def test_round_trip_across_several_shards_is_exact_and_zero_copy(tmp_path):
    rows = random_rows(30)
    with LogitShardWriter(tmp_path, k=K, metadata=metadata(), max_bytes=2000) as writer:
        writer.write_many(rows)
    assert len(shard_paths(tmp_path, "train")) > 3  # small max_bytes: the real array sizes cut shards
    schema = open_shard(shard_paths(tmp_path, "train")[0]).schema
    assert schema.field("topk_ids").type == pa.list_(pa.list_(pa.int32(), K))
    assert schema.field("topk_logprobs").type == pa.list_(pa.list_(pa.float16(), K))
    assert schema.field("tail_logmass").type == pa.list_(pa.float32())

    columns = load_logit_columns(tmp_path)
    assert columns.ids == [row["id"] for row in rows]
    for r, row in enumerate(rows):
        back = columns.row(r)
        for key in ("input_ids", "labels", "topk_ids", "topk_logprobs", "tail_logmass"):
            np.testing.assert_array_equal(back[key], row[key])
            assert back[key].dtype == row[key].dtype
    # rows are views into the memory-mapped files, not copies (a copy would be writable)
    assert len(columns.segments) == len(shard_paths(tmp_path, "train"))
    assert not any(array.flags.writeable for array in columns.row(len(rows) - 1).values())
    meta = read_logit_metadata(tmp_path)
    assert (meta["k"], meta["vocab_size"], meta["teacher"], meta["alignment"]) == (K, 1000, "hf:/models/t",
                                                                                   "next_token")


def test_rewriting_the_same_ids_is_skipped_and_stats_count_real_bytes(tmp_path):
    rows = random_rows(12, seed=1)
    with LogitShardWriter(tmp_path, k=K, metadata=metadata()) as writer:
        writer.write_many(rows[:8])
    with LogitShardWriter(tmp_path, k=K, metadata=metadata()) as writer:
        assert writer.write_many(rows) == 4
        assert writer.rows_skipped == 8
    stats = logit_shard_stats(tmp_path)
    tokens = sum(len(row["input_ids"]) for row in rows)
    size = sum(p.stat().st_size for p in shard_paths(tmp_path, "train"))
    assert (stats["rows"], stats["tokens"], stats["bytes"]) == (12, tokens, size)
    assert stats["label_tokens"] == sum(int((row["labels"] != -100).sum()) for row in rows)
    assert stats["bytes_per_token"] == pytest.approx(size / tokens)
    # per token: K int32 ids + K fp16 logprobs + tail + input id + label = 6K + 12 bytes, plus framing
    assert 6 * K + 12 <= stats["bytes_per_token"] < 6 * K + 12 + 200


def test_a_conversational_dir_is_not_a_logit_dir(tmp_path):
    from tests.train.conftest import synthetic_conversations, write_conversations

    write_conversations(tmp_path, synthetic_conversations(2))
    with pytest.raises(UserError, match="not a logit shard"):
        load_logit_columns(tmp_path)


def test_labels_cover_exactly_the_assistant_turns(tiny_tokenizer):
    tokenizer = tiny_tokenizer
    row = {"messages": [{"role": "user", "content": "Count from 3."},
                        {"role": "assistant", "content": "3 4 5"},
                        {"role": "user", "content": "Backwards?"},
                        {"role": "assistant", "content": "5 4 3"}],
           "system": "Numbers only."}
    input_ids, labels = tokenize_conversation(tokenizer, conversation(row))
    text = tokenizer.decode(input_ids)
    assert text.startswith("<|im_start|>system\nNumbers only.<|im_end|>")
    assert tokenizer.decode(input_ids[labels != -100]) == "3 4 5<|im_end|>\n5 4 3<|im_end|>\n"
    np.testing.assert_array_equal(labels[labels != -100], input_ids[labels != -100])
    short_ids, short_labels = tokenize_conversation(tokenizer, conversation(row), max_length=10)
    np.testing.assert_array_equal(short_ids, input_ids[:10])
    np.testing.assert_array_equal(short_labels, labels[:10])


def test_a_tokenizer_without_chat_template_is_a_user_error(tiny_tokenizer):
    tokenizer = tiny_tokenizer
    saved = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        with pytest.raises(UserError, match="--chat-template"):
            tokenize_conversation(tokenizer, [{"role": "user", "content": "hi"}])
    finally:
        tokenizer.chat_template = saved
