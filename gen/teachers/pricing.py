"""Approximate list prices of hosted teacher models, so that `--max-cost` can stop a run before it overspends.

Dollars per 1M tokens (input, output), as published by OpenAI and Anthropic for standard (non-batch, non-cached)
requests, checked 2025-11. Prices change: treat the budget as approximate, and pass `--price IN:OUT` to use your own.
Models not listed (local servers, vLLM, llama.cpp) have no price, and `--max-cost` for them is a user error that
says so; `--max-tokens` works everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_CHECKED = "2025-11"


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Dollars for one request's usage."""
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


# backend -> model-name prefix -> price. The longest matching prefix wins ("gpt-4o-mini-2024-07-18" -> gpt-4o-mini).
_TABLE: dict[str, dict[str, Price]] = {
    "openai": {
        "gpt-5": Price(1.25, 10.00),
        "gpt-5-mini": Price(0.25, 2.00),
        "gpt-5-nano": Price(0.05, 0.40),
        "gpt-4.1": Price(2.00, 8.00),
        "gpt-4.1-mini": Price(0.40, 1.60),
        "gpt-4.1-nano": Price(0.10, 0.40),
        "gpt-4o": Price(2.50, 10.00),
        "gpt-4o-mini": Price(0.15, 0.60),
        "gpt-4-turbo": Price(10.00, 30.00),
        "gpt-3.5-turbo": Price(0.50, 1.50),
        "o3": Price(2.00, 8.00),
        "o3-mini": Price(1.10, 4.40),
        "o4-mini": Price(1.10, 4.40),
        "o1": Price(15.00, 60.00),
        "o1-mini": Price(1.10, 4.40),
    },
    "anthropic": {
        "claude-opus-4-5": Price(5.00, 25.00),
        "claude-opus-4": Price(15.00, 75.00),
        "claude-sonnet-4": Price(3.00, 15.00),
        "claude-haiku-4-5": Price(1.00, 5.00),
        "claude-3-7-sonnet": Price(3.00, 15.00),
        "claude-3-5-sonnet": Price(3.00, 15.00),
        "claude-3-5-haiku": Price(0.80, 4.00),
        "claude-3-opus": Price(15.00, 75.00),
        "claude-3-haiku": Price(0.25, 1.25),
    },
}


def price_for(teacher_id: str) -> Price | None:
    """The price of a teacher named `backend:model[@revision]`, or None when unknown."""
    backend, _, model = teacher_id.partition(":")
    model = model.split("@", 1)[0]
    table = _TABLE.get(backend, {})
    best = None
    for prefix in table:
        if (model == prefix or model.startswith(prefix + "-")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return table[best] if best is not None else None


def parse_price(text: str) -> Price:
    """`IN:OUT` dollars per 1M tokens, e.g. `0.15:0.60` -> Price(0.15, 0.60). Raises ValueError."""
    left, sep, right = text.partition(":")
    if not sep:
        raise ValueError(f"expected IN:OUT dollars per 1M tokens, got {text!r}")
    price = Price(float(left), float(right))
    if price.input_per_million < 0 or price.output_per_million < 0:
        raise ValueError("prices must not be negative")
    return price
