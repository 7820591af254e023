"""`gen student`: a student made from the teacher -- its tokenizer, embeddings and head, and a subset of its decoder
layers (depth pruning, DistilBERT's initialisation); see train/student.py."""

from __future__ import annotations

import json

HELP = "make a student from a teacher: same tokenizer and embeddings, a subset of its decoder layers"


def add_arguments(parser) -> None:
    parser.add_argument("--teacher", required=True, metavar="PATH",
                        help="local transformers checkpoint directory or .gguf file (llamacpp: the bundled GGUF)")
    parser.add_argument("--layers", required=True, metavar="SPEC",
                        help="a number N (N layers evenly spaced, first and last kept) or a comma-separated list of "
                             "teacher layer indices (0,5,11; one layer: 7,)")
    parser.add_argument("--out", required=True, help="output directory (new or empty): a transformers checkpoint")
    parser.add_argument("--chat-template", metavar="FILE",
                        help="Jinja chat template file stored in the student's tokenizer (for teachers without one)")
    parser.add_argument("--intermediate", type=int, metavar="N",
                        help="width pruning: keep N MLP neurons per layer, ranked by mean activation magnitude over "
                             "--calibration (Minitron's criterion); default: all")
    parser.add_argument("--calibration", metavar="RUN",
                        help="conversational run whose rows rank the neurons for --intermediate")
    parser.add_argument("--calibration-rows", type=int, default=64, metavar="N",
                        help="rows of --calibration used (default 64)")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per calibration row (default 512)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="dtype the teacher is loaded and the student saved in (default: float32)")


def run(args) -> int:
    from pathlib import Path

    from gen.commands.common import read_chat_template
    from gen.data.outdir import check_out_dir
    from gen.errors import UserError
    from train.student import StudentSpec, make_student, parse_layer_spec

    template = read_chat_template(args.chat_template)
    teacher = args.teacher
    if teacher == "llamacpp":  # the bundled teacher's GGUF, by the name generation uses for it
        from gen.teachers.llamacpp import bundled_gguf_path

        teacher = str(bundled_gguf_path())
    location = Path(teacher)
    if not location.exists():
        raise UserError(f"--teacher {teacher}: no such file or directory")
    if not ((location.is_file() and location.suffix == ".gguf") or (location / "config.json").is_file()):
        raise UserError(f"--teacher {teacher}: not a model (a directory with config.json, or a .gguf file)")
    parse_layer_spec(args.layers)  # a malformed spec or 0 layers fails here, before the teacher loads
    try:
        check_out_dir(args.out)
    except UserError as exc:
        raise UserError(f"--out {exc}") from None
    if args.intermediate is not None and not args.calibration:
        raise UserError("--intermediate: width pruning ranks neurons on calibration text; give --calibration RUN")
    if args.calibration:
        from gen.logits.capture import check_conversation_source

        check_conversation_source(args.calibration)
    summary = make_student(StudentSpec(teacher=teacher, layers=args.layers, out=args.out, chat_template=template,
                                       dtype=args.dtype, intermediate=args.intermediate,
                                       calibration=args.calibration, calibration_rows=args.calibration_rows,
                                       max_length=args.max_length))
    print(json.dumps(summary, indent=2))
    return 0
