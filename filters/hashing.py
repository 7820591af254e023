"""Hashing primitives shared by the filters (MinHash shingles, decontamination n-grams)."""

from __future__ import annotations

import numpy as np


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: an avalanching bijection on uint64 (wraps modulo 2^64 by design)."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))
