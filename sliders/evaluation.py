"""Measuring sliders the way the paper does: attribute change per scale, structure kept, prompt editing.

Holds the pluggable measurement (`Measurer`, `ShapesMeasurer`, the `MEASURERS` registry), the
statistics (average ranks, Spearman, least-squares slope), the aggregation of measured rows into a
report (`summarise`, usable without any diffusion model), `evaluate`, which generates and measures,
`write_report` (JSON, Markdown table and a PIL-drawn plot, all written atomically) and
`run_evaluation`, which validates every input before loading the base model and sliders (through
`sampling.plan_run` and `sampling.loaded`, shared with `run_sampling`, plus its own checks). It
also parses the seed ranges and prompt files the `sliders-eval` command takes. It does not define the
command line itself (see `cli`), does not train, and generates only through `sampling.generate`.

The reference image for a prompt and seed is the one with every slider at 0. When 0 is not in every
scale list, that image is generated separately (same prompt, seed and settings) rather than
required, and it then also appears as its own row in the report.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from . import __version__
from .distributed import Processes
from .distributed import start as start_processes
from .errors import InputError, OutputError
from .files import atomic_path
# Looked up here at call time and handed to `sampling.loaded`, so it can be replaced in this module.
from .models import load_pipeline
from .network import SliderNetwork
from .sampling import (
    GRID_NAME,
    Sample,
    SliderSpec,
    check_prompts,
    check_scales,
    owned_output,
    check_seeds,
    combination_label,
    drawable,
    generate,
    image_name,
    kept_on_interrupt,
    loaded,
    make_grid,
    parse_slider_arg,
    plan_run,
    write_kept,
    write_png,
)
from .shapes.measure import centroid_shift, measure, outside_change, shape_mask

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PLOT = "plot.png"
BASELINE_GRID_NAME = "baseline_grid.png"
IMAGES_FOLDER = "images"

# A range such as 0-99999999 would otherwise build a huge list before anything else is checked.
MAX_SEEDS = 100_000

# The plot, in pixels: the right margin holds the legend.
PLOT_SIZE = (720, 440)
PLOT_LEFT, PLOT_TOP, PLOT_RIGHT, PLOT_BOTTOM = 80, 40, 180, 60
SERIES_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75))


# --------------------------------------------------------------------------------------------------
# Measurers
# --------------------------------------------------------------------------------------------------


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


def _measurer_class(name: Any) -> type[Measurer]:
    if not isinstance(name, str) or name not in MEASURERS:
        raise InputError(f"--measurer {name!r} is unknown; choose one of {', '.join(sorted(MEASURERS))}")
    return MEASURERS[name]


def _is_measurer(value: Any) -> bool:
    # Duck typing, so a measurer need not subclass Measurer to be plugged in.
    return all(hasattr(value, attr) for attr in ("numeric", "categorical", "structure")) and callable(value)


def get_measurer(measurer: "str | Measurer") -> Measurer:
    """A measurer instance from a registry name, or the instance given."""
    if isinstance(measurer, str):
        return _measurer_class(measurer)()
    if _is_measurer(measurer):
        return measurer
    raise InputError(f"measurer {measurer!r} is neither a name ({', '.join(sorted(MEASURERS))}) nor a Measurer")


def _measurer_name(measurer: Any) -> str:
    return getattr(measurer, "name", "") or type(measurer).__name__


def _check_target(target: Any, numeric: Sequence[str], measurer_name: str) -> str:
    if not isinstance(target, str) or target not in numeric:
        raise InputError(
            f"--target {target!r} is not a numeric attribute of measurer '{measurer_name}'; "
            f"choose one of {', '.join(numeric)}"
        )
    return target


# --------------------------------------------------------------------------------------------------
# Statistics (numpy only)
# --------------------------------------------------------------------------------------------------


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of the ranks they span ([10, 20, 20] -> [1, 2.5, 2.5])."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1, dtype=np.float64)
    _, groups = np.unique(x, return_inverse=True)
    groups = groups.reshape(-1)
    return (np.bincount(groups, weights=ranks) / np.bincount(groups))[groups]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation with average ranks for ties.

    Pairs with a non-finite value are dropped. When either side is constant (or fewer than two
    pairs remain) there is no ordering to agree with, and the result is 0 rather than NaN, so
    averages over prompt x seed pairs stay defined.
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"spearman needs two equal-length 1-D sequences, got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 2:
        return 0.0
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    if denominator == 0.0:
        return 0.0
    return float(np.clip((ra * rb).sum() / denominator, -1.0, 1.0))


def linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line y = intercept + slope * x.

    Non-finite pairs are dropped; (nan, nan) when x has fewer than two distinct values.
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"linear_fit needs two equal-length 1-D sequences, got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 2:
        return math.nan, math.nan
    da = a - a.mean()
    spread = float((da * da).sum())
    if spread == 0.0:
        return math.nan, math.nan
    slope = float((da * (b - b.mean())).sum() / spread)
    return slope, float(b.mean() - slope * a.mean())


def _stats(values: Sequence[float]) -> dict[str, float]:
    # Population std (ddof 0): these describe the images generated, not an estimate for more.
    v = np.asarray([value for value in values if math.isfinite(value)], dtype=np.float64)
    if not len(v):
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def _mean(values: Sequence[float]) -> float:
    return _stats(values)["mean"]


def _jsonable(value: Any) -> Any:
    """Plain JSON types: NaN and infinities become None, tuples lists, numpy scalars Python ones."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------------
