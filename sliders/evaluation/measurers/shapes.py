"""The shapes world read back from pixels (`sliders.shapes.measure`): size, place, colour, kind.

The smallest measurer: no model, no options beyond the batch size; it exists only for the
built-in shapes models, where every attribute is known exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ...shapes.measure import centroid_shift, measure, outside_change, shape_mask
from . import Measurer

if TYPE_CHECKING:
    from PIL import Image


class ShapesMeasurer(Measurer):
    """Size, area, centre and fill of the one shape, its colour and kind.

    Structure: `centroid_shift` (pixels the shape's centre moved) and `outside_change` (mean
    absolute pixel change, 0..1, outside both images' shapes: the background and anything else).
    """

    name: ClassVar[str] = "shapes"
    numeric = ("size", "area", "cx", "cy", "fill_ratio")
    categorical = ("colour", "shape")
    target: ClassVar[str] = "size"
    preservation = "outside_change"

    def __call__(self, image: "Image.Image") -> dict[str, float | str]:
        m = measure(image)
        return {"size": m.size, "area": m.area, "cx": m.cx, "cy": m.cy, "fill_ratio": m.fill_ratio,
                "colour": m.colour, "shape": m.shape}

    def structure(self, image_a: "Image.Image", image_b: "Image.Image") -> dict[str, float]:
        # Outside the union of both shapes, so a shape that only grows or shrinks counts as no change.
        mask = shape_mask(image_a) | shape_mask(image_b)
        return {
            "centroid_shift": centroid_shift(measure(image_a), measure(image_b)),
            "outside_change": outside_change(image_a, image_b, mask),
        }
