"""Slider-quality figures of the literature, from measured rows: range, smoothness, monotonicity, preservation.

For each slider and each prompt x seed pair, the series is that slider's images with every other
slider at 0, in order of its multiplier m_1 < ... < m_K (the reference, m = 0, included). With the
target attribute a, a positive-text score P and a negative-text score N (a measurer's
`positive_attribute` and `negative_attribute`, e.g. CLIP scores):

- Conceptual Range (CR): ((P(m_K) - P(m_1)) + (N(m_1) - N(m_K))) / 2, the alignment gained
  towards each text between the two ends, averaged over the two directions; for a measurer
  without a text pair, a(m_K) - a(m_1). Higher: the slider reaches further.
- Conceptual Smoothness (CSM): the standard deviation (population) of the per-unit steps
  (a(m_k+1) - a(m_k)) / (m_k+1 - m_k) over the K - 1 consecutive steps; undefined below 3 scales.
  Lower: the attribute moves by even steps. 0 for a perfectly linear series, and for a constant one.
- Monotone: every step above 0 (a rises strictly with the multiplier); the monotone share is the
  share of pairs whose series is monotone. A constant series is not monotone.
- Semantic Preservation (SP): the mean, over the slider's non-reference images, of the measurer's
  `preservation` structure figure against the reference image (LPIPS for CLIP). Lower: less of
  the image changed.

These follow FreeSliders ("FreeSliders: Training-Free, Modality-Agnostic Concept Sliders ...",
arXiv 2511.00103), which names the three properties and
measures range and smoothness on CLIP (CLAP for audio) alignment and preservation by LPIPS (LPAPS);
the formulas here are this package's statement of them (see docs/metrics.md). Each figure is the
mean over prompt x seed pairs. Nothing here reads images or draws.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from .measurers import is_reference, pair_key
from .statistics import describe


def _series(multipliers: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(multipliers, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if m.shape != v.shape or m.ndim != 1:
        raise ValueError(f"a series needs equal-length 1-D multipliers and values, got {m.shape} and {v.shape}")
    if len(np.unique(m)) != len(m):
        raise ValueError("a series has one value per multiplier; average repeated multipliers first")
    order = np.argsort(m)
    return m[order], v[order]


def steps(multipliers: Sequence[float], values: Sequence[float]) -> np.ndarray:
    """Per-unit changes between consecutive multipliers, in multiplier order."""
    m, v = _series(multipliers, values)
    return np.diff(v) / np.diff(m)


def conceptual_range(multipliers: Sequence[float], positive: Sequence[float],
                     negative: Sequence[float] | None = None) -> float:
    """CR of one series: the text-pair form when `negative` is given, else the target's end-to-end change."""
    m, p = _series(multipliers, positive)
    if len(m) < 2:
        return math.nan
    gained = p[-1] - p[0]
    if negative is None:
        return float(gained)
    _, n = _series(multipliers, negative)
    return float((gained + (n[0] - n[-1])) / 2)


def conceptual_smoothness(multipliers: Sequence[float], values: Sequence[float]) -> float:
    """CSM of one series: the spread of its per-unit steps (NaN with fewer than two steps)."""
    rates = steps(multipliers, values)
    return float(np.std(rates)) if len(rates) >= 2 else math.nan


def is_monotone(multipliers: Sequence[float], values: Sequence[float]) -> bool:
    """Whether the values rise strictly with the multiplier (False for fewer than two points)."""
    rates = steps(multipliers, values)
    return bool(len(rates) >= 1 and np.all(rates > 0))


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _alone(row: Mapping, j: int) -> bool:
    """Whether every slider but `j` is at 0 in `row` (the slice through the reference)."""
    return all(float(m) == 0.0 for k, m in enumerate(row["multipliers"]) if k != j)


