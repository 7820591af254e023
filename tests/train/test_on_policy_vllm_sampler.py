"""On-policy student sampling through a vLLM engine colocated in the trainer (train/vllm_sampler.py), on the tiny
Llama pair, in the vLLM venv (`make test-vllm`). One engine serves the whole module: `VLLMSampler` reuses a started
engine for the same student directory and options and pushes each run's weights into it at start.

- greedy samples of the vLLM sampler equal transformers `generate` on the trainer's current weights once synced,
  and differ from them while the engine still holds the previous step's weights (so the sync is what keeps it on
  policy);
- the run logs generation, scoring and training throughput and the sync time;
- kill + resume samples the same completions as an uninterrupted run (same loss curve).
The trainer is built here as train.trainer.train builds it: train() itself ends with a matplotlib loss-curve plot,
and matplotlib is not in this venv."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.train.test_on_policy import StopAt
from train.config import TrainConfig
from train.data import load_training_data
from train.on_policy import OnPolicyMixin, on_policy_setup, prompts_of, sample_completions
from train.trainer import DistillTrainer, training_arguments

pytestmark = pytest.mark.vllm
FAST = {"max_length": 256, "batch_size": 4, "logging_steps": 1, "save_steps": 100}


@pytest.fixture(scope="module", autouse=True)
def small_cpu_kv_cache():
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; read by vLLM when the engine starts


def on_policy_trainer(config: TrainConfig, tokenizer, conversations, **kwargs):
    data = load_training_data([conversations], tokenizer, max_length=config.max_length, packing=False)
    setup = on_policy_setup(config, None, torch.device("cpu"))
    setup.pop("metadata")
    trainer = type("OnPolicyTrainer", (OnPolicyMixin, DistillTrainer), {})(
        model=AutoModelForCausalLM.from_pretrained(config.student, dtype=torch.float32),
        args=training_arguments(config), train_dataset=data.dataset, data_collator=data.collator,
        processing_class=tokenizer, loss_config=config.loss, **setup, **kwargs)
    return trainer, data


def logged_losses(trainer) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


def test_vllm_samples_equal_generate_on_the_synced_weights_and_not_on_stale_ones(tiny_pair, conversations, tmp_path):
    tokenizer, teacher_dir, student_dir = tiny_pair
    config = TrainConfig(student=str(student_dir), data=[str(conversations)], out=str(tmp_path / "o"), **FAST,
                         lr=3e-2, max_steps=3, teacher=f"hf:{teacher_dir}", on_policy=1.0, gen_temperature=0.0,
                         gen_max_new_tokens=8, student_sampler="vllm", sync_steps=1)
    trainer, data = on_policy_trainer(config, tokenizer, conversations)
    sampler = trainer.sampler
    assert sampler.name == "vllm"
    trainer.train()
    summary = trainer.on_policy_summary()
    # pushed at start (step 0), then before the samples of steps 2 and 3 (drawn after optimizer steps 1 and 2)
    assert summary["student_sampler"] == "vllm" and summary["syncs"] == 3 and summary["on_policy_batches"] == 3
    assert summary["sync_seconds"] > 0 and 0 < summary["gen_tokens"] <= 3 * 4 * 8
    entries = [e for e in trainer.state.log_history if "loss" in e]
    assert len(entries) == 3 and [e["syncs"] for e in entries] == [1, 1, 1]  # the start's push counts in step 1
    for entry in entries:  # generation, scoring, training and the weight push, each timed apart
        assert entry["on_policy_fraction"] == 1.0 and entry["sync_seconds"] > 0
        for key in ("gen_tokens_per_second", "score_tokens_per_second", "train_tokens_per_second"):
            assert entry[key] > 0, key

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
    tokenizer, teacher_dir, student_dir = tiny_pair

    def run(out, resume=None, **kwargs):
        config = TrainConfig(student=str(student_dir), data=[str(conversations)], out=str(out), max_steps=4,
                             **{**FAST, "save_steps": 2}, lr=3e-3, teacher=f"hf:{teacher_dir}", on_policy=1.0,
                             gen_max_new_tokens=8, student_sampler="vllm", sync_steps=2)
        trainer, _ = on_policy_trainer(config, tokenizer, conversations, **kwargs)
        trainer.train(resume_from_checkpoint=resume)
        return logged_losses(trainer), trainer.on_policy_summary()

    straight, summary = run(tmp_path / "straight")
    assert summary["syncs"] == 2  # at start, and before the sample drawn after optimizer step 2
    interrupted, _ = run(tmp_path / "resumed", callbacks=[StopAt(2)])
    assert interrupted == {1: straight[1], 2: straight[2]}
    assert (tmp_path / "resumed" / "checkpoint-2" / "on_policy_state_0.pt").is_file()
    resumed, _ = run(tmp_path / "resumed", resume=True)
    for step in (3, 4):  # the resumed run samples (temperature 1) the same completions, so its losses are the same
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6), step
