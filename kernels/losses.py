"""The divergences of the fused top-k KL op: one list of names, one small spec per loss.

A spec is the loss's name, its parameters (declared once in ``PARAMS``, with default, valid range and meaning), its
per-bucket *head* (value and gradient on a chunk of rows, used by every backend of kernels/topk_kl.py) and its
*reference* (the obvious formula on materialized log-probabilities, float64 in the tests). Adding a loss is one
spec here (plus a ``PARAMS`` entry and a ``train.config.LossConfig`` field if it takes a new parameter) and its test.

Notation (see docs/kernels.md for the derivations): P the teacher's K+1 buckets (top-k and tail), Q the student's,
``g_b = dL / d log q_b``. A head receives a ``kernels.head.Buckets`` (log P, log Q, Q, the tempered student logits at
the top-k ...) and returns ``(L [C], ds_top [C, K], ds_tail [C] or None)``: the loss per row and its gradient w.r.t.
the tempered student logits at the top-k ids, and the factor of ``exp(s_v - lse_tail)`` for every id off the top-k.
Most heads give ``g`` and let ``Buckets.from_log_q_grad`` turn it into that. A reference receives a
``ReferenceBuckets`` and returns L [n].

This module imports no torch at module level (heads and references only call methods of the tensors they get), so
the CLI can list the losses and their parameters without loading torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Reverse-KL / JSD(beta=1) need log p_b > -inf for every bucket; fp16 logprobs can be -inf and a top-k that sums to
# >= 1 leaves an empty tail. exp(-69) ~ 1e-30: far below any mass that matters, finite in fp32.
LOG_P_FLOOR = -69.0


@dataclass(frozen=True)
class Param:
    """A loss parameter: default, valid range [low, high] (or [low, high) when high_open) and meaning."""

    default: float
    low: float
    high: float
    high_open: bool = False
    help: str = ""

    def contains(self, value: float) -> bool:
        return self.low <= value < self.high if self.high_open else self.low <= value <= self.high  # NaN: False

    def range_text(self) -> str:
        return f"[{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def check(self, name: str, value: float) -> None:
        if not self.contains(value):
            raise ValueError(f"{name} must be in {self.range_text()}, got {value}")


PARAMS: dict[str, Param] = {
    "beta": Param(0.5, 0.0, 1.0, help="JSD(beta) mixture weight, M = beta P + (1 - beta) Q: 0 is forward KL, 1 reverse"),
    "alpha": Param(0.1, 0.0, 1.0, high_open=True,
                   help="skew-KL mixture weight, KL(P || alpha P + (1 - alpha) Q): 0 is forward KL"),
}


@dataclass(frozen=True)
class ReferenceBuckets:
    """Log-probabilities from materialized logits, for the references: log_p / log_q over the K+1 buckets (K when
    there is no tail), logp_top / logq_top over the top-k only."""

    log_p: torch.Tensor
    log_q: torch.Tensor
    logp_top: torch.Tensor
    logq_top: torch.Tensor


@dataclass(frozen=True)
class LossSpec:
    name: str
    summary: str
    head: Callable[..., tuple]  # (Buckets, **params) -> (L, ds_top, ds_tail or None)
    reference: Callable[..., Any]  # (ReferenceBuckets, **params) -> L
    params: tuple[str, ...] = ()


def plogp_ratio(logp, logx):
    """p * (log p - log x), 0 where p == 0 (also when log x == -inf there)."""
    p = logp.exp()
    return (p * (logp - logx)).where(p > 0, 0.0)


def kl(log_a, log_b):
    """sum_b a_b (log a_b - log b_b) per row, 0-mass buckets of a contributing 0."""
    return plogp_ratio(log_a, log_b).sum(dim=1)


# ------------------------------------------------------------------------------------------------ forward KL + tail


def _forward_kl_tail_head(b):
    return kl(b.log_p, b.log_q), *b.from_log_q_grad(-b.log_p.exp())


def _forward_kl_tail_reference(r):
    return kl(r.log_p, r.log_q)


# ------------------------------------------------------------------------------------------------ top-k renormalized


def _forward_kl_topk_head(b):
    """Both sides renormalized over the top-k: dL/ds_k = qhat_k sum(phat) - phat_k; the tail gets no gradient."""
    logq_hat = b.s_top - b.lse_top[:, None]
    logp_hat = b.logp_top - b.logp_top.logsumexp(dim=1, keepdim=True)
    p_hat = logp_hat.exp()
    ds_top = logq_hat.exp() * p_hat.sum(dim=1, keepdim=True) - p_hat
    return kl(logp_hat, logq_hat), ds_top, b.no_tail_grad()


def _forward_kl_topk_reference(r):
    return kl(r.logp_top - r.logp_top.logsumexp(1, keepdim=True), r.logq_top - r.logq_top.logsumexp(1, keepdim=True))


# ------------------------------------------------------------------------------------------------ reverse KL


def _reverse_kl_head(b):
    """g_b = q_b (d_b + 1) with d_b = log q_b - log p_b, G = L + 1, so dL/ds_b = q_b (d_b - L)
    = q_b ((d_b - d_*) - sum_c q_c (d_c - d_*)). Shifting by the dominant bucket * makes its own term exactly 0:
    without the shift, fp32 rounding of q_* ~ 1 times d_* ~ 50 costs ~1% relative error on the small gradients of
    confident rows. The shift uses the logits themselves (log q_b + lse_all), not log q_b, for the same reason."""
    q = b.q
    log_pf = b.log_p.clamp_min(LOG_P_FLOOR)
    d = (b.log_q - log_pf).where(q > 0, 0.0)
    loss = (q * d).sum(dim=1)
    u = b.log_q_unnormalized
    star = q.argmax(dim=1, keepdim=True)
    dd = (u - u.gather(1, star)) - (log_pf - log_pf.gather(1, star))
    qdd = (q * dd).where(q > 0, 0.0)
    return loss, *b.split(qdd - q * qdd.sum(dim=1, keepdim=True))


def _reverse_kl_reference(r):
    return kl(r.log_q, r.log_p.clamp_min(LOG_P_FLOOR))


# ------------------------------------------------------------------------------------------------ generalized JSD


def _jsd_head(b, beta):
    if beta == 0.0:
        return _forward_kl_tail_head(b)
    if beta == 1.0:
        return _reverse_kl_head(b)
    log_p, log_q, q = b.log_p, b.log_q, b.q
    log_m = (log_p + math.log(beta)).logaddexp(log_q + math.log1p(-beta))
    dq = (log_q - log_m).where(q > 0, 0.0)
    loss = beta * kl(log_p, log_m) + (1.0 - beta) * (q * dq).sum(dim=1)
    return loss, *b.from_log_q_grad((1.0 - beta) * q * dq)


def _jsd_reference(r, beta):
    if beta == 0.0:
        return _forward_kl_tail_reference(r)
    if beta == 1.0:
        return _reverse_kl_reference(r)
    log_m = (r.log_p + math.log(beta)).logaddexp(r.log_q + math.log1p(-beta))
    return beta * kl(r.log_p, log_m) + (1 - beta) * kl(r.log_q, log_m)


# ------------------------------------------------------------------------------------------------ skew KL


def _skew_kl_head(b, alpha):
    if alpha == 0.0:
        return _forward_kl_tail_head(b)
    log_p, log_q = b.log_p, b.log_q
    log_m = (log_p + math.log(alpha)).logaddexp(log_q + math.log1p(-alpha))
    return kl(log_p, log_m), *b.from_log_q_grad(-(1.0 - alpha) * (log_p + log_q - log_m).exp())


def _skew_kl_reference(r, alpha):
    if alpha == 0.0:
        return _forward_kl_tail_reference(r)
    log_m = (r.log_p + math.log(alpha)).logaddexp(r.log_q + math.log1p(-alpha))
    return kl(r.log_p, log_m)


SPECS: dict[str, LossSpec] = {spec.name: spec for spec in (
    LossSpec("forward_kl_tail", "forward KL over the top-k plus the tail bucket (exact KL of two K+1-category "
             "distributions)", _forward_kl_tail_head, _forward_kl_tail_reference),
    LossSpec("forward_kl_topk", "forward KL of teacher and student both renormalized over the top-k (no tail)",
             _forward_kl_topk_head, _forward_kl_topk_reference),
    LossSpec("reverse_kl", "reverse KL(Q || P) over the K+1 buckets", _reverse_kl_head, _reverse_kl_reference),
    LossSpec("jsd", "generalized Jensen-Shannon JSD(beta), as TRL's GKD", _jsd_head, _jsd_reference, ("beta",)),
    LossSpec("skew_kl", "skew forward KL (DistiLLM)", _skew_kl_head, _skew_kl_reference, ("alpha",)),
)}

LOSSES: tuple[str, ...] = tuple(SPECS)


def loss_spec(name: str) -> LossSpec:
    if name not in SPECS:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    return SPECS[name]


def check_params(params: dict[str, float]) -> None:
    """Every parameter must be a declared one, inside its range (all are checked, whichever loss uses them)."""
    for name, value in params.items():
        if name not in PARAMS:
            raise ValueError(f"unknown loss parameter {name!r}; declared: {tuple(PARAMS)}")
        PARAMS[name].check(name, value)