# Measuring samples and summarising rows
# --------------------------------------------------------------------------------------------------


def _is_zero(multipliers: Sequence[float]) -> bool:
    return all(float(m) == 0.0 for m in multipliers)


def _key(row_or_sample: Any) -> tuple[int, int]:
    if isinstance(row_or_sample, Mapping):
        return int(row_or_sample["prompt_index"]), int(row_or_sample["seed"])
    return row_or_sample.prompt_index, row_or_sample.seed


def _values(measurer: Any, image: "Image.Image") -> dict[str, float | str]:
    raw = measurer(image)
    values: dict[str, float | str] = {}
    for attr in measurer.numeric:
        value = raw.get(attr)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"measurer '{_measurer_name(measurer)}' gave {attr}={value!r}; it must be a number")
        values[attr] = float(value)
    for attr in measurer.categorical:
        if attr not in raw:
            raise ValueError(f"measurer '{_measurer_name(measurer)}' gave no value for '{attr}'")
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
        references = {_key(s): s.image for s in samples if _is_zero(s.multipliers)}
    rows = []
    for sample in samples:
        reference = references.get(_key(sample))
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


def _figures(
    rows: Sequence[Mapping],
    references: Mapping[tuple[int, int], Mapping],
    numeric: Sequence[str],
    categorical: Sequence[str],
    structure_keys: Sequence[str],
) -> dict:
    """n, numeric stats, numeric change vs the reference, categorical shares kept, structure means."""
    n = len(rows)
    figures: dict[str, Any] = {"n": n, "numeric": {}, "change": {}, "categorical_preserved": {}, "structure": {}}
    for attr in numeric:
        figures["numeric"][attr] = _stats([float(r["values"][attr]) for r in rows])
        figures["change"][attr] = _mean(
            [float(r["values"][attr]) - float(references[_key(r)]["values"][attr]) for r in rows]
        )
    for attr in categorical:
        kept = [r["values"][attr] == references[_key(r)]["values"][attr] for r in rows]
        figures["categorical_preserved"][attr] = sum(kept) / n if n else math.nan
    for key in structure_keys:
        figures["structure"][key] = _mean([float(r["structure"][key]) for r in rows if key in r.get("structure", {})])
    return figures


