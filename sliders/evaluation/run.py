"""An evaluation run: generate every prompt x seed x scale image, measure it, and report (`evaluate`, `run_evaluation`).

`run_evaluation` validates every input before loading the base model and sliders (through
`planning.plan_run` and `planning.loaded`, shared with `run_sampling`, plus its own checks), and
writes the report and, when asked, the images and their grids. Also reads the prompt files and
prompt replacements the `sliders-eval` command takes (seed ranges are `parsing.parse_seeds`). It does
not define the command line itself (see `cli`), does not train, and generates only through
`generation.generate`.

The reference image for a prompt and seed is the one with every slider at 0. When 0 is not in every
scale list, that image is generated separately (same prompt, seed and settings) rather than
required, and it then also appears as its own row in the report.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..config import DEFAULT_START_NOISE, EVAL_STEPS
from ..distributed import Processes
from ..distributed import start as start_processes
from ..errors import InputError, OutputError
from ..generation import Sample, generate
from ..grids import make_grid
from ..network import SliderNetwork
from ..outputs import GRID_NAME, image_name, kept_on_interrupt, owned_output, write_kept
from ..parsing import SliderSpec, check_prompts, check_scales, check_seeds, parse_seeds, parse_slider_arg
from ..planning import GenerationSettings, base_options_record, check_fused, loaded, plan_run
from .measurers import (
    MEASURERS,
    Measurer,
    check_target,
    default_target,
    get_measurer,
    is_measurer,
    is_reference,
    measure_samples,
    measurer_class,
    measurer_name,
    pair_key,
    parse_measurer_args,
    slider_texts,
)
from .quality import quality
from .report import REPORT_JSON, REPORT_MD, REPORT_PLOT, jsonable, summarise, write_report

logger = logging.getLogger(__name__)

BASELINE_GRID_NAME = "baseline_grid.png"
IMAGES_FOLDER = "images"


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
    compare: bool = False,
) -> tuple[dict, list[Sample], list[Sample]]:
    """`evaluate`, also returning the slider samples (reference included) and the baseline samples.

    `on_sample(sample, baseline)` is called with each image as soon as it is made. With several
    `processes` each makes its share of the images and every process gets them all (`generate`)."""
    started = time.perf_counter()
    measurer = get_measurer(measurer)
    target = check_target(default_target(measurer) if target is None else target, tuple(measurer.numeric),
                          measurer_name(measurer))
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
    if compare:
        samples = _compared(pipe, sliders, lists, prompts, seeds, settings, slider_sample, processes)
    else:
        samples = generate(pipe, sliders, lists, prompts, seeds, **settings, on_sample=slider_sample,
                           processes=processes)
    in_grid = any(is_reference(s.multipliers) for s in samples) if compare else all(0.0 in scales for scales in lists)
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

    references = {pair_key(s): s.image for s in samples if is_reference(s.multipliers)}
    rows = measure_samples(samples, measurer, kind="slider", references=references)
    rows += measure_samples(baseline_samples, measurer, kind="baseline", references=references)
    summary = summarise(
        rows, target=target, numeric=measurer.numeric, categorical=measurer.categorical, slider_names=names
    )
    summary["quality"] = measured_quality(rows, measurer, target, names)
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
            "measurer": measurer_name(measurer),
            "measurer_settings": measurer_settings(measurer),
            "compare": compare,
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
    return jsonable(report), samples, baseline_samples


def _compared(pipe, sliders, lists, prompts, seeds, settings, on_sample, processes) -> list[Sample]:
    """--compare: each slider at its scales with every other slider at 0, one after another (same
    prompts, seeds and settings), the reference (every slider at 0) made once."""
    samples: list[Sample] = []
    for j, scales in enumerate(lists):
        alone = [scales if k == j else (0.0,) for k in range(len(lists))]
        made = generate(pipe, sliders, alone, prompts, seeds, **settings, processes=processes,
                        on_sample=None if on_sample is None else (
                            lambda sample: None if (j and is_reference(sample.multipliers)) else on_sample(sample)))
        samples += [s for s in made if not (j and is_reference(s.multipliers))]
    return samples


def measurer_settings(measurer: Any) -> dict:
    """What the report records of a measurer's own settings (its `describe`, when it has one)."""
    describe = getattr(measurer, "describe", None)
    return jsonable(describe()) if callable(describe) else {}


