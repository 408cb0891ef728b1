"""The shapes world: synthetic one-shape images whose every concept can be measured from pixels.

``world`` draws scenes and captions them; ``measure`` reads shape, colour, size and place back
from any RGB image. Pure numpy and Pillow; nothing runs at import time.
"""

from sliders.shapes.measure import (
    DEFAULT_THRESHOLD,
    Measurement,
    centroid_shift,
    estimate_background,
    measure,
    outside_change,
    shape_mask,
)
from sliders.shapes.world import (
    BACKGROUND,
    MARGIN_PX,
    PALETTE,
    SHAPES,
    SIZE_RANGE,
    SIZE_WORDS,
    Scene,
    caption,
    random_scene,
    render,
    render_dataset,
    shape_bounds,
    size_bounds,
    size_word,
)

__all__ = [
    "BACKGROUND",
    "DEFAULT_THRESHOLD",
    "MARGIN_PX",
    "PALETTE",
    "SHAPES",
    "SIZE_RANGE",
    "SIZE_WORDS",
    "Measurement",
    "Scene",
    "caption",
    "centroid_shift",
    "estimate_background",
    "measure",
    "outside_change",
    "random_scene",
    "render",
    "render_dataset",
    "shape_bounds",
    "shape_mask",
    "size_bounds",
    "size_word",
]
