"""Every setting of `gen train`, once: its name, type, default and help (TRL's `SFTConfig`/`GKDConfig` style).

`gen/commands/train.py` generates the command's flags from these dataclasses (flag = field name with dashes, unless
`flag` says otherwise; `LossConfig`'s fields are flags of their own), and `train.trainer.training_arguments` fills
`transformers.TrainingArguments` from the fields that name a `training_args` target. Metadata keys:

- ``help``: the flag's help (the default is appended by the CLI);
- ``flag``: the flag's spelling when it is not ``--field-name``; ``cli: False``: a library-only setting (no flag);
- ``choices``, ``nargs``, ``const``, ``metavar``: as in argparse;
- ``training_args``: the `TrainingArguments` field(s) this setting fills.

No torch here: the CLI builds its parser from this module on every `gen` invocation.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field

from gen.errors import InvalidSetting
from kernels.losses import LOSSES, PARAMS, SPECS


def setting(default=..., *, help: str, default_factory=None, **metadata):
    """A dataclass field carrying its help and CLI/TrainingArguments metadata (``default=...``: required)."""
    metadata = {"help": help, **metadata}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    if default is ...:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class LossConfig:
    """The loss on each token: KD divergence on teacher positions (logit shards), hard-label CE elsewhere."""

    loss: str = setting("forward_kl_tail", choices=LOSSES,
                        help="divergence on teacher positions: " + "; ".join(
                            f"{spec.name} = {spec.summary}" for spec in SPECS.values()))
    temperature: float = setting(1.0, help="student temperature for KD (loss x T^2)")
    beta: float = setting(PARAMS["beta"].default, help="JSD(beta) mixture weight (--loss jsd)")
    alpha: float = setting(PARAMS["alpha"].default, help="skew KL mixture weight (--loss skew_kl)")
    kd_weight: float = setting(1.0, help="on teacher positions: kd_weight*KD + (1-kd_weight)*CE on the hard labels")
    impl: str = setting("fused", flag="--kd-impl", choices=("fused", "naive"),
                        help="fused top-k KL op, or full logits + autograd (for comparison)")
    memory_budget_bytes: int | None = setting(None, cli=False,
                                              help="the fused op's chunk budget in bytes (None: its default)")


# --- `gen train --dpo` (preference data from `gen prefs`) ------------------------------------------------------
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")


@dataclass(frozen=True)
class DPOSettings:
    """Direct Preference Optimization (Rafailov et al. 2023) on preference rows, through TRL's `DPOTrainer`; the
    reference model is the student as it starts. --lr, --max-length, --batch-size, ... apply as for SFT/KD."""

    dpo: bool = setting(False, help="train on preference rows (`gen prefs` runs: prompt/chosen/rejected) with DPO "
                                    "(TRL's DPOTrainer; reference model = the student as it starts); DPO usually "
                                    "wants a much lower --lr than SFT, e.g. 5e-7 to 5e-6 for a real model")
    dpo_beta: float = setting(0.1, help="DPO beta: the strength of the pull back to the reference model (the "
                                        "rewards are beta x log-ratio to the reference)")
    dpo_loss: str = setting("sigmoid", choices=DPO_LOSSES,
                            help="sigmoid = DPO; ipo = IPO (Azar et al.); hinge = SLiC; robust = robust DPO "
                                 "(TRL's loss_type names)")
# --- end `gen train --dpo` ---------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything `gen train` needs."""

    student: str = setting(help="Hugging Face causal LM (local dir or hub id)")
    data: Sequence[str] = setting(nargs="+", help="one or more dirs: conversational runs (SFT) and/or logit shards "
                                                  "from `gen logits` (KD)")
    out: str = setting(help="output dir: checkpoints, final model, loss_curve.png", training_args=("output_dir",))
    loss: LossConfig = setting(default_factory=LossConfig, help="the loss (its fields are flags of their own)")
    max_steps: int = setting(-1, help="optimizer steps (overrides --epochs; -1: use --epochs)",
                             training_args=("max_steps",))
    epochs: float = setting(1.0, help="passes over the data", training_args=("num_train_epochs",))
    lr: float = setting(5e-5, help="peak learning rate", training_args=("learning_rate",))
    scheduler: str = setting("cosine", help="LR schedule: linear, cosine, constant, constant_with_warmup, ... "
                                            "(transformers names)", training_args=("lr_scheduler_type",))
    warmup: float = setting(0.0, help="linear warmup: a number of steps, or a fraction of all steps when < 1",
                            training_args=("warmup_steps",))
    weight_decay: float = setting(0.0, help="AdamW weight decay", training_args=("weight_decay",))
    batch_size: int = setting(8, help="sequences per device per micro-batch",
                              training_args=("per_device_train_batch_size",))
    grad_accum: int = setting(1, help="micro-batches per optimizer step", training_args=("gradient_accumulation_steps",))
    max_length: int = setting(2048, help="tokens per sequence (and per packed row)")
    packing: bool = setting(False, help="pack several examples per row (block-diagonal mask)")
    save_steps: int = setting(500, help="checkpoint every N optimizer steps", training_args=("save_steps",))
    save_total_limit: int | None = setting(3, cli=False, help="checkpoints kept", training_args=("save_total_limit",))
    logging_steps: int = setting(10, help="log every N optimizer steps", training_args=("logging_steps",))
    resume: str | bool | None = setting(None, nargs="?", const="latest",
                                        help="resume from the latest checkpoint in --out, or from the given "
                                             "checkpoint dir")
    bf16: str = setting("auto", choices=("auto", "on", "off"),
                        help="bf16 mixed precision (auto: on when a bf16-capable GPU is present)",
                        training_args=("bf16",))
    seed: int = setting(0, help="seed of the model init, data order and dropout", training_args=("seed", "data_seed"))
    chat_template: str | None = setting(None, help="Jinja chat template file for students whose tokenizer has none "
                                                   "(the config holds the template's text)")
    gradient_checkpointing: bool = setting(False, help="recompute activations in backward (less memory, slower)",
                                           training_args=("gradient_checkpointing",))
    # logit-shard temperature check: the shards' capture temperature must equal --temperature
    force_temperature: bool = setting(False, help="train even when --temperature differs from the temperature the "
                                                  "logit shards were captured at (gen logits --temperature)")
    split: str = setting("train", cli=False, help="split of conversational runs to read")
    extra_callbacks: list = setting(default_factory=list, cli=False, help="extra transformers TrainerCallbacks")
    # --- artifacts: LoRA / QLoRA, evaluation during training, trackers, the Hub (train/lora.py,
    # train/evaluation.py, train/trackers.py, gen/publish/model_card.py) ---
    lora: int | None = setting(None, metavar="R", help="train a LoRA adapter of rank R (PEFT) instead of every weight; "
                                                       "the fused op gets the adapted lm_head weight W + (alpha/R) B A")
    lora_alpha: float = setting(16.0, help="LoRA scale numerator: the update is (lora_alpha / R) B A")
    lora_dropout: float = setting(0.0, help="dropout on the LoRA branch's input (not with lm_head among the targets)")
    lora_target: Sequence[str] = setting(("all-linear",), nargs="+", metavar="MODULE",
                                         help="LoRA target modules by name (q_proj v_proj lm_head ...) or all-linear "
                                              "(every linear layer except the lm_head)")
    lora_merge: bool = setting(False, help="also save the student with the adapter merged in, to OUT/merged")
    qlora: bool = setting(False, help="LoRA over 4-bit NF4 base weights (bitsandbytes, CUDA GPUs only); needs --lora")
    eval_data: Sequence[str] | None = setting(None, nargs="+", help="held-out dirs (conversational runs and/or logit "
                                                                   "shards) evaluated every --eval-steps")
    eval_fraction: float = setting(0.0, help="hold out this fraction of the --data examples for evaluation instead")
    eval_steps: int | None = setting(None, help="evaluate every N optimizer steps (default: --save-steps; it must "
                                                "divide --save-steps: the best checkpoint is kept)")
    early_stopping_patience: int | None = setting(None, help="stop after N evaluations without a lower eval loss")
    report_to: str = setting("none", choices=("none", "tensorboard", "wandb", "trackio"),
                             help="where the Trainer logs: tensorboard (offline, OUT/runs), wandb, trackio or none",
                             training_args=("report_to",))
    push_to_hub: str | None = setting(None, metavar="REPO", help="after training, push the student (its adapter with "
                                                                 "--lora) and a model card to this Hub model repo in "
                                                                 "one commit (token: HF_TOKEN or `hf auth login`)")
    hub_private: bool = setting(False, help="create the --push-to-hub repo private")
    hub_eval: str | None = setting(None, metavar="DIR", help="a `gen eval` output dir whose eval.json the model card "
                                                             "shows (default: OUT/eval when it exists)")
    # --- on-policy distillation (GKD; train/on_policy.py) ---
    on_policy: float = setting(0.0, metavar="LAMBDA",
                               help="GKD's lambda: the probability, per micro-batch, that the student samples "
                                    "completions for the batch's prompts and --teacher scores them (0: offline "
                                    "rows only; 1: fully on-policy)")
    teacher: str | None = setting(None, help="on-policy teacher: hf:PATH (in this process, exact tail) or "
                                             "openai:MODEL (a server returning prompt log-probabilities, e.g. vLLM, "
                                             "at --teacher-base-url; tail = complement of the top-k)")
    teacher_base_url: str | None = setting(None, help="base URL of an openai: teacher (e.g. http://127.0.0.1:8000/v1)")
    teacher_tokenizer: str | None = setting(None, help="local directory with an openai: teacher's tokenizer "
                                                       "(default: MODEL, when it is a local directory)")
    teacher_k: int | None = setting(None, help="teacher top-k on on-policy samples (default: the logit shards' K, "
                                               "else 20, vLLM's default --max-logprobs)")
    on_policy_loss: str = setting("jsd", choices=LOSSES,
                                  help="divergence on on-policy samples (JSD(--beta) as in GKD; offline rows keep "
                                       "--loss)")
    gen_temperature: float = setting(1.0, help="student sampling temperature for on-policy samples (0: greedy)")
    gen_max_new_tokens: int = setting(128, help="most tokens the student writes per on-policy sample")
    # --- on-policy student sampling through a colocated vLLM engine (train/student_sampler.py, train/vllm_sampler.py)
    student_sampler: str = setting("auto", choices=("auto", "vllm", "transformers"),
                                   help="who samples the student's on-policy completions: vllm (an in-process vLLM "
                                        "engine fed the trainer's weights every --sync-steps), transformers "
                                        "(generate on the trained model) or auto (vllm when it is installed and the "
                                        "run is one process, else transformers)")
    sync_steps: int = setting(1, help="push the trainer's weights into the vLLM sampler every N optimizer steps "
                                      "(1: it always samples from the current student; must divide --save-steps)")
    vllm_gpu_memory_utilization: float = setting(0.3, help="fraction of the GPU the vLLM sampler may take (weights "
                                                           "+ KV cache), the trainer keeps the rest; on CPU the KV "
                                                           "cache size is vLLM's VLLM_CPU_KVCACHE_SPACE (GiB)")
    # `gen train --dpo`: its settings are flags of their own
    preference: DPOSettings = setting(default_factory=DPOSettings, help="DPO on preference rows (--dpo ...)")