def summarise(
    rows: Sequence[Mapping],
    *,
    target: str,
    numeric: Sequence[str],
    categorical: Sequence[str] = (),
    slider_names: Sequence[str] | None = None,
) -> dict:
    """Aggregate measured rows (as `measure_samples` makes them) into the report's figures.

    Returns (JSON-able, undefined figures as None):
    `combinations`: per scale combination (sorted), its figures against the reference;
    `sliders`: per slider, slope/intercept of the target on that slider's multiplier over every
    slider image, Spearman per prompt x seed averaged (`spearman_mean`) and pooled, and the curve
    (target stats per multiplier, pooled over the other sliders) the plot draws;
    `preservation`: figures over every non-reference slider image;
    `baseline`: figures of the "baseline" rows (prompt edits) against the unedited reference, or None.
    """
    numeric, categorical = tuple(numeric), tuple(categorical)
    if target not in numeric:
        raise ValueError(f"target {target!r} is not among the numeric attributes {numeric}")
    slider_rows = [r for r in rows if r.get("kind", "slider") != "baseline"]
    baseline_rows = [r for r in rows if r.get("kind") == "baseline"]
    if not slider_rows:
        raise ValueError("summarise needs at least one slider row")
    count = len(slider_rows[0]["multipliers"])
    if any(len(r["multipliers"]) != count for r in slider_rows):
        raise ValueError("every slider row needs one multiplier per slider")
    names = list(slider_names) if slider_names is not None else [f"slider{j + 1}" for j in range(count)]
    if len(names) != count:
        raise ValueError(f"{len(names)} slider names for {count} multipliers per row")

    references: dict[tuple[int, int], Mapping] = {}
    for row in slider_rows:
        if _is_zero(row["multipliers"]):
            references.setdefault(_key(row), row)
    for row in rows:
        if _key(row) not in references:
            prompt_index, seed = _key(row)
            raise ValueError(f"no reference row (every multiplier 0) for prompt {prompt_index} seed {seed}")
    structure_keys = list(dict.fromkeys(key for r in rows for key in r.get("structure", {})))

    def figures(chosen: Sequence[Mapping]) -> dict:
        return _figures(chosen, references, numeric, categorical, structure_keys)

    combinations = []
    for combo in sorted({tuple(float(m) for m in r["multipliers"]) for r in slider_rows}):
        chosen = [r for r in slider_rows if tuple(float(m) for m in r["multipliers"]) == combo]
        combinations.append(
            {
                "multipliers": list(combo),
                "label": combination_label(names, combo),
                "reference": _is_zero(combo),
                **figures(chosen),
            }
        )

    groups: dict[tuple[int, int], list[Mapping]] = {}
    for row in slider_rows:
        groups.setdefault(_key(row), []).append(row)
    sliders = []
    for j, name in enumerate(names):
        x = [float(r["multipliers"][j]) for r in slider_rows]
        y = [float(r["values"][target]) for r in slider_rows]
        slope, intercept = linear_fit(x, y)
        per_pair = [
            spearman([float(r["multipliers"][j]) for r in group], [float(r["values"][target]) for r in group])
            for group in groups.values()
        ]
        curve = []
        for multiplier in sorted(set(x)):
            values = [v for m, v in zip(x, y) if m == multiplier]
            curve.append({"multiplier": multiplier, "n": len(values), **_stats(values)})
        sliders.append(
            {
                "name": name,
                "index": j,
                "target": target,
                "slope": slope,
                "intercept": intercept,
                "spearman_mean": float(np.mean(per_pair)),
                "spearman_pooled": spearman(x, y),
                "n": len(slider_rows),
                "pairs": len(per_pair),
                "curve": curve,
            }
        )

    changed = [r for r in slider_rows if not _is_zero(r["multipliers"])]
    preservation = figures(changed)
    baseline = None
    if baseline_rows:
        prompts = {int(r["prompt_index"]): r["prompt"] for r in baseline_rows}
        baseline = {"prompts": [prompts[i] for i in sorted(prompts)], **figures(baseline_rows)}
    return _jsonable(
        {"combinations": combinations, "sliders": sliders, "preservation": preservation, "baseline": baseline}
    )


# --------------------------------------------------------------------------------------------------
# Generating and measuring
# --------------------------------------------------------------------------------------------------


def _check_baseline_prompts(baseline_prompts: Any, prompts: Sequence[str]) -> tuple[str, ...] | None:
    if baseline_prompts is None:
        return None
    if isinstance(baseline_prompts, str):
        raise InputError("baseline prompts must be a list with one edited prompt per prompt, not one text")
    baseline = tuple(baseline_prompts)
    if len(baseline) != len(prompts):
        raise InputError(
            f"{len(baseline)} baseline prompts for {len(prompts)} prompts; give one edited prompt per prompt, in order"
        )
    for text in baseline:
        if not isinstance(text, str):
            raise InputError(f"baseline prompt {text!r} is not text; give the edited prompts as text")
    return baseline


