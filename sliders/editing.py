"""`sliders-edit`: real images edited with sliders, each inverted once into the base model's trajectory
and regenerated with the sliders switched on from `start_noise` (the paper's real-image edits).

Holds the command's inputs (the image files, one prompt for all images or one each, each image read
as the image-slider folders are read: EXIF, RGB, centre crop, SDXL's added time ids from the real image
size), `edit_images`, which edits images in a loaded model (each inverted once for all its sliders and
scales, with the reconstruction PSNR and the warnings for inputs the model cannot draw), and
`run_editing`, which checks every input before the model loads and writes the edited images, a grid
whose first column is the input, and `edits.json`. The inversions themselves are `inversion`'s; the run
set-up is `planning`'s, the file writing `outputs`'. It does not train and does not measure sliders (see
`evaluation`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from . import __version__
from .config import (DEFAULT_INVERSION, EDIT_GUIDANCE, EDIT_START_NOISE, EDIT_STEPS, INVERSIONS,
                     NULL_TEXT_ITERATIONS)
from .data import IMAGE_EXTENSIONS, centre_square, read_rgb
from .errors import InputError
from .families import Family, family_of_pipe
from .files import write_text_atomic
from .generation import Sample, set_multipliers
from .grids import INPUT_LABEL, combination_label
from .inversion import (CORRECTION_WARN, FLOW_INVERSIONS, VAE_WARN_DB, decode_latents, encode_conditioning,
                        encode_image, invert, invert_flow, invert_flow_guarded, invert_guarded, make_flow_schedule,
                        make_schedule, regenerate, regenerate_flow)
from .diffusion import Conditioning, time_ids
from .network import SliderNetwork
from .outputs import GRID_NAME, distinct_stems, edit_name, kept_on_interrupt, owned_output, write_kept, write_png
from .parsing import SliderSpec
from .planning import GenerationSettings, RunPlan, base_options_record, loaded, plan_run

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

MAX_NULL_TEXT_ITERATIONS = 1000
MAX_IMAGES = 10_000
REPORT_NAME = "edits.json"


# --------------------------------------------------------------------------------------------------
# The command's inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditImage:
    """One input as the model sees it: the centre square at the run's resolution and its time ids."""

    path: Path
    name: str  # distinct among the run's inputs: it names the output files
    image: "Image.Image"  # (R, R) RGB: the grid's first column and the PSNR reference
    time_ids: torch.Tensor  # (6,): original size, crop top-left, target size


def check_image_files(paths: Sequence[str | Path]) -> tuple[Path, ...]:
    """Every `--image` exists and decodes as an image; a bad one is an InputError naming it."""
    if isinstance(paths, (str, Path)) or not paths:
        raise InputError("no image given; pass at least one --image photo.png")
    if len(paths) > MAX_IMAGES:
        raise InputError(f"{len(paths)} images in one run; give at most {MAX_IMAGES} (split the run)")
    checked = []
    for given in paths:
        path = Path(given)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise InputError(f"--image '{path}' {what}; give an image file ({'/'.join(IMAGE_EXTENSIONS)})")
        try:
            read_rgb(path)
        except Exception as error:  # PIL raises many types for a bad file
            raise InputError(f"--image '{path}' is not a readable image ({error}); re-export it as PNG or JPEG") from None
        checked.append(path)
    return tuple(checked)


def image_prompts(prompt: str | Sequence[str], count: int) -> tuple[str, ...]:
    """One prompt per image: a single text (or a list of one) serves every image; a list must have
    one per image, in the order of the images."""
    texts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else [None]
    for text in texts:
        if not isinstance(text, str):
            raise InputError(f"--prompt must be text, got {text!r}")
    if len(texts) == 1:
        return tuple(texts) * count
    if len(texts) != count:
        raise InputError(f"{len(texts)} prompts for {count} images; give one --prompt for all images or one per image, "
                         "in the order of the --image flags")
    return tuple(texts)


def prepare_image(path: Path, name: str, resolution: int) -> EditImage:
    """Read `path` as the image-slider folders are read (EXIF, RGB, centre square resized to
    `resolution`), with SDXL's added time ids from the real image: its size before resizing and
    where the square sits in the image resized so that its shorter side is `resolution`."""
    try:
        rgb = read_rgb(path)
    except Exception as error:
        raise InputError(f"--image '{path}' could not be read ({error}); re-export it as PNG or JPEG") from None
    width, height = rgb.size
    resized = resolution / min(width, height)
    crop = (round((height * resized - resolution) / 2), round((width * resized - resolution) / 2))
    ids = time_ids(resolution, resolution, crop, (height, width))
    return EditImage(path, name, centre_square(rgb, resolution), ids)


