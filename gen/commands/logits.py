"""`gen logits`: capture a teacher's top-k next-token log-probs over conversational shards, as logit shards."""

from __future__ import annotations

import json
import sys

HELP = "capture teacher top-k logprobs (+ exact tail mass) over conversational shards for distillation"


def add_arguments(parser) -> None:
    from gen.commands.common import finite_float

    parser.add_argument("--shards", required=True, help="conversational run directory (or split dir / .arrow file)")
    parser.add_argument("--split", default="train", help="split of --shards to read (default: train)")
    parser.add_argument("--teacher", required=True,
                        help="hf:PATH (local transformers model dir or .gguf: exact tail) | vllm:PATH (prompt logprobs)")
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=64, help="teacher top-k per token (default 64)")
    parser.add_argument("--out", required=True, help="output directory for the logit shards (resumable)")
    parser.add_argument("--max-length", type=int, default=2048, help="truncate sequences to this many tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per teacher forward pass")
    parser.add_argument("--max-batch-tokens", type=int, default=8192,
                        help="cap on padded tokens per forward pass (bounds the [tokens, vocab] logits memory)")
    parser.add_argument("--chat-template", help="Jinja chat template file, for teachers whose tokenizer has none")
    parser.add_argument("--device", help="torch device for hf: teachers (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="teacher weights dtype")
    # temperature and compact shards
    parser.add_argument("--temperature", type=finite_float, default=1.0,
                        help="capture softmax(logits / T) (hf: teachers only: they see the full distribution; vLLM "
                             "prompt logprobs are temperature 1). gen train checks its --temperature against it")
    parser.add_argument("--format", dest="logit_format", choices=("compact", "exact"), default="compact",
                        help="compact: Elias-Fano ids + 8-bit log-space log-probs, ~194 bytes/token at K=64 (KL "
                             "error vs exact: see bench/distill.py); exact: int32 ids + fp16 log-probs (396)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from gen.commands.common import read_chat_template
    from gen.data.lock import run_lock
    from gen.errors import UserError
    from gen.logits.capture import capture_logits, check_conversation_source, check_hf_model_path, open_logit_teacher
    from gen.logits.compact import FORMAT_COMPACT, FORMAT_EXACT

    # Inputs that cannot work are refused before the lock creates --out and before the (slow) teacher load; the
    # flags' own files first, then the run and the model they point at.
    template = read_chat_template(args.chat_template)
    check_conversation_source(args.shards, args.split)
    if not args.temperature > 0:
        raise UserError(f"--temperature {args.temperature}: must be > 0")
    if args.temperature != 1.0 and not args.teacher.startswith("hf:"):
        raise UserError(f"--temperature {args.temperature}: only hf: teachers can capture at a temperature other "
                        f"than 1 (vLLM prompt logprobs are temperature 1)")
    if args.teacher.startswith("hf:"):
        check_hf_model_path(args.teacher[3:])
    options = {"chat_template": template, "dtype": args.dtype}
    if args.teacher.startswith("hf:"):
        options["device"] = args.device
    # One writer per run directory (gen.data.lock), taken before the teacher loads: a refused run costs nothing.
    with run_lock(args.out, "logits"):
        teacher = open_logit_teacher(args.teacher, **options)
        config = {"command": "logits", "shards": str(args.shards), "split": args.split, "teacher": args.teacher,
                  "k": args.k, "max_length": args.max_length, "temperature": args.temperature,
                  "format": args.logit_format}
        try:
            summary = capture_logits(args.shards, args.out, teacher, args.k, split=args.split,
                                     max_length=args.max_length, batch_size=args.batch_size,
                                     max_batch_tokens=args.max_batch_tokens, progress=not args.no_progress,
                                     config=config, temperature=args.temperature,
                                     logit_format=FORMAT_COMPACT if args.logit_format == "compact" else FORMAT_EXACT)
        finally:
            teacher.close()
    print(json.dumps(summary, indent=2), file=sys.stdout)
    return 0
