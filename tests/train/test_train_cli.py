"""`gen train` / `gen logits` through the command line (`python -m gen.cli`, a subprocess): the flags generated from
train/config.py, no DeepSpeed warning when DeepSpeed is not used, and one-line errors with nothing written for
inputs that are not models, runs or finite numbers (issue 18, findings 12-14)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gen.commands import train as train_command
from gen.commands.config_flags import dataclass_from_args
from train.config import LossConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]

# Every flag of `gen train` before the flags were generated from TrainConfig, with its default: none may change.
OLD_DEFAULTS = {
    "--loss": "forward_kl_tail", "--temperature": 1.0, "--beta": 0.5, "--alpha": 0.1, "--kd-weight": 1.0,
    "--max-steps": -1, "--epochs": 1.0, "--lr": 5e-5, "--scheduler": "cosine", "--warmup": 0.0, "--weight-decay": 0.0,
    "--batch-size": 8, "--grad-accum": 1, "--max-length": 2048, "--packing": False, "--save-steps": 500,
    "--logging-steps": 10, "--resume": None, "--bf16": "auto", "--kd-impl": "fused", "--chat-template": None,
    "--gradient-checkpointing": False, "--seed": 0,
}
# issue 17 (artifacts): LoRA, evaluation, trackers, Hub
NEW_DEFAULTS = {
    "--lora": None, "--lora-alpha": 16.0, "--lora-dropout": 0.0, "--lora-target": ("all-linear",),
    "--lora-merge": False, "--qlora": False, "--eval-data": None, "--eval-fraction": 0.0, "--eval-steps": None,
    "--early-stopping-patience": None, "--report-to": "none", "--push-to-hub": None, "--hub-private": False,
    "--hub-eval": None, "--force-temperature": False,
}
# on-policy distillation (issue 14): new flags
ON_POLICY_FLAGS = ("--on-policy", "--teacher", "--teacher-base-url", "--teacher-tokenizer", "--teacher-k",
                   "--on-policy-loss", "--gen-temperature", "--gen-max-new-tokens")
# `gen train --dpo` (issue 13): flags added after the ones above.
DPO_DEFAULTS = {"--dpo": False, "--dpo-beta": 0.1, "--dpo-loss": "sigmoid"}
# on-policy student sampling through a colocated vLLM engine: flags added after the ones above
SAMPLER_DEFAULTS = {"--student-sampler": "auto", "--sync-steps": 1, "--vllm-gpu-memory-utilization": 0.3}
FLOAT_FLAGS = ("--temperature", "--beta", "--alpha", "--kd-weight", "--epochs", "--lr", "--warmup", "--weight-decay")


def gen(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_USE_DEEPSPEED", None)
    return subprocess.run([sys.executable, "-m", "gen.cli", *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def gen_here(*args: str) -> subprocess.CompletedProcess:
    """The same command run in this process, for error cases (no interpreter and torch start per call; `gen` above
    keeps the real CLI process for the --help and training cases): exit status and stderr."""
    import contextlib
    import io

    from gen.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main([*map(str, args)])
        except SystemExit as exc:  # argparse's own errors exit
            rc = exc.code
    return subprocess.CompletedProcess(args, rc, "", err.getvalue())


def error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    """The last stderr line, which must be the command's one-line error (no traceback anywhere)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"gen {command}: error: "), proc.stderr[-2000:]
    return line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    train_command.add_arguments(p)
    return p


def test_flags_keep_their_spelling_and_defaults_and_build_the_config():
    p = parser()
    by_flag = {flag: action for action in p._actions for flag in action.option_strings}
    for flag, default in OLD_DEFAULTS.items():
        assert by_flag[flag].default == default, flag
    for flag, default in NEW_DEFAULTS.items():
        assert by_flag[flag].default == default, flag
    assert {flag for flag in by_flag if flag.startswith("--")} == {*OLD_DEFAULTS, *NEW_DEFAULTS, *ON_POLICY_FLAGS, *DPO_DEFAULTS,
                                                                    *SAMPLER_DEFAULTS, "--student", "--data",
                                                                    "--out", "--help"}
    for flag, default in {**DPO_DEFAULTS, **SAMPLER_DEFAULTS}.items():
        assert by_flag[flag].default == default, flag
    assert by_flag["--loss"].choices == ("forward_kl_tail", "forward_kl_topk", "reverse_kl", "jsd", "skew_kl")
    assert by_flag["--resume"].const == "latest" and by_flag["--data"].nargs == "+"
    args = p.parse_args(["--student", "s", "--data", "a", "b", "--out", "o", "--kd-impl", "naive", "--beta", "0.25",
                         "--packing", "--resume"])
    config = dataclass_from_args(TrainConfig, args)
    assert config == TrainConfig(student="s", data=["a", "b"], out="o", packing=True, resume="latest",
                                 loss=LossConfig(impl="naive", beta=0.25))


def test_help_shows_every_default():
    proc = gen("train", "--help", timeout=60)
    assert proc.returncode == 0
    blocks: dict[str, str] = {}  # flag -> its help text, argparse's wrapping undone
    for line in proc.stdout.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            blocks[flag] = line
        elif line.strip():
            blocks[flag] += " " + line.strip()
    for flag, default in OLD_DEFAULTS.items():
        shown = "none" if default is None else "off" if default is False else str(default)
        assert f"(default: {shown})" in " ".join(blocks[flag].split()), (flag, blocks[flag])


