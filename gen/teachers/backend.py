"""`Backend`: everything kdforge needs to know about a teacher backend besides its code, declared in ONE place —
the `BACKEND = Backend(...)` at the top of the backend's own module:

    BACKEND = Backend(prefix="openai", key_env=("OPENAI_API_KEY",), prices={"gpt-4o": Price(2.50, 10.00)},
                      terms=Terms(title="OpenAI Terms of Use", url=..., note=...))

The registry (`gen.teachers.registry`) finds the module (and its `from_spec`) by the prefix; `--max-cost` prices
(`gen.teachers.pricing`), the dataset card's terms section (`gen.teachers.terms`) and secret redaction
(`gen.data.secrets`: the key variables are declared there when the descriptor is built) read the descriptor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gen.data.secrets import declare_secret_env


@dataclass(frozen=True)
class Price:
    """Dollars per 1M tokens (input, output)."""

    input_per_million: float
    output_per_million: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Dollars for one request's usage."""
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


@dataclass(frozen=True)
class Terms:
    """What a provider (or a model family's license) says about using its outputs: shown in the dataset card, and
    the card's default license. `hub_license` is a Hub license id ("gemma") or "other" (then `license_name` names
    it, as the Hub asks)."""

    title: str
    url: str
    note: str
    hub_license: str = "other"
    license_name: str | None = None
    source_file: str | None = None  # where the terms' text ships locally, if it does
    last_modified: str | None = None


@dataclass(frozen=True)
class Backend:
    """One teacher backend, as the rest of kdforge sees it.

    prefix: the spec prefix (`openai` in `openai:gpt-4o-mini`); the module's `from_spec(model, **options)` builds
        the teacher.
    key_env: environment variables holding its credentials (redacted everywhere by value).
    prices: model-name prefix -> Price, for `--max-cost` (the longest matching prefix wins); `prices_checked` says
        when they were last compared with the provider's list.
    terms: the provider's terms for its outputs, or a function returning them (for terms read from a file); None
        when the backend runs weights whose own license decides (see `gen.teachers.terms`).
    terms_cover_every_model: the provider serves only its own models (Anthropic), so its terms apply whatever
        model is named; otherwise a model family's license (Gemma) takes precedence when the model is known.
    default_model: the model used when the spec names none (`llamacpp` alone); None: the spec must name one.
    """

    prefix: str
    key_env: tuple[str, ...] = ()
    prices: Mapping[str, Price] = field(default_factory=dict)
    prices_checked: str | None = None
    terms: Terms | Callable[[], Terms] | None = None
    terms_cover_every_model: bool = False
    default_model: str | None = None

    def __post_init__(self) -> None:
        # Declared the moment the descriptor exists: every writer that redacts then knows this backend's keys.
        declare_secret_env(*self.key_env)

    @property
    def model_required(self) -> bool:
        return self.default_model is None

    def price_for(self, model: str) -> Price | None:
        """The listed price of `model` (revision suffix `@...` ignored), or None when unlisted."""
        model = model.split("@", 1)[0]
        best = None
        for prefix in self.prices:
            if (model == prefix or model.startswith(prefix + "-")) and (best is None or len(prefix) > len(best)):
                best = prefix
        return self.prices[best] if best is not None else None

    def provider_terms(self) -> Terms | None:
        return self.terms() if callable(self.terms) else self.terms
