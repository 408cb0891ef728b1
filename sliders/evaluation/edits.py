"""Measuring sliders on real-image edits (`sliders-eval --edit_scenes N`).

Scenes rendered by `sliders.shapes.world` (pixels drawn, not generated, so they are as "real" as the
shapes world has) are inverted and regenerated at every scale by `sliders.editing`, then measured as
`run_evaluation` measures generated images: the target against the scale, the other attributes and
the structure against the scale-0 edit of the same scene, and, with a baseline, the same inversion
regenerated with the edited caption from `start_noise` on (prompt editing). The report adds the
reconstruction: PSNR of the scale-0 edit against the input (and of the VAE alone), the inversion
time, and whether the scale-0 edit still measures as its input. It does not generate from noise
(see `run`) and does not define the command line (see `cli`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..config import DEFAULT_INVERSION, EDIT_START_NOISE, EVAL_STEPS, NULL_TEXT_ITERATIONS
from ..editing import (Edited, EditImage, check_edit_settings, check_family_edit, check_unfused, edit_grid,
                       edit_images)
from ..errors import InputError, OutputError
from ..generation import Sample
from ..diffusion import time_ids
from ..outputs import GRID_NAME, edit_name, kept_on_interrupt, owned_output, write_kept
from ..planning import GenerationSettings, base_options_record, loaded, plan_run
from ..shapes.world import SCENE_STYLES, SIZE_WORDS, render_dataset, styled
from .measurers import Measurer, is_reference, measure_samples, measurer_name, pair_key
from .report import jsonable, summarise, write_report
from .run import IMAGES_FOLDER, as_specs, baseline_from_replace, build_measurer, check_measurer, measured_quality, measurer_settings
from .statistics import describe

logger = logging.getLogger(__name__)

MAX_SCENES = 10_000
INPUTS_FOLDER = "inputs"


def check_scene_count(scenes: Any, seed: Any) -> tuple[int, int]:
    if isinstance(scenes, bool) or not isinstance(scenes, int) or not 1 <= scenes <= MAX_SCENES:
        raise InputError(f"--edit_scenes must be a whole number from 1 to {MAX_SCENES}, got {scenes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise InputError(f"--scene_seed must be a whole number from 0 to 2**32-1, got {seed!r}")
    return scenes, seed


def rendered_scenes(count: int, seed: int, resolution: int, size_word: str | None, style: str = "world"
                    ) -> tuple[list[EditImage], list[str]]:
    """`count` shapes-world scenes from `seed` as edit inputs (time ids: the square image itself) and
    their captions. `style` "world" draws them as the model was trained; "ood" cycles through the
    out-of-distribution styles of `shapes.world.SCENE_STYLES`, and one of those draws every scene so."""
    if style not in ("world", "ood", *SCENE_STYLES):
        raise InputError(f"--scene_style {style!r} is unknown; choose world, ood or one of {', '.join(SCENE_STYLES)}")
    rng = np.random.default_rng([seed, 7])
    images, captions = [], []
    for index, (image, scene, caption) in enumerate(render_dataset(count, seed, resolution, size_word)):
        name = f"scene{index:03d}"
        if style != "world":
            kind = SCENE_STYLES[index % len(SCENE_STYLES)] if style == "ood" else style
            image, _ = styled(scene, kind, rng)
            name = f"{name}-{kind}"
        images.append(EditImage(Path(f"{name}.png"), name, image, time_ids(resolution, resolution)))
        captions.append(caption)
    return images, captions


def reconstruction_figures(results: Sequence[Edited], measurer: Measurer, target: str) -> dict:
    """How well the scale-0 edits reproduce their inputs: PSNR, the VAE's own PSNR, inversion seconds,
    and the scale-0 edit measured against the input (categorical attributes kept, target change,
    structure)."""
    zero = [next(s for s in r.samples if is_reference(s.multipliers)) for r in results]
    inputs = {pair_key(s): r.image.image for s, r in zip(zero, results)}
    rows = measure_samples(zero, measurer, kind="reconstruction", references=inputs)
    measured_inputs = measure_samples(
        [Sample(s.prompt_index, s.prompt, s.seed, s.multipliers, r.image.image) for s, r in zip(zero, results)],
        measurer, kind="input", references=inputs,
    )
    kept = {
        attr: sum(row["values"][attr] == source["values"][attr] for row, source in zip(rows, measured_inputs)) / len(rows)
        for attr in measurer.categorical
    }
    keys = list(dict.fromkeys(key for row in rows for key in row["structure"]))
    return {
        "n": len(results),
        "psnr_db": describe([r.psnr_zero for r in results]),
        "psnr_vae_db": describe([r.psnr_vae for r in results]),
        "inversion_seconds": describe([r.inversion_seconds for r in results]),
        "correction_ratio": describe([r.correction_ratio for r in results if r.correction_ratio is not None]),
        "warned": sum(bool(r.warnings) for r in results),
        "kept": kept,
        "change": {target: describe([row["values"][target] - source["values"][target]
                                     for row, source in zip(rows, measured_inputs)])["mean"]},
        "structure": {key: describe([row["structure"][key] for row in rows])["mean"] for key in keys},
    }


def run_edit_evaluation(
    specs: Any,
    scales: Sequence[float] | str | None,
    *,
    scenes: int,
    settings: GenerationSettings,
    scene_seed: int = 0,
    scene_style: str = "world",
    size_word: str | None = "medium",
    method: str = DEFAULT_INVERSION,
    null_text_iterations: int = NULL_TEXT_ITERATIONS,
    measurer: "str | Measurer" = "shapes",
    target: str | None = None,
    measurer_args: Sequence[str] | dict | None = None,
    baseline_replace: Sequence[str] | str | None = None,
    images: bool = False,
) -> dict[str, Path]:
    """Validate everything, load the base model and sliders once, edit `scenes` rendered scenes at
    every scale (each inverted once with its caption as the prompt) and write the report
    (`report.json`, `report.md`, `plot.png`); with `images` also every edit, its input and a grid.
    `size_word` fixes the scenes' size bin (medium: room to grow and to shrink), so that one
    `baseline_replace` such as medium=large edits every caption. Of `settings` (`planning.plan_run`'s,
    without `fused`), `steps` None is EVAL_STEPS and `start_noise` None EDIT_START_NOISE; the guidance
    left None is the first slider's family's."""
    started = time.perf_counter()
    registered, target = check_measurer(measurer, target)
    method = check_edit_settings(method, null_text_iterations)
    check_unfused(settings)
    scenes, scene_seed = check_scene_count(scenes, scene_seed)
    if size_word is not None and size_word not in SIZE_WORDS:
        raise InputError(f"scene size {size_word!r} is unknown; choose one of {', '.join(SIZE_WORDS)}")
    if not isinstance(images, bool):
        raise InputError(f"--save_images must be true or false, got {images!r}")
    settings = settings.with_defaults(steps=EVAL_STEPS, start_noise=EDIT_START_NOISE)
    plan = plan_run(as_specs(specs), scales, [""], (0,), settings=settings)
    check_family_edit(plan, method)
    for spec, spec_scales in zip(plan.specs, plan.scale_lists):
        if 0.0 not in spec_scales:
            raise InputError(f"scales of --slider {spec.path} lack 0: the scale-0 edit of each scene is the "
                             "reference an edit evaluation measures against; add 0")
    inputs, captions = rendered_scenes(scenes, scene_seed, plan.resolution, size_word, scene_style)
    baseline_prompts = baseline_from_replace(captions, baseline_replace) if baseline_replace is not None else None
    measurer_instance = build_measurer(registered, measurer, measurer_args, plan.device, plan.specs)

    names = list(plan.slider_names)
    output = plan.output
    folder = output / IMAGES_FOLDER
    made: list[Sample] = []

    def keep(sample: Sample) -> None:
        made.append(sample)
        name = edit_name(inputs[sample.prompt_index].name, sample.multipliers, names)
        write_kept(sample.image, folder / name, made[:-1])

    finished: list[Edited] = []

    def write_finished() -> None:
        """On an interruption: the grid of the scenes whose every edit was made (their images are written)."""
        if finished:
            write_kept(edit_grid(finished, names), output / GRID_NAME, made)

    with owned_output(output, True), kept_on_interrupt(made, names, folder, output / GRID_NAME, write_finished):
        with loaded(plan) as (pipe, sliders):
            results = edit_images(
                pipe, sliders, plan.scale_lists, inputs, captions, method=method, start_noise=plan.start_noise,
                steps=plan.steps, guidance_scale=plan.guidance_scale, negative_prompt=plan.negative_prompt,
                edited_prompts=baseline_prompts, null_text_iterations=null_text_iterations,
                on_sample=keep if images else None, on_edit=finished.append,
            )
    samples = [sample for result in results for sample in result.samples]
    baseline_samples = [result.edited_prompt for result in results if result.edited_prompt is not None]
    references = {pair_key(s): s.image for s in samples if is_reference(s.multipliers)}
    rows = measure_samples(samples, measurer_instance, kind="slider", references=references)
    rows += measure_samples(baseline_samples, measurer_instance, kind="baseline", references=references)
    summary = summarise(rows, target=target, numeric=measurer_instance.numeric,
                        categorical=measurer_instance.categorical, slider_names=names)
    summary["quality"] = measured_quality(rows, measurer_instance, target, names)
    report = {
        "sliders_version": __version__,
        "settings": {
            "sliders": [{"name": name, "path": str(spec.path), "scales": list(spec_scales)}
                        for name, spec, spec_scales in zip(names, plan.specs, plan.scale_lists)],
            "edit": {"inversion": method, "scenes": scenes, "scene_seed": scene_seed, "scene_style": scene_style,
                     "size_word": size_word,
                     **({"null_text_iterations": null_text_iterations} if method == "null-text" else {})},
            "prompts": captions,
            "seeds": [0],
            "baseline_prompts": baseline_prompts,
            "measurer": measurer_name(measurer_instance),
            "measurer_settings": measurer_settings(measurer_instance),
            "target": target,
            "numeric": list(measurer_instance.numeric),
            "categorical": list(measurer_instance.categorical),
            "reference": "the scale-0 edit of each scene",
            "start_noise": plan.start_noise, "steps": plan.steps, "guidance_scale": plan.guidance_scale,
            "height": plan.resolution, "width": plan.resolution, "negative_prompt": plan.negative_prompt,
            "fused": False, "base_model": plan.model, **base_options_record(plan), "precision": plan.precision,
            "device": str(plan.device), "resolution": plan.resolution,
        },
        **summary,
        "reconstruction": reconstruction_figures(results, measurer_instance, target),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 2),
    }
    try:
        paths = write_report(jsonable(report), output)
        if images:
            for item in inputs:
                write_kept(item.image, output / INPUTS_FOLDER / f"{item.name}.png", made)
            paths["images"] = folder
            paths["grid"] = write_kept(edit_grid(results, names), output / GRID_NAME, made)
    except OSError as error:
        raise OutputError(f"could not write the report into '{output}' ({error.strerror or error})") from None
    logger.info("edited and measured %d scenes (%s) in %.1f s", scenes, method, report["seconds"])
    return paths