def _evaluate(
    pipe,
    sliders: Sequence[SliderNetwork],
    scale_lists: Sequence[Sequence[float]],
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    measurer: "str | Measurer",
    target: str,
    baseline_prompts: Sequence[str] | None,
    start_noise: float,
    steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    negative_prompt: str,
    slider_names: Sequence[str] | None,
    slider_paths: Sequence[str | Path] | None,
    fused: bool = False,
    on_sample: Callable[[Sample, bool], None] | None = None,
    processes: Processes | None = None,
) -> tuple[dict, list[Sample], list[Sample]]:
    """`evaluate`, also returning the slider samples (reference included) and the baseline samples.

    `on_sample(sample, baseline)` is called with each image as soon as it is made. With several
    `processes` each makes its share of the images and every process gets them all (`generate`)."""
    started = time.perf_counter()
    measurer = get_measurer(measurer)
    target = _check_target(target, tuple(measurer.numeric), _measurer_name(measurer))
    prompts = check_prompts(prompts)
    seeds = check_seeds(seeds)
    if len(sliders) != len(scale_lists):
        raise ValueError(f"{len(sliders)} sliders but {len(scale_lists)} scale lists; give one list per slider")
    if not sliders:
        raise ValueError("evaluate needs at least one slider")
    names = list(slider_names) if slider_names is not None else [f"slider{j + 1}" for j in range(len(sliders))]
    if len(names) != len(sliders):
        raise ValueError(f"{len(names)} slider names for {len(sliders)} sliders")
    lists = [check_scales(scales, f"scales of slider {name}") for name, scales in zip(names, scale_lists)]
    baseline_prompts = _check_baseline_prompts(baseline_prompts, prompts)
    settings = dict(start_noise=start_noise, steps=steps, guidance_scale=guidance_scale, height=height, width=width,
                    negative_prompt=negative_prompt, fused=fused)
    zeros = [(0.0,)] * len(sliders)

    slider_sample = None if on_sample is None else (lambda sample: on_sample(sample, False))
    baseline_sample = None if on_sample is None else (lambda sample: on_sample(sample, True))
    samples = generate(pipe, sliders, lists, prompts, seeds, **settings, on_sample=slider_sample, processes=processes)
    in_grid = all(0.0 in scales for scales in lists)
    if not in_grid:
        # Same prompt, seed and settings with every slider at 0: the image the grid would have had.
        logger.info("0 is not in every scale list; generating the reference images separately")
        samples += generate(pipe, sliders, zeros, prompts, seeds, **settings, on_sample=slider_sample,
                            processes=processes)
        seed_order = {seed: n for n, seed in enumerate(seeds)}
        samples.sort(key=lambda s: (s.prompt_index, seed_order[s.seed], s.multipliers))
    baseline_samples: list[Sample] = []
    if baseline_prompts is not None:
        # Prompt editing, the paper's comparison: the edited prompt, same seeds, every slider at 0.
        baseline_samples = generate(pipe, sliders, zeros, baseline_prompts, seeds, **settings,
                                    on_sample=baseline_sample, processes=processes)

    references = {_key(s): s.image for s in samples if _is_zero(s.multipliers)}
    rows = measure_samples(samples, measurer, kind="slider", references=references)
    rows += measure_samples(baseline_samples, measurer, kind="baseline", references=references)
    summary = summarise(
        rows, target=target, numeric=measurer.numeric, categorical=measurer.categorical, slider_names=names
    )
    paths = list(slider_paths) if slider_paths is not None else [None] * len(sliders)
    report = {
        "sliders_version": __version__,
        "settings": {
            "sliders": [
                {"name": name, "path": None if path is None else str(path), "scales": list(scales)}
                for name, path, scales in zip(names, paths, lists)
            ],
            "prompts": list(prompts),
            "seeds": list(seeds),
            "baseline_prompts": None if baseline_prompts is None else list(baseline_prompts),
            "measurer": _measurer_name(measurer),
            "target": target,
            "numeric": list(measurer.numeric),
            "categorical": list(measurer.categorical),
            "reference": "in the scale grid" if in_grid else "generated separately (0 is not in every scale list)",
            **settings,
        },
        **summary,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 2),
    }
    logger.info(
        "evaluated %d slider images and %d baseline images in %.1f s",
        len(samples), len(baseline_samples), report["seconds"],
    )
    return _jsonable(report), samples, baseline_samples


def evaluate(
    pipe,
    sliders: Sequence[SliderNetwork],
    scale_lists: Sequence[Sequence[float]],
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    measurer: "str | Measurer",
    target: str,
    baseline_prompts: Sequence[str] | None = None,
    start_noise: float = 750,
    steps: int = 25,
    guidance_scale: float = 5.0,
    height: int,
    width: int,
    negative_prompt: str = "",
    slider_names: Sequence[str] | None = None,
    slider_paths: Sequence[str | Path] | None = None,
    fused: bool = False,
) -> dict:
    """Generate every prompt x seed x scale combination, measure each image and return the report.

    `sliders` must be attached to `pipe.unet`. The reference for each prompt and seed is the image
    with every multiplier 0 (generated separately when 0 is not in every scale list). With
    `baseline_prompts` (one edited prompt per prompt) those are generated too, at the same seeds
    with every slider at 0, and compared with the unedited reference. The report is JSON-able:
    `settings`, the `summarise` figures (`combinations`, `sliders`, `preservation`, `baseline`),
    `rows` (one per image) and `seconds`.
    """
    report, _, _ = _evaluate(
        pipe, sliders, scale_lists, prompts, seeds, measurer=measurer, target=target,
        baseline_prompts=baseline_prompts, start_noise=start_noise, steps=steps, guidance_scale=guidance_scale,
        height=height, width=width, negative_prompt=negative_prompt, slider_names=slider_names,
        slider_paths=slider_paths, fused=fused,
    )
    return report