def slider_quality(
    rows: Sequence[Mapping],
    j: int,
    *,
    target: str,
    numeric: Sequence[str],
    positive: str | None = None,
    negative: str | None = None,
    preservation: str | None = None,
) -> dict[str, Any]:
    """The quality figures of slider `j` over slider rows (as `measure_samples` makes them).

    Returns range, smoothness, monotone_share, preservation (None when undefined), pairs (series
    with at least two multipliers), scales, and per multiplier the mean of every numeric attribute,
    its mean change against the reference, and the mean of every structure figure (`curves`)."""
    groups: dict[tuple[int, int], dict[float, Mapping]] = {}
    for row in rows:
        if row.get("kind", "slider") == "slider" and _alone(row, j):
            groups.setdefault(pair_key(row), {})[float(row["multipliers"][j])] = row
    ranges, smooth, monotone = [], [], []
    for series in groups.values():
        if len(series) < 2:
            continue
        m = sorted(series)
        a = [float(series[x]["values"][target]) for x in m]
        if positive and negative:
            ranges.append(conceptual_range(m, [float(series[x]["values"][positive]) for x in m],
                                           [float(series[x]["values"][negative]) for x in m]))
        else:
            ranges.append(conceptual_range(m, a))
        smooth.append(conceptual_smoothness(m, a))
        monotone.append(is_monotone(m, a))

    structure_keys = list(dict.fromkeys(key for series in groups.values() for row in series.values()
                                        for key in row.get("structure", {})))
    curves = []
    for x in sorted({x for series in groups.values() for x in series}):
        chosen = [(series[x], series.get(0.0)) for series in groups.values() if x in series]
        curves.append({
            "multiplier": x,
            "n": len(chosen),
            "values": {attr: describe([float(r["values"][attr]) for r, _ in chosen])["mean"] for attr in numeric},
            "change": {attr: _mean([float(r["values"][attr]) - float(ref["values"][attr])
                                    for r, ref in chosen if ref is not None]) for attr in numeric},
            "structure": {key: _mean([float(r["structure"][key]) for r, _ in chosen if key in r.get("structure", {})])
                          for key in structure_keys},
        })
    changed = [row for series in groups.values() for x, row in series.items() if x != 0.0]
    preserved = _mean([float(r["structure"][preservation]) for r in changed
                       if preservation and preservation in r.get("structure", {})])
    return {
        "pairs": len(monotone),
        "range": _mean(ranges),
        "range_kind": "text pair" if positive and negative else "target",
        "smoothness": _mean(smooth),
        "monotone_share": float(np.mean(monotone)) if monotone else math.nan,
        "monotone_pairs": int(sum(monotone)),
        "preservation": preserved,
        "preservation_key": preservation,
        "curves": curves,
    }


def quality(
    rows: Sequence[Mapping],
    *,
    slider_names: Sequence[str],
    target: str,
    numeric: Sequence[str],
    positive: str | None = None,
    negative: str | None = None,
    preservation: str | None = None,
) -> dict[str, Any]:
    """Every slider's quality figures (`slider_quality`), and the baseline's side of the comparison:
    the mean change of every numeric attribute against the reference and its preservation figure."""
    sliders = [
        {"name": name, **slider_quality(rows, j, target=target, numeric=numeric, positive=positive,
                                         negative=negative, preservation=preservation)}
        for j, name in enumerate(slider_names)
    ]
    references = {pair_key(r): r for r in rows if r.get("kind", "slider") == "slider" and is_reference(r["multipliers"])}
    baseline_rows = [r for r in rows if r.get("kind") == "baseline" and pair_key(r) in references]
    baseline = None
    if baseline_rows:
        baseline = {
            "n": len(baseline_rows),
            "change": {attr: _mean([float(r["values"][attr]) - float(references[pair_key(r)]["values"][attr])
                                    for r in baseline_rows]) for attr in numeric},
            "preservation": _mean([float(r["structure"][preservation]) for r in baseline_rows
                                   if preservation and preservation in r.get("structure", {})]),
        }
    return {
        "target": target,
        "positive_attribute": positive,
        "negative_attribute": negative,
        "preservation_key": preservation,
        "sliders": sliders,
        "baseline": baseline,
    }
