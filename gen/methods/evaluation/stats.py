"""The statistics of `gen eval`, as pure functions of the per-pair outcomes (no I/O, no model).

An outcome is the student's score on one judged pair: 1.0 a win, 0.5 a tie (including a verdict that flipped with
the answers' order), 0.0 a loss. Pairs without a verdict (`judge_unparseable`, failed requests) are never outcomes.

- `win_rate`: the mean outcome (ties count half).
- `bootstrap_ci`: the percentile bootstrap of the win rate: resample the pairs with replacement `resamples` times
  (a seeded numpy Generator, so the same outcomes and seed give the same interval) and take the 2.5th and 97.5th
  percentiles of the resampled win rates.
- `lc_win_rate`: the length-controlled win rate, AlpacaEval 2.0's idea (Dubois et al., 2024) in its simplest form.
  A judge that prefers longer answers rewards a student for talking more; regressing the outcome on the length
  difference and reading the fitted model at a length difference of zero asks "how often would the student win if
  both answers were the same length?". AlpacaEval 2.0's GLM also has per-instruction difficulty terms and a tanh on
  the length term; with one student and one baseline we keep the intercept and one standardized length term:

      P(student wins | z) = sigmoid(a + b * z),   z = (len_student - len_baseline) / sd(len_student - len_baseline)  (scaled, not centred)
      lc_win_rate = sigmoid(a)

  Ties: a tie enters as half a win and half a loss (the pair appears once with label 1 and weight 0.5 and once
  with label 0 and weight 0.5), the same "ties count half" as the raw win rate, so with no length effect
  (b = 0) lc_win_rate equals win_rate. The slope has a small L2 penalty (scikit-learn's default C=1.0; the
  intercept is not penalised), which keeps the fit finite when length separates wins from losses perfectly, as it
  does on a judge that always picks the longer answer. When every length difference is the same (sd = 0) there is
  no length to control for and lc_win_rate is the win rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WIN, TIE, LOSS = 1.0, 0.5, 0.0
OUTCOME_OF_WINNER = {"A": WIN, "tie": TIE, "B": LOSS}  # the student's answer is always "A" in gen eval's pairs


def win_rate(outcomes: Sequence[float]) -> float | None:
    """Mean outcome (wins 1, ties 0.5, losses 0); None for no outcomes."""
    if len(outcomes) == 0:
        return None
    return float(np.mean(np.asarray(outcomes, dtype=np.float64)))


def bootstrap_ci(outcomes: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the win rate (see the module doc); None for no outcomes."""
    values = np.asarray(outcomes, dtype=np.float64)
    if values.size == 0:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[picks].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def lc_win_rate(outcomes: Sequence[float], length_differences: Sequence[float]) -> float | None:
    """The length-controlled win rate (see the module doc): `length_differences[i]` is the student's answer length
    minus the baseline's on pair i (any unit; characters in `gen eval`). None for no outcomes."""
    y = np.asarray(outcomes, dtype=np.float64)
    d = np.asarray(length_differences, dtype=np.float64)
    if y.size != d.size:
        raise ValueError(f"{y.size} outcomes but {d.size} length differences")
    if y.size == 0:
        return None
    spread = d.std()
    if spread == 0 or np.all(y == y[0]):  # nothing to regress on, or nothing to separate
        return win_rate(y)
    from sklearn.linear_model import LogisticRegression

    # Scaled, not centred: z = 0 stays "same length", where the intercept is read.
    z = d / spread
    # Each pair twice: label 1 with weight y, label 0 with weight 1 - y (a tie: half and half).
    features = np.concatenate([z, z])[:, None]
    labels = np.concatenate([np.ones_like(y), np.zeros_like(y)])
    weights = np.concatenate([y, 1.0 - y])
    keep = weights > 0
    model = LogisticRegression(C=1.0)
    model.fit(features[keep], labels[keep], sample_weight=weights[keep])
    return float(model.predict_proba(np.zeros((1, 1)))[0, 1])


def counts(outcomes: Sequence[float]) -> dict[str, int]:
    """{"wins", "ties", "losses"} of the outcomes."""
    values = list(outcomes)
    return {"wins": sum(v == WIN for v in values), "ties": sum(v == TIE for v in values),
            "losses": sum(v == LOSS for v in values)}
