"""`gen train --on-policy LAMBDA` (GKD) on tiny random Llamas: lambda=0 is offline KD step for step, the fused loss
on the student's own samples equals a float64 full-logits reference, kill/resume continues the same curve, and the
CLI logs generation / scoring / training throughput separately. The vLLM-server teacher is in
test_on_policy_vllm.py (vLLM venv)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from gen.cli import main
from train.config import LossConfig
from train.data import load_training_data
from train.on_policy import OnPolicyMixin, on_policy_setup
from train.trainer import DistillTrainer, TrainConfig, train, training_arguments

FAST = {"max_length": 256, "batch_size": 4, "logging_steps": 1, "lr": 3e-3, "save_steps": 100}


def losses(out) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e}


class StopAt(TrainerCallback):
    """Ends training after `step` optimizer steps, as a killed run would (the checkpoint at `step` is on disk)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_lambda_zero_is_offline_kd_step_for_step(tiny_pair, conversations, logit_shards, tmp_path):
    _, teacher_dir, student_dir = tiny_pair
    data = [str(logit_shards), str(conversations)]  # KD shards and SFT rows mixed
    common = {"student": str(student_dir), "data": data, "max_steps": 4, "scheduler": "cosine", **FAST}
    train(TrainConfig(out=str(tmp_path / "offline"), **common))
    summary = train(TrainConfig(out=str(tmp_path / "lambda0"), teacher=f"hf:{teacher_dir}", on_policy=0.0, **common))
    offline, lambda0 = losses(tmp_path / "offline"), losses(tmp_path / "lambda0")
    assert sorted(offline) == [1, 2, 3, 4]
    assert lambda0 == offline  # exactly: same batches, same RNG, same loss path
    assert summary["on_policy"]["on_policy_batches"] == 0 and summary["on_policy"]["gen_tokens"] == 0


def test_on_policy_loss_equals_a_float64_reference_from_the_teachers_full_logits(tiny_pair, conversations, tmp_path):
    """One micro-batch through the trainer's own path (prompts -> student samples -> hf teacher scores -> fused JSD
    on completion tokens) against the same divergence computed in float64 from both models' full logits."""
    tokenizer, teacher_dir, student_dir = tiny_pair
    K, beta = 16, 0.5
    config = TrainConfig(student=str(student_dir), data=[str(conversations)], out=str(tmp_path / "o"), **FAST,
                         teacher=f"hf:{teacher_dir}", on_policy=1.0, teacher_k=K, gen_max_new_tokens=12,
                         loss=LossConfig(beta=beta))
    setup = on_policy_setup(config, None, torch.device("cpu"))
    assert setup.pop("metadata")["tail_source"] == "full_distribution"
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    trainer = type("OnPolicyTrainer", (OnPolicyMixin, DistillTrainer), {})(
        model=student, args=training_arguments(config), processing_class=tokenizer, loss_config=config.loss, **setup)
    data = load_training_data([conversations], tokenizer, max_length=256, packing=False)
    source = data.collator([data.dataset[i] for i in range(4)])
    batch = trainer._on_policy_batch(source)

    # completion tokens only: labels are -100 exactly on each row's prompt (the source row's tokens before its answer)
    for row, (ids, labels) in enumerate(zip(source["input_ids"], source["labels"])):
        prompt_len = int((labels != -100).nonzero()[0])
        n = int(batch["attention_mask"][row].sum())
        assert torch.equal(batch["input_ids"][row, :prompt_len], ids[:prompt_len])
        assert (batch["labels"][row, :prompt_len] == -100).all() and (batch["labels"][row, prompt_len:n] != -100).all()
        assert 1 <= n - prompt_len <= 12
    count = (batch["shift_labels"] != -100).sum()
    loss = trainer.compute_loss(student, dict(batch), num_items_in_batch=count)

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    with torch.no_grad():
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logp = torch.log_softmax(teacher(**kwargs).logits.double(), -1)[:, :-1]
        logq = torch.log_softmax(student(**kwargs).logits.double(), -1)[:, :-1]
    keep = batch["labels"][:, 1:] != -100
    logp, logq = logp[keep], logq[keep]
    top = logp.topk(K, -1)
    # the scorer's record: the teacher's top-k ids, fp16 log-probs and exact tail at every completion position
    stored_ids = batch["teacher_topk_ids"][:, :-1][keep].long()
    assert (torch.sort(stored_ids, -1).values == torch.sort(top.indices, -1).values).float().mean() > 0.99
    torch.testing.assert_close(batch["teacher_topk_logprobs"][:, :-1][keep].double(), top.values, atol=4e-3, rtol=0)
    tail = logp.scatter(-1, top.indices, -math.inf).logsumexp(-1)
    torch.testing.assert_close(batch["teacher_tail_logmass"][:, :-1][keep].double(), tail, atol=1e-5, rtol=0)

    def jsd(log_p_buckets, ids):
        log_q_top = logq.gather(-1, ids)
        log_q_tail = logq.scatter(-1, ids, -math.inf).logsumexp(-1, keepdim=True)
        lp, lq = log_p_buckets, torch.cat([log_q_top, log_q_tail], -1)
        lm = torch.logaddexp(lp + math.log(beta), lq + math.log(1 - beta))
        kl = lambda a, b: (a.exp() * (a - b)).sum(-1)  # noqa: E731
        return (beta * kl(lp, lm) + (1 - beta) * kl(lq, lm)).mean()

    exact = jsd(torch.cat([top.values, tail[:, None]], -1), top.indices)
    as_stored = jsd(torch.cat([batch["teacher_topk_logprobs"][:, :-1][keep].double(),
                               batch["teacher_tail_logmass"][:, :-1][keep].double()[:, None]], -1), stored_ids)
    assert float(loss.detach()) == pytest.approx(float(as_stored), rel=1e-5)  # the op on exactly these teacher values
    assert float(loss.detach()) == pytest.approx(float(exact), rel=2e-2)  # and the teacher's exact distribution (fp16 top-k)
    assert float(loss.detach()) > 0


