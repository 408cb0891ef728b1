"""The shapes world: scenes of one filled shape on a plain background, their captions and renders.

A scene is one circle, square or triangle in one of four palette colours, at some size and place,
on a light grey background. Everything about it can be read back exactly from the pixels
(see ``sliders.shapes.measure``), which is what makes it useful for checking a slider.

Coordinates are continuous pixel units: pixel (row i, column j) covers [j, j+1) x [i, i+1), so its
centre is at (j + 0.5, i + 0.5) and the image centre of a 64 px image is (32, 32).

Size is the *equal-area radius*: every shape of size ``s`` covers ``pi * s**2`` pixels, whatever its
kind. That keeps "small/medium/large" comparable across shapes and lets the measurement recover
size from area alone, without first having to get the shape right.

This module draws and describes scenes; it does not measure images and knows nothing of models.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sliders.errors import InputError

logger = logging.getLogger(__name__)

# Saturated and far apart in RGB (every pair is > 150 apart, every colour > 200 from the
# background), so the nearest-palette colour of a shape is never in doubt.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
BACKGROUND: tuple[int, int, int] = (235, 235, 235)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZE_WORDS: tuple[str, ...] = ("small", "medium", "large")

# Equal-area radius as a fraction of the resolution, split into three equal bins (one per word).
# The upper end is set so the largest triangle (the shape with the biggest extent for its area)
# still fits with the margin.
SIZE_RANGE: tuple[float, float] = (0.10, 0.34)

# Every shape keeps at least this many pixels between its bounding box and the image edge, so the
# border of the image is pure background (measurement estimates the background from it).
MARGIN_PX: float = 2.0

# Sub-samples per pixel edge: 4x4 samples give 17 coverage levels, enough for smooth edges.
SUPERSAMPLE: int = 4

# Half-extent factors relative to the equal-area radius: a square of half-side a has area 4a^2,
# so a = s*sqrt(pi)/2; the triangle has base = height = 2h and area 2h^2, so h = s*sqrt(pi/2).
_SQUARE_HALF = math.sqrt(math.pi) / 2.0
_TRIANGLE_HALF = math.sqrt(math.pi / 2.0)


@dataclass(frozen=True)
class Scene:
    """One shape on the background.

    ``size`` is the equal-area radius in pixels (circle: its radius; square: half-side
    ``size*sqrt(pi)/2``; triangle: half-base = half-height ``size*sqrt(pi/2)``).
    ``(cx, cy)`` is the shape's centroid in pixels, which for the triangle sits a third of the
    height above its base, so a measured mask centroid lands on it for every shape.
    """

    shape: str
    colour: str
    size: float
    cx: float
    cy: float
    resolution: int = 64

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise InputError(f"shape {self.shape!r} is not known; use one of {', '.join(SHAPES)}")
        if self.colour not in PALETTE:
            raise InputError(
                f"colour {self.colour!r} is not known; use one of {', '.join(PALETTE)}"
            )
        if not self.size > 0:
            raise InputError(f"size {self.size!r} must be a positive number of pixels")
        if int(self.resolution) != self.resolution or self.resolution < 8:
            raise InputError(f"resolution {self.resolution!r} must be an integer of at least 8")


def _extents(shape: str, size: float) -> tuple[float, float, float, float]:
    """Distances from the centroid to the left, top, right and bottom of the shape's box."""
    if shape == "circle":
        return size, size, size, size
    if shape == "square":
        a = size * _SQUARE_HALF
        return a, a, a, a
    h = size * _TRIANGLE_HALF
    # Apex up: the centroid is 2/3 of the height below the apex, 1/3 above the base.
    return h, 4.0 * h / 3.0, h, 2.0 * h / 3.0


def shape_bounds(scene: Scene) -> tuple[float, float, float, float]:
    """The shape's bounding box ``(x0, y0, x1, y1)`` in pixels."""
    left, top, right, bottom = _extents(scene.shape, scene.size)
    return scene.cx - left, scene.cy - top, scene.cx + right, scene.cy + bottom


