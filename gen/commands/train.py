"""`gen train`: fine-tune a Hugging Face causal LM from shards (SFT, top-k KD, or both) with the fused KD op.

Every flag, its type, default and help come from `train.config.TrainConfig` / `LossConfig`."""

from __future__ import annotations

import json
import os
from dataclasses import replace

from gen.commands.config_flags import add_dataclass_arguments, dataclass_from_args, with_flag
from gen.errors import InvalidSetting, UserError
from train.config import TrainConfig

HELP = ("fine-tune a causal LM from shards: SFT on messages, top-k KD on logit shards, or both (--kd-weight); "
        "DPO on preference rows (--dpo)")


def add_arguments(parser) -> None:
    add_dataclass_arguments(parser, TrainConfig)


def run(args) -> int:
    from gen.commands.common import read_chat_template
    from gen.data.outdir import check_out_dir
    from train.dpo import train_dpo
    from train.trainer import train

    try:
        check_out_dir(args.out)  # before the model loads: a bad --out must not cost a training run
    except UserError as exc:
        raise UserError(f"--out {exc}") from None

    config = dataclass_from_args(TrainConfig, args)
    config = replace(config, chat_template=read_chat_template(config.chat_template))  # the flag names a file
    if config.push_to_hub:  # a bad repo id, HF_HUB_OFFLINE or no token must not cost a run
        from gen.publish.model_card import check_push

        try:
            check_push(config.push_to_hub)
        except UserError as exc:
            raise UserError(f"--push-to-hub {exc}") from None
    try:
        summary = (train_dpo if config.preference.dpo else train)(config)  # --dpo: preference rows
    except InvalidSetting as exc:  # the library names the setting; the user set it with a flag
        raise with_flag(TrainConfig, exc.setting, str(exc)) from None
    print(json.dumps(summary, indent=2))
    if config.push_to_hub and int(os.environ.get("RANK", "0")) == 0:  # one push, from the main process
        push_to_hub(config)
    return 0


def push_to_hub(config: TrainConfig) -> None:
    """The trained student (or its adapter), its card and loss curve -> the Hub model repo, one commit."""
    from pathlib import Path

    from gen.publish.model_card import push_student

    eval_dir = config.hub_eval or (Path(config.out) / "eval" if (Path(config.out) / "eval").is_dir() else None)
    result = push_student(config.out, config.push_to_hub, private=config.hub_private, eval_dir=eval_dir)
    up = result.upload
    if up.commit_url is None:
        print(f"gen train: {up.repo_url} already holds these {len(up.unchanged)} files; no commit made")
    else:
        print(f"gen train: pushed to {up.repo_url} in one commit: {len(up.added)} file(s) added or changed, "
              f"{len(up.unchanged)} unchanged: {up.commit_url}")