def test_training_arguments_read_the_config(tmp_path):
    from train.trainer import training_arguments

    config = TrainConfig(student="s", data=["d"], out=str(tmp_path / "o"), lr=1e-3, epochs=2.0, warmup=3,
                         batch_size=5, grad_accum=2, save_steps=7, logging_steps=4, seed=9, scheduler="linear",
                         weight_decay=0.1, max_steps=11, bf16="off")
    args = training_arguments(config)
    assert (args.learning_rate, args.num_train_epochs, args.warmup_steps, args.per_device_train_batch_size,
            args.gradient_accumulation_steps, args.save_steps, args.logging_steps, args.seed, args.data_seed,
            args.weight_decay, args.max_steps, args.bf16, args.save_total_limit) == \
        (1e-3, 2.0, 3, 5, 2, 7, 4, 9, 9, 0.1, 11, False, 3)
    assert args.output_dir == str(tmp_path / "o") and getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "linear"
    assert not (tmp_path / "o").exists()


def test_train_without_deepspeed_prints_no_deepspeed_warning(tiny_pair, conversations, tmp_path):
    _, _, student = tiny_pair
    proc = gen("train", "--student", student, "--data", conversations, "--out", tmp_path / "o", "--max-steps", "2",
               "--batch-size", "2", "--max-length", "128", "--save-steps", "1")  # checkpoints: unwrap + save paths
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Setting accelerator to CPU" not in proc.stderr + proc.stdout
    assert "[real_accelerator.py" not in proc.stderr
    assert (tmp_path / "o" / "checkpoint-2").is_dir() and (tmp_path / "o" / "train_summary.json").is_file()


def test_student_or_teacher_dir_that_is_not_a_model_is_one_line_error(conversations, tmp_path):
    for not_a_model in (conversations, tmp_path):  # a run directory; an empty directory
        proc = gen_here("train", "--student", not_a_model, "--data", conversations, "--out", tmp_path / "o")
        assert f"--student {not_a_model}: not a Hugging Face model" in error_line(proc, "train")
        proc = gen_here("logits", "--shards", conversations, "--teacher", f"hf:{not_a_model}", "--out", tmp_path / "l")
        assert f"hf:{not_a_model}: not a Hugging Face model" in error_line(proc, "logits")
    assert not (tmp_path / "o").exists() and not (tmp_path / "l").exists()


def test_student_vocabulary_smaller_than_its_tokenizer_is_refused_for_sft_and_kd(tiny_pair, conversations,
                                                                                  logit_shards, tmp_path):
    from transformers import AutoModelForCausalLM

    tokenizer, _, student = tiny_pair
    small = tmp_path / "small"
    model = AutoModelForCausalLM.from_pretrained(student)
    model.resize_token_embeddings(len(tokenizer) - 16)
    model.save_pretrained(small)
    tokenizer.save_pretrained(small)
    for name, data in (("sft", conversations), ("kd", logit_shards)):
        proc = gen_here("train", "--student", small, "--data", data, "--out", tmp_path / name, "--max-steps", "2",
                   "--batch-size", "4", "--max-length", "256")
        line = error_line(proc, "train")
        assert f"--student {small}:" in line and f"{len(tokenizer) - 16} rows" in line and f"{len(tokenizer)} tokens" in line
        assert not (tmp_path / name).exists(), name


def test_logits_on_a_directory_that_is_not_a_run_writes_nothing(tiny_pair, tmp_path):
    _, teacher, _ = tiny_pair
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "not_a_run" / "notes.txt").write_text("hello\n")
    proc = gen_here("logits", "--shards", tmp_path / "not_a_run", "--teacher", f"hf:{teacher}", "--out", tmp_path / "l")
    assert str(tmp_path / "not_a_run") in error_line(proc, "logits")
    assert not (tmp_path / "l").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_float_flags_are_refused_naming_the_flag(conversations, tmp_path, value):
    for flag in FLOAT_FLAGS:
        proc = gen_here("train", "--student", tmp_path, "--data", conversations, "--out", tmp_path / "o",
                        f"{flag}={value}")
        line = error_line(proc, "train")
        assert f"argument {flag}:" in line and value in line, line
    assert not (tmp_path / "o").exists()


def test_out_of_range_loss_settings_are_refused_before_anything_is_loaded(conversations, tmp_path):
    for flag, value, words in (("--beta", "1.5", "--beta 1.5: must be in [0, 1]"),
                               ("--alpha", "1", "--alpha 1.0: must be in [0, 1)"),
                               ("--kd-weight", "-0.1", "--kd-weight -0.1: must be in [0, 1]"),
                               ("--temperature", "0", "--temperature 0.0: must be > 0")):
        proc = gen_here("train", "--student", tmp_path / "missing", "--data", conversations, "--out", tmp_path / "o", flag,
                        value)
        assert words in error_line(proc, "train")
    assert not (tmp_path / "o").exists()
