"""Rubrics: what a judge is asked, as data. A rubric is a plug-in point: a YAML or JSON file with

    name: my_rubric                 # the scorer's name in the `scores` column
    target: answer                  # answer (the row's last answer) | instruction (the task itself) | pair (A vs B)
    system: ...                     # optional system message
    aspects:                        # pointwise rubrics: one or more numbers the judge gives (integers by default)
      - {name: correctness, min: 1, max: 5, description: ...}
    template: |                     # Jinja2; variables: instruction, context (earlier turns: role, content),
      ... {{ instruction }} ...     # answer (target answer), answer_a / answer_b (target pair), aspects,
      {{ verdict_format }}          # and verdict_format (the JSON object the judge must reply with)

The built-in ones are files of the same form in `gen/methods/judge/rubrics/` (`quality`, `ultrafeedback`,
`complexity`, `pairwise`); `load_rubric(NAME_OR_PATH)` reads either. A rubric's `template_hash` is sha256[:12] of
its whole definition (wording, aspects, ranges), written with every judgement, so a changed rubric shows in the data.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from gen.errors import UserError

TARGETS = ("answer", "instruction", "pair")
BUILTIN_RUBRICS = ("quality", "ultrafeedback", "complexity", "pairwise")
PAIR_CHOICES = ("A", "B", "tie")

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                          keep_trailing_newline=False, autoescape=False)


@dataclass(frozen=True)
class Aspect:
    """One number a pointwise judge gives, within [min, max] (an integer unless `integer` is False)."""

    name: str
    min: float
    max: float
    description: str = ""
    integer: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "min": self.min, "max": self.max, "description": self.description,
                "integer": self.integer}


@dataclass(frozen=True)
class Rubric:
    """What a judge is asked: the prompt template, the target (answer, instruction or a pair of answers) and, for a
    pointwise rubric, the aspects it scores. `source` says where it came from (`builtin:quality` or a path)."""

    name: str
    target: str
    template: str
    aspects: tuple[Aspect, ...] = ()
    system: str | None = None
    source: str = ""
    _compiled: Any = field(default=None, repr=False, compare=False)

    @property
    def pairwise(self) -> bool:
        return self.target == "pair"

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "system": self.system, "template": self.template,
                "aspects": [a.to_dict() for a in self.aspects]}

    @functools.cached_property
    def template_hash(self) -> str:
        """sha256[:12] of the whole definition: any change of wording, aspect or range changes it."""
        blob = json.dumps(self.definition(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]

    def verdict_schema(self) -> dict[str, Any]:
        """The JSON schema of a verdict (sent as structured output where the backend has it, and validated)."""
        properties: dict[str, Any] = {"rationale": {"type": "string"}}
        if self.pairwise:
            properties["winner"] = {"type": "string", "enum": list(PAIR_CHOICES)}
            required = ["rationale", "winner"]
        else:
            for aspect in self.aspects:
                properties[aspect.name] = {"type": "integer" if aspect.integer else "number",
                                           "minimum": aspect.min, "maximum": aspect.max}
            required = ["rationale"] + [a.name for a in self.aspects]
        return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}

    def verdict_format(self) -> str:
        """The reply format shown in the prompt, e.g. `{"rationale": "<your reasoning>", "quality": <1-10>}`."""
        if self.pairwise:
            return '{"rationale": "<your reasoning>", "winner": "A" | "B" | "tie"}'
        parts = ['"rationale": "<your reasoning>"']
        for aspect in self.aspects:
            kind = "integer" if aspect.integer else "number"
            parts.append(f'"{aspect.name}": <{kind} {_num(aspect.min)}-{_num(aspect.max)}>')
        return "{" + ", ".join(parts) + "}"

    def render(self, **variables: Any) -> str:
        """The judge's prompt. Variables: instruction, context, and answer (or answer_a, answer_b)."""
        compiled = self._compiled or _ENV.from_string(self.template)
        return compiled.render(aspects=[a.to_dict() for a in self.aspects], verdict_format=self.verdict_format(),
                               rubric=self.name, **variables).strip()


def _num(value: float) -> str:
    return f"{value:g}"