def size_bounds(word: str, resolution: int) -> tuple[float, float]:
    """The ``(low, high)`` equal-area radius in pixels that ``word`` covers at ``resolution``."""
    if word not in SIZE_WORDS:
        raise InputError(f"size word {word!r} is not known; use one of {', '.join(SIZE_WORDS)}")
    lo, hi = SIZE_RANGE
    step = (hi - lo) / len(SIZE_WORDS)
    k = SIZE_WORDS.index(word)
    return (lo + k * step) * resolution, (lo + (k + 1) * step) * resolution


def size_word(scene_or_size: Scene | float, resolution: int | None = None) -> str:
    """The size word for a scene, or for an equal-area radius in pixels at ``resolution``.

    Sizes outside ``SIZE_RANGE`` go to the nearest end bin, so a measured size from any image
    (say a generated one) still gets a word.
    """
    if isinstance(scene_or_size, Scene):
        size = scene_or_size.size
        resolution = scene_or_size.resolution if resolution is None else resolution
    else:
        size = float(scene_or_size)
        if resolution is None:
            raise InputError("size_word needs the resolution when given a bare size; pass it")
    lo, hi = SIZE_RANGE
    frac = (size / resolution - lo) / (hi - lo)
    k = int(math.floor(frac * len(SIZE_WORDS)))
    return SIZE_WORDS[min(max(k, 0), len(SIZE_WORDS) - 1)]


def caption(scene: Scene) -> str:
    """The scene in words, e.g. ``"a small red circle"``."""
    return f"a {size_word(scene)} {scene.colour} {scene.shape}"


def _pick(rng: np.random.Generator, options: tuple[str, ...], fixed: str | None, what: str) -> str:
    # Always draw, even when fixed, so fixing one attribute leaves the others' draws unchanged:
    # the same seed then gives the same scene apart from the fixed attribute.
    drawn = options[int(rng.integers(len(options)))]
    if fixed is None:
        return drawn
    if fixed not in options:
        raise InputError(f"{what} {fixed!r} is not known; use one of {', '.join(options)}")
    return fixed


def random_scene(
    rng: np.random.Generator,
    resolution: int = 64,
    shape: str | None = None,
    colour: str | None = None,
    size_word: str | None = None,  # noqa: A002 - the caption word, named as callers think of it
) -> Scene:
    """A scene with random attributes; any of shape, colour and size word can be fixed.

    The size is uniform within its word's bin and the centroid uniform over the places where the
    whole shape stays at least ``MARGIN_PX`` inside the image.
    """
    shape = _pick(rng, SHAPES, shape, "shape")
    colour = _pick(rng, tuple(PALETTE), colour, "colour")
    word = _pick(rng, SIZE_WORDS, size_word, "size word")
    u_size, u_x, u_y = rng.random(3)
    lo, hi = size_bounds(word, resolution)
    size = lo + u_size * (hi - lo)
    left, top, right, bottom = _extents(shape, size)
    x_lo, x_hi = MARGIN_PX + left, resolution - MARGIN_PX - right
    y_lo, y_hi = MARGIN_PX + top, resolution - MARGIN_PX - bottom
    if x_hi < x_lo or y_hi < y_lo:
        raise InputError(
            f"a {word} {shape} does not fit in {resolution} px; use a larger resolution"
        )
    return Scene(
        shape=shape,
        colour=colour,
        size=float(size),
        cx=float(x_lo + u_x * (x_hi - x_lo)),
        cy=float(y_lo + u_y * (y_hi - y_lo)),
        resolution=int(resolution),
    )


