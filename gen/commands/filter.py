"""`gen filter DIR`: heuristic quality filters (and optionally ROUGE-L novelty) over a finished run's shards.

Every train row is checked by `filters.heuristics` (empty_answer, truncated, refusal, copies_question, too_short,
too_long, non_text_task, trivial_instruction), by the degeneration rules of `filters.repetition` (repetition,
stutter, enumeration_without_content, repeated_list_items; on by default, `--keep-repetitive` switches them off,
`--repetition-scale S` multiplies their thresholds) and, with --rouge-l T, by the Self-Instruct novelty rule over the
instructions in row order (reason `rouge_l_duplicate`, `duplicate_of` = the earlier row it matched). Rejected rows
move to the `rejected` split with every reason they failed; counts per reason go to the manifest's funnel and
`gen stats`. Output and safety as `gen dedup` (default in place, swapped in atomically; reruns identical).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gen.commands.common import finite_float

HELP = "move low-quality rows (empty, truncated, refusals, echoes, length bounds, non-text tasks, repetition) to `rejected`"

ROUGE_DUPLICATE = "rouge_l_duplicate"
SCORE_BELOW_MIN = "score_below_min"
IFD_ABOVE_MAX = "ifd_above_max"
IFD_BELOW_TOP_FRACTION = "ifd_below_top_fraction"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DIR", help="a kdforge run directory")
    parser.add_argument("--min-chars", type=int, default=1, help="shortest last answer kept, in characters (default 1)")
    parser.add_argument("--max-chars", type=int, default=None, help="longest last answer kept, in characters")
    parser.add_argument("--copies-question", type=finite_float, default=0.9, metavar="T",
                        help="reject answers with ROUGE-L >= T against the instruction (default 0.9; 0 disables)")
    parser.add_argument("--keep-truncated", action="store_true", help="keep rows with finish_reason 'length'")
    parser.add_argument("--keep-refusals", action="store_true", help="keep refusals and apologies")
    parser.add_argument("--keep-non-text", action="store_true", help="keep instructions about images, audio, ...")
    parser.add_argument("--keep-trivial", action="store_true",
                        help="keep instructions made only of punctuation and stop words")
    parser.add_argument("--keep-repetitive", action="store_true",
                        help="keep degenerate texts (Gopher repetition, stutter, empty enumerations, repeated list items)")
    parser.add_argument("--repetition-scale", type=finite_float, default=1.0, metavar="S",
                        help="multiply every degeneration threshold by S (< 1 stricter, > 1 looser; default 1)")
    parser.add_argument("--rouge-l", type=finite_float, default=None, metavar="T",
                        help="also reject instructions with ROUGE-L >= T against an earlier kept one (Self-Instruct: 0.7)")
    # Scores: the `scores` column written by `gen score`.
    parser.add_argument("--min-score", type=finite_float, default=None, metavar="X",
                        help="also reject rows whose score is below X (reason `score_below_min`; rows the scorer "
                             "gave no score are kept and counted)")
    parser.add_argument("--score-name", default=None, metavar="NAME[.ASPECT]",
                        help="which score --min-score reads: a scorer (quality, ultrafeedback, ifd, ...) or one "
                             "aspect of it (ultrafeedback.honesty); default: the only scorer in the run")
    # IFD selection (the `ifd` score from `gen score --ifd MODEL`).
    parser.add_argument("--ifd-max", type=finite_float, default=None, metavar="X",
                        help="reject rows whose IFD is X or more (reason `ifd_above_max`; 1.0: the instruction does "
                             "not help predict the answer)")
    parser.add_argument("--top-fraction", type=finite_float, default=None, metavar="F",
                        help="keep only the highest-IFD fraction F in (0, 1] of the IFD-scored rows (below --ifd-max "
                             "when given; reason `ifd_below_top_fraction`)")
    parser.add_argument("--out", default=None, metavar="OUT", help="write here instead of rewriting DIR in place")


def run(args: argparse.Namespace) -> int:
    from gen.data.rewrite import rewriting

    # The run's lock from before its rows are read until the filtered run is in place (gen.data.rewrite).
    with rewriting(Path(args.run_dir), Path(args.out) if args.out else None, "filter"):
        return _filter(args)


def _filter(args: argparse.Namespace) -> int:
    from filters.heuristics import QualityConfig, row_quality_reasons
    from filters.repetition import RepetitionConfig
    from filters.rouge import novelty_duplicates
    from gen.data.records import row_text
    from gen.data.rejections import Rejections
    from gen.data.rewrite import load_train, rewrite_run
    from gen.errors import UserError

    if args.min_chars is not None and args.max_chars is not None and args.min_chars > args.max_chars:
        raise UserError(f"--min-chars {args.min_chars} is larger than --max-chars {args.max_chars}")
    if not args.repetition_scale > 0:
        raise UserError(f"--repetition-scale {args.repetition_scale}: must be positive")
    if args.rouge_l is not None and not 0.0 < args.rouge_l <= 1.0:
        raise UserError(f"--rouge-l {args.rouge_l}: must be in (0, 1]")
    if args.ifd_max is not None and not args.ifd_max > 0:
        raise UserError(f"--ifd-max {args.ifd_max}: must be positive")
    if args.top_fraction is not None and not 0.0 < args.top_fraction <= 1.0:
        raise UserError(f"--top-fraction {args.top_fraction}: must be in (0, 1]")
    if args.score_name is not None and args.min_score is None:
        raise UserError("--score-name: only read with --min-score X")
    config = QualityConfig(
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        truncated=not args.keep_truncated,
        refusal=not args.keep_refusals,
        copies_question=args.copies_question or None,
        non_text_task=not args.keep_non_text,
        trivial_instruction=not args.keep_trivial,
        repetition=None if args.keep_repetitive else RepetitionConfig(scale=args.repetition_scale),
    )
    run_dir = Path(args.run_dir)
    table = load_train(run_dir)
    columns = [c for c in ("id", "messages", "finish_reason") if c in table.column_names]
    rows = table.select(columns).to_pylist()
    rejected = Rejections()
    for position, row in enumerate(rows):  # row filter: its reasons
        reasons = row_quality_reasons(row, config)
        if reasons:
            rejected.add(position, reasons)
    if args.rouge_l is not None:  # pair filter: (row, the earlier kept row it repeats)
        # Rows already rejected for quality do not enter the pool: a bad row must not block a good later one.
        instructions = [row_text(row["messages"], "instruction") for row in rows]
        for position, match in novelty_duplicates(instructions, args.rouge_l, skip=set(rejected.by_position)):
            rejected.add(position, [ROUGE_DUPLICATE], rows[match]["id"])
    score_settings: dict = {}
    if args.min_score is not None:  # scores: rows below the threshold
        score_settings = _reject_below_min_score(run_dir, table, args.min_score, args.score_name, rejected)
    if args.ifd_max is not None or args.top_fraction is not None:  # IFD selection
        score_settings = {**score_settings, **_select_by_ifd(run_dir, table, args.ifd_max, args.top_fraction, rejected)}
    # Rows kept because they carry no score (--min-score) or no IFD (--ifd-max/--top-fraction).
    funnel = rejected.funnel_entry(len(rows), **{k: score_settings[k] for k in ("unscored_kept", "ifd_unscored_kept")
                                                 if k in score_settings})
    reasons = funnel["by_reason"]
    settings = {**config.as_dict(), "rouge_l": args.rouge_l,
                **({"min_score": args.min_score, "score_name": score_settings["score_name"]}
                   if "score_name" in score_settings else {}),
                **({"ifd_max": args.ifd_max, "top_fraction": args.top_fraction}
                   if args.ifd_max is not None or args.top_fraction is not None else {})}
    destination = rewrite_run(run_dir, Path(args.out) if args.out else None, table, rejected, step="filter",
                              settings=settings, funnel_entry=funnel)
    by = ", ".join(f"{k} {v}" for k, v in reasons.items()) or "none"
    print(f"gen filter: {len(rows)} rows -> {funnel['kept']} kept, {len(rejected)} rejected ({by}) in {destination}")
    return 0


def _reject_below_min_score(run_dir: Path, table, min_score: float, score_name: str | None, rejected) -> dict:
    """Reject the rows whose score (`--score-name`, default the run's only scorer) is below `min_score`; rows the
    scorer gave no value are kept. Returns the settings for the manifest (the scorer chosen, rows kept unscored)."""
    from gen.data.scores import resolve_score_name, scores_texts, values_of

    texts = scores_texts(table)
    name, aspect = resolve_score_name(texts, score_name, where=f"--min-score: {run_dir}/train")
    unscored = 0
    for position, value in enumerate(values_of(texts, name, aspect)):
        if value is None:
            unscored += 1
        elif value < min_score:
            rejected.add(position, [SCORE_BELOW_MIN])
    return {"score_name": f"{name}.{aspect}" if aspect else name, "unscored_kept": unscored}


def _select_by_ifd(run_dir: Path, table, ifd_max: float | None, top_fraction: float | None, rejected) -> dict:
    """IFD selection (Cherry LLM / Superfiltering): reject rows with IFD >= `ifd_max`, then keep the highest-IFD
    `top_fraction` of the rest (ties broken by row order; rows already rejected by an earlier reason still count as
    candidates so the fraction is of the scored rows). Rows without an IFD are kept and counted."""
    import math

    from gen.data.scores import scorer_names, scores_texts, values_of
    from gen.errors import UserError

    texts = scores_texts(table)
    if "ifd" not in scorer_names(texts):
        raise UserError(f"--ifd-max/--top-fraction: {run_dir}/train has no IFD scores (run `gen score DIR --ifd MODEL` "
                        "first)")
    values = values_of(texts, "ifd")
    candidates = []
    unscored = 0
    for position, value in enumerate(values):
        if value is None:
            unscored += 1
        elif ifd_max is not None and value >= ifd_max:
            rejected.add(position, [IFD_ABOVE_MAX])
        else:
            candidates.append(position)
    if top_fraction is not None:
        keep = math.ceil(top_fraction * len(candidates))
        ranked = sorted(candidates, key=lambda p: (-values[p], p))
        for position in ranked[keep:]:
            rejected.add(position, [IFD_BELOW_TOP_FRACTION])
    return {"ifd_unscored_kept": unscored}