# --------------------------------------------------------------------------------------------------
# The report: Markdown and plot
# --------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table_row(label: str, figures: Mapping, settings: Mapping, structure_keys: Sequence[str]) -> str:
    target = settings["target"]
    stats = figures["numeric"][target]
    cells = [label, str(figures["n"]), f"{_fmt(stats['mean'])} ± {_fmt(stats['std'])}"]
    cells.append(_fmt(figures["change"][target]))
    cells += [_fmt(figures["numeric"][attr]["mean"]) for attr in settings["numeric"] if attr != target]
    cells += [_pct(figures["categorical_preserved"][attr]) for attr in settings["categorical"]]
    cells += [_fmt(figures["structure"].get(key)) for key in structure_keys]
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def _table_header(settings: Mapping, structure_keys: Sequence[str], first: str) -> list[str]:
    target = settings["target"]
    columns = [first, "n", f"{target} mean ± std", f"{target} change"]
    columns += [f"{attr} mean" for attr in settings["numeric"] if attr != target]
    columns += [f"{attr} kept" for attr in settings["categorical"]]
    columns += [f"{key} mean" for key in structure_keys]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def report_markdown(report: Mapping) -> str:
    """The report as Markdown: settings, a row per scale combination, slope/Spearman lines, baseline."""
    settings = report["settings"]
    target = settings["target"]
    structure_keys = list(report["preservation"]["structure"])
    sliders = ", ".join(
        s["name"] + (f" (`{s['path']}`)" if s.get("path") else "") + " at " + ", ".join(f"{v:+g}" for v in s["scales"])
        for s in settings["sliders"]
    )
    lines = [
        f"# Slider evaluation: {target}",
        "",
        f"Sliders: {sliders}. Measurer `{settings['measurer']}`, target `{target}`.",
        f"{len(settings['prompts'])} prompts x {len(settings['seeds'])} seeds; {settings['steps']} steps, guidance "
        f"{settings['guidance_scale']:g}, start_noise {settings['start_noise']:g}, "
        f"{settings['width']}x{settings['height']}"
        + (f", base model `{settings['base_model']}`" if settings.get("base_model") else "")
        + (", sliders fused into the weights" if settings.get("fused") else "")
        + ".",
        f"Reference: every multiplier 0, {settings['reference']}. Change and kept are against the reference "
        "image of the same prompt and seed.",
        "",
    ]
    lines += _table_header(settings, structure_keys, "combination")
    for combo in report["combinations"]:
        label = combo["label"] + (" (reference)" if combo["reference"] else "")
        lines.append(_table_row(label, combo, settings, structure_keys))
    lines.append("")
    for s in report["sliders"]:
        lines.append(
            f"- {s['name']}: slope {_fmt(s['slope'])} {target} per unit multiplier; Spearman "
            f"{_fmt(s['spearman_mean'])} (mean over {s['pairs']} prompt x seed pairs), "
            f"{_fmt(s['spearman_pooled'])} pooled over {s['n']} images."
        )
    preservation = report["preservation"]
    kept = ", ".join(f"{attr} kept {_pct(v)}" for attr, v in preservation["categorical_preserved"].items())
    means = ", ".join(f"mean {key} {_fmt(v)}" for key, v in preservation["structure"].items())
    figures = "; ".join(part for part in (kept, means) if part)
    lines.append(f"- Preservation over {preservation['n']} non-reference images: {figures}.")
    baseline = report.get("baseline")
    if baseline:
        lines += ["", "## Baseline: prompt editing", ""]
        for index, (before, after) in enumerate(zip(settings["prompts"], settings["baseline_prompts"])):
            lines.append(f"- prompt {index}: \"{before}\" -> \"{after}\"")
        lines.append("")
        lines += _table_header(settings, structure_keys, "images")
        lines.append(_table_row("edited prompts", baseline, settings, structure_keys))
    return "\n".join(lines) + "\n"


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    for mantissa in (1.0, 2.0, 5.0, 10.0):
        if raw <= mantissa * 10**exponent:
            return mantissa * 10**exponent
    return 10.0 ** (exponent + 1)


def _axis(values: Sequence[float], exact_ticks: bool = False) -> tuple[list[float], float, float]:
    """Ticks and the axis range for `values`: the values themselves when `exact_ticks` and few, else 1-2-5 steps."""
    if not values:
        return [0.0, 1.0], 0.0, 1.0
    low, high = min(values), max(values)
    distinct = sorted(set(values))
    if exact_ticks and len(distinct) <= 11:
        pad = 0.08 * (high - low) if high > low else 0.5
        return distinct, low - pad, high + pad
    if high - low < 1e-12:
        half = abs(low) * 0.1 or 0.5
        low, high = low - half, high + half
    step = _nice_step((high - low) / 5)
    first, last = math.floor(low / step), math.ceil(high / step)
    ticks = [k * step for k in range(first, last + 1)]
    return ticks, ticks[0], ticks[-1]


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    gaps = [b - a for a, b in zip(ticks, ticks[1:]) if b > a]
    decimals = max(0, -math.floor(math.log10(min(gaps)))) if gaps else 2
    text = f"{value:.{min(decimals, 6)}f}"
    return "0" if float(text) == 0 else text