def test_kill_and_resume_continue_the_same_loss_curve(tiny_pair, conversations, logit_shards, tmp_path):
    _, teacher_dir, student_dir = tiny_pair

    def run(out, **extra):
        train(TrainConfig(student=str(student_dir), data=[str(logit_shards), str(conversations)], out=str(out),
                          max_steps=6, **{**FAST, "save_steps": 3}, teacher=f"hf:{teacher_dir}", on_policy=0.5,
                          gen_max_new_tokens=8, **extra))
        return losses(out)

    straight = run(tmp_path / "straight")
    summary = json.loads((tmp_path / "straight" / "train_summary.json").read_text())["on_policy"]
    assert 0 < summary["on_policy_batches"] < 6  # both kinds of micro-batch, on both sides of the kill
    interrupted = run(tmp_path / "resumed", extra_callbacks=[StopAt(3)])
    assert sorted(interrupted) == [1, 2, 3]
    assert (tmp_path / "resumed" / "checkpoint-3" / "on_policy_state_0.pt").is_file()
    resumed = run(tmp_path / "resumed", resume=True)
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6), step
    history = json.loads((tmp_path / "resumed" / "log_history.json").read_text())
    fractions = [e["on_policy_fraction"] for e in history if "loss" in e]
    straight_fractions = [e["on_policy_fraction"] for e in json.loads(
        (tmp_path / "straight" / "log_history.json").read_text()) if "loss" in e]
    assert fractions == straight_fractions  # the same on/off decisions after the resume


