"""The Hub dataset card (README.md) of a published run: YAML front matter and a Jinja2 body (its plots: plots.py).

Inputs: an `ExportPlan` from `gen.publish.plan.plan_export` (the run's manifest, its train/rejected tables and the
configs/files the export lays out). Outputs: `card_facts(plan, repo_id=...) -> CardFacts` (every number the card
shows) and `render_card(facts) -> str` (the whole README.md).

The front matter is built as a dict and written with `yaml.safe_dump` (never string templating, so no value can
break the YAML); the body comes from `datasets_cards/dataset_card.md.j2`. Every number in the card is computed
from the manifest or from the shards it describes, and the card renders only what the run recorded: a method that
writes a different funnel, or no sampling parameters, gets a card with those sections shorter, not an error.
"""

from __future__ import annotations

import functools
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from gen.data.preferences import TIE, is_preference_table
from gen.data.secrets import redact
from gen.errors import UserError
from gen.publish.plots import LENGTH_PLOT, ROWS_PLOT, SCORES_PLOT
from gen.publish.repo_id import check_repo_id
from gen.teachers import registry
from gen.teachers.terms import terms_for

if TYPE_CHECKING:
    from gen.publish.plan import ExportPlan

CARD_TEMPLATE = "dataset_card.md.j2"
# An example row shows at most this many characters per message: enough to see the style, short enough to skim.
EXAMPLE_CHARS = 600
# How many distinct values of one sampling parameter the card lists before it says "...".
MAX_DISTINCT_VALUES = 6

# The Hub's size buckets (`size_categories` in dataset cards), by number of rows.
_SIZE_BUCKETS = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
]

# Config keys that describe deduplication / novelty filtering (rendered in the "Deduplication" section).
_DEDUP_KEY = re.compile(r"dedup|minhash|num_perm|shingle|ngram|threshold|rouge|embedding|novelty|similar|lsh", re.I)
# Where the run's instructions came from: `--input`, seed files, the sampling seed.
_SEED_KEY = re.compile(r"seed|^inputs?$|(^|\.)input(_file|_dir|s)?$", re.I)
_TEMPLATE_KEY = re.compile(r"template", re.I)
_HUB_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.\-_]*$")

# ---------------------------------------------------------------------------------------------------- teacher terms


@dataclass
class TeacherTerms:
    """What a teacher's provider says about using its outputs: shown in the card, and the default license."""

    teacher: str  # the row's `teacher` value, `backend:model@revision`
    backend: str
    model: str
    title: str
    url: str
    note: str
    hub_license: str  # a Hub license id ("gemma") or "other"
    license_name: str | None = None  # for "other": a short name and a link, as the Hub asks
    source_file: str | None = None  # where the terms' text ships locally, if it does
    last_modified: str | None = None


def parse_teacher(teacher: str) -> tuple[str, str]:
    """`backend:model@revision` -> (backend, model); a bare `llamacpp` is the embedded Gemma teacher."""
    backend, _, model = (teacher or "").partition(":")
    model = model.rsplit("@", 1)[0] if "@" in model else model
    return backend.strip().lower() or "unknown", model.strip()


def is_teacher_spec(teacher: str) -> bool:
    """`backend:model...` or the bare embedded `llamacpp`: a model that wrote text (not a seed-input marker)."""
    return ":" in teacher or teacher.strip().lower() == "llamacpp"


def teacher_terms(teacher: str) -> TeacherTerms:
    """The terms that govern one teacher's outputs: declared by its backend or its model family
    (`gen.teachers.terms`); a model kdforge does not know gets a warning to read its license."""
    backend, model = parse_teacher(teacher)
    terms = terms_for(backend, model)
    if terms is not None:
        descriptor = registry.backend(backend)
        default = descriptor.default_model if descriptor is not None else None
        shown = model or (f"{default} (embedded)" if default else "")
        return TeacherTerms(teacher, backend, shown, terms.title, terms.url, terms.note, terms.hub_license,
                            license_name=terms.license_name, source_file=terms.source_file,
                            last_modified=terms.last_modified)
    return TeacherTerms(
        teacher, backend, model, f"the license of `{model or teacher}`",
        f"https://huggingface.co/{model}" if re.fullmatch(r"[\w.\-]+/[\w.\-]+", model or "") else "",
        "kdforge does not know this model's terms: read its model card and license before publishing or training "
        "on its outputs, and pass `--license` to `gen publish`.", "other", license_name="teacher-model-license")