def plot_report(report: Mapping) -> "Image.Image":
    """The target's mean (bars: min to max) against each slider's multiplier; dashed: the baseline mean."""
    from PIL import Image, ImageDraw, ImageFont

    settings = report["settings"]
    target = settings["target"]
    series = [(s["name"], [p for p in s["curve"] if p["mean"] is not None]) for s in report["sliders"]]
    baseline = report.get("baseline")
    baseline_mean = baseline["numeric"][target]["mean"] if baseline else None
    xs = [p["multiplier"] for _, points in series for p in points]
    ys = [v for _, points in series for p in points for v in (p["min"], p["max"], p["mean"]) if v is not None]
    if baseline_mean is not None:
        ys.append(baseline_mean)
    x_ticks, x_low, x_high = _axis(xs, exact_ticks=True)
    y_ticks, y_low, y_high = _axis(ys)

    width, height = PLOT_SIZE
    left, top, right, bottom = PLOT_LEFT, PLOT_TOP, width - PLOT_RIGHT, height - PLOT_BOTTOM
    image = Image.new("RGB", PLOT_SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_low) / (y_high - y_low) * (bottom - top)

    def text_centred(x: float, y: float, text: str, fill="black") -> None:
        text = drawable(text, font)
        draw.text((x - draw.textlength(text, font=font) / 2, y), text, fill=fill, font=font)

    for value in y_ticks:
        y = py(value)
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        draw.line([(left - 5, y), (left, y)], fill="black")
        label = _tick_label(value, y_ticks)
        draw.text((left - 8 - draw.textlength(label, font=font), y - 6), label, fill="black", font=font)
    for value in x_ticks:
        x = px(value)
        draw.line([(x, bottom), (x, bottom + 5)], fill="black")
        label = f"{value:+g}" if value else "0"
        text_centred(x, bottom + 8, label)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")

    text_centred((left + right) / 2, height - 22, "slider multiplier")
    text_centred((left + right) / 2, 12, drawable(f"{target}: mean per multiplier (bars: min to max)", font))
    # A rotated label needs its own small image: PIL draws text horizontally only.
    label = drawable(target, font)
    label_image = Image.new("RGB", (int(draw.textlength(label, font=font)) + 4, 16), "white")
    ImageDraw.Draw(label_image).text((2, 1), label, fill="black", font=font)
    rotated = label_image.rotate(90, expand=True)
    image.paste(rotated, (8, int((top + bottom) / 2 - rotated.height / 2)))

    if baseline_mean is not None:
        y = py(baseline_mean)
        for x in range(left, right, 10):
            draw.line([(x, y), (min(x + 6, right), y)], fill=(90, 90, 90), width=2)

    # Sliders sharing a multiplier are nudged apart so their bars do not hide each other.
    nudge = 5
    for j, (name, points) in enumerate(series):
        colour = SERIES_COLOURS[j % len(SERIES_COLOURS)]
        offset = (j - (len(series) - 1) / 2) * nudge
        centres = [(px(p["multiplier"]) + offset, py(p["mean"])) for p in points]
        if len(centres) > 1:
            draw.line(centres, fill=colour, width=2)
        for p, (x, y) in zip(points, centres):
            if p["min"] is not None and p["max"] is not None:
                draw.line([(x, py(p["min"])), (x, py(p["max"]))], fill=colour, width=1)
                for end in (p["min"], p["max"]):
                    draw.line([(x - 4, py(end)), (x + 4, py(end))], fill=colour, width=1)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)

    legend_x, legend_y = right + 16, top
    for j, (name, _) in enumerate(series):
        colour = SERIES_COLOURS[j % len(SERIES_COLOURS)]
        draw.line([(legend_x, legend_y + 7), (legend_x + 20, legend_y + 7)], fill=colour, width=2)
        draw.ellipse([legend_x + 7, legend_y + 4, legend_x + 13, legend_y + 10], fill=colour)
        short = name if len(name) <= 20 else name[:19] + "..."
        draw.text((legend_x + 26, legend_y), drawable(short, font), fill="black", font=font)
        legend_y += 18
    if baseline_mean is not None:
        for x in (legend_x, legend_x + 12):
            draw.line([(x, legend_y + 7), (x + 7, legend_y + 7)], fill=(90, 90, 90), width=2)
        draw.text((legend_x + 26, legend_y), "baseline (prompt edit)", fill="black", font=font)
    return image