def psnr(image_a: "Image.Image", image_b: "Image.Image") -> float:
    """Peak signal-to-noise ratio in dB of two RGB images of one size (inf when identical)."""
    a = np.asarray(image_a.convert("RGB"), dtype=np.float64)
    b = np.asarray(image_b.convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr of images of sizes {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# --------------------------------------------------------------------------------------------------
# Editing images in a loaded model
# --------------------------------------------------------------------------------------------------


@dataclass
class Edited:
    """An image's edits: one Sample per scale combination (prompt_index = the image's index, prompt
    its prompt, seed 0), the reconstruction figures and, with an edited prompt, its regeneration."""

    image: EditImage
    prompt: str
    samples: list[Sample]
    inversion_seconds: float
    psnr_vae: float
    psnr_zero: float | None
    edited_prompt: Sample | None = None
    correction_ratio: float | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    inversion_used: str | None = None  # `guarded` records which inversion it chose


def _figure(value: float) -> float | None:
    return None if value is None else (round(value, 3) if math.isfinite(value) else None)


def edit_images(pipe, sliders: Sequence[SliderNetwork], scale_lists: Sequence[Sequence[float]],
                images: Sequence[EditImage], prompts: Sequence[str], *, method: str = DEFAULT_INVERSION,
                start_noise: float = EDIT_START_NOISE, steps: int = EDIT_STEPS,
                guidance_scale: float = EDIT_GUIDANCE, negative_prompt: str = "",
                edited_prompts: Sequence[str] | None = None, null_text_iterations: int = NULL_TEXT_ITERATIONS,
                on_edit: Callable[[Edited], None] | None = None, on_sample: Callable[[Sample], None] | None = None,
                ) -> list[Edited]:
    """Invert each image once (with its prompt: `prompts` has one per image) and regenerate it for
    every combination of the sliders' scales (cartesian product of `scale_lists`); with
    `edited_prompts` (one per image) also once with that prompt from `start_noise` on, sliders at 0.
    `sliders` must be attached to the pipeline's denoiser. `on_sample` gets each edited image as soon as
    it is made, `on_edit` each image's results once all are made. On a flow model (FLUX) the inversion
    runs on its flow ODE (`inversion`) and `guidance_scale` is its guidance embedding."""
    family = family_of_pipe(pipe)
    unet = family.denoiser(pipe)
    device = unet.device
    flow = family.flow_matching
    if flow and method not in FLOW_INVERSIONS:
        raise InputError(_flow_method_message(method, family))
    schedule = None if flow else make_schedule(pipe.scheduler.config, steps, device)
    combinations = list(itertools.product(*[tuple(float(s) for s in scales) for scales in scale_lists]))
    results = []
    for index, item in enumerate(images):
        texts = [prompts[index]] + ([edited_prompts[index]] if edited_prompts is not None else [])
        conds, uncond = encode_conditioning(pipe, texts, negative_prompt, item.time_ids, device)
        latents = encode_image(pipe.vae, item.image).to(device)
        psnr_vae = psnr(decode_latents(pipe.vae, latents), item.image)
        set_multipliers(sliders, [0.0] * len(sliders))
        if flow:
            schedule = make_flow_schedule(pipe.scheduler, steps, *latents.shape[-2:], device)
            if method == "guarded":
                inversion = invert_flow_guarded(unet, family, schedule, latents, conds[0], psnr_vae=psnr_vae,
                                                start_noise=start_noise, guidance=guidance_scale)
            else:
                inversion = invert_flow(unet, family, schedule, latents, conds[0], method=method,
                                        start_noise=start_noise, guidance=guidance_scale)
        elif method == "guarded":
            inversion = invert_guarded(unet, schedule, latents, conds[0], uncond, psnr_vae=psnr_vae,
                                       start_noise=start_noise, guidance_scale=guidance_scale)
        else:
            inversion = invert(unet, schedule, latents, conds[0], uncond, method=method, start_noise=start_noise,
                               guidance_scale=guidance_scale, null_text_iterations=null_text_iterations)
        logger.debug("inverted %s (%s) in %.1f s", item.path, method, inversion.seconds)

        def remake(scales: Sequence[float], edited: Conditioning | None = None) -> torch.Tensor:
            if flow:
                return regenerate_flow(unet, family, schedule, inversion, sliders, scales, start_noise=start_noise,
                                       guidance=guidance_scale, edited=edited)
            return regenerate(unet, schedule, inversion, sliders, scales, start_noise=start_noise,
                              guidance_scale=guidance_scale, edited=edited)

        samples = []
        for scales in combinations:
            out = remake(scales)
            samples.append(Sample(index, prompts[index], 0, tuple(scales), decode_latents(pipe.vae, out)))
            if on_sample is not None:
                on_sample(samples[-1])
        edited = None
        if edited_prompts is not None:
            out = remake([0.0] * len(sliders), edited=conds[1])
            edited = Sample(index, edited_prompts[index], 0, tuple(0.0 for _ in sliders), decode_latents(pipe.vae, out))
        zero = next((s for s in samples if all(m == 0 for m in s.multipliers)), None)
        result = Edited(
            image=item,
            prompt=prompts[index],
            samples=samples,
            inversion_seconds=inversion.seconds,
            psnr_vae=psnr_vae,
            psnr_zero=None if zero is None else psnr(zero.image, item.image),
            edited_prompt=edited,
            correction_ratio=inversion.correction_ratio,
            inversion_used=inversion.method,
        )
        result.warnings = representation_warnings(result)
        for warning in result.warnings:
            logger.warning("%s", warning)
        results.append(result)
        if on_edit is not None:
            on_edit(result)
    return results


# --------------------------------------------------------------------------------------------------
# The grid and the report
# --------------------------------------------------------------------------------------------------


def representation_warnings(result: Edited) -> list[str]:
    """One line each for what says the base model cannot represent this input (EVALUATION.md,
    "Edits off the training distribution", for the thresholds): its autoencoder's round trip below
    `VAE_WARN_DB`, or `direct`'s corrections above `CORRECTION_WARN` of the latents."""
    name = result.image.path.name
    warnings = []
    if math.isfinite(result.psnr_vae) and result.psnr_vae < VAE_WARN_DB:
        warnings.append(f"'{name}': the base model's autoencoder reproduces it at {result.psnr_vae:.1f} dB (below "
                        f"{VAE_WARN_DB:g}): edits cannot look like this input (--inversion guarded, the default, "
                        "edits it by plain DDIM); use a base model made for such images")
    if result.correction_ratio is not None and result.correction_ratio > CORRECTION_WARN:
        warnings.append(f"'{name}': the inversion's corrections reach {result.correction_ratio:.2f} of the latents "
                        f"(above {CORRECTION_WARN:g}): the model does not draw this image by itself; --inversion "
                        "guarded (the default) edits it by plain DDIM, --inversion direct keeps the corrections (exact "
                        "at scale 0, artefacts at other scales)")
    return warnings


def edit_grid(results: Sequence[Edited], slider_names: Sequence[str]) -> "Image.Image":
    """A row per input image (labelled with its prompt and file name), the input in the first column,
    then one column per scale combination."""
    from .grids import draw_grid

    columns = list(dict.fromkeys(s.multipliers for r in results for s in r.samples))
    cells = {}
    for row, result in enumerate(results):
        cells[(row, 0)] = result.image.image
        for sample in result.samples:
            cells[(row, 1 + columns.index(sample.multipliers))] = sample.image
    labels = [INPUT_LABEL] + [combination_label(slider_names, combo) for combo in columns]
    return draw_grid(cells, [(r.prompt, r.image.path.name) for r in results], labels)


def edit_report(results: Sequence[Edited], settings: dict) -> dict:
    """edits.json: the settings and, per image, its inversion time and reconstruction PSNR (of the
    VAE alone, and of the whole edit at scale 0 when every slider has 0 among its scales)."""
    rows = [
        {
            "image": str(r.image.path),
            "name": r.image.name,
            "time_ids": [int(v) for v in r.image.time_ids.tolist()],
            "inversion_seconds": round(r.inversion_seconds, 3),
            "psnr_vae_db": _figure(r.psnr_vae),
            "psnr_scale0_db": _figure(r.psnr_zero),
            "correction_ratio": _figure(r.correction_ratio),
            "inversion_used": r.inversion_used,
            "warnings": list(r.warnings),
        }
        for r in results
    ]
    zero = [r.psnr_zero for r in results if r.psnr_zero is not None]
    return {
        "sliders_version": __version__,
        "settings": settings,
        "images": rows,
        "mean_psnr_vae_db": _figure(float(np.mean([r.psnr_vae for r in results]))) if results else None,
        "mean_psnr_scale0_db": _figure(float(np.mean(zero))) if zero else None,
        "mean_inversion_seconds": round(float(np.mean([r.inversion_seconds for r in results])), 3) if results else None,
    }


def write_json(data: dict, path: Path) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------


def _flow_method_message(method: str, family: Family) -> str:
    return (f"--inversion {method} acts on the unconditional branch of classifier-free guidance, which "
            f"{family.label} does not use; choose {', '.join(FLOW_INVERSIONS)}")


def check_family_edit(plan: RunPlan, method: str) -> None:
    """Before the model loads: on a flow model (FLUX), an inversion that needs classifier-free guidance
    is one line (a negative prompt is refused by `plan_run`)."""
    if plan.family.flow_matching and method not in FLOW_INVERSIONS:
        raise InputError(_flow_method_message(method, plan.family))


def check_edit_settings(method: Any, null_text_iterations: Any) -> str:
    if not isinstance(method, str) or method not in INVERSIONS:
        raise InputError(f"--inversion {method!r} is unknown; choose one of {', '.join(INVERSIONS)}")
    if (isinstance(null_text_iterations, bool) or not isinstance(null_text_iterations, int)
            or not 1 <= null_text_iterations <= MAX_NULL_TEXT_ITERATIONS):
        raise InputError(f"--null_text_iterations must be a whole number from 1 to {MAX_NULL_TEXT_ITERATIONS}, "
                         f"got {null_text_iterations!r}")
    return method


def check_unfused(settings: GenerationSettings) -> None:
    """Edits regenerate with the sliders beside the denoiser's layers: `fused` is for generated images."""
    if settings.fused:
        raise InputError("--fused is for generated images; edits leave it off")


@dataclass
class EditRun:
    """What `run_editing` wrote."""

    images: list[Path]
    grid: Path
    report: Path
    results: list[Edited]


def run_editing(
    images: Sequence[str | Path],
    specs: Sequence[SliderSpec],
    scales: Sequence[float] | str | None,
    *,
    prompt: str | Sequence[str] = "",
    settings: GenerationSettings,
    method: str = DEFAULT_INVERSION,
    null_text_iterations: int = NULL_TEXT_ITERATIONS,
) -> EditRun:
    """Check everything, load the base model once, edit every image at every scale combination and
    write the images, `grid.png` (input first) and `edits.json`. `prompt` is one text for every image
    or one per image, in order; it may be empty. Of `settings` (`planning.plan_run`'s, without
    `fused`), `steps` None is EDIT_STEPS, `start_noise` None EDIT_START_NOISE and `guidance_scale`
    None EDIT_GUIDANCE, on a flow model (FLUX) its family's guidance embedding (3.5)."""
    method = check_edit_settings(method, null_text_iterations)
    check_unfused(settings)
    paths = check_image_files(images)
    prompts = image_prompts(prompt, len(paths))
    settings = settings.with_defaults(steps=EDIT_STEPS, start_noise=EDIT_START_NOISE)
    plan = plan_run(specs, scales, prompts, (0,), settings=settings)
    check_family_edit(plan, method)
    if settings.guidance_scale is None and not plan.family.flow_matching:
        plan = dataclasses.replace(plan, guidance_scale=EDIT_GUIDANCE)
    names = distinct_stems(paths)
    slider_names = plan.slider_names
    written: list[Path] = []
    made: list[Sample] = []
    results: list[Edited] = []

    def keep(sample: Sample) -> None:
        made.append(sample)
        name = edit_name(names[sample.prompt_index], sample.multipliers, slider_names)
        written.append(write_kept(sample.image, plan.output / name, made[:-1]))

    grid_path, report_path = plan.output / GRID_NAME, plan.output / REPORT_NAME
    recorded = {
        "inversion": method, "prompts": list(prompts), "negative_prompt": plan.negative_prompt, "steps": plan.steps,
        "start_noise": plan.start_noise, "guidance_scale": plan.guidance_scale, "resolution": plan.resolution,
        "precision": plan.precision, "model": plan.model, **base_options_record(plan),
        "sliders": [{"name": n, "path": str(s.path), "scales": list(v)}
                    for n, s, v in zip(slider_names, plan.specs, plan.scale_lists)],
    }
    if method == "null-text":
        recorded["null_text_iterations"] = null_text_iterations
    def write_finished() -> None:
        """On an interruption: the grid and report of the images whose every edit was made."""
        if results:
            write_png(edit_grid(results, slider_names), grid_path)
            write_json(edit_report(results, recorded), report_path)

    with owned_output(plan.output, True), kept_on_interrupt(made, slider_names, plan.output, grid_path, write_finished):
        with loaded(plan) as (pipe, sliders):
            prepared = [prepare_image(path, name, plan.resolution) for path, name in zip(paths, names)]
            edit_images(pipe, sliders, plan.scale_lists, prepared, prompts, method=method,
                        start_noise=plan.start_noise, steps=plan.steps, guidance_scale=plan.guidance_scale,
                        negative_prompt=plan.negative_prompt, null_text_iterations=null_text_iterations,
                        on_edit=results.append, on_sample=keep)
        write_kept(edit_grid(results, slider_names), grid_path, made)
        write_json(edit_report(results, recorded), report_path)
    return EditRun(written, grid_path, report_path, results)
