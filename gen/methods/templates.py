"""Prompt templates as files: `gen/methods/templates/<name>.txt`, rendered with Jinja2.

Each template's identity is `sha256(source)[:12]` (`Template.hash`), written into every row's `params` as
`template_hash`, so a row says exactly which wording produced it, and editing a template shows up in the shards.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2

_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined,  # a missing variable is a bug in the method, not an empty string in a prompt
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
    autoescape=False,
)


@dataclass(frozen=True)
class Template:
    """One prompt template: `render(**variables) -> str`; `hash` = sha256 of the file's text, first 12 hex digits."""

    name: str
    source: str

    @functools.cached_property
    def _compiled(self) -> jinja2.Template:
        return _ENV.from_string(self.source)

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()[:12]

    def render(self, **variables: Any) -> str:
        return self._compiled.render(**variables).strip()


@functools.cache
def load_template(name: str) -> Template:
    """The template `gen/methods/templates/<name>.txt` shipped with the package."""
    source = resources.files("gen.methods").joinpath("templates", f"{name}.txt").read_text(encoding="utf-8")
    return Template(name=name, source=source)


def combined_hash(*templates: Template) -> str:
    """The hash of several templates used together (e.g. a frame plus the operation text it embeds)."""
    digest = hashlib.sha256()
    for template in templates:
        digest.update(template.source.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:12]