def _write_text(text: str, path: Path) -> Path:
    """Write through a temporary file in the same folder, renamed into place."""
    with atomic_path(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")
    return path


def write_report(report: Mapping, output_dir: str | Path) -> dict[str, Path]:
    """Write `report.json`, `report.md` and `plot.png` into `output_dir`; returns their paths by kind."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = _jsonable(report)
    paths = {
        "json": _write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", output / REPORT_JSON),
        "markdown": _write_text(report_markdown(report), output / REPORT_MD),
        "plot": write_png(plot_report(report), output / REPORT_PLOT),
    }
    logger.debug("wrote %s, %s and %s", *paths.values())
    return paths


# --------------------------------------------------------------------------------------------------
# Command-line inputs
# --------------------------------------------------------------------------------------------------

_SEED_PART = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]: comma-separated seeds and inclusive ranges."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("--seeds is empty; give seeds such as 0,1,2 or a range such as 0-31")
    seeds: list[int] = []
    for part in (part.strip() for part in text.split(",")):
        match = _SEED_PART.match(part)
        if not match:
            raise InputError(f"--seeds has {part!r}, which is not a seed or a range; write e.g. --seeds 0-31 or 0,5,9")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise InputError(
                f"--seeds range {part!r} runs backwards; write the smaller seed first, e.g. {last}-{first}"
            )
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise InputError(f"--seeds {text!r} gives more than {MAX_SEEDS} seeds; give fewer")
        seeds.extend(range(first, last + 1))
    return list(check_seeds(seeds))


def read_prompt_lines(path: str | Path) -> list[str]:
    """The prompts of a UTF-8 text file, one per line; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompts file '{path}' does not exist or is not a file; check --prompts_file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"prompts file '{path}' is not UTF-8 text; save it as UTF-8, one prompt per line") from None
    except OSError as error:
        raise InputError(f"prompts file '{path}' cannot be read ({error.strerror}); check its permissions") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise InputError(f"prompts file '{path}' holds no prompt; write one prompt per line")
    return prompts


def parse_replacements(entries: str | Sequence[str]) -> list[tuple[str, str]]:
    """['medium=large', ...] -> [('medium', 'large'), ...]; whitespace around each side is dropped."""
    if isinstance(entries, str):
        entries = [entries]
    if not entries:
        raise InputError("--baseline_replace is empty; give old=new, e.g. --baseline_replace medium=large")
    pairs = []
    for entry in entries:
        if not isinstance(entry, str) or "=" not in entry:
            raise InputError(f"--baseline_replace {entry!r} is not old=new; write e.g. --baseline_replace medium=large")
        old, _, new = (part.strip() for part in entry.partition("="))
        if not old:
            raise InputError(f"--baseline_replace {entry!r} has nothing before '='; write e.g. medium=large")
        if old == new:
            raise InputError(f"--baseline_replace {entry!r} changes nothing; give a different new text")
        pairs.append((old, new))
    return pairs


def baseline_from_replace(prompts: Sequence[str], entries: str | Sequence[str]) -> list[str]:
    """Each prompt with the replacements applied in order (every occurrence, plain text, case-sensitive).

    Every replacement must find its text in every prompt, so no baseline image silently repeats
    its unedited reference.
    """
    pairs = parse_replacements(entries)
    edited = []
    for index, prompt in enumerate(prompts):
        for old, new in pairs:
            if old not in prompt:
                raise InputError(
                    f"--baseline_replace {old}={new}: {old!r} is not in prompt {index} {prompt!r}; "
                    "give replacements that appear in every prompt"
                )
            prompt = prompt.replace(old, new)
        edited.append(prompt)
    return edited


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------


def _as_spec(spec: Any) -> SliderSpec:
    if isinstance(spec, SliderSpec):
        return spec
    if isinstance(spec, Path):
        return SliderSpec(spec, None)
    if isinstance(spec, str):
        return parse_slider_arg(spec)
    raise InputError(f"--slider {spec!r} is not a slider file; give a path such as age.safetensors:-2,0,2")


