"""What an evaluation reads from each image: the `Measurer` interface, the `MEASURERS` registry, measured rows.

A measurer is built with its options (`--measurer_arg key=value`), the run's device and the
sliders' recorded prompts (`Measurer.create`), and measures images in batches (`measure`,
`compare`). Each module of this package defines one measurer; `MEASURERS`, at the end of this
file, is the one table of them, by the name `--measurer` takes, so adding a measurer is one file
(`shapes.py` is the smallest) and one entry there, as `sliders.objectives.OBJECTIVES` lists the
objectives. Heavy libraries (transformers, lpips) are imported only when a measurer is built.

Also turns generated samples into measured rows (`measure_samples`), each compared with its
reference: the image with every slider at 0 for the same prompt and seed. It does not generate
images and does not aggregate rows (see `report`, `quality`).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import numpy as np

from ...errors import InputError
from ...generation import Sample

if TYPE_CHECKING:
    import torch
    from PIL import Image

# Images measured in one call when neither the measurer nor --measurer_arg batch_size says otherwise.
DEFAULT_BATCH_SIZE = 16
MAX_BATCH_SIZE = 4096


class Measurer(abc.ABC):
    """What an evaluation measures in each image, and how it compares the layout of two images.

    `numeric` names the attributes with float values, `categorical` those with text values
    (reported as the share equal to the reference image's). `target` is the numeric attribute a
    slider is meant to move (the `--target` default). A measurer that scores each image against a
    positive and a negative text names those attributes `positive_attribute` and
    `negative_attribute` (Conceptual Range reads them); `preservation` names the `structure` key
    Semantic Preservation averages. `options` maps each `--measurer_arg` key the measurer takes to
    its help text.
    """

    name: ClassVar[str] = ""
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    target: ClassVar[str | None] = None
    positive_attribute: str | None = None
    negative_attribute: str | None = None
    preservation: str | None = None
    options: ClassVar[Mapping[str, str]] = {"batch_size": f"images per call (default {DEFAULT_BATCH_SIZE})"}
    batch_size: int = DEFAULT_BATCH_SIZE

    @classmethod
    def create(
        cls,
        options: Mapping[str, str],
        *,
        device: "torch.device | str" = "cpu",
        slider_prompts: Sequence[Mapping[str, Any]] = (),
    ) -> "Measurer":
        """The measurer built from its `--measurer_arg` options (text values), on `device`.

        `slider_prompts` holds what each slider file records of its prompts (`slider_texts`), for
        measurers that score text. The base class takes only `batch_size`."""
        check_options(cls, options)
        measurer = cls()
        measurer.batch_size = parse_batch_size(options.get("batch_size", DEFAULT_BATCH_SIZE))
        return measurer

    @abc.abstractmethod
    def __call__(self, image: "Image.Image") -> dict[str, float | str]:
        """Every attribute of `numeric` and `categorical` for one image."""

    @abc.abstractmethod
    def structure(self, image_a: "Image.Image", image_b: "Image.Image") -> dict[str, float]:
        """How much the layout changed from `image_a` to `image_b` (0: not at all)."""

    def measure(self, images: Sequence["Image.Image"]) -> list[dict[str, float | str]]:
        """`__call__` of each image; a measurer with a model overrides this to run one batch."""
        return [self(image) for image in images]

    def compare(self, references: Sequence["Image.Image"], images: Sequence["Image.Image"]) -> list[dict[str, float]]:
        """`structure(reference, image)` of each pair; overridden to run one batch."""
        return [self.structure(reference, image) for reference, image in zip(references, images)]

    def describe(self) -> dict[str, Any]:
        """What the report records of this measurer's settings (model, texts, ...)."""
        return {}


def check_options(cls: type, options: Mapping[str, str]) -> None:
    """An InputError for a `--measurer_arg` key the measurer `cls` does not take, listing those it does."""
    known = getattr(cls, "options", {})
    for key in options:
        if key not in known:
            takes = ", ".join(sorted(known)) or "none"
            raise InputError(f"--measurer_arg {key}=...: measurer '{cls.name}' takes no option '{key}'; it takes {takes}")


def parse_batch_size(value: Any) -> int:
    """A whole number from 1 to MAX_BATCH_SIZE, from an option's text or a number."""
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if isinstance(value, bool) or not 1 <= number <= MAX_BATCH_SIZE or str(value).strip() != str(number):
        raise InputError(f"--measurer_arg batch_size={value}: give a whole number from 1 to {MAX_BATCH_SIZE}")
    return number


def parse_measurer_args(entries: Sequence[str] | None) -> dict[str, str]:
    """['model=openai/clip-vit-large-patch14', 'batch_size=8'] -> {'model': ..., 'batch_size': '8'}."""
    options: dict[str, str] = {}
    for entry in entries or ():
        if not isinstance(entry, str) or "=" not in entry:
            raise InputError(f"--measurer_arg {entry!r} is not key=value; write e.g. --measurer_arg batch_size=8")
        key, _, value = entry.partition("=")
        key = key.strip()
        if not key:
            raise InputError(f"--measurer_arg {entry!r} has no key before '='; write e.g. --measurer_arg batch_size=8")
        if key in options:
            raise InputError(f"--measurer_arg {key} is given twice; give each option once")
        options[key] = value.strip()
    return options


def measurer_class(name: Any) -> type[Measurer]:
    """The registered measurer class called `name`; an InputError naming the choices otherwise."""
    if not isinstance(name, str) or name not in MEASURERS:
        raise InputError(f"--measurer {name!r} is unknown; choose one of {', '.join(sorted(MEASURERS))}")
    return MEASURERS[name]


def is_measurer(value: Any) -> bool:
    """Whether `value` can serve as a measurer."""
    # Duck typing, so a measurer need not subclass Measurer to be plugged in.
    return all(hasattr(value, attr) for attr in ("numeric", "categorical", "structure")) and callable(value)


def get_measurer(measurer: "str | Measurer", options: Mapping[str, str] | None = None, **context: Any) -> Measurer:
    """A measurer instance from a registry name (built by `create` with `options` and `context`), or
    the instance given."""
    if isinstance(measurer, str):
        return measurer_class(measurer).create(dict(options or {}), **context)
    if is_measurer(measurer):
        if options:
            raise InputError("--measurer_arg is for a measurer named on the command line, not a measurer object")
        return measurer
    raise InputError(f"measurer {measurer!r} is neither a name ({', '.join(sorted(MEASURERS))}) nor a Measurer")


def measurer_name(measurer: Any) -> str:
    """The measurer's registry name, else its class name (for reports and messages)."""
    return getattr(measurer, "name", "") or type(measurer).__name__


def default_target(measurer: Any) -> str | None:
    """The attribute a measurer's report is about when --target is not given."""
    target = getattr(measurer, "target", None)
    return target if target is not None else next(iter(getattr(measurer, "numeric", ())), None)


def check_target(target: Any, numeric: Sequence[str], name: str) -> str:
    """`target` if it is one of the `numeric` attributes of the measurer called `name`, else an InputError."""
    if not isinstance(target, str) or target not in numeric:
        raise InputError(
            f"--target {target!r} is not a numeric attribute of measurer '{name}'; choose one of {', '.join(numeric)}"
        )
    return target


def slider_texts(metadata: Mapping[str, str]) -> dict[str, Any]:
    """What a slider file records of its prompts: {'positive': text, 'negative': text} where the
    positive multipliers move towards `positive`, or {} when it records none.

    A text slider records its prompt entries (`sliders_prompts`, a list): the first entry's
    `positive` and `unconditional`, swapped for `action: erase` (its target is pushed away from
    `positive`, SPEC 2). An image slider records one entry, whose `positive` prompt conditions
    the positive scales and `neutral` the negative ones (SPEC 3)."""
    import json

    try:
        record = json.loads(metadata.get("sliders_prompts", "null"))
    except (TypeError, ValueError):
        return {}
    if isinstance(record, list) and record and isinstance(record[0], Mapping):
        entry = record[0]
        positive, negative = str(entry.get("positive") or ""), str(entry.get("unconditional") or "")
        if entry.get("action") == "erase":
            positive, negative = negative, positive
        return {"positive": positive, "negative": negative, "entries": len(record)}
    if isinstance(record, Mapping) and isinstance(record.get("entry"), Mapping):
        entry = record["entry"]
        return {"positive": str(entry.get("positive") or ""), "negative": str(entry.get("neutral") or ""), "entries": 1}
    return {}


def is_reference(multipliers: Sequence[float]) -> bool:
    """Whether every slider is at 0: the reference image of its prompt and seed."""
    return all(float(m) == 0.0 for m in multipliers)


def pair_key(row_or_sample: Any) -> tuple[int, int]:
    """(prompt index, seed) of a measured row or a sample: which reference it is compared with."""
    if isinstance(row_or_sample, Mapping):
        return int(row_or_sample["prompt_index"]), int(row_or_sample["seed"])
    return row_or_sample.prompt_index, row_or_sample.seed


def _checked(measurer: Any, raw: Mapping[str, Any]) -> dict[str, float | str]:
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


def _batches(measurer: Any, count: int) -> list[slice]:
    size = max(1, int(getattr(measurer, "batch_size", 1) or 1))
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def measure_images(measurer: Any, images: Sequence["Image.Image"]) -> list[dict[str, float | str]]:
    """Every image's checked values, `batch_size` images per call (one at a time for a duck-typed measurer)."""
    many = getattr(measurer, "measure", None)
    raw: list[Mapping[str, Any]] = []
    for part in _batches(measurer, len(images)):
        chunk = list(images[part])
        got = many(chunk) if many is not None else [measurer(image) for image in chunk]
        if len(got) != len(chunk):
            raise ValueError(f"measurer '{measurer_name(measurer)}' gave {len(got)} results for {len(chunk)} images")
        raw += got
    return [_checked(measurer, values) for values in raw]


def compare_images(measurer: Any, references: Sequence["Image.Image"], images: Sequence["Image.Image"]) -> list[dict]:
    """`structure(reference, image)` of each pair, `batch_size` pairs per call."""
    many = getattr(measurer, "compare", None)
    out: list[dict] = []
    for part in _batches(measurer, len(images)):
        refs, chunk = list(references[part]), list(images[part])
        got = many(refs, chunk) if many is not None else [measurer.structure(a, b) for a, b in zip(refs, chunk)]
        out += [{key: float(value) for key, value in structure.items()} for structure in got]
    return out


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
    Images are measured in batches of the measurer's `batch_size`.
    """
    if references is None:
        references = {pair_key(s): s.image for s in samples if is_reference(s.multipliers)}
    chosen = []
    for sample in samples:
        reference = references.get(pair_key(sample))
        if reference is None:
            raise ValueError(
                f"no reference image (every multiplier 0) for prompt {sample.prompt_index} seed {sample.seed}"
            )
        chosen.append(reference)
    images = [sample.image for sample in samples]
    values = measure_images(measurer, images)
    structures = compare_images(measurer, chosen, images)
    return [
        {
            "kind": kind,
            "prompt_index": sample.prompt_index,
            "prompt": sample.prompt,
            "seed": sample.seed,
            "multipliers": [float(m) for m in sample.multipliers],
            "values": value,
            "structure": structure,
        }
        for sample, value, structure in zip(samples, values, structures)
    ]


# Last, so that every name above is there for the measurer modules to import.
from .clip import ClipMeasurer  # noqa: E402
from .shapes import ShapesMeasurer  # noqa: E402

# Every measurer, by its `name` (what `--measurer` takes). A new one: a module of this package with
# a `Measurer` subclass, imported above and listed here.
MEASURERS: dict[str, type[Measurer]] = {measurer.name: measurer for measurer in (ClipMeasurer, ShapesMeasurer)}

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MEASURERS",
    "ClipMeasurer",
    "Measurer",
    "ShapesMeasurer",
    "check_target",
    "default_target",
    "get_measurer",
    "is_measurer",
    "is_reference",
    "measure_samples",
    "measurer_class",
    "measurer_name",
    "pair_key",
    "parse_measurer_args",
    "slider_texts",
]
