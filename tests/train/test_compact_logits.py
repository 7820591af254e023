"""Compact logit shards (gen/logits/compact.py, logit_format 2) and capture temperature (gen logits --temperature)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gen.cli import main
from gen.logits.capture import topk_from_logits
from gen.logits.compact import CompactLayout, decode, encode
from gen.logits.records import (
    LogitShardWriter,
    load_logit_columns,
    logit_metadata,
    make_logit_row,
    read_logit_metadata,
    tokenizer_fingerprint,
)
from tests.train.conftest import synthetic_conversations, write_conversations


def _by_id(ids, logprobs):
    order = np.argsort(ids, axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1), np.take_along_axis(logprobs.astype(np.float64), order, 1)


@settings(max_examples=60, deadline=None)
@given(vocab=st.integers(1, 5000), k=st.integers(1, 70), tokens=st.integers(0, 12), seed=st.integers(0, 2**31),
       zero_prob=st.floats(0, 1), scale=st.floats(0.01, 30))
def test_round_trip_keeps_ids_exactly_and_bounds_the_logprob_error(vocab, k, tokens, seed, zero_prob, scale):
    k = min(k, vocab)
    rng = np.random.default_rng(seed)
    ids = np.array([rng.choice(vocab, k, replace=False) for _ in range(tokens)], dtype=np.int32).reshape(tokens, k)
    logprobs = -np.sort(rng.exponential(scale, (tokens, k)), axis=1).astype(np.float16)
    logprobs[rng.random((tokens, k)) < zero_prob] = -np.inf  # probabilities 0, whole rows included
    layout = CompactLayout(vocab, k)
    packed = encode(layout, ids, logprobs)
    assert packed.shape == (tokens, layout.width)
    got_ids, got_lp = decode(layout, packed)
    ids_a, lp_a = _by_id(ids, logprobs)
    ids_b, lp_b = _by_id(got_ids, got_lp)
    np.testing.assert_array_equal(ids_a, ids_b)
    assert np.array_equal(np.isneginf(lp_a), np.isneginf(lp_b))  # zero probabilities stay exactly zero
    finite = np.isfinite(lp_a)
    top = np.where(finite, lp_a, -np.inf).max(1, initial=-np.inf)
    span = top - np.where(finite, lp_a, np.inf).min(1, initial=np.inf)
    span = np.where(np.isfinite(span), span, 0)[:, None]
    np.seterr(invalid="ignore")  # -inf - -inf in the comparisons below: masked out by `finite`
    bound = span / 254 * 1.01 + span * 1e-3 + np.abs(lp_a) * 1e-3 + 1e-6
    assert (np.abs(lp_a - lp_b)[finite] <= np.broadcast_to(bound, lp_a.shape)[finite]).all()
    if tokens:  # decoded order: log-prob descending, like format 1
        assert (np.diff(np.where(np.isfinite(got_lp), got_lp.astype(np.float64), -1e9), axis=1) <= 0).all()


def test_the_layout_is_under_200_bytes_per_token_at_k64_over_gemmas_vocabulary():
    layout = CompactLayout(262_144, 64)
    assert (layout.low_bits, layout.width) == (12, 182)  # + input_ids, labels, fp32 tail = 194 bytes/token


def test_compact_shards_round_trip_through_the_writer_and_keep_the_tail_exactly(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(5):
        T = int(rng.integers(1, 30))
        ids = np.stack([rng.choice(777, 6, replace=False) for _ in range(T)]).astype(np.int32)
        lp = -np.sort(rng.exponential(2, (T, 6)), axis=1).astype(np.float16)
        labels = np.full(T, -100) if i == 0 else rng.integers(0, 777, T)  # row 0: every label ignored
        rows.append(make_logit_row(f"r{i}", rng.integers(0, 777, T), labels, ids, lp, rng.normal(-2, 1, T)))
    meta = logit_metadata(teacher="hf:/t", tokenizer_hash="h", vocab_size=777, k=6, tail_source="full_distribution",
                          logit_format=2)
    with LogitShardWriter(tmp_path, k=6, metadata=meta, max_bytes=1500) as writer:
        for row in rows:
            writer.write(row)
    assert read_logit_metadata(tmp_path)["logit_format"] == 2
    columns = load_logit_columns(tmp_path)
    by_id = {row["id"]: row for row in rows}
    for i, row_id in enumerate(columns.ids):
        got, want = columns.row(i), by_id[row_id]
        for key in ("input_ids", "labels", "tail_logmass"):
            np.testing.assert_array_equal(got[key], want[key])
        ids_a, lp_a = _by_id(want["topk_ids"], want["topk_logprobs"])
        ids_b, lp_b = _by_id(got["topk_ids"], got["topk_logprobs"])
        np.testing.assert_array_equal(ids_a, ids_b)
        assert np.abs(lp_a - lp_b).max() < 0.1


def test_topk_at_a_temperature_is_exact():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 4, (7, 50)))
    ids, lp, tail = topk_from_logits(logits, 5, temperature=2.5)
    want = torch.log_softmax(logits.double() / 2.5, -1)  # by hand, float64
    top = want.topk(5, -1)
    np.testing.assert_array_equal(ids, top.indices.numpy())
    np.testing.assert_allclose(lp.astype(np.float64), top.values.numpy(), atol=2e-3, rtol=1e-3)
    rest = want.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
    np.testing.assert_allclose(tail, rest.numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tempered_shards(tiny_pair, tmp_path_factory):
    _, teacher, _ = tiny_pair
    root = tmp_path_factory.mktemp("tempered")
    write_conversations(root / "conv", synthetic_conversations(4, seed=5))
    assert main(["logits", "--shards", str(root / "conv"), "--teacher", f"hf:{teacher}", "-k", "8", "--out",
                 str(root / "logits"), "--temperature", "2", "--no-progress"]) == 0
    return root / "logits"


def test_capture_temperature_is_stored_and_gen_train_refuses_a_mismatch(tiny_pair, tempered_shards, tmp_path,
                                                                         capsys):
    _, _, student = tiny_pair
    meta = read_logit_metadata(tempered_shards)
    assert meta["temperature"] == 2.0 and meta["logit_format"] == 2  # compact is the default
    argv = ["train", "--student", str(student), "--data", str(tempered_shards), "--out", str(tmp_path / "o"),
            "--max-steps", "1", "--batch-size", "2", "--max-length", "64", "--save-steps", "100"]
    capsys.readouterr()
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (the load's progress bar)
    assert len(errors) == 1 and errors[0].startswith("gen train: error: --temperature")
    assert "temperature 2" in errors[0] and "temperature is 1" in errors[0]
    assert main(argv + ["--temperature", "2"]) == 0  # matching temperature trains (on compact shards)


def test_vllm_refuses_other_temperatures_before_loading(conversations, tmp_path, capsys):
    code = main(["logits", "--shards", str(conversations), "--teacher", "vllm:/no/model", "--out", str(tmp_path / "o"),
                 "--temperature", "0.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "temperature 1" in err
    assert not (tmp_path / "o").exists()


def test_a_format_1_shard_without_format_metadata_still_trains(tiny_pair, tmp_path):
    """Shards written before logit_format existed: no 'logit_format' key, int32/fp16 columns."""
    tokenizer, _, student = tiny_pair
    rng = np.random.default_rng(2)
    meta = logit_metadata(teacher="hf:/t", tokenizer_hash=tokenizer_fingerprint(tokenizer), vocab_size=len(tokenizer), k=4,
                          tail_source="full_distribution")
    del meta["logit_format"]
    with LogitShardWriter(tmp_path / "old", k=4, metadata=meta) as writer:
        for i in range(3):
            T = 12
            ids = np.stack([rng.choice(len(tokenizer), 4, replace=False) for _ in range(T)]).astype(np.int32)
            lp = np.log(np.full((T, 4), 0.2)).astype(np.float16)
            writer.write(make_logit_row(f"o{i}", rng.integers(0, len(tokenizer), T), rng.integers(0, len(tokenizer), T),
                                        ids, lp, np.full(T, np.log(0.2), dtype=np.float32)))
    assert read_logit_metadata(tmp_path / "old")["logit_format"] == 1
    assert main(["train", "--student", str(student), "--data", str(tmp_path / "old"), "--out", str(tmp_path / "o"),
                 "--max-steps", "1", "--batch-size", "2", "--max-length", "64", "--save-steps", "100"]) == 0
