"""`gen logits` with a local Hugging Face teacher: what it stores equals a direct forward pass of the teacher, and a
rerun only captures the rows that are new."""

from __future__ import annotations

import numpy as np
import torch

from gen.cli import main
from gen.data.shards import read_table, shard_paths
from gen.logits.records import (
    conversation,
    load_logit_columns,
    read_logit_metadata,
    tokenize_conversation,
    tokenizer_fingerprint,
)
from tests.train.conftest import synthetic_conversations, write_conversations

K = 8


def test_capture_matches_a_direct_forward_pass_and_resumes(tiny_pair, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    tokenizer, teacher_dir, _ = tiny_pair
    source, out = tmp_path / "conversations", tmp_path / "logits"
    rows = synthetic_conversations(10, seed=3)
    write_conversations(source, rows[:6])
    argv = ["logits", "--shards", str(source), "--teacher", f"hf:{teacher_dir}", "-k", str(K), "--out", str(out),
            "--batch-size", "4", "--no-progress", "--format", "exact"]  # exact: compared to fp64 below
    assert main(argv) == 0

    meta = read_logit_metadata(out)
    assert meta["teacher"] == f"hf:{teacher_dir}" and meta["k"] == K and meta["vocab_size"] == len(tokenizer)
    assert meta["tokenizer_hash"] == tokenizer_fingerprint(tokenizer)
    assert meta["tail_source"] == "full_distribution"

    # rerun over a source that gained 4 rows: only those are captured
    write_conversations(source, rows)
    shards_before = len(shard_paths(out, "train"))
    assert main(argv) == 0
    assert len(shard_paths(out, "train")) == shards_before + 1
    assert '"new_rows": 4' in capsys.readouterr().out

    assert main(["stats", str(out)]) == 0  # `gen stats` reports the size per token
    report = capsys.readouterr().out
    assert "bytes/token" in report and f"hf:{teacher_dir}" in report

    columns = load_logit_columns(out)
    assert sorted(columns.ids) == sorted(read_table(source).column("id").to_pylist())
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float64).eval()
    by_id = {row["id"]: row for row in rows}
    for i, row_id in enumerate(columns.ids):
        stored = columns.row(i)
        input_ids, labels = tokenize_conversation(tokenizer, conversation(by_id[row_id]), 2048)
        np.testing.assert_array_equal(stored["input_ids"], input_ids)
        np.testing.assert_array_equal(stored["labels"], labels)
        with torch.no_grad():  # unbatched, float64: the ground truth
            logp = torch.log_softmax(model(torch.from_numpy(input_ids.astype(np.int64))[None]).logits[0], -1)
        top = logp.topk(K, dim=-1)
        np.testing.assert_array_equal(stored["topk_ids"], top.indices.numpy())
        np.testing.assert_allclose(stored["topk_logprobs"].astype(np.float64), top.values.numpy(), rtol=1e-3,
                                   atol=2e-3)  # fp16 storage
        rest = logp.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
        np.testing.assert_allclose(stored["tail_logmass"], rest.numpy(), rtol=1e-5, atol=1e-5)
        # the stored buckets are a distribution: top-k mass + tail mass = 1
        mass = np.exp(stored["topk_logprobs"].astype(np.float64)).sum(1) + np.exp(stored["tail_logmass"])
        np.testing.assert_allclose(mass, 1.0, atol=5e-3)


def test_teacher_spec_without_logits_is_a_user_error(conversations, tmp_path, capsys):
    code = main(["logits", "--shards", str(conversations), "--teacher", "openai:gpt-4o", "--out", str(tmp_path)])
    assert code == 2
    assert "--teacher" in capsys.readouterr().err
