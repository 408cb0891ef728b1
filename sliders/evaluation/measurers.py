"""What an evaluation reads from each image: the `Measurer` interface, `ShapesMeasurer`, the `MEASURERS` registry.

Also turns generated samples into measured rows (`measure_samples`), each compared with its
reference: the image with every slider at 0 for the same prompt and seed. It does not generate
images and does not aggregate rows (see `report`).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..sampling import Sample
from ..shapes.measure import centroid_shift, measure, outside_change, shape_mask

if TYPE_CHECKING:
    from PIL import Image


class Measurer(abc.ABC):
    """What an evaluation measures in each image, and how it compares the layout of two images.

    `numeric` names the attributes with float values (one of them is the slider's target),
    `categorical` those with text values (reported as the share equal to the reference image's).
    Subclasses take no constructor arguments, so the registry can build them by name.
    """

    name: str = ""
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()

    @abc.abstractmethod
    def __call__(self, image: "Image.Image") -> dict[str, float | str]:
        """Every attribute of `numeric` and `categorical` for one image."""

    @abc.abstractmethod
    def structure(self, image_a: "Image.Image", image_b: "Image.Image") -> dict[str, float]:
        """How much the layout changed from `image_a` to `image_b` (0: not at all)."""


class ShapesMeasurer(Measurer):
    """The shapes world read back from pixels (`sliders.shapes.measure`): size, place, colour, kind.

    Structure: `centroid_shift` (pixels the shape's centre moved) and `outside_change` (mean
    absolute pixel change, 0..1, outside both images' shapes: the background and anything else).
    """

    name = "shapes"
    numeric = ("size", "area", "cx", "cy", "fill_ratio")
    categorical = ("colour", "shape")

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


MEASURERS: dict[str, type[Measurer]] = {"shapes": ShapesMeasurer}


def measurer_class(name: Any) -> type[Measurer]:
    """The registered measurer class called `name`; an InputError naming the choices otherwise."""
    if not isinstance(name, str) or name not in MEASURERS:
        raise InputError(f"--measurer {name!r} is unknown; choose one of {', '.join(sorted(MEASURERS))}")
    return MEASURERS[name]


def is_measurer(value: Any) -> bool:
    """Whether `value` can serve as a measurer."""
    # Duck typing, so a measurer need not subclass Measurer to be plugged in.
    return all(hasattr(value, attr) for attr in ("numeric", "categorical", "structure")) and callable(value)


def get_measurer(measurer: "str | Measurer") -> Measurer:
    """A measurer instance from a registry name, or the instance given."""
    if isinstance(measurer, str):
        return measurer_class(measurer)()
    if is_measurer(measurer):
        return measurer
    raise InputError(f"measurer {measurer!r} is neither a name ({', '.join(sorted(MEASURERS))}) nor a Measurer")


def measurer_name(measurer: Any) -> str:
    """The measurer's registry name, else its class name (for reports and messages)."""
    return getattr(measurer, "name", "") or type(measurer).__name__


def check_target(target: Any, numeric: Sequence[str], name: str) -> str:
    """`target` if it is one of the `numeric` attributes of the measurer called `name`, else an InputError."""
    if not isinstance(target, str) or target not in numeric:
        raise InputError(
            f"--target {target!r} is not a numeric attribute of measurer '{name}'; choose one of {', '.join(numeric)}"
        )
    return target


def is_reference(multipliers: Sequence[float]) -> bool:
    """Whether every slider is at 0: the reference image of its prompt and seed."""
    return all(float(m) == 0.0 for m in multipliers)


def pair_key(row_or_sample: Any) -> tuple[int, int]:
    """(prompt index, seed) of a measured row or a sample: which reference it is compared with."""
    if isinstance(row_or_sample, Mapping):
        return int(row_or_sample["prompt_index"]), int(row_or_sample["seed"])
    return row_or_sample.prompt_index, row_or_sample.seed


def _values(measurer: Any, image: "Image.Image") -> dict[str, float | str]:
    raw = measurer(image)
    values: dict[str, float | str] = {}
    for attr in measurer.numeric:
        value = raw.get(attr)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"measurer '{measurer_name(measurer)}' gave {attr}={value!r}; it must be a number")
        values[attr] = float(value)
    for attr in measurer.categorical:
        if attr not in raw:
            raise ValueError(f"measurer '{measurer_name(measurer)}' gave no value for '{attr}'")
        values[attr] = str(raw[attr])
    return values


def measure_samples(
    samples: Sequence[Sample],
    measurer: Measurer,
    *,
    kind: str = "slider",
    references: Mapping[tuple[int, int], "Image.Image"] | None = None,
) -> list[dict]:
    """One row per sample: where it came from, every measured value, and its structure vs the reference.

    The reference of a sample is the image with every multiplier 0 for the same prompt index and
    seed: taken from `references` when given, else from `samples` themselves. Row keys: kind
    ("slider" or "baseline"), prompt_index, prompt, seed, multipliers, values, structure.
    """
    if references is None:
        references = {pair_key(s): s.image for s in samples if is_reference(s.multipliers)}
    rows = []
    for sample in samples:
        reference = references.get(pair_key(sample))
        if reference is None:
            raise ValueError(
                f"no reference image (every multiplier 0) for prompt {sample.prompt_index} seed {sample.seed}"
            )
        rows.append(
            {
                "kind": kind,
                "prompt_index": sample.prompt_index,
                "prompt": sample.prompt,
                "seed": sample.seed,
                "multipliers": [float(m) for m in sample.multipliers],
                "values": _values(measurer, sample.image),
                "structure": {key: float(value) for key, value in measurer.structure(reference, sample.image).items()},
            }
        )
    return rows