def run_evaluation(
    specs: Sequence[SliderSpec | str] | SliderSpec | str,
    scales: Sequence[float] | str | None,
    prompts: Sequence[str],
    seeds: Sequence[int] | str,
    *,
    output: str | Path,
    measurer: "str | Measurer" = "shapes",
    target: str = "size",
    baseline_prompts: Sequence[str] | None = None,
    baseline_replace: Sequence[str] | str | None = None,
    start_noise: int = 750,
    steps: int = 25,
    guidance_scale: float = 5.0,
    pretrained_model: str | None = None,
    device: str | None = None,
    precision: str = "fp32",
    resolution: int | None = None,
    negative_prompt: str = "",
    images: bool = False,
    fused: bool = False,
) -> dict[str, Path]:
    """Validate everything, load the base model and sliders once, evaluate and write the report.

    Arguments map 1:1 to `sliders-eval` flags (`--slider` gives `specs`, `--save_images` `images`;
    `--prompts_file` goes through `read_prompt_lines`, `--seeds` may be text for `parse_seeds`).
    The base model and resolution default to those recorded in the first slider's metadata.
    Returns the paths written: json, markdown, plot, and with `images` also images (the folder),
    grid and, with a baseline, baseline_grid.
    """
    # Everything the user gave is checked before any model is loaded.
    measurer_class = _measurer_class(measurer) if isinstance(measurer, str) else None
    if measurer_class is None and not _is_measurer(measurer):
        raise InputError(f"--measurer {measurer!r} is unknown; choose one of {', '.join(sorted(MEASURERS))}")
    numeric = measurer_class.numeric if measurer_class else tuple(measurer.numeric)
    target = _check_target(target, numeric, measurer if isinstance(measurer, str) else _measurer_name(measurer))

    if isinstance(specs, (SliderSpec, str, Path)):
        specs = [specs]
    specs = [_as_spec(spec) for spec in specs or ()]
    plan = plan_run(
        specs, scales, prompts, parse_seeds(seeds) if isinstance(seeds, str) else seeds, output=output,
        start_noise=start_noise, steps=steps, guidance_scale=guidance_scale, pretrained_model=pretrained_model,
        device=device, precision=precision, resolution=resolution, negative_prompt=negative_prompt,
    )
    if baseline_prompts is not None and baseline_replace is not None:
        raise InputError("both baseline prompts and --baseline_replace given; use one way to make the edited prompts")
    if baseline_replace is not None:
        baseline_prompts = baseline_from_replace(plan.prompts, baseline_replace)
    baseline_prompts = _check_baseline_prompts(baseline_prompts, plan.prompts)
    if not isinstance(images, bool):
        raise InputError(f"--save_images must be true or false, got {images!r}")
    # A registered measurer is built only now, so a heavy one (a CLIP model) never loads for bad input.
    measurer_instance = measurer_class() if measurer_class else measurer

    names = list(plan.slider_names)
    output = plan.output
    # Under `accelerate launch` each process makes its share of the images on its own device; the
    # main process measures them all and writes the one report.
    processes = start_processes(plan.device)
    plan = dataclasses.replace(plan, device=processes.device)
    folder = output / IMAGES_FOLDER
    made: list[Sample] = []

    def keep(sample: Sample, baseline: bool) -> None:
        """With --save_images, write each image as soon as it is made: an interruption keeps them."""
        if not baseline:
            made.append(sample)
        name = "baseline_" + image_name(sample, []) if baseline else image_name(sample, names)
        write_kept(sample.image, folder / name, made)

    with processes.guard(), owned_output(output, processes.is_main), \
            kept_on_interrupt(made, names, folder, output / GRID_NAME):
        processes.check()
        with loaded(plan, loader=load_pipeline) as (pipe, sliders):
            report, samples, baseline_samples = _evaluate(
                pipe, sliders, plan.scale_lists, plan.prompts, plan.seeds, measurer=measurer_instance, target=target,
                baseline_prompts=baseline_prompts, start_noise=plan.start_noise, steps=plan.steps,
                guidance_scale=plan.guidance_scale, height=plan.resolution, width=plan.resolution,
                negative_prompt=plan.negative_prompt, slider_names=names,
                slider_paths=[spec.path for spec in plan.specs], fused=fused, on_sample=keep if images else None,
                processes=processes,
            )

    report["settings"].update(
        {"base_model": plan.model, "precision": plan.precision, "device": str(plan.device),
         "resolution": plan.resolution}
    )
    if not processes.is_main:  # the main process writes the one report
        return {"json": output / REPORT_JSON, "markdown": output / REPORT_MD, "plot": output / REPORT_PLOT}
    try:
        paths = write_report(report, output)
    except OSError as error:
        raise OutputError(f"could not write the report into '{output}' ({error.strerror or error})"
                          + (f"; the images are kept in '{folder}'" if images else "")) from None
    if images:
        paths["images"] = folder
        paths["grid"] = write_kept(make_grid(samples, names), output / GRID_NAME, samples)
        if baseline_samples:
            paths["baseline_grid"] = write_kept(make_grid(baseline_samples, names), output / BASELINE_GRID_NAME, samples)
        logger.info("wrote %d images to %s", len(samples) + len(baseline_samples), folder)
    return paths
