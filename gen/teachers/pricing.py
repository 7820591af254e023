"""Approximate list prices of hosted teacher models, so that `--max-cost` can stop a run before it overspends.

Each backend declares its own table (`BACKEND.prices`, dollars per 1M tokens for standard non-batch, non-cached
requests, with the date they were checked). Prices change: treat the budget as approximate, and pass
`--price IN:OUT` to use your own. Models not listed (local servers, vLLM, llama.cpp) have no price, and
`--max-cost` for them is a user error that says so; `--max-tokens` works everywhere.
"""

from __future__ import annotations

from gen.teachers import registry
from gen.teachers.backend import Price

__all__ = ["Price", "parse_price", "price_for"]


def price_for(teacher_id: str) -> Price | None:
    """The price of a teacher named `backend:model[@revision]`, or None when unknown."""
    prefix, _, model = teacher_id.partition(":")
    descriptor = registry.backend(prefix)
    return descriptor.price_for(model) if descriptor is not None else None


def parse_price(text: str) -> Price:
    """`IN:OUT` dollars per 1M tokens, e.g. `0.15:0.60` -> Price(0.15, 0.60). Raises ValueError."""
    left, sep, right = text.partition(":")
    if not sep:
        raise ValueError(f"expected IN:OUT dollars per 1M tokens, got {text!r}")
    price = Price(float(left), float(right))
    if price.input_per_million < 0 or price.output_per_million < 0:
        raise ValueError("prices must not be negative")
    return price
