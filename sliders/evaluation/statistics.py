"""The statistics of an evaluation: rank correlation, least-squares line, and the mean/std/min/max of values.

Thin wrappers over `scipy.stats` that fix what an evaluation needs and scipy leaves open: pairs
with a non-finite value are dropped, and an undefined result (constant or too few values) is a
number the report can average (Spearman 0) or show as missing (NaN), never a warning or an error.
Nothing here knows about images, measurers or reports.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of the ranks they span ([10, 20, 20] -> [1, 2.5, 2.5])."""
    return stats.rankdata(np.asarray(values, dtype=np.float64), method="average")


def _finite_pairs(x: Sequence[float], y: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"{what} needs two equal-length 1-D sequences, got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def _constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation with average ranks for ties.

    Pairs with a non-finite value are dropped. When either side is constant (or fewer than two
    pairs remain) there is no ordering to agree with, and the result is 0 rather than NaN, so
    averages over prompt x seed pairs stay defined.
    """
    a, b = _finite_pairs(x, y, "spearman")
    # Checked here: scipy would warn and return NaN.
    if len(a) < 2 or _constant(a) or _constant(b):
        return 0.0
    # Clipped: the correlation of two rankings in the same order can come out a rounding above 1.
    return float(np.clip(stats.spearmanr(a, b).statistic, -1.0, 1.0))


def linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line y = intercept + slope * x.

    Non-finite pairs are dropped; (nan, nan) when x has fewer than two distinct values.
    """
    a, b = _finite_pairs(x, y, "linear_fit")
    # Checked here: scipy raises for an x without spread.
    if len(a) < 2 or _constant(a):
        return math.nan, math.nan
    fit = stats.linregress(a, b)
    return float(fit.slope), float(fit.intercept)


def describe(values: Sequence[float]) -> dict[str, float]:
    """Mean, std, min and max of the finite values (all NaN when there is none)."""
    # Population std (ddof 0): these describe the images generated, not an estimate for more.
    v = np.asarray([value for value in values if math.isfinite(value)], dtype=np.float64)
    if not len(v):
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
