"""`gen train`: fine-tune a Hugging Face causal LM from shards (SFT, top-k KD, or both) with the fused KD op."""

from __future__ import annotations

import json

HELP = "fine-tune a causal LM from shards: SFT on messages, top-k KD on logit shards, or both (--kd-weight)"

LOSSES = ("forward_kl_tail", "forward_kl_topk", "reverse_kl", "jsd", "skew_kl")


def add_arguments(parser) -> None:
    parser.add_argument("--student", required=True, help="Hugging Face causal LM (local dir or hub id)")
    parser.add_argument("--data", required=True, nargs="+",
                        help="one or more dirs: conversational runs (SFT) and/or logit shards from `gen logits` (KD)")
    parser.add_argument("--out", required=True, help="output dir: checkpoints, final model, loss_curve.png")
    parser.add_argument("--loss", choices=LOSSES, default="forward_kl_tail",
                        help="divergence on teacher positions (default: forward KL over top-k + tail bucket)")
    parser.add_argument("--temperature", type=float, default=1.0, help="student temperature for KD (loss x T^2)")
    parser.add_argument("--beta", type=float, default=0.5, help="JSD(beta) mixture weight (--loss jsd)")
    parser.add_argument("--alpha", type=float, default=0.1, help="skew KL mixture weight (--loss skew_kl)")
    parser.add_argument("--kd-weight", type=float, default=1.0,
                        help="on teacher positions: kd_weight*KD + (1-kd_weight)*CE on the hard labels (default 1)")
    parser.add_argument("--max-steps", type=int, default=-1, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--scheduler", default="cosine",
                        help="LR schedule: linear, cosine, constant, constant_with_warmup, ... (transformers names)")
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="linear warmup: a number of steps, or a fraction of all steps when < 1")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per device per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--max-length", type=int, default=2048, help="tokens per sequence (and per packed row)")
    parser.add_argument("--packing", action="store_true", help="pack several examples per row (block-diagonal mask)")
    parser.add_argument("--save-steps", type=int, default=500, help="checkpoint every N optimizer steps")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="resume from the latest checkpoint in --out, or from the given checkpoint dir")
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                        help="bf16 mixed precision (auto: on when a bf16-capable GPU is present)")
    parser.add_argument("--kd-impl", choices=["fused", "naive"], default="fused",
                        help="fused top-k KL op (default) or full logits + autograd (for comparison)")
    parser.add_argument("--chat-template", help="Jinja chat template file for students whose tokenizer has none")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from gen.commands.common import read_chat_template
    from gen.data.outdir import check_out_dir
    from gen.errors import UserError

    try:
        check_out_dir(args.out)  # before the model loads: a bad --out must not cost a training run
    except UserError as exc:
        raise UserError(f"--out {exc}") from None
    from train.losses import LossConfig
    from train.trainer import TrainConfig, train

    template = read_chat_template(args.chat_template)
    loss = LossConfig(loss=args.loss, temperature=args.temperature, beta=args.beta, alpha=args.alpha,
                      kd_weight=args.kd_weight, impl=args.kd_impl)
    config = TrainConfig(
        student=args.student, data=args.data, out=args.out, loss=loss, max_steps=args.max_steps, epochs=args.epochs,
        lr=args.lr, scheduler=args.scheduler, warmup=args.warmup, weight_decay=args.weight_decay,
        batch_size=args.batch_size, grad_accum=args.grad_accum, max_length=args.max_length, packing=args.packing,
        save_steps=args.save_steps, logging_steps=args.logging_steps, resume=args.resume, bf16=args.bf16,
        seed=args.seed, chat_template=template, gradient_checkpointing=args.gradient_checkpointing,
    )
    summary = train(config)
    print(json.dumps(summary, indent=2))
    return 0