def check_settings(config: TrainConfig) -> None:
    """The settings that need nothing loaded, checked before anything is loaded or written."""
    loss = config.loss
    if loss.loss not in SPECS:
        raise InvalidSetting("loss", f"loss {loss.loss!r}: unknown; one of {', '.join(LOSSES)}")
    for name, param in PARAMS.items():
        value = getattr(loss, name)
        if not param.contains(value):
            raise InvalidSetting(name, f"{name} {value}: must be in {param.range_text()}")
    if not loss.temperature > 0:
        raise InvalidSetting("temperature", f"temperature {loss.temperature}: must be > 0")
    if not 0.0 <= loss.kd_weight <= 1.0:
        raise InvalidSetting("kd_weight", f"kd_weight {loss.kd_weight}: must be in [0, 1]")
    # --- artifacts: LoRA, evaluation, Hub ---
    if config.lora is not None and config.lora < 1:
        raise InvalidSetting("lora", f"lora {config.lora}: the rank must be >= 1")
    for name in ("lora_dropout", "lora_merge", "qlora"):
        if getattr(config, name) and config.lora is None:
            raise InvalidSetting(name, f"{name}: needs a LoRA rank (lora R)")
    if not 0.0 <= config.lora_dropout < 1.0:
        raise InvalidSetting("lora_dropout", f"lora_dropout {config.lora_dropout}: must be in [0, 1)")
    if not config.lora_alpha > 0:
        raise InvalidSetting("lora_alpha", f"lora_alpha {config.lora_alpha}: must be > 0")
    if config.lora_dropout and "lm_head" in config.lora_target:
        raise InvalidSetting("lora_dropout", "lora_dropout: not with lm_head among the LoRA targets (the fused op "
                                             "takes one merged head weight, so dropout on its input cannot apply)")
    if not 0.0 <= config.eval_fraction < 1.0:
        raise InvalidSetting("eval_fraction", f"eval_fraction {config.eval_fraction}: must be in [0, 1)")
    if config.eval_fraction and config.eval_data:
        raise InvalidSetting("eval_fraction", "eval_fraction: give held-out data or a fraction to hold out, not both")
    evaluating = bool(config.eval_data or config.eval_fraction)
    if config.eval_steps is not None:
        if config.eval_steps < 1:
            raise InvalidSetting("eval_steps", f"eval_steps {config.eval_steps}: must be >= 1")
        if config.save_steps % config.eval_steps:
            raise InvalidSetting("eval_steps", f"eval_steps {config.eval_steps}: must divide save_steps "
                                               f"{config.save_steps} (the best checkpoint is kept among saved ones)")
    if (config.eval_steps is not None or config.early_stopping_patience is not None) and not evaluating:
        name = "eval_steps" if config.eval_steps is not None else "early_stopping_patience"
        raise InvalidSetting(name, f"{name}: needs evaluation data (eval_data DIR or eval_fraction F)")
    if config.early_stopping_patience is not None and config.early_stopping_patience < 1:
        raise InvalidSetting("early_stopping_patience",
                             f"early_stopping_patience {config.early_stopping_patience}: must be >= 1")
    # on-policy distillation
    if not 0.0 <= config.on_policy <= 1.0:
        raise InvalidSetting("on_policy", f"on_policy {config.on_policy}: must be in [0, 1]")
    if config.on_policy > 0 and not config.teacher:
        raise InvalidSetting("on_policy", f"on_policy {config.on_policy}: on-policy samples need a teacher to score "
                                          f"them (teacher)")
    if config.teacher and config.packing:
        raise InvalidSetting("packing", "packing: on-policy distillation samples one completion per row; packed rows "
                                        "have no single prompt")
    if config.on_policy_loss not in SPECS:
        raise InvalidSetting("on_policy_loss", f"on_policy_loss {config.on_policy_loss!r}: unknown; one of "
                                               f"{', '.join(LOSSES)}")
    if not config.gen_temperature >= 0:
        raise InvalidSetting("gen_temperature", f"gen_temperature {config.gen_temperature}: must be >= 0")
    if config.gen_max_new_tokens < 1:
        raise InvalidSetting("gen_max_new_tokens", f"gen_max_new_tokens {config.gen_max_new_tokens}: must be >= 1")
    if config.teacher_k is not None and config.teacher_k < 1:
        raise InvalidSetting("teacher_k", f"teacher_k {config.teacher_k}: must be >= 1")
    # on-policy student sampling through vLLM
    if config.student_sampler == "vllm" and importlib.util.find_spec("vllm") is None:
        raise InvalidSetting("student_sampler", "student_sampler vllm: vLLM is not installed here (pip install vllm), "
                                                "or use student_sampler transformers")
    if config.sync_steps < 1:
        raise InvalidSetting("sync_steps", f"sync_steps {config.sync_steps}: must be >= 1")
    if config.on_policy > 0 and config.save_steps % config.sync_steps:
        raise InvalidSetting("sync_steps", f"sync_steps {config.sync_steps}: must divide save_steps "
                                           f"{config.save_steps} (a resumed run restarts the vLLM sampler from a "
                                           f"checkpoint's weights, which must be weights it had synced)")
    if not 0.0 < config.vllm_gpu_memory_utilization < 1.0:
        raise InvalidSetting("vllm_gpu_memory_utilization",
                             f"vllm_gpu_memory_utilization {config.vllm_gpu_memory_utilization}: must be in (0, 1)")
    if not config.preference.dpo_beta > 0:  # `gen train --dpo`
        raise InvalidSetting("dpo_beta", f"dpo_beta {config.preference.dpo_beta}: must be > 0")