def rubric_from_dict(data: Mapping[str, Any], source: str) -> Rubric:
    """A Rubric from a parsed rubric file; a UserError names `source` and the field at fault."""
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: a rubric is a mapping with name, target, aspects and template")
    unknown = set(data) - {"name", "target", "system", "aspects", "template", "description"}
    if unknown:
        raise UserError(f"{source}: unknown rubric field(s) {', '.join(sorted(unknown))}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or any(c in name for c in ".{}\"' \t\n"):
        raise UserError(f"{source}: 'name' must be a word (letters, digits, '_' or '-'), got {name!r}")
    target = data.get("target", "answer")
    if target not in TARGETS:
        raise UserError(f"{source}: 'target' must be one of {', '.join(TARGETS)}, got {target!r}")
    template = data.get("template")
    if not isinstance(template, str) or not template.strip():
        raise UserError(f"{source}: 'template' must be the prompt text (Jinja2)")
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise UserError(f"{source}: 'system' must be text")
    aspects = []
    raw_aspects = data.get("aspects") or []
    if not isinstance(raw_aspects, list):
        raise UserError(f"{source}: 'aspects' must be a list of {{name, min, max}}")
    for i, raw in enumerate(raw_aspects):
        where = f"{source}: aspects[{i}]"
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not raw["name"].strip():
            raise UserError(f"{where}: needs a 'name'")
        if raw["name"] == "rationale" or any(c in raw["name"] for c in ".{}\"' \t\n"):
            raise UserError(f"{where}: name {raw['name']!r} is reserved or not a word")
        lo, hi = raw.get("min"), raw.get("max")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or not lo < hi:
            raise UserError(f"{where} ({raw['name']}): needs numbers min < max, got min={lo!r} max={hi!r}")
        integer = raw.get("integer", True)
        if not isinstance(integer, bool):
            raise UserError(f"{where} ({raw['name']}): 'integer' must be true or false")
        aspects.append(Aspect(name=raw["name"], min=float(lo), max=float(hi),
                              description=str(raw.get("description") or ""), integer=integer))
    names = [a.name for a in aspects]
    if len(set(names)) != len(names):
        raise UserError(f"{source}: aspect names must be distinct ({', '.join(names)})")
    if target == "pair" and aspects:
        raise UserError(f"{source}: a pair rubric has no aspects (its verdict is the winner: A, B or tie)")
    if target != "pair" and not aspects:
        raise UserError(f"{source}: a pointwise rubric needs at least one aspect")
    try:
        compiled = _ENV.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise UserError(f"{source}: template line {exc.lineno}: {exc.message}") from None
    rubric = Rubric(name=name, target=target, template=template, aspects=tuple(aspects), system=system,
                    source=source, _compiled=compiled)
    try:  # every variable the template uses must be one the judge provides
        rubric.render(instruction="x", context=[], answer="x", answer_a="x", answer_b="x")
    except jinja2.UndefinedError as exc:
        raise UserError(f"{source}: template uses an unknown variable ({exc.message})") from None
    if "verdict_format" not in template:
        raise UserError(f"{source}: template never shows the reply format ({{{{ verdict_format }}}})")
    return rubric


@functools.cache
def _builtin(name: str) -> Rubric:
    import yaml

    text = resources.files("gen.methods.judge").joinpath("rubrics", f"{name}.yaml").read_text(encoding="utf-8")
    return rubric_from_dict(yaml.safe_load(text), f"builtin:{name}")


def load_rubric(name_or_path: str | Path) -> Rubric:
    """A built-in rubric by name (`quality`, `ultrafeedback`, `complexity`, `pairwise`) or a rubric file
    (.yaml/.yml/.json). A UserError names the file and what is wrong with it."""
    text_name = str(name_or_path)
    if text_name in BUILTIN_RUBRICS:
        return _builtin(text_name)
    path = Path(name_or_path)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise UserError(f"rubric {text_name!r}: not a built-in one ({', '.join(BUILTIN_RUBRICS)}) nor a "
                        ".yaml/.json file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such rubric file") from None
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise UserError(f"{path}: not YAML{where}") from None
    return rubric_from_dict(data, str(path))
