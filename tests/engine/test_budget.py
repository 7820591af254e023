"""`Budget`: the one place where what fits, what was spent and when a run is exhausted are decided — used by the
one-process `Engine` and by the Ray driver's `DistributedEngine` alike."""

from __future__ import annotations

import pytest

from gen.engine.budget import BUDGET_EXHAUSTED, COUNTERS, Budget, estimate_prompt_tokens
from gen.engine.engine import Result
from gen.teachers.base import ChatRequest, Completion, SamplingParams
from gen.teachers.pricing import Price


def request(text: str, max_tokens: int = 10) -> ChatRequest:
    return ChatRequest.make([{"role": "user", "content": text}], SamplingParams(max_tokens=max_tokens))


def test_room_counts_what_is_spent_plus_what_is_reserved():
    budget = Budget(max_total_tokens=100)
    assert budget.limited and budget.has_room()
    budget.charge(Completion("x", prompt_tokens=30, completion_tokens=30))
    assert budget.spent_tokens() == 60 and budget.has_room(reserved_tokens=39)
    assert not budget.has_room(reserved_tokens=40)  # 60 spent + 40 in flight reach the budget
    assert Budget().has_room(reserved_tokens=10**9) and not Budget().limited


def test_a_whole_batch_sends_the_prefix_whose_worst_case_fits():
    budget = Budget(max_total_tokens=100)
    items = [(str(k), request("q" * 30, max_tokens=20)) for k in range(5)]
    worst = estimate_prompt_tokens(items[0][1]) + 20
    fitting = budget.fitting(items)
    # each request starts while spent + the worst case of those before it is below the budget
    assert len(fitting) == -(-100 // worst) and fitting == items[:len(fitting)]
    assert Budget().fitting(items) == items


def test_dollars_are_priced_per_completion_and_per_unit_report():
    price = Price(input_per_million=1.0, output_per_million=2.0)
    budget = Budget(max_cost=0.003, price=price)
    budget.charge(Completion("x", prompt_tokens=1000, completion_tokens=500))
    assert budget.stats["cost"] == pytest.approx(0.002) and budget.has_room()
    budget.add({"sent": 3, "prompt_tokens": 1000, "completion_tokens": 0, "failures": 1})  # a Ray unit's counters
    assert budget.stats["cost"] == pytest.approx(0.003) and not budget.has_room()
    assert budget.stats["sent"] == 3 and budget.stats["failures"] == 1
    assert Budget().stats["cost"] is None  # no price: no dollars, rather than a wrong 0


def test_results_count_requests_hits_failures_and_exhaust_on_a_skip():
    budget = Budget(max_total_tokens=10)
    ok, hit = Result(request("a"), Completion("A")), Result(request("b"), Completion("B"), cached=True)
    failed, skipped = Result(request("c"), None, "failed after 7 attempts"), Result(request("d"), None, BUDGET_EXHAUSTED)
    budget.count_results([ok, hit, failed])
    assert not budget.exhausted
    budget.count_results([skipped])
    assert budget.exhausted
    assert {k: budget.stats[k] for k in ("requests", "cache_hits", "failures", "skipped")} == {
        "requests": 4, "cache_hits": 1, "failures": 1, "skipped": 1}
    assert set(COUNTERS) | {"cost", "seconds"} == set(budget.stats)



def test_a_dollar_budget_without_a_price_names_the_setting_and_the_teacher():
    from gen.errors import InvalidSetting

    with pytest.raises(InvalidSetting, match="no known price for teacher 'openai:x'") as caught:
        Budget(max_cost=1.0, teacher_id="openai:x")
    assert caught.value.setting == "max_cost"
