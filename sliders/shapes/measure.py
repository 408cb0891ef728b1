"""Read a shapes-world image back into numbers: the shape's colour, kind, size and place.

Works on any RGB image (a PIL image or an H x W x 3 uint8 array) without knowing the scene, so
it can score rendered and generated images alike. It assumes one shape on a roughly plain
background whose colour shows along the image border. It does not render, caption or load models.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sliders.errors import InputError
from sliders.shapes.world import PALETTE

logger = logging.getLogger(__name__)

# RGB Euclidean distance (0..441) above which a pixel counts as "not background". It sits well above
# pixel noise (+-8 per channel is at most ~14 apart) and well below the weakest palette contrast
# (yellow is ~208 from the grey background), so anti-aliased edge pixels join the mask once about a
# quarter of them is covered.
DEFAULT_THRESHOLD: float = 48.0

# Fill of the shape within its bounding box: circle pi/4 ~ 0.785, square 1.0, triangle 0.5.
# The class boundaries are halfway between neighbours.
CIRCLE_MIN_FILL: float = (0.5 + math.pi / 4.0) / 2.0  # ~0.643: below is a triangle
SQUARE_MIN_FILL: float = (math.pi / 4.0 + 1.0) / 2.0  # ~0.893: above is a square

# Border distances above this percentile are treated as noise to subtract from coverage, so a
# noisy background does not add area or widen the box.
_NOISE_PERCENTILE: float = 95.0


@dataclass(frozen=True)
class Measurement:
    """What the pixels say about the one shape in an image.

    ``area``: fraction of the image the shape covers, 0..1. Edge pixels count by how much of them
    is covered (their colour distance from the background over the shape's own), so anti-aliasing
    neither adds nor loses area.
    ``size``: equal-area radius in pixels, ``sqrt(area_pixels / pi)``; same units as ``Scene.size``.
    ``colour``: nearest ``PALETTE`` name to the median colour of the shape's inner pixels, or
    ``"none"`` when nothing differs from the background.
    ``shape``: ``circle``/``square``/``triangle`` from ``fill_ratio`` (see the thresholds above), or
    ``"none"``.
    ``cx``, ``cy``: coverage-weighted centroid in pixels (pixel centres at +0.5); the image centre
    when the mask is empty.
    ``fill_ratio``: covered area over the area of its (coverage-weighted) bounding box, 0..1.
    """

    area: float
    size: float
    colour: str
    shape: str
    cx: float
    cy: float
    fill_ratio: float


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """The image as an H x W x 3 float array on the 0..255 scale."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 3 or arr.shape[1] < 3:
        raise InputError(
            f"image array has shape {arr.shape}; pass an H x W x 3 RGB array (H, W >= 3)"
        )
    if arr.dtype != np.uint8:
        raise InputError(f"image array has dtype {arr.dtype}; pass uint8 RGB values 0..255")
    return arr.astype(np.float64)


def _border(arr: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels as an N x C array (each pixel once)."""
    return np.concatenate([arr[0, :], arr[-1, :], arr[1:-1, 0], arr[1:-1, -1]], axis=0)


def estimate_background(image: Image.Image | np.ndarray) -> np.ndarray:
    """Per-channel median of the border pixels: the background colour, even if not exact grey."""
    return np.median(_border(_as_array(image)), axis=0)


def _distance(arr: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.sqrt(((arr - colour) ** 2).sum(axis=-1))


def shape_mask(image: Image.Image | np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """H x W bool: pixels more than ``threshold`` (RGB Euclidean distance) from the background.

    The background is the median of the border pixels, so a shifted or noisy grey still works.
    """
    arr = _as_array(image)
    return _distance(arr, np.median(_border(arr), axis=0)) > threshold


def _shifted_any(mask: np.ndarray) -> np.ndarray:
    """True where the pixel or any of its 8 neighbours is True (a 3x3 dilation)."""
    padded = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _eroded(mask: np.ndarray) -> np.ndarray:
    """True where the pixel and all 8 neighbours are True (a 3x3 erosion)."""
    return ~_shifted_any(~mask)


def _nearest_palette(rgb: np.ndarray) -> str:
    names = list(PALETTE)
    colours = np.asarray([PALETTE[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(_distance(colours, rgb)))]


def _classify(fill_ratio: float) -> str:
    if fill_ratio < CIRCLE_MIN_FILL:
        return "triangle"
    if fill_ratio < SQUARE_MIN_FILL:
        return "circle"
    return "square"


def measure(
    image: Image.Image | np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> Measurement:
    """Measure the one shape in ``image`` (see ``Measurement`` for what each number means)."""
    arr = _as_array(image)
    h, w = arr.shape[:2]
    border = _border(arr)
    background = np.median(border, axis=0)
    dist = _distance(arr, background)
    mask = dist > threshold
    if not mask.any():
        return Measurement(0.0, 0.0, "none", "none", w / 2.0, h / 2.0, 0.0)

    # Colour and full contrast from the inner pixels: edge pixels are part background and would
    # pull both towards grey. Tiny or thin masks have no inside; then use the whole mask.
    core = _eroded(mask)
    if not core.any():
        core = mask
    shape_rgb = np.median(arr[core], axis=0)
    full = float(np.median(dist[core]))

    # Coverage per pixel: distance from the background as a share of the shape's own distance,
    # exact for box-filtered edges. Only the mask and the ring just outside it count (the ring
    # holds the faint edge pixels below the threshold), and the border's noise level is taken off
    # first so noisy background adds nothing.
    noise = float(np.percentile(_distance(border, background), _NOISE_PERCENTILE))
    span = max(full - noise, 1e-6)
    coverage = np.where(_shifted_any(mask), np.clip((dist - noise) / span, 0.0, 1.0), 0.0)

    covered = float(coverage.sum())
    ys, xs = np.mgrid[0:h, 0:w]
    cx = float((coverage * (xs + 0.5)).sum() / covered)
    cy = float((coverage * (ys + 0.5)).sum() / covered)
    # Box sides as the sum of per-column (per-row) peak coverage: a partly covered outer column
    # adds only the part covered, so the box is sub-pixel exact and small shapes classify right.
    width = float(coverage.max(axis=0).sum())
    height = float(coverage.max(axis=1).sum())
    fill_ratio = min(covered / max(width * height, 1e-6), 1.0)

    return Measurement(
        area=covered / (h * w),
        size=math.sqrt(covered / math.pi),
        colour=_nearest_palette(shape_rgb),
        shape=_classify(fill_ratio),
        cx=cx,
        cy=cy,
        fill_ratio=fill_ratio,
    )


def outside_change(
    image_a: Image.Image | np.ndarray,
    image_b: Image.Image | np.ndarray,
    mask: np.ndarray,
) -> float:
    """Mean absolute difference (0..1 per channel) between two images over pixels outside ``mask``.

    Used to see how much the background or layout moved when only the shape should have changed.
    Returns 0.0 when the mask covers every pixel (nothing outside to compare).
    """
    a, b = _as_array(image_a), _as_array(image_b)
    if a.shape != b.shape:
        raise InputError(f"images differ in size ({a.shape} vs {b.shape}); compare equal sizes")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != a.shape[:2]:
        raise InputError(f"mask has shape {mask.shape}; it must be {a.shape[:2]} like the images")
    outside = ~mask
    if not outside.any():
        return 0.0
    return float(np.abs(a[outside] - b[outside]).mean() / 255.0)


def centroid_shift(m_a: Measurement, m_b: Measurement) -> float:
    """Distance in pixels between the centroids of two measurements."""
    return math.hypot(m_a.cx - m_b.cx, m_a.cy - m_b.cy)