def test_cli_on_policy_run_logs_generation_scoring_and_training_throughput(tiny_pair, conversations, tmp_path,
                                                                           capsys):
    _, teacher_dir, student_dir = tiny_pair
    out = tmp_path / "out"
    assert main(["train", "--student", str(student_dir), "--data", str(conversations), "--out", str(out),
                 "--on-policy", "1", "--teacher", f"hf:{teacher_dir}", "--gen-max-new-tokens", "6",
                 "--gen-temperature", "0.7", "--max-steps", "2", "--batch-size", "2", "--logging-steps", "1",
                 "--max-length", "256", "--on-policy-loss", "reverse_kl"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())["on_policy"]
    assert summary["teacher"] == f"hf:{teacher_dir}" and summary["tail_source"] == "full_distribution"
    assert summary["loss"] == "reverse_kl" and summary["k"] == 20 and summary["on_policy_batches"] == 2
    assert 0 < summary["gen_tokens"] <= 2 * 2 * 6
    for entry in [e for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]:
        assert entry["on_policy_fraction"] == 1.0 and "sft_loss" not in entry and entry["kd_loss"] >= 0
        for key in ("gen_tokens_per_second", "score_tokens_per_second", "train_tokens_per_second"):
            assert entry[key] > 0, key
    AutoModelForCausalLM.from_pretrained(out)


def test_on_policy_settings_are_refused_in_one_line_before_loading(tiny_pair, conversations, logit_shards, tmp_path,
                                                                   capsys):
    _, teacher_dir, student_dir = tiny_pair
    base = ["train", "--student", str(student_dir), "--data", str(logit_shards), "--out", str(tmp_path / "o")]
    cases = [(["--on-policy", "0.5"], "--on-policy"), (["--on-policy", "1.5", "--teacher", "x"], "--on-policy"),
             (["--on-policy", "1", "--teacher", f"hf:{teacher_dir}", "--packing"], "--packing"),
             (["--on-policy", "1", "--teacher", f"hf:{teacher_dir}", "--teacher-k", "8"], "--teacher-k")]
    for extra, flag in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("gen train: error: ") and flag in err, err
        assert not (tmp_path / "o").exists()
    # the same tokenizer check as logit shards: a teacher whose ids mean other tokens is refused
    from tests.tiny_models import build_tiny_llama

    stranger = build_tiny_llama(tmp_path / "stranger", corpus=["entirely different words " * 5, "zz yy xx ww"])
    assert main([*base, "--on-policy", "1", "--teacher", f"hf:{stranger}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"gen train: error: teacher hf:{stranger}: the teacher's tokenizer") and "differs" in err
    assert not (tmp_path / "o").exists()


# --- student sampling: the settings and the weights a vLLM sampler is given (train/vllm_sampler.py) ---

def test_student_sampler_auto_is_transformers_without_vllm_and_vllm_is_refused_in_one_line(
        tiny_pair, conversations, tmp_path, capsys):
    import importlib.util

    from train.student_sampler import resolve_sampler

    _, teacher_dir, student_dir = tiny_pair
    assert resolve_sampler("auto", processes=2) == "transformers" and resolve_sampler("transformers", 1) == "transformers"
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; its sampler is tested in test_on_policy_vllm_sampler.py")
    assert resolve_sampler("auto", processes=1) == "transformers"
    base = ["train", "--student", str(student_dir), "--data", str(conversations), "--out", str(tmp_path / "o"),
            "--on-policy", "1", "--teacher", f"hf:{teacher_dir}"]
    for extra, flag in ((["--student-sampler", "vllm"], "--student-sampler vllm: vLLM is not installed"),
                        (["--sync-steps", "3", "--save-steps", "10"], "--sync-steps 3: must divide save_steps 10")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("gen train: error: ") and flag in err, err
        assert not (tmp_path / "o").exists()


def test_weights_pushed_to_vllm_merge_the_lora_adapter_like_peft(tiny_pair, tmp_path):
    import copy

    from train.lora import apply_lora
    from train.vllm_sampler import inference_weights

    _, _, student_dir = tiny_pair
    config = TrainConfig(student=str(student_dir), data=["unused"], out=str(tmp_path / "o"), lora=4)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(student_dir), config)
    torch.manual_seed(0)
    with torch.no_grad():  # B starts at zero: give the adapter a delta to merge
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    pushed = dict(inference_weights(model))
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    assert pushed.keys() == merged.keys()
    for name, tensor in merged.items():
        torch.testing.assert_close(pushed[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(pushed["model.layers.0.self_attn.q_proj.weight"],
                           model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight)
    assert any(p.requires_grad for p in model.parameters())  # the trained model itself is left as it was
