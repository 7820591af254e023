"""The teacher as judge: rubric scores of single answers (pointwise) and A-vs-B verdicts (pairwise), through the
request engine (concurrency, retries, budgets, the request cache, progress, resume after kill -9).

    from gen.engine.engine import build_engine
    from gen.engine.spec import EngineSpec
    from gen.methods.judge import (JudgeItem, PairItem, judge_pairwise, judge_pointwise, judge_rows,
                                   load_rubric, position_flip_rate)
    from gen.teachers.spec import TeacherSpec

    engine = build_engine(TeacherSpec("openai:gpt-4o-mini"), EngineSpec(), "runs/x/.cache/requests.sqlite")
    rubric = load_rubric("ultrafeedback")             # quality | ultrafeedback | complexity | pairwise | FILE.yaml
    judgements = judge_rows(engine, rows, rubric)     # rows of the common schema: each row's last answer
    for j in judgements:
        j.status                  # ok | unparseable (-> reject the row: JUDGE_UNPARSEABLE) | failed | nothing_to_judge
        j.value, j.aspects, j.rationale, j.raw, j.judge, j.rubric, j.template_hash
        row["scores"] = merge_entry(row.get("scores"), rubric.name, j.entry())   # gen.data.scores

    item = JudgeItem(instruction="Name a prime.", answer="7")       # or JudgeItem.from_messages(messages)
    judge_pointwise(engine, [item], load_rubric("quality"))

    pairs = [PairItem.from_messages(prompt_messages, answer_a, answer_b)]
    verdicts = judge_pairwise(engine, pairs)          # both orders; built-in `pairwise` rubric
    verdicts[0].winner                # "A" | "B" | "tie" (also when the verdict flipped with the order) | None
    verdicts[0].position_flip, verdicts[0].first, verdicts[0].second, verdicts[0].entry()
    position_flip_rate(verdicts)      # the judge's position bias over the judged pairs

Requests: the rubric's template (Jinja2, `gen.methods.judge.rubric`) rendered with the item, temperature 0 and the
rubric's verdict schema as structured output (`judge_params(rubric, base, structured=True)` sets
`SamplingParams.json_schema`; each backend maps it to its own mechanism). Replies are read by a tolerant parser
(`verdict.parse_verdict`: the first JSON object, else `Score: 7`-style lines), never guessed; an unparseable reply
is asked once more as a different request (`retry.ask_parsed`), then the judgement is `unparseable`. Everything is
deterministic given the judge's replies: a rerun builds the same requests and finds them in the cache.
"""

from gen.methods.judge.pairwise import PairItem, PairVerdict, first_position_rate, judge_pairwise, position_flip_rate
from gen.methods.judge.pointwise import (
    DEFAULT_JUDGE_MAX_TOKENS,
    JudgeItem,
    Judgement,
    judge_params,
    judge_pointwise,
    judge_rows,
    rubric_request,
)
from gen.methods.judge.retry import RETRY_NOTE, Parsed, ask_parsed, retry_request
from gen.methods.judge.rubric import BUILTIN_RUBRICS, Aspect, Rubric, load_rubric, rubric_from_dict
from gen.methods.judge.scoring import judge_scores
from gen.methods.judge.verdict import JUDGE_UNPARSEABLE, Verdict, VerdictError, first_json_object, parse_verdict

__all__ = [
    "Aspect", "BUILTIN_RUBRICS", "DEFAULT_JUDGE_MAX_TOKENS", "JUDGE_UNPARSEABLE", "JudgeItem", "Judgement",
    "PairItem", "PairVerdict", "Parsed", "RETRY_NOTE", "Rubric", "Verdict", "VerdictError", "ask_parsed",
    "first_json_object", "first_position_rate", "judge_pairwise", "judge_params", "judge_pointwise", "judge_rows", "judge_scores",
    "load_rubric", "parse_verdict", "position_flip_rate", "retry_request", "rubric_from_dict", "rubric_request",
]
