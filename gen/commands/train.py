"""`gen train`: fine-tune a Hugging Face causal LM from shards (SFT, top-k KD, or both) with the fused KD op.

Every flag, its type, default and help come from `train.config.TrainConfig` / `LossConfig`."""

from __future__ import annotations

import json
from dataclasses import replace

from gen.commands.config_flags import add_dataclass_arguments, dataclass_from_args, with_flag
from gen.errors import InvalidSetting
from train.config import TrainConfig

HELP = ("fine-tune a causal LM from shards: SFT on messages, top-k KD on logit shards, or both (--kd-weight); "
        "DPO on preference rows (--dpo)")


def add_arguments(parser) -> None:
    add_dataclass_arguments(parser, TrainConfig)


def run(args) -> int:
    from gen.commands.common import read_chat_template
    from gen.data.outdir import check_out_dir
    from gen.errors import UserError
    from train.dpo import train_dpo
    from train.trainer import train

    try:
        check_out_dir(args.out)  # before the model loads: a bad --out must not cost a training run
    except UserError as exc:
        raise UserError(f"--out {exc}") from None

    config = dataclass_from_args(TrainConfig, args)
    config = replace(config, chat_template=read_chat_template(config.chat_template))  # the flag names a file
    try:
        summary = (train_dpo if config.preference.dpo else train)(config)  # --dpo: issue 13
    except InvalidSetting as exc:  # the library names the setting; the user set it with a flag
        raise with_flag(TrainConfig, exc.setting, str(exc)) from None
    print(json.dumps(summary, indent=2))
    return 0