def measured_quality(rows: Sequence[dict], measurer: Any, target: str, names: Sequence[str]) -> dict:
    """The slider-quality figures (`quality.quality`) of measured rows, with the measurer's text-pair
    attributes and preservation figure."""
    return quality(rows, slider_names=names, target=target, numeric=tuple(measurer.numeric),
                   positive=getattr(measurer, "positive_attribute", None),
                   negative=getattr(measurer, "negative_attribute", None),
                   preservation=getattr(measurer, "preservation", None))


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
    start_noise: float = DEFAULT_START_NOISE,
    steps: int = EVAL_STEPS,
    guidance_scale: float = 5.0,
    height: int,
    width: int,
    negative_prompt: str = "",
    slider_names: Sequence[str] | None = None,
    slider_paths: Sequence[str | Path] | None = None,
    fused: bool = False,
    compare: bool = False,
) -> dict:
    """Generate every prompt x seed x scale combination, measure each image and return the report.

    `sliders` must be attached to `pipe.unet`. The reference for each prompt and seed is the image
    with every multiplier 0 (generated separately when 0 is not in every scale list). With
    `baseline_prompts` (one edited prompt per prompt) those are generated too, at the same seeds
    with every slider at 0, and compared with the unedited reference. The report is JSON-able:
    `settings`, the `summarise` figures (`combinations`, `sliders`, `preservation`, `baseline`),
    `rows` (one per image) and `seconds`. With `compare`, each slider is generated alone (every
    other slider at 0) instead of every combination, so that several sliders sit side by side; the
    `quality` figures (`quality.quality`) are in the report either way.
    """
    report, _, _ = _evaluate(
        pipe, sliders, scale_lists, prompts, seeds, measurer=measurer, target=target,
        baseline_prompts=baseline_prompts, start_noise=start_noise, steps=steps, guidance_scale=guidance_scale,
        height=height, width=width, negative_prompt=negative_prompt, slider_names=slider_names,
        slider_paths=slider_paths, fused=fused, compare=compare,
    )
    return report


# --------------------------------------------------------------------------------------------------
# Command-line inputs
# --------------------------------------------------------------------------------------------------


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


def as_specs(specs: Any) -> list[SliderSpec]:
    """One slider or several, as paths, `--slider` texts or `SliderSpec`s -> a list of `SliderSpec`s."""
    if isinstance(specs, (SliderSpec, str, Path)):
        specs = [specs]
    return [_as_spec(spec) for spec in specs or ()]


def check_measurer(measurer: "str | Measurer", target: Any) -> tuple[type[Measurer] | None, str]:
    """The registered measurer class for a name (None for a measurer object) and the checked target,
    without building the measurer: a heavy one (a CLIP model) never loads for bad input."""
    registered = measurer_class(measurer) if isinstance(measurer, str) else None
    if registered is None and not is_measurer(measurer):
        raise InputError(f"--measurer {measurer!r} is unknown; choose one of {', '.join(sorted(MEASURERS))}")
    numeric = registered.numeric if registered else tuple(measurer.numeric)
    if target is None:  # the measurer's own target (size for shapes, clip_direction for clip)
        target = default_target(registered or measurer)
    return registered, check_target(target, numeric, measurer if isinstance(measurer, str) else measurer_name(measurer))


def build_measurer(registered: type[Measurer] | None, measurer: Any, measurer_args: Any, device: Any,
                   specs: Sequence[SliderSpec]) -> Any:
    """The measurer of a run: a registered one built by its `create` with the --measurer_arg options,
    the run's device and the sliders' recorded texts (read from their files); an object as given."""
    options = measurer_args if isinstance(measurer_args, dict) else parse_measurer_args(measurer_args)
    if registered is None:
        if options:
            raise InputError("--measurer_arg is for a measurer named on the command line, not a measurer object")
        return measurer
    from ..network import read_slider_file

    recorded = [slider_texts(read_slider_file(spec.path)[1]) for spec in specs]
    return registered.create(options, device=device, slider_prompts=recorded)