def license_problem(license: str) -> str | None:
    """Why `license` cannot go into the card's `license:` field (one line), or None."""
    if not _HUB_LICENSE.match(license):
        return "use a Hub license id such as apache-2.0, cc-by-4.0, gemma, other"
    return None


def default_license(terms: list[TeacherTerms]) -> tuple[str, str | None, str | None]:
    """The card's license from its teachers: (hub id, license_name, license_link). One shared id wins; a mix or an
    unknown teacher is `other`, named after the (first) teacher's terms."""
    ids = {t.hub_license for t in terms}
    if len(ids) == 1 and "other" not in ids:
        return ids.pop(), None, None
    named = next((t for t in terms if t.hub_license == "other"), None)
    if named is None or len(terms) > 1:
        return "other", "teacher-terms", None
    return "other", named.license_name, named.url or None


# ------------------------------------------------------------------------------------------------------ card facts


def size_category(rows: int) -> str:
    """The Hub's size bucket for a number of rows (n<1K, 1K<n<10K, ..., n>1T)."""
    for limit, label in _SIZE_BUCKETS:
        if rows < limit:
            return label
    return "n>1T"


def hub_tag(name: str) -> str:
    """A method name as a Hub tag: lowercase, `_` -> `-` (`evol_instruct` -> `evol-instruct`)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _count_by(table: pa.Table, column: str) -> list[tuple[Any, int]]:
    if table.num_rows == 0 or column not in table.column_names:
        return []
    counts = pc.value_counts(table.column(column)).to_pylist()
    return sorted(((c["values"], c["counts"]) for c in counts), key=lambda vc: (-vc[1], str(vc[0])))


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts to (dotted key, leaf) pairs, in the order given: how a funnel or config of any shape renders."""
    if isinstance(value, Mapping):
        pairs: list[tuple[str, Any]] = []
        for key, item in value.items():
            pairs.extend(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return pairs
    return [(prefix, value)]


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value) or "[]"
    return str(value)


