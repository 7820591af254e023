"""On-policy student sampling through a vLLM engine colocated in the trainer (train/vllm_sampler.py), on the tiny
Llama pair, in the vLLM venv (`make test-vllm`). One engine serves the whole module: `VLLMSampler` reuses a started
engine for the same student directory and options and pushes each run's weights into it at start.

- greedy samples of the vLLM sampler equal transformers `generate` on the trainer's current weights once synced,
  and differ from them while the engine still holds the previous step's weights (so the sync is what keeps it on
  policy);
- kill + resume samples the same completions as an uninterrupted run (same loss curve);
- a `gen train --student-sampler vllm` run logs generation, scoring, training throughput and the sync time."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from gen.cli import main
from tests.train.test_on_policy import StopAt, losses
from train.config import TrainConfig
from train.data import load_training_data
from train.on_policy import OnPolicyMixin, on_policy_setup, prompts_of, sample_completions
from train.trainer import DistillTrainer, train, training_arguments

pytestmark = pytest.mark.vllm
FAST = {"max_length": 256, "batch_size": 4, "logging_steps": 1, "save_steps": 100}


@pytest.fixture(scope="module", autouse=True)
def small_cpu_kv_cache():
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; read by vLLM when the engine starts


def test_vllm_samples_equal_generate_on_the_synced_weights_and_not_on_stale_ones(tiny_pair, conversations, tmp_path):
    tokenizer, teacher_dir, student_dir = tiny_pair
    config = TrainConfig(student=str(student_dir), data=[str(conversations)], out=str(tmp_path / "o"), **FAST,
                         lr=3e-2, max_steps=3, teacher=f"hf:{teacher_dir}", on_policy=1.0, gen_temperature=0.0,
                         gen_max_new_tokens=8, student_sampler="vllm", sync_steps=1)
    data = load_training_data([conversations], tokenizer, max_length=256, packing=False)
    setup = on_policy_setup(config, None, torch.device("cpu"))
    setup.pop("metadata")
    trainer = type("OnPolicyTrainer", (OnPolicyMixin, DistillTrainer), {})(
        model=AutoModelForCausalLM.from_pretrained(student_dir),
        args=training_arguments(config), train_dataset=data.dataset, data_collator=data.collator,
        processing_class=tokenizer, loss_config=config.loss, **setup)
    sampler = trainer.sampler
    assert sampler.name == "vllm"
    trainer.train()
    summary = trainer.on_policy_summary()
    # pushed at start (step 0), then before the samples of steps 2 and 3 (drawn after optimizer steps 1 and 2)
    assert summary["syncs"] == 3 and summary["on_policy_batches"] == 3 and summary["sync_seconds"] > 0

    model = trainer.model.eval()
    prompts = prompts_of(data.collator([data.dataset[i] for i in range(8)]))

    def generate() -> list[list[int]]:
        with torch.no_grad():
            return [c.tolist() for c in sample_completions(model, prompts, pad_id=tokenizer.pad_token_id,
                                                           eos_ids=sampler.spec.eos_ids, temperature=0.0,
                                                           max_new_tokens=8)]

    def from_vllm() -> list[list[int]]:
        return [c.tolist() for c in sampler.sample(None, prompts, max_new_tokens=8)]

    current = generate()
    stale = from_vllm()  # the engine holds the weights of step 2; the model is at step 3
    assert stale != current
    assert sampler.sync(model, 3) > 0 and sampler.sync(model, 3) is None  # pushed once per sync point
    assert from_vllm() == current


def test_kill_and_resume_sample_what_an_uninterrupted_vllm_run_samples(tiny_pair, conversations, tmp_path):
    _, teacher_dir, student_dir = tiny_pair

    def run(out, **extra):
        train(TrainConfig(student=str(student_dir), data=[str(conversations)], out=str(out), max_steps=4,
                          **{**FAST, "save_steps": 2}, lr=3e-3, teacher=f"hf:{teacher_dir}", on_policy=1.0,
                          gen_max_new_tokens=8, student_sampler="vllm", sync_steps=2, **extra))
        return losses(out)

    straight = run(tmp_path / "straight")
    assert run(tmp_path / "resumed", extra_callbacks=[StopAt(2)]) == {1: straight[1], 2: straight[2]}
    resumed = run(tmp_path / "resumed", resume=True)
    for step in (3, 4):  # the resumed run samples (temperature 1) the same completions, so its losses are the same
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6), step


def test_cli_run_with_the_vllm_sampler_logs_generation_scoring_training_and_sync(tiny_pair, conversations, tmp_path):
    _, teacher_dir, student_dir = tiny_pair
    out = tmp_path / "out"
    assert main(["train", "--student", str(student_dir), "--data", str(conversations), "--out", str(out),
                 "--on-policy", "1", "--teacher", f"hf:{teacher_dir}", "--student-sampler", "vllm",
                 "--sync-steps", "1", "--gen-max-new-tokens", "6", "--gen-temperature", "0.7", "--max-steps", "2",
                 "--batch-size", "2", "--logging-steps", "1", "--max-length", "256"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())["on_policy"]
    assert summary["student_sampler"] == "vllm" and summary["sync_steps"] == 1 and summary["syncs"] == 2
    assert 0 < summary["gen_tokens"] <= 2 * 2 * 6
    entries = [e for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert len(entries) == 2
    for entry in entries:
        assert entry["on_policy_fraction"] == 1.0 and entry["syncs"] == 1 and entry["sync_seconds"] > 0
        for key in ("gen_tokens_per_second", "score_tokens_per_second", "train_tokens_per_second"):
            assert entry[key] > 0, key