def run_evaluation(
    specs: Sequence[SliderSpec | str] | SliderSpec | str,
    scales: Sequence[float] | str | None,
    prompts: Sequence[str],
    seeds: Sequence[int] | str,
    *,
    settings: GenerationSettings,
    measurer: "str | Measurer" = "shapes",
    target: str | None = None,
    measurer_args: Sequence[str] | dict | None = None,
    compare: bool = False,
    baseline_prompts: Sequence[str] | None = None,
    baseline_replace: Sequence[str] | str | None = None,
    images: bool = False,
) -> dict[str, Path]:
    """Validate everything, load the base model and sliders once, evaluate and write the report.

    Arguments map 1:1 to `sliders-eval` flags (`--slider` gives `specs`, `--save_images` `images`;
    `--prompts_file` goes through `read_prompt_lines`, `--seeds` may be text for `parse_seeds`), the
    generation flags held in `settings`. Its `steps` None is EVAL_STEPS; the base model, resolution,
    start_noise and guidance left None are those recorded in the first slider's metadata, else its
    family's (`planning.plan_run`). Returns the paths written: json,
    markdown, plot, and with `images` also images (the folder), grid and, with a baseline,
    baseline_grid.
    """
    # Everything the user gave is checked before any model is loaded.
    registered, target = check_measurer(measurer, target)
    specs = as_specs(specs)
    settings = settings.with_defaults(steps=EVAL_STEPS)
    plan = plan_run(specs, scales, prompts, parse_seeds(seeds) if isinstance(seeds, str) else seeds,
                    settings=settings)
    check_fused(settings.fused, plan)
    if baseline_prompts is not None and baseline_replace is not None:
        raise InputError("both baseline prompts and --baseline_replace given; use one way to make the edited prompts")
    if baseline_replace is not None:
        baseline_prompts = baseline_from_replace(plan.prompts, baseline_replace)
    baseline_prompts = _check_baseline_prompts(baseline_prompts, plan.prompts)
    if not isinstance(images, bool):
        raise InputError(f"--save_images must be true or false, got {images!r}")
    if not isinstance(compare, bool):
        raise InputError(f"--compare must be true or false, got {compare!r}")
    if compare and len(plan.specs) < 2:
        raise InputError("--compare puts several sliders side by side; give at least two --slider files")
    options = measurer_args if isinstance(measurer_args, dict) else parse_measurer_args(measurer_args)

    names = list(plan.slider_names)
    output = plan.output
    # Under `accelerate launch` each process makes its share of the images on its own device; the
    # main process writes the one report.
    processes = start_processes(plan.device)
    plan = dataclasses.replace(plan, device=processes.device)
    # A registered measurer is built only now, after every check and before the base model loads, so a
    # heavy one (a CLIP model) never loads for bad input; it runs on this process's device.
    measurer_instance = build_measurer(registered, measurer, options, plan.device, plan.specs)
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
        with loaded(plan) as (pipe, sliders):
            report, samples, baseline_samples = _evaluate(
                pipe, sliders, plan.scale_lists, plan.prompts, plan.seeds, measurer=measurer_instance, target=target,
                baseline_prompts=baseline_prompts, start_noise=plan.start_noise, steps=plan.steps,
                guidance_scale=plan.guidance_scale, height=plan.resolution, width=plan.resolution,
                negative_prompt=plan.negative_prompt, slider_names=names,
                slider_paths=[spec.path for spec in plan.specs], fused=settings.fused,
                on_sample=keep if images else None,
                processes=processes, compare=compare,
            )

    report["settings"].update(
        {"base_model": plan.model, **base_options_record(plan), "precision": plan.precision,
         "device": str(plan.device), "resolution": plan.resolution}
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