def _sampling_summary(table: pa.Table, config: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """Sampling parameters and template hashes, from the rows' `params` JSON (what each request really used).

    Returns ([(parameter, its distinct values)], [template hash lines]). Only distinct `params` strings are parsed,
    so a million rows sharing a dozen settings cost a dozen `json.loads`.
    """
    values: dict[str, set[str]] = defaultdict(set)
    templates: set[str] = set()
    distinct = pc.unique(table.column("params")).to_pylist() if table.num_rows and "params" in table.column_names else []
    for text in distinct:
        if not text:
            continue
        try:
            params = json.loads(text)
        except json.JSONDecodeError:
            continue
        for key, value in _flatten(params if isinstance(params, Mapping) else {"params": params}):
            if _TEMPLATE_KEY.search(key):
                templates.add(f"{key}: {value}")
            elif value is not None:
                values[key].add(json.dumps(value, sort_keys=True) if not isinstance(value, str) else value)
    for key, value in _flatten(config):
        if _TEMPLATE_KEY.search(key) and value not in (None, ""):
            templates.add(f"config {key}: {_format_value(value)}")
    sampling = []
    for key in sorted(values):
        seen = sorted(values[key], key=lambda v: (len(v), v))
        shown = ", ".join(f"`{v}`" for v in seen[:MAX_DISTINCT_VALUES])
        if len(seen) > MAX_DISTINCT_VALUES:
            shown += f", ... ({len(seen)} distinct)"
        sampling.append((key, shown))
    return sampling, sorted(templates)


def _duplicates(rejected: pa.Table) -> int:
    """Rejected rows that were duplicates: they name the row kept in their place, or a reason mentioning dup."""
    if rejected.num_rows == 0:
        return 0
    has_kept = pc.is_valid(rejected.column("duplicate_of")) if "duplicate_of" in rejected.column_names else None
    reasons = rejected.column("filters").to_pylist() if "filters" in rejected.column_names else [[]] * rejected.num_rows
    by_reason = [any("dup" in str(r).lower() for r in (row or [])) for row in reasons]
    kept = has_kept.to_pylist() if has_kept is not None else [False] * rejected.num_rows
    # A contaminated row's duplicate_of names a benchmark item, not a kept row: it is no duplicate of the run's.
    benchmark = ["contaminated" in (row or []) for row in reasons]
    return sum(1 for a, b, c in zip(kept, by_reason, benchmark) if (a and not c) or b)


def _contamination(funnel: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per benchmark `gen decontaminate` checked: items, rows overlapping it, the rate (empty when never run)."""
    entry = funnel.get("decontaminate") if isinstance(funnel.get("decontaminate"), Mapping) else {}
    rows = []
    for name, value in (entry.get("by_benchmark") or {}).items():
        if isinstance(value, Mapping):
            rows.append({"benchmark": name, "item_count": int(value.get("items") or 0),
                         "rows": int(value.get("rows_contaminated") or 0),
                         "rate": f"{100.0 * float(value.get('rate') or 0.0):.2f}%"})
    return rows


def _funnel_rows(funnel: Mapping[str, Any]) -> dict[str, Any]:
    """The funnel as a table: {"columns": [...], "rows": [[stage, cell, ...]]}.

    kdforge's methods record `{"total": {stage: n}, "rounds": {round: {stage: n}}}` (gen.methods.base.Funnel): that
    becomes one row per stage with a column per round and the total. Any other shape (a method's own nested dict)
    is flattened to `a.b.c | value` rows, so whatever was recorded is shown.
    """
    total = funnel.get("total")
    rounds = funnel.get("rounds")
    if isinstance(total, Mapping) and all(not isinstance(v, Mapping) for v in total.values()):
        rounds = rounds if isinstance(rounds, Mapping) else {}
        labels = sorted(rounds, key=lambda r: (not str(r).lstrip("-").isdigit(), int(r) if str(r).lstrip("-").isdigit() else 0, str(r)))
        rows = [[stage] + [_format_value((rounds[r] or {}).get(stage, 0)) for r in labels] + [_format_value(n)]
                for stage, n in total.items()]
        extra = {k: v for k, v in funnel.items() if k not in ("total", "rounds")}
        rows += [[key, *([""] * len(labels)), _format_value(value)] for key, value in _flatten(extra)]
        return {"columns": [f"round {r}" for r in labels] + ["total"], "rows": rows}
    return {"columns": ["count"], "rows": [[key, _format_value(value)] for key, value in _flatten(funnel)]}


def _fence(text: str) -> str:
    """A Markdown code fence longer than any backtick run inside `text`, so row content cannot close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _example(table: pa.Table) -> dict[str, Any] | None:
    """The first row of a table, its messages cut to EXAMPLE_CHARS each, as a JSON block plus its lineage."""
    if table.num_rows == 0:
        return None
    row = table.slice(0, 1).to_pylist()[0]

    def cut(messages):
        out = []
        for message in messages or []:
            content = message["content"] or ""
            if len(content) > EXAMPLE_CHARS:
                content = content[:EXAMPLE_CHARS] + f" [... {len(message['content']) - EXAMPLE_CHARS} more characters]"
            out.append({"role": message["role"], "content": content})
        return out

    if "messages" in row:
        body = json.dumps(cut(row["messages"]), indent=2, ensure_ascii=False)
    else:  # a preference row (`gen prefs`): the pair as DPO reads it, with its ratings
        body = json.dumps({"prompt": cut(row["prompt"]), "chosen": cut(row["chosen"]), "rejected": cut(row["rejected"]),
                           "score_chosen": row.get("score_chosen"), "score_rejected": row.get("score_rejected")},
                          indent=2, ensure_ascii=False)
    fields = {k: row.get(k) for k in ("id", "method", "operation", "round", "teacher") if row.get(k) is not None}
    return {"json": body, "fence": _fence(body), "fields": fields}


@dataclass
class CardFacts:
    """Everything the template renders, computed once from the plan (and reused by tests and `gen card`)."""

    repo_id: str
    pretty_name: str
    license: str
    license_name: str | None
    license_link: str | None
    languages: list[str]
    tags: list[str]
    size_category: str
    published_rows: int
    front_matter: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)


def card_facts(
    plan: ExportPlan,
    *,
    repo_id: str,
    license: str | None = None,
    languages: Iterable[str] = ("en",),
    pretty_name: str | None = None,
) -> CardFacts:
    """Compute the card's front matter and body context from an export plan.

    `license`: a Hub license id; default from the teachers' terms (Gemma teacher -> `gemma`, else `other`).
    """
    check_repo_id(repo_id)  # it lands in the card's links and code snippets
    manifest = plan.manifest
    config = manifest.get("config") or {}
    train, rejected = plan.train, plan.rejected
    everything = pa.concat_tables([train, rejected]) if rejected.num_rows else train

    # Rows that were not generated (round-0 seed inputs) carry a pseudo-teacher such as "input": only specs that
    # name a backend are teachers whose terms apply. With none in the rows, the run's --teacher decides.
    teachers = [t for t, _ in _count_by(everything, "teacher") if t and is_teacher_spec(t)]
    terms = [teacher_terms(t) for t in teachers] or [teacher_terms(str(config.get("teacher") or "unknown"))]
    # One entry per distinct set of terms: ten revisions of one model need not repeat Google's terms ten times.
    unique_terms = list({(t.title, t.url): t for t in terms}.values())
    if license is not None:
        problem = license_problem(license)
        if problem:
            raise UserError(f"license {license!r}: {problem}")
        license_id, license_name, license_link = license, None, None
        if license == "other":
            _, license_name, license_link = default_license(terms)
            license_name = license_name or "custom"
    else:
        license_id, license_name, license_link = default_license(terms)

    methods = [m for m, _ in _count_by(everything, "method")]
    preference = is_preference_table(train)  # `gen prefs` run: preference pairs for DPO
    tags = ["synthetic", "distillation", "kdforge"] + (["dpo", "preference"] if preference else []) + \
        [hub_tag(m) for m in sorted(methods)]
    tags = list(dict.fromkeys(t for t in tags if t))
    published = sum(part.rows for cfg in plan.configs if not cfg.aggregate for part in cfg.parts)
    languages = [str(lang) for lang in languages] or ["en"]
    pretty = pretty_name or repo_id.split("/")[-1].replace("-", " ").replace("_", " ").strip() or "kdforge dataset"

    front: dict[str, Any] = {"pretty_name": pretty, "license": license_id}
    if license_id == "other":
        front["license_name"] = license_name
        if license_link:
            front["license_link"] = license_link
    front.update({
        "language": languages,
        "task_categories": ["text-generation"],
        "size_categories": [size_category(published)],
        "tags": tags,
        "configs": plan.configs_yaml(),
    })

    context = _body_context(plan, repo_id=repo_id, terms=unique_terms, methods=methods, published=published,
                            license_id=license_id, license_name=license_name)
    return CardFacts(repo_id, pretty, license_id, license_name, license_link, languages, tags,
                     size_category(published), published, front, context)


def _body_context(plan: ExportPlan, *, repo_id: str, terms: list[TeacherTerms], methods: list[str],
                  published: int, license_id: str, license_name: str | None) -> dict[str, Any]:
    manifest = plan.manifest
    config = redact(manifest.get("config") or {})  # redacted again: the card is public even if the manifest is not
    stats = manifest.get("stats") or {}
    train, rejected = plan.train, plan.rejected
    everything = pa.concat_tables([train, rejected]) if rejected.num_rows else train

    rounds: dict[str, list[int]] = defaultdict(list)
    if everything.num_rows:
        for method, rnd in zip(everything.column("method").to_pylist(), everything.column("round").to_pylist()):
            if rnd is not None:
                rounds[method].append(rnd)
    method_rows = []
    train_counts = dict(_count_by(train, "method"))
    rejected_counts = dict(_count_by(rejected, "method"))
    for method in methods:
        seen = rounds.get(method)
        method_rows.append({
            "method": method,
            "rounds": f"{min(seen)}–{max(seen)}" if seen and min(seen) != max(seen) else (str(seen[0]) if seen else "–"),
            "kept": train_counts.get(method, 0),
            "rejected": rejected_counts.get(method, 0),
        })
    operations = [(op, n) for op, n in _count_by(everything, "operation") if op]

    sampling, templates = _sampling_summary(everything, config)
    # None is shown too: "input: default" says the command's shipped seeds were used, which is a seed source.
    seeds = [(k, "(the command's default)" if v in (None, "", []) else _format_value(v))
             for k, v in _flatten(config) if _SEED_KEY.search(k)]
    dedup = [(k, _format_value(v)) for k, v in _flatten(config) if _DEDUP_KEY.search(k) and "decontaminate" not in k]
    filter_settings = config.get("filters") if isinstance(config.get("filters"), Mapping) else {}
    decontamination = filter_settings.get("decontaminate")
    decontamination = decontamination if isinstance(decontamination, Mapping) else {}

    splits = manifest.get("splits") or {}
    kept_rows = int((splits.get("train") or {}).get("rows", train.num_rows))
    rejected_rows = int((splits.get("rejected") or {}).get("rows", rejected.num_rows))
    duplicates = _duplicates(rejected)
    checked = kept_rows + rejected_rows

    tokens = []
    for split_name in sorted(stats):
        entry = stats[split_name] or {}
        prompt, completion = int(entry.get("prompt_tokens") or 0), int(entry.get("completion_tokens") or 0)
        tokens.append({"split": split_name, "prompt": prompt, "completion": completion, "total": prompt + completion})
    by_reason = sorted(((stats.get("rejected") or {}).get("by_reason") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    by_method_round = defaultdict(lambda: {"train": 0, "rejected": 0})
    for split_name in ("train", "rejected"):
        for label, count in ((stats.get(split_name) or {}).get("by_method_round") or {}).items():
            by_method_round[label][split_name] = count
    engine = manifest.get("engine") if isinstance(manifest.get("engine"), Mapping) else {}
    cost = engine.get("cost") if engine else manifest.get("cost")

    configs = []
    for cfg in plan.configs:
        first = next((part.table for part in cfg.parts if part.split == "train"), None)
        first = first if first is not None else (cfg.parts[0].table if cfg.parts else None)
        configs.append({
            "name": cfg.name,
            "default": cfg.default,
            "aggregate": cfg.aggregate,
            "splits": [{"name": p.split, "rows": p.rows, "files": len(p.files), "path": path["path"]}
                       for p, path in zip(cfg.parts, cfg.yaml()["data_files"])],
            "example": _example(first) if first is not None and not cfg.aggregate else None,
        })
    known = {"kdforge_version", "updated", "config", "splits", "stats", "funnel", "engine"}
    scores = _score_rows(train)
    other = {k: v for k, v in manifest.items() if k not in known}

    return {
        "repo_id": repo_id,
        "kdforge_version": manifest.get("kdforge_version", "?"),
        "updated": manifest.get("updated"),
        "methods": method_rows,
        "operations": operations,
        "teachers": [{"id": t, "backend": parse_teacher(t)[0], "model": parse_teacher(t)[1], "rows": n}
                     for t, n in _count_by(everything, "teacher") if t],
        "teacher_terms": terms,
        "license": license_id,
        "license_name": license_name,
        "sampling": sampling,
        "templates": templates,
        "seeds": seeds,
        "dedup": dedup,
        "kept_rows": kept_rows,
        "rejected_rows": rejected_rows,
        "checked_rows": checked,
        "duplicates": duplicates,
        "duplicate_rate": f"{100.0 * duplicates / checked:.2f}%" if checked else "n/a",
        "contamination": _contamination(manifest.get("funnel") or {}),
        "contamination_ngram": decontamination.get("ngram"),
        "funnel": _funnel_rows(manifest.get("funnel") or {}),
        "by_reason": by_reason,
        "by_method_round": sorted(by_method_round.items()),
        "tokens": tokens,
        "tokens_total": sum(t["total"] for t in tokens),
        "cost": cost,
        "engine": [(k, _format_value(v)) for k, v in _flatten(engine)] if engine else [],
        "configs": configs,
        "published_rows": published,
        "include_rejected": plan.include_rejected,
        "config_by": plan.config_by,
        "plots": ({"length": LENGTH_PLOT, "rows": ROWS_PLOT, **({"scores": SCORES_PLOT} if scores else {})}
                  if train.num_rows else {}),
        "scores": scores,
        "preference": preference_facts(train, rejected) if is_preference_table(train) else None,
        "config_yaml": yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100).strip() if config else "",
        "other_yaml": yaml.safe_dump(redact(other), sort_keys=False, allow_unicode=True, width=100).strip() if other else "",
        "default_config": next((c.name for c in plan.configs if c.default), plan.configs[0].name if plan.configs else ""),
    }


def preference_facts(train: pa.Table, rejected: pa.Table) -> dict[str, Any]:
    """What the card says about a preference run (`gen prefs`): the judge and rubric, the candidate models, the
    pairs' score margins (chosen minus rejected rating)."""
    rows = train.select(["score_chosen", "score_rejected", "judge", "rubric", "candidates"]).to_pylist()
    margins = [r["score_chosen"] - r["score_rejected"] for r in rows
               if r["score_chosen"] is not None and r["score_rejected"] is not None]
    models: dict[str, int] = defaultdict(int)
    for r in rows:
        for candidate in r["candidates"] or []:
            models[candidate["model"]] += 1
    judges = sorted({f"{r['judge']} ({r['rubric']})" for r in rows if r["judge"]})
    return {
        "pairs": train.num_rows,
        "judges": judges,
        "candidates": sorted(models.items(), key=lambda kv: (-kv[1], kv[0])),
        "mean_margin": f"{sum(margins) / len(margins):.3g}" if margins else "n/a",
        "min_margin": f"{min(margins):.3g}" if margins else "n/a",
        "ties": sum(1 for reasons in (rejected.column("filters").to_pylist() if rejected.num_rows else [])
                    if TIE in (reasons or [])),
    }


def _score_rows(train: pa.Table) -> list[dict[str, Any]]:
    """One line per scorer of the kept rows (`gen score`): rows with a value, mean, median, min, max, and the judge
    and rubric the scores came from."""
    from gen.data.scores import distribution, parse_scores, scores_texts

    texts = scores_texts(train)
    rows = []
    for name, d in distribution(texts).items():
        if not d["rows"]:
            continue
        scorer = name.split(".")[0]
        sources = sorted({str(entry.get("judge") or entry.get("model") or "") for text in texts
                          for key, entry in parse_scores(text).items() if key == scorer and isinstance(entry, Mapping)}
                         - {""})
        rows.append({"name": name, "rows": d["rows"], "mean": f"{d['mean']:.2f}", "median": f"{d['median']:g}",
                     "min": f"{d['min']:g}", "max": f"{d['max']:g}", "by": ", ".join(sources) or "–"})
    return rows


# ---------------------------------------------------------------------------------------------------------- render


def _cell(value: Any) -> str:
    """A value safe inside a Markdown table cell: no newlines, escaped pipes."""
    text = value if isinstance(value, str) else _format_value(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("datasets_cards", "."),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug in kdforge, not a silent hole in the card
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML; row text only ever lands inside code fences or escaped cells
    )
    env.filters["cell"] = _cell
    env.filters["num"] = lambda v: f"{int(v):,}"
    env.filters["code"] = lambda v: f"`{v}`"
    env.filters["oneline"] = lambda v: " ".join(str(v).split())
    return env


def render_card(facts: CardFacts) -> str:
    """README.md: `---` + YAML front matter (yaml.safe_dump) + `---` + the Jinja2 body."""
    env = _environment()
    body = env.get_template(CARD_TEMPLATE).render(facts=facts, **facts.context)
    front = yaml.safe_dump(facts.front_matter, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{front}---\n\n{body.strip()}\n"


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """The inverse of render_card's framing: (parsed YAML front matter, body). Used by tests and `gen card --check`."""
    match = re.match(r"^---\n(.*?\n)---\n(.*)$", text, re.S)
    if not match:
        raise UserError("README.md: no YAML front matter between '---' lines")
    return yaml.safe_load(match.group(1)) or {}, match.group(2)
