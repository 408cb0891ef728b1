"""`sliders-sample`: images at several slider strengths from the same seed, and their labelled grid.

`run_sampling` is the command's whole run: its inputs checked into a plan before any model loads
(`planning.plan_run`), the base model loaded once with the sliders attached (`planning.loaded`), the
images made (`generation.generate`, split across processes under `accelerate launch`), each written as
soon as it is made, then the grid (`outputs`). It does not parse the command line (see `cli`), train,
or define the slider network (see `network`).

The names that lived here before the split stay importable from here: the parsers (`parsing`), the
loop (`generation`), the run set-up (`planning`), the file writing (`outputs`) and the grid (`grids`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

from .config import SAMPLE_STEPS
from .distributed import start as start_processes
from .generation import Sample, generate, initial_latents, multipliers_at, set_multipliers
from .grids import ROW_LABEL_WIDTH, combination_label, drawable, make_grid
from .outputs import (GRID_NAME, check_output_folder, distinct_stems, image_name, kept_on_interrupt, owned_output,
                      write_kept, write_png)
from .parsing import (SliderSpec, check_prompts, check_resolution, check_scales, check_seeds, parse_scales,
                      parse_slider_arg)
from .planning import (GenerationSettings, RunPlan, base_options_record, check_base_model, check_base_options,
                       check_fused, check_slider_file, family_settings, loaded, plan_run, read_vae_factor)

# `run_sampling`, and the names callers imported from here before the split (and before `grids`).
__all__ = [
    "GRID_NAME", "ROW_LABEL_WIDTH", "GenerationSettings", "RunPlan", "Sample", "SliderSpec", "base_options_record",
    "check_base_model", "check_base_options", "check_fused", "check_output_folder", "check_prompts",
    "check_resolution", "check_scales", "check_seeds", "check_slider_file", "combination_label", "distinct_stems",
    "drawable", "family_settings", "generate", "image_name", "initial_latents", "kept_on_interrupt", "loaded",
    "make_grid", "multipliers_at", "owned_output", "parse_scales", "parse_slider_arg", "plan_run", "read_vae_factor",
    "run_sampling", "set_multipliers", "write_kept", "write_png",
]

logger = logging.getLogger(__name__)

# The former private name of `write_png`, kept so existing callers of it still work.
_write_png = write_png


def run_sampling(
    specs: Sequence[SliderSpec],
    scales: Sequence[float],
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    settings: GenerationSettings,
) -> tuple[list[Path], Path]:
    """Validate everything, load the base model once, sample and write the images and `grid.png`.

    `settings.steps` None is SAMPLE_STEPS; the base model, resolution and start_noise left None are
    those recorded in the first slider's metadata, else its family's, and so is guidance_scale
    (`planning.plan_run`). Returns the image paths (in generation order) and the grid's path.
    """
    # Everything the user gave is checked before any model is loaded.
    settings = settings.with_defaults(steps=SAMPLE_STEPS)
    plan = plan_run(specs, scales, prompts, seeds, settings=settings)
    check_fused(settings.fused, plan)
    # Under `accelerate launch` each process makes its share of the images on its own device; the
    # main process writes them all (`generate` gathers them).
    processes = start_processes(plan.device)
    plan = dataclasses.replace(plan, device=processes.device)
    output, names = plan.output, plan.slider_names
    samples: list[Sample] = []
    paths: list[Path] = []

    def keep(sample: Sample) -> None:
        """Write each image as soon as it is made: an interruption keeps what was made."""
        samples.append(sample)  # in the grid even if Ctrl-C comes while it is written
        paths.append(write_kept(sample.image, output / image_name(sample, names), samples[:-1]))

    grid_path = output / GRID_NAME
    with processes.guard(), owned_output(plan.output, processes.is_main), \
            kept_on_interrupt(samples, names, output, output / GRID_NAME):
        processes.check()
        with loaded(plan) as (pipe, sliders):
            generate(
                pipe,
                sliders,
                plan.scale_lists,
                plan.prompts,
                plan.seeds,
                start_noise=plan.start_noise,
                steps=plan.steps,
                guidance_scale=plan.guidance_scale,
                height=plan.resolution,
                width=plan.resolution,
                negative_prompt=plan.negative_prompt,
                fused=settings.fused,
                on_sample=keep,
                processes=processes,
            )
        if processes.is_main:
            write_kept(make_grid(samples, names), grid_path, samples)
    logger.debug("wrote %d images and %s", len(paths), grid_path)
    return paths, grid_path