def _inside(scene: Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether each point (broadcast x against y) lies inside the scene's shape."""
    dx, dy = x - scene.cx, y - scene.cy
    if scene.shape == "circle":
        return dx * dx + dy * dy <= scene.size * scene.size
    if scene.shape == "square":
        a = scene.size * _SQUARE_HALF
        return (np.abs(dx) <= a) & (np.abs(dy) <= a)
    h = scene.size * _TRIANGLE_HALF
    down = dy + 4.0 * h / 3.0  # distance below the apex
    # The sides run from the apex to (+-h, 2h below it): half-width grows by 1/2 per unit down.
    return (down >= 0) & (dy <= 2.0 * h / 3.0) & (np.abs(dx) <= down / 2.0)


def render(scene: Scene, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """The scene as an RGB image of ``resolution`` x ``resolution`` pixels (on ``background``: other
    than the world's grey only for out-of-distribution inputs, ``styled``).

    The shape is sampled at 4x4 points per pixel and box-downsampled, so each edge pixel is the
    exact mix of shape and background by the fraction covered: no ringing (unlike Lanczos), which
    keeps colour distance proportional to coverage for the measurement. Same scene, same bytes.
    """
    n = scene.resolution * SUPERSAMPLE
    centres = (np.arange(n, dtype=np.float64) + 0.5) / SUPERSAMPLE
    inside = _inside(scene, centres[None, :], centres[:, None])
    fine = np.where(
        inside[:, :, None],
        np.asarray(PALETTE[scene.colour], dtype=np.uint8),
        np.asarray(background, dtype=np.uint8),
    ).astype(np.uint8)
    image = Image.fromarray(fine)
    return image.resize((scene.resolution, scene.resolution), Image.Resampling.BOX)


def render_dataset(
    n: int, seed: int, resolution: int = 64, size_word: str | None = None  # noqa: A002 - as in random_scene
) -> list[tuple[Image.Image, Scene, str]]:
    """``n`` random scenes from ``seed``, each as ``(image, scene, caption)``; ``size_word`` fixes
    every scene's size bin (e.g. "medium", to edit them both ways)."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        scene = random_scene(rng, resolution=resolution, size_word=size_word)
        items.append((render(scene), scene, caption(scene)))
    logger.debug("rendered %d shapes-world scenes at %d px from seed %d", n, resolution, seed)
    return items


# Out-of-distribution renders: what the model never saw in training, for measuring real-image edits
# on inputs unlike the training data. Each keeps one shape whose colour, kind and size can still be
# read from the pixels (the measurement estimates the background from the border).
SCENE_STYLES: tuple[str, ...] = ("dark", "tinted", "noise", "blur", "edge")
DARK_BACKGROUND = (120, 120, 120)
TINTED_BACKGROUND = (225, 205, 170)
NOISE_STD = 12.0  # grey levels
BLUR_RADIUS = 1.2  # px, Gaussian


def styled(scene: Scene, style: str, rng: np.random.Generator) -> tuple[Image.Image, Scene]:
    """The scene drawn in an out-of-distribution `style` (one of ``SCENE_STYLES``), and the scene as
    drawn: ``dark``/``tinted`` backgrounds, sensor-like Gaussian ``noise``, a ``blur``red render, or
    the shape pushed against the left ``edge`` (inside the margin the world keeps)."""
    from PIL import ImageFilter

    if style not in SCENE_STYLES:
        raise InputError(f"scene style {style!r} is unknown; choose one of {', '.join(SCENE_STYLES)}")
    if style == "edge":
        left = _extents(scene.shape, scene.size)[0]
        scene = Scene(scene.shape, scene.colour, scene.size, left + 0.5, scene.cy, scene.resolution)
    background = {"dark": DARK_BACKGROUND, "tinted": TINTED_BACKGROUND}.get(style, BACKGROUND)
    image = render(scene, background)
    if style == "noise":
        pixels = np.asarray(image, dtype=np.float64) + rng.normal(0.0, NOISE_STD, (scene.resolution, scene.resolution, 3))
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    if style == "blur":
        image = image.filter(ImageFilter.GaussianBlur(BLUR_RADIUS))
    return image, scene
