"""Generation with sliders: images at several slider strengths from the same seed (SPEC section 6).

Holds the one denoising loop the image-making commands share (`generate`, used by `sliders-sample`,
`sliders-eval` and the training previews), the switch that turns the sliders on once the timestep falls
to `start_noise` (`multipliers_at`, through the pipeline's public `callback_on_step_end`; no diffusers
class is patched), the seeded starting latents and the `Sample` each image comes back as. It checks its
own arguments (`parsing`) but reads no files, loads no model (see `planning`) and writes nothing (see
`outputs`); editing real images regenerates through `inversion` instead.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch

from .config import DEFAULT_START_NOISE, SAMPLE_STEPS
from .distributed import SINGLE, Processes
from .families import family_of_pipe
from .diffusion import vae_factor
from .network import SliderNetwork
from .parsing import check_prompts, check_resolution, check_scales, check_seeds, check_settings, check_size

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)


@dataclass
class Sample:
    """One generated image and what it was made from."""

    prompt_index: int
    prompt: str
    seed: int
    multipliers: tuple[float, ...]  # one per slider, in slider order
    image: "Image.Image"


def initial_latents(seed: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The raw N(0, 1) starting latents (1, C, h, w) for a seed, always drawn on the CPU.

    Drawing on the CPU makes a seed give the same image on any device; the pipeline multiplies by
    the scheduler's `init_noise_sigma` itself.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, channels, height, width), generator=generator, dtype=torch.float32)


def multipliers_at(timestep: float, scales: Sequence[float], start_noise: float) -> tuple[float, ...]:
    """Each slider's multiplier at `timestep`: 0 while the timestep is above `start_noise`, else its scale.

    Keeping the sliders off for the noisiest steps fixes the layout from the base model (SDEdit),
    so the slider changes the concept and not the composition.
    """
    if float(timestep) > start_noise:
        return tuple(0.0 for _ in scales)
    return tuple(float(scale) for scale in scales)


def set_multipliers(sliders: Sequence[SliderNetwork], multipliers: Sequence[float]) -> None:
    for slider, multiplier in zip(sliders, multipliers):
        slider.multiplier = multiplier


def _first_timestep(scheduler, steps: int) -> float:
    # A copy, because set_timesteps resets the pipeline scheduler's step state.
    schedule = copy.deepcopy(scheduler)
    schedule.set_timesteps(steps)
    return float(schedule.timesteps[0])


def _switch_callback(
    sliders: Sequence[SliderNetwork],
    scales: Sequence[float],
    start_noise: float,
    fuse: contextlib.ExitStack | None = None,
):
    """A `callback_on_step_end` that sets the multipliers for the step after step i.

    With `fuse` (a stack the caller closes after the pipeline call) the sliders are folded into the
    UNet weights when they switch on, instead of running through their hooks.
    """

    def on_step_end(pipeline, i: int, t, callback_kwargs: dict) -> dict:
        timesteps = pipeline.scheduler.timesteps
        if i + 1 < len(timesteps):
            _switch(sliders, multipliers_at(float(timesteps[i + 1]), scales, start_noise), fuse)
        return callback_kwargs

    return on_step_end


def _switch(sliders: Sequence[SliderNetwork], multipliers: Sequence[float], fuse: contextlib.ExitStack | None) -> None:
    """Set the multipliers where they change; with `fuse`, fold the sliders in once they are on.

    Within one image the multipliers change once (off above `start_noise`, on below), so a folded
    slider is not set again before the caller closes `fuse`, which puts the UNet weights back.
    """
    if tuple(slider.multiplier for slider in sliders) == tuple(float(m) for m in multipliers):
        return
    set_multipliers(sliders, multipliers)
    if fuse is not None and any(multipliers):
        for slider in sliders:
            fuse.enter_context(slider.fused())


def generate(
    pipe,
    sliders: Sequence[SliderNetwork],
    scale_lists: Sequence[Sequence[float]],
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    start_noise: float = DEFAULT_START_NOISE,
    steps: int = SAMPLE_STEPS,
    guidance_scale: float = 5.0,
    height: int,
    width: int,
    negative_prompt: str = "",
    fused: bool = False,
    on_sample: Callable[[Sample], None] | None = None,
    encoded: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    processes: Processes | None = None,
) -> list[Sample]:
    """One image per prompt x seed x combination of slider scales (cartesian product of `scale_lists`).

    For a prompt and seed every combination starts from the same latents and scheduler noise, so
    images differ only through the sliders. `sliders` must be attached to `pipe.unet`. Ordered by
    prompt, then seed, then combination. Every slider's multiplier is 0 afterwards, also on error.
    `fused` folds the sliders into the UNet weights for the steps they are on (`SliderNetwork.fused`:
    the same images up to float rounding, faster); the weights are put back after each image.
    `on_sample` is called with each image as soon as it is made (to write it, so that an
    interruption keeps the images already made).
    `encoded` maps each prompt to the pipeline's embedding arguments (`prompt_embeds`,
    `pooled_prompt_embeds` and their negatives), computed beforehand: the pipeline then needs no text
    encoder (training previews). With several `processes` the images are split by index modulo the
    number of processes, each made exactly as one process makes it (same latents, same generator),
    then gathered: every process returns them all, in order; `on_sample` is called on the main
    process only, once they are gathered.
    """
    if len(sliders) != len(scale_lists):
        raise ValueError(f"{len(sliders)} sliders but {len(scale_lists)} scale lists; give one list per slider")
    for slider in sliders:
        if not slider.attached:
            raise ValueError("a slider passed to generate() is not attached to the UNet; call attach() first")
    steps, start_noise_value, guidance = check_settings(steps, start_noise, guidance_scale)
    prompts = check_prompts(prompts)
    seeds = check_seeds(seeds)
    lists = [check_scales(scales, f"scales of slider {n + 1}") for n, scales in enumerate(scale_lists)]
    factor = vae_factor(pipe.vae)
    check_size(height, width, factor)

    pipe.set_progress_bar_config(disable=True)
    family = family_of_pipe(pipe)
    check_resolution(height, "image height", family, factor)
    check_resolution(width, "image width", family, factor)
    model = family.denoiser(pipe)
    channels = model.config.in_channels
    if family.flow_matching:
        # FLUX: the pipeline's sigmas start at 1 whatever their shift, so the first timestep is 1000; the
        # switch reads the flow schedule's own timesteps (sigma * 1000). Latents are 2x2-packed tokens.
        from .families.flux import pack

        channels //= 4
        first = float(pipe.scheduler.config.num_train_timesteps)
    else:
        first = _first_timestep(pipe.scheduler, steps)
    combinations = list(itertools.product(*lists))
    dtype = model.dtype
    # An empty negative prompt is passed as None: SDXL then uses zero embeddings
    # (force_zeros_for_empty_prompt), as a plain pipeline call without one does.
    negative = negative_prompt or None
    processes = processes or SINGLE
    samples: list[Sample] = []
    failure: Exception | None = None
    index = -1
    try:
        for prompt_index, prompt in enumerate(prompts):
            for seed in seeds:
                latents = initial_latents(seed, channels, height // factor, width // factor)
                for scales in combinations:
                    index += 1
                    if not processes.mine(index):
                        continue
                    logger.debug("prompt %d seed %d scales %s", prompt_index, seed, scales)
                    with contextlib.ExitStack() as stack:
                        fuse = stack if fused else None
                        # From all-off, so that `_switch` sees a change (and folds) even when the previous
                        # image ended at the same multipliers.
                        set_multipliers(sliders, [0.0] * len(sliders))
                        _switch(sliders, multipliers_at(first, scales, start_noise_value), fuse)
                        text = dict(encoded[prompt]) if encoded is not None else {
                            "prompt": prompt, "negative_prompt": negative}
                        start = latents.clone()
                        if family.flow_matching:  # no negative prompt (no CFG); packed latents
                            text.pop("negative_prompt", None)
                            if encoded is None:
                                text["max_sequence_length"] = family.sequence_length(pipe)
                            start = pack(start)
                        result = pipe(
                            **text,
                            num_inference_steps=steps,
                            guidance_scale=guidance,
                            # The pipeline moves latents to its execution device itself (which also
                            # works with CPU offload); only the dtype must match the UNet's.
                            latents=start.to(dtype=dtype),
                            # Stochastic schedulers draw noise each step; a fresh generator per image
                            # keeps that noise identical across scales too.
                            generator=torch.Generator("cpu").manual_seed(seed),
                            height=height,
                            width=width,
                            callback_on_step_end=_switch_callback(sliders, scales, start_noise_value, fuse),
                            output_type="pil",
                        )
                    samples.append(Sample(prompt_index, prompt, seed, tuple(scales), result.images[0]))
                    if on_sample is not None and not processes.several:
                        on_sample(samples[-1])
    except Exception as error:
        if not processes.several:
            raise
        failure = error  # told to the other processes below, so that none waits for this one
    finally:
        set_multipliers(sliders, [0.0] * len(sliders))
    if not processes.several:
        return samples
    processes.check(failure)
    shares = processes.gather(samples)
    # Process r made items r, r + N, r + 2N, ...: interleave the shares back into generation order.
    gathered = [shares[i % processes.world][i // processes.world] for i in range(index + 1)]
    if on_sample is not None and processes.is_main:
        for sample in gathered:
            on_sample(sample)
    return gathered
