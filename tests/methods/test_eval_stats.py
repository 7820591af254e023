"""`gen eval`'s statistics as pure functions: win rate with ties as half, the seeded bootstrap interval, and the
length-controlled win rate on crafted data."""

from __future__ import annotations

import pytest

from gen.methods.evaluation.stats import bootstrap_ci, counts, lc_win_rate, win_rate


def test_win_rate_counts_ties_half_and_counts_each_kind():
    outcomes = [1.0, 1.0, 0.5, 0.0, 0.5, 1.0, 0.0, 0.0]
    assert win_rate(outcomes) == pytest.approx(4 / 8)
    assert win_rate([1.0, 1.0, 0.5, 0.0]) == 0.625
    assert counts(outcomes) == {"wins": 3, "ties": 2, "losses": 3}
    assert win_rate([]) is None and bootstrap_ci([]) is None and lc_win_rate([], []) is None


def test_bootstrap_interval_is_seeded_and_has_the_binomial_width():
    assert bootstrap_ci([1.0] * 10, seed=3) == (1.0, 1.0)
    assert bootstrap_ci([0.5] * 7) == (0.5, 0.5)
    half = [1.0, 0.0] * 50
    first = bootstrap_ci(half, resamples=2000, seed=0)
    assert bootstrap_ci(half, resamples=2000, seed=0) == first  # same seed, same interval
    low, high = first
    # sd of a mean of 100 fair coin flips = 0.05: the 95% interval is about 0.5 -/+ 0.098
    assert 0.38 < low < 0.42 and 0.58 < high < 0.62
    assert low < win_rate(half) < high
    # Four times the pairs, half the width.
    low4, high4 = bootstrap_ci(half * 4, resamples=2000, seed=0)
    assert 0.085 < high4 - low4 < 0.11


def test_lc_win_rate_removes_a_win_rate_that_length_alone_explains():
    # 12 pairs where the student's answer is much longer and wins; at equal length, 2 wins and 2 losses.
    outcomes = [1.0] * 12 + [1.0, 1.0, 0.0, 0.0]
    differences = [100 + 10 * i for i in range(12)] + [0, 0, 0, 0]
    assert win_rate(outcomes) == 0.875
    controlled = lc_win_rate(outcomes, differences)
    assert controlled < 0.7, "the judge rewarded length: the length-controlled rate must fall well below 0.875"
    assert controlled > 0.5  # the slope is L2-penalised: a finite fit, pulled toward the raw rate
    # A tie is half a win and half a loss: 4 ties at equal length give exactly the same fit as 2 wins + 2 losses.
    assert lc_win_rate([1.0] * 12 + [0.5] * 4, differences) == pytest.approx(controlled, abs=1e-9)
    # The mirror image: a student that wins by being shorter gets a higher length-controlled rate.
    assert lc_win_rate([0.0] * 12 + [1.0, 1.0, 0.0, 0.0], differences) > win_rate([0.0] * 12 + [1.0, 1.0, 0.0, 0.0])


def test_lc_win_rate_equals_the_win_rate_when_length_says_nothing():
    # Wins and losses spread evenly over the same length differences: slope 0, intercept = the raw rate.
    outcomes = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    differences = [-30, -30, 30, 30, 0, 0]
    assert lc_win_rate(outcomes, differences) == pytest.approx(win_rate(outcomes), abs=1e-6)
    assert lc_win_rate([1.0, 0.0, 0.5], [5, 5, 5]) == win_rate([1.0, 0.0, 0.5])  # no spread: nothing to control
    with pytest.raises(ValueError):
        lc_win_rate([1.0], [1, 2])
