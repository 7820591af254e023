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


# --- `gen train --dpo` (issue 13: preference data from `gen prefs`) ---------------------------------------------
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
    split: str = setting("train", cli=False, help="split of conversational runs to read")
    report_to: str = setting("none", cli=False, help="transformers loggers", training_args=("report_to",))
    extra_callbacks: list = setting(default_factory=list, cli=False, help="extra transformers TrainerCallbacks")
    # `gen train --dpo` (issue 13): its settings are flags of their own
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
    if not config.preference.dpo_beta > 0:  # `gen train --dpo` (issue 13)
        raise InvalidSetting("dpo_beta", f"dpo_beta {config.preference.dpo_beta}: must be > 0")
