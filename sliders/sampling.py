"""Sampling with sliders: images at several slider strengths from the same seed, and a labelled grid.

Holds the parsing and checking of slider/scale arguments, the generation loop (SPEC section 6) that
switches the sliders on once the timestep falls to `start_noise`, the image file names, and the run
set-up shared with `evaluation`: `plan_run` checks every input into a `RunPlan` before any model
loads, and `loaded` loads the base model once and attaches the sliders. `run_sampling` uses both
and writes the images and their grid atomically. It does not train, does not define the slider
network (see `network`), does not draw the grid (see `grids`) and does not load models itself (see
`models`).
The switch goes through the pipeline's public `callback_on_step_end`; no diffusers class is patched.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import math
import re
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import torch

from .config import PRECISION_ALIASES, QUANTIZE_MODES
from .distributed import SINGLE, Processes
from .distributed import start as start_processes
from .errors import InputError, Interrupted, OutputError, Terminated
from .families import SDXL, Family, check_family, family_of_pipe, family_of_slider, family_of_source
from .files import atomic_path
# Also imported from here by callers older than `grids`, hence the names this module does not use.
from .grids import ROW_LABEL_WIDTH, combination_label, drawable, make_grid  # noqa: F401
from .models import (DTYPES, check_quantize, check_transformer_file, load_pipeline, parse_device, quantize_denoiser,
                     resolve_model, vae_factor)
from .prompts import MAX_RESOLUTION
from .network import SliderNetwork, load_slider, read_slider_file
from .runs import RunLock, check_writable_folder, remove_leftovers

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_RESOLUTION = 1024
MAX_TIMESTEP = 1000
MAX_SCALE = 100  # a slider far beyond its trained range gives only noise; 1e30 overflows to a black image
GRID_NAME = "grid.png"


@dataclass(frozen=True)
class SliderSpec:
    """One slider file to sample with, and its own scales (None: use the global scales)."""

    path: Path
    scales: tuple[float, ...] | None


@dataclass
class Sample:
    """One generated image and what it was made from."""

    prompt_index: int
    prompt: str
    seed: int
    multipliers: tuple[float, ...]  # one per slider, in slider order
    image: "Image.Image"


# --------------------------------------------------------------------------------------------------
# Argument parsing and validation (no torch work, no model loads)
# --------------------------------------------------------------------------------------------------


def _finite_float(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise InputError(f"{what} has {value!r}, which is not a number; give numbers such as -2,0,2")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InputError(f"{what} has {value!r}, which is not a number; give numbers such as -2,0,2") from None
    if not math.isfinite(number):
        raise InputError(f"{what} has {value!r}, which is not finite; give finite numbers such as -2,0,2")
    if abs(number) > MAX_SCALE:
        raise InputError(f"{what} has {value!r}; slider scales from -{MAX_SCALE} to {MAX_SCALE} are meaningful "
                         "(sliders are trained at about -2 to 2)")
    # -0.0 would otherwise be labelled and named "-0", a different file from "+0".
    return number + 0.0


def parse_scales(text: str, what: str = "--scales") -> tuple[float, ...]:
    """'-2,0,2' -> (-2.0, 0.0, 2.0); an empty, non-numeric or non-finite entry is an InputError."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{what} is empty; give comma-separated numbers such as -2,0,2")
    parts = [part.strip() for part in text.split(",")]
    if any(not part for part in parts):
        raise InputError(f"{what} {text!r} has an empty entry; give comma-separated numbers such as -2,0,2")
    return tuple(_finite_float(part, what) for part in parts)


def parse_slider_arg(text: str) -> SliderSpec:
    """'x.safetensors' or 'x.safetensors:-2,0,2' (the slider's own scales).

    Only the last ':' can separate scales, and only when what follows it parses as scales, so
    paths with colons (drive letters, odd folder names) still work.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError("--slider is empty; give a slider file, optionally with scales: age.safetensors:-2,0,2")
    text = text.strip()
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scales = parse_scales(tail, f"scales of --slider {head}")
        except InputError:
            # A slider file followed by something that is not scales is a typo in the scales, not a
            # file name with a colon; say so rather than "file does not exist".
            if head.lower().endswith((".safetensors", ".pt", ".ckpt", ".pth")):
                raise
        else:
            return SliderSpec(Path(head), scales)
    return SliderSpec(Path(text), None)


def check_scales(scales: Sequence[Any], what: str) -> tuple[float, ...]:
    """Scales as text (read by `parse_scales`) or as numbers (at least one, finite, none repeated) -> floats.

    A bad value is an InputError naming `what`.
    """
    if isinstance(scales, str):
        return parse_scales(scales, what)
    values = tuple(_finite_float(value, what) for value in scales)
    if not values:
        raise InputError(f"{what} is empty; give at least one scale such as -2,0,2")
    labels = [f"{value:+g}" for value in values]
    if len(set(labels)) != len(labels):
        raise InputError(f"{what} {', '.join(labels)} repeats a scale; give each scale once")
    return values


def check_seeds(seeds: Sequence[Any]) -> tuple[int, ...]:
    """Seeds as whole numbers (or their text) from 0 to 2**64-1, at least one, none repeated."""
    if isinstance(seeds, (str, int)) or not seeds:
        raise InputError("no seeds given; pass at least one whole-number seed, e.g. --seeds 0,1")
    checked = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, str)):
            raise InputError(f"seed {seed!r} is not a whole number; write e.g. --seeds 0,1")
        try:
            value = int(seed.strip()) if isinstance(seed, str) else int(seed)
        except ValueError:
            raise InputError(f"seed {seed!r} is not a whole number; write e.g. --seeds 0,1") from None
        if not 0 <= value < 2**64:
            raise InputError(f"seed {value} is out of range; use a whole number from 0 to 2**64-1")
        checked.append(value)
    if len(set(checked)) != len(checked):
        raise InputError(f"seeds {checked} repeat a seed; give each seed once")
    return tuple(checked)


def check_prompts(prompts: Sequence[Any]) -> tuple[str, ...]:
    """At least one prompt, each of them text (a single text is not a list of prompts)."""
    if isinstance(prompts, str) or not prompts:
        raise InputError("no prompt given; pass at least one --prompt")
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise InputError(f"prompt {prompt!r} is not text; pass prompts as text with --prompt")
    return tuple(prompts)


def _check_settings(steps: Any, start_noise: Any, guidance_scale: Any) -> tuple[int, float, float]:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TIMESTEP:
        raise InputError(f"--steps must be a whole number from 1 to {MAX_TIMESTEP} (the noise schedule's length), "
                         f"got {steps!r}")
    if isinstance(start_noise, bool) or not isinstance(start_noise, (int, float)) or not math.isfinite(start_noise):
        raise InputError(f"--start_noise must be a number from 0 to {MAX_TIMESTEP}, got {start_noise!r}")
    if not 0 <= start_noise <= MAX_TIMESTEP:
        raise InputError(f"--start_noise must be from 0 to {MAX_TIMESTEP}, got {start_noise!r}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise InputError(f"--guidance_scale must be a number, got {guidance_scale!r}")
    if not math.isfinite(guidance_scale):
        raise InputError(f"--guidance_scale must be a finite number, got {guidance_scale!r}")
    return steps, float(start_noise), float(guidance_scale)


def family_settings(metadata: Mapping[str, str], start_noise: Any, guidance_scale: Any) -> tuple[Any, Any]:
    """(start_noise, guidance_scale) as given, else the slider's recorded start_noise and its family's
    defaults (`sliders.families`; SDXL for a file that names no family)."""
    family = family_of_slider(metadata) or SDXL
    if start_noise is None:
        try:
            start_noise = float(metadata["sliders_start_noise"])
        except (KeyError, ValueError):
            start_noise = family.defaults.start_noise
    if guidance_scale is None:
        guidance_scale = family.defaults.guidance_scale
    return start_noise, guidance_scale


def _check_multiple(value: Any, multiple: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < multiple or value % multiple:
        raise InputError(f"{what} {value!r} must be a positive multiple of {multiple}; pick e.g. 512 or 1024")
    if value > MAX_RESOLUTION:
        raise InputError(f"{what} {value!r} is larger than {MAX_RESOLUTION}; pick e.g. 512 or 1024")


def _check_size(height: Any, width: Any, factor: int, what: str = "image") -> None:
    # SDXL pipelines need multiples of 8; the latent grid also needs whole VAE cells.
    multiple = math.lcm(8, factor)
    _check_multiple(height, multiple, f"{what} height")
    _check_multiple(width, multiple, f"{what} width")


def read_vae_factor(model: str, family: Family) -> int:
    """Pixels per latent cell of a base model's VAE, from its `vae/config.json` without weights (a diffusers
    folder, the built-in models, a hub id in the local cache); the family's usual VAE where that cannot be read."""
    from diffusers import AutoencoderKL

    source = resolve_model(model)
    path = Path(source).expanduser()
    if not path.is_file():
        try:
            config = AutoencoderKL.load_config(str(path) if path.is_dir() else source, subfolder="vae")
            return 2 ** (len(config["block_out_channels"]) - 1)
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.debug("no VAE config for %s before loading it: %s", source, error)
    return family.defaults.vae_factor


def check_resolution(value: int, what: str, family: Family, factor: int) -> None:
    """One line when an image side does not fit the family's latents: FLUX packs 2x2 latent cells
    into a token, so its sides are multiples of twice the VAE factor (16 px), not only of 8."""
    multiple = family.pixel_multiple(factor)
    if value % multiple:
        low = max(multiple, value // multiple * multiple)
        raise InputError(f"{what} {value} is not a multiple of {multiple}, which {family.label} needs ({factor} px "
                         f"latent cells{' in 2x2 patches' if multiple == 2 * factor else ''}); pick {low} or "
                         f"{low + multiple}")


def _metadata_resolution(metadata: dict[str, str], path: Path) -> int | None:
    text = metadata.get("sliders_resolution")
    if text is None:
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise InputError(
            f"slider file '{path}' records resolution {text!r}, which is not a whole number; pass --resolution"
        ) from None
    return value


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


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
    start_noise: int = 750,
    steps: int = 50,
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
    steps, start_noise_value, guidance = _check_settings(steps, start_noise, guidance_scale)
    prompts = check_prompts(prompts)
    seeds = check_seeds(seeds)
    lists = [check_scales(scales, f"scales of slider {n + 1}") for n, scales in enumerate(scale_lists)]
    factor = vae_factor(pipe.vae)
    _check_size(height, width, factor)

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


# --------------------------------------------------------------------------------------------------
# File names
# --------------------------------------------------------------------------------------------------


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_.") or "slider"


def image_name(sample: Sample, slider_names: Sequence[str]) -> str:
    """'p0_s42_age+2_smile-1.png': prompt index, seed, each slider's name and scale; filesystem-safe."""
    parts = [f"p{sample.prompt_index}", f"s{sample.seed}"]
    parts += [f"{_safe(name)}{value:+g}" for name, value in zip(slider_names, sample.multipliers)]
    return "_".join(parts) + ".png"


def write_png(image: "Image.Image", path: Path) -> Path:
    """Save as PNG through a temporary file in the same folder, renamed into place."""
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return path


# The former private name, kept so existing callers of it still work.
_write_png = write_png


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------


def distinct_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, made distinct ('age', 'age_2') so labels and file names never collide."""
    names: list[str] = []
    for path in paths:
        name, count = path.stem, 2
        while name in names:
            name, count = f"{path.stem}_{count}", count + 1
        names.append(name)
    return names


def check_slider_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """What a slider file holds, checked before any model loads: UNet LoRA keys of a known naming, a
    down and an up weight for every layer, and only finite numbers (a diverged slider, NaN or
    infinite, gives black images: refused with its layer named). Whether the layers fit the base
    model is `check_base_model`'s."""
    from .formats import SDXL_BASE_UNET_CONFIG, parse_tensors

    config = dict(SDXL_BASE_UNET_CONFIG)
    try:  # the recorded UNet config places LDM names exactly; SDXL's serves for the key check otherwise
        config = dict(json.loads(metadata["sliders_unet_config"]))
    except (KeyError, TypeError, ValueError):
        pass
    where = f"slider file '{path}'"
    parsed = parse_tensors(tensors, metadata, config, where)
    if not parsed.layers:
        raise InputError(f"{where} holds no UNet LoRA weights; re-train or re-save it")
    for parts in parsed.layers.values():
        if parts.down is None or parts.up is None:
            raise InputError(f"{where} lacks the down or up weight of '{parts.key}'; the file is incomplete")
        for which, tensor in (("down", parts.down), ("up", parts.up)):
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise InputError(f"{where} has NaN or infinite {which} weights in layer '{parts.key}' (its training "
                                 "diverged); use an earlier checkpoint of the run")
        if parts.alpha is not None and not math.isfinite(parts.alpha):
            raise InputError(f"{where} has a non-finite alpha in layer '{parts.key}'; the file is damaged")


def check_base_model(
    specs: Sequence[SliderSpec], contents: Sequence[tuple[dict, dict]], model: str, *, given: bool
) -> None:
    """Before the model loads: the base model exists where it is a local path, and every slider fits it.

    `contents` holds each slider's (tensors, metadata); `given` says whether `model` came from
    --pretrained_model rather than the first slider's record. A slider fits when `network.load_slider`
    rebuilds it on the model's UNet built on the meta device from the model's own UNet config (layer
    names and shapes, no weights): the check the load makes, made before it. A model whose config
    cannot be read without loading it (a single-file checkpoint, a hub id out of reach) is checked
    when it is loaded.
    """
    from .export import meta_unet
    from .models import missing_model, read_unet_config, resolve_model

    first = specs[0].path
    source = "--pretrained_model" if given else f"recorded in slider file '{first}'"
    if missing_model(model) is not None:
        fix = "give" if given else "pass --pretrained_model with"
        raise InputError(f"base model '{model}' ({source}) does not exist; {fix} the base model's diffusers "
                         "folder, .safetensors file or hub id")
    # A slider of another family can fit a UNet's shapes (noxattn skips the cross-attention whose width
    # differs), so the family is compared first, from the files of both.
    model_family = family_of_source(resolve_model(model))
    for spec, (_, metadata) in zip(specs, contents):
        check_family(str(spec.path), metadata, model_family, model)
    config = read_unet_config(model)
    if config is None:
        logger.debug("base model %s: its UNet layout is known once loaded; the sliders are checked then", model)
        return
    # Rebuilding a slider draws initial weights before its own replace them: leave the generator as it was.
    with torch.random.fork_rng(devices=[]):
        unet = meta_unet(config)
        for spec, (tensors, metadata) in zip(specs, contents):
            load_slider(spec.path, unet, attach=False, base=f"base model '{model}' ({source})",
                        fix="pass --pretrained_model with the base model the slider was trained on",
                        contents=(tensors, metadata))


@dataclass(frozen=True)
class RunPlan:
    """Every input of a sampling or evaluation run, checked and resolved; `plan_run` builds it.

    `scale_lists` holds one tuple of scales per slider (its own or the global ones), `precision`
    the canonical name (fp32, fp16 or bf16) of `dtype`, `model` and `resolution` the values given
    or else those from the first slider's metadata, `slider_names` the distinct labels of `specs`.
    """

    specs: tuple[SliderSpec, ...]
    scale_lists: tuple[tuple[float, ...], ...]
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    start_noise: float
    guidance_scale: float
    negative_prompt: str
    precision: str
    dtype: torch.dtype
    device: torch.device
    model: str
    resolution: int
    output: Path
    slider_names: tuple[str, ...]
    family: Family = SDXL  # the base model's family (its files, else the first slider's record)
    transformer: Path | None = None  # FLUX.1: a single-file transformer replacing the model's (--transformer)
    quantize: str = "none"  # FLUX.1: the transformer's block Linears in 8bit or 4bit (--quantize)


def plan_run(
    specs: Sequence[SliderSpec] | SliderSpec,
    scales: Sequence[float] | str | None,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    output: str | Path,
    start_noise: int | float,
    steps: int,
    guidance_scale: float,
    pretrained_model: str | None,
    device: str | None,
    precision: str,
    resolution: int | None,
    negative_prompt: str,
    transformer: str | Path | None = None,
    quantize: str = "none",
) -> RunPlan:
    """Check every input of a run and resolve its defaults, without loading any model.

    Reads each slider file's metadata (an InputError when one is missing or unreadable); a slider
    without its own scales uses `scales`. The base model and resolution default to those recorded
    in the first slider's metadata (`sliders_base_model`, `sliders_resolution`; 1024 when none is
    recorded), with a warning for a later slider recorded on another base model. That base model
    must exist and every slider must fit its UNet (`check_base_model`, from configs, no weights).
    The resolution is checked against the VAE only once the model is loaded (see `loaded`).
    On FLUX.1, `transformer` (a BFL single file) and `quantize` are checked as training checks
    `pretrained_model.transformer` and `.quantize` (`check_base_options`), and a negative prompt
    is refused (no classifier-free guidance to use it).
    """
    if isinstance(specs, SliderSpec):
        specs = [specs]
    if not specs:
        raise InputError("no slider given; pass at least one --slider file.safetensors")
    specs = tuple(specs)
    contents = []
    for spec in specs:
        tensors, metadata = read_slider_file(spec.path)
        check_slider_file(spec.path, tensors, metadata)
        contents.append((tensors, metadata))
    metadatas = [metadata for _, metadata in contents]
    global_scales: tuple[float, ...] | None = None
    if any(spec.scales is None for spec in specs):
        global_scales = check_scales(scales if scales is not None else (), "--scales")
    scale_lists = tuple(
        check_scales(spec.scales, f"scales of --slider {spec.path}") if spec.scales is not None else global_scales
        for spec in specs
    )
    prompts = check_prompts(prompts)
    seeds = check_seeds(seeds)
    start_noise, guidance_scale = family_settings(metadatas[0], start_noise, guidance_scale)
    steps, start_noise_value, guidance = _check_settings(steps, start_noise, guidance_scale)
    if not isinstance(negative_prompt, str):
        raise InputError(f"--negative_prompt must be text, got {negative_prompt!r}")
    if not isinstance(precision, str) or precision.lower() not in PRECISION_ALIASES:
        raise InputError(f"--precision {precision!r} is unknown; choose fp32, fp16 or bf16")
    precision = PRECISION_ALIASES[precision.lower()]
    torch_device = parse_device(device)

    first = specs[0].path
    model = pretrained_model or metadatas[0].get("sliders_base_model")
    if not model:
        raise InputError(f"slider file '{first}' does not record its base model; pass --pretrained_model")
    if pretrained_model is None:
        for spec, metadata in zip(specs[1:], metadatas[1:]):
            other = metadata.get("sliders_base_model")
            if other and other != model:
                logger.warning("slider '%s' was trained on %s, not %s; it may not fit", spec.path, other, model)
    if resolution is None:
        recorded = _metadata_resolution(metadatas[0], first)
        default = (family_of_slider(metadatas[0]) or SDXL).defaults.sample_resolution
        resolution = default if recorded is None else recorded
        logger.debug("resolution %d (from slider metadata or the default)", resolution)
    _check_multiple(resolution, 8, "--resolution")

    output = Path(output)
    try:
        occupied = output.exists() and not output.is_dir()
    except OSError:  # a name too long, say: `check_output_folder` says so before the model loads
        occupied = False
    if occupied:
        raise InputError(f"output '{output}' exists and is not a folder; choose another --output")
    check_base_model(specs, contents, model, given=bool(pretrained_model))
    family = family_of_source(resolve_model(model)) or family_of_slider(metadatas[0]) or SDXL
    if family.flow_matching:  # known before the model loads, from its VAE config
        check_resolution(resolution, "--resolution", family, read_vae_factor(model, family))
        if negative_prompt:  # FluxPipeline would drop it without a word
            raise InputError(f"--negative_prompt has no effect on {family.label} (it has no classifier-free "
                             "guidance); remove it")
    transformer_path, quantize = check_base_options(model, family, transformer, quantize, torch_device,
                                                    DTYPES[precision])
    return RunPlan(
        specs=specs,
        scale_lists=scale_lists,
        prompts=prompts,
        seeds=seeds,
        steps=steps,
        start_noise=start_noise_value,
        guidance_scale=guidance,
        negative_prompt=negative_prompt,
        precision=precision,
        dtype=DTYPES[precision],
        device=torch_device,
        model=model,
        resolution=resolution,
        output=output,
        slider_names=tuple(distinct_stems([spec.path for spec in specs])),
        family=family,
        transformer=transformer_path,
        quantize=quantize,
    )


def check_base_options(model: str, family: Family, transformer: str | Path | None, quantize: Any,
                       device: torch.device, dtype: torch.dtype) -> tuple[Path | None, str]:
    """`--transformer` and `--quantize` before the model loads, as training checks its config keys: FLUX.1
    only, a readable BFL transformer file, a bitsandbytes that runs `quantize` layers on `device`.
    Returns (the transformer file or None, the quantize mode)."""
    if not isinstance(quantize, str) or quantize.lower() not in QUANTIZE_MODES:
        raise InputError(f"--quantize {quantize!r} is unknown; choose {', '.join(QUANTIZE_MODES)}")
    quantize = quantize.lower()
    for flag, on in (("--transformer", bool(transformer)), ("--quantize", quantize != "none")):
        if on and not family.flow_matching:
            raise InputError(f"{flag} is for FLUX.1, but base model '{model}' is {family.label}; leave it out")
    path = check_transformer_file(str(transformer), "--transformer") if transformer else None
    check_quantize(quantize, family, device, dtype, "--quantize")
    return path, quantize


@contextmanager
def loaded(plan: RunPlan, *, loader: Callable | None = None) -> Iterator[tuple[Any, list[SliderNetwork]]]:
    """Load the plan's base model once, check its resolution against the VAE and attach its sliders.

    Yields `(pipe, sliders)`, the sliders in the order of `plan.specs`, and detaches every attached
    slider on exit, also on error. `loader` is called as `loader(model, dtype, device)` in place of
    this module's `load_pipeline` (a caller passes its own so that it can be replaced there).
    """
    logger.info("loading base model %s (%s on %s)", plan.model, plan.precision, plan.device)
    pipe = _load_base(plan, loader or load_pipeline)
    _check_multiple(plan.resolution, math.lcm(8, vae_factor(pipe.vae)), "--resolution")
    check_resolution(plan.resolution, "--resolution", family_of_pipe(pipe), vae_factor(pipe.vae))
    sliders: list[SliderNetwork] = []
    try:
        for spec in plan.specs:
            sliders.append(load_slider(spec.path, family_of_pipe(pipe).denoiser(pipe), attach=True, base=f"base model '{plan.model}'",
                                       fix="pass --pretrained_model with the base model the slider was trained on"))
            logger.info("attached slider %s (%d layers)", spec.path, len(sliders[-1].loras))
        yield pipe, sliders
    finally:
        for slider in sliders:
            slider.detach()


def base_options_record(plan: RunPlan) -> dict:
    """`--transformer` and `--quantize` for a run's report, where given (nothing otherwise)."""
    record = {"transformer": str(plan.transformer)} if plan.transformer else {}
    return {**record, "quantize": plan.quantize} if plan.quantize != "none" else record


def check_fused(fused: bool, plan: RunPlan) -> None:
    """`fused` folds the sliders into the denoiser's weights, which `--quantize` keeps as integers."""
    if fused and plan.quantize != "none":
        raise InputError(f"--fused folds the sliders into the transformer's weights, which --quantize {plan.quantize} "
                         "stores quantized; leave --fused off (the sliders then run beside the quantized layers)")


def _load_base(plan: RunPlan, loader: Callable):
    """The plan's pipeline on its device: with `plan.transformer` the transformer from that file, with
    `plan.quantize` its blocks quantized layer by layer onto the device before the rest moves there
    (the float weights never reach it), as training does."""
    extra = {"transformer": str(plan.transformer)} if plan.transformer else {}
    if plan.quantize == "none":
        return loader(plan.model, plan.dtype, plan.device, **extra)
    pipe = loader(plan.model, plan.dtype, "cpu", **extra)
    family = family_of_pipe(pipe)
    quantize_denoiser(family.denoiser(pipe), plan.quantize, plan.device, family, plan.dtype, "--quantize")
    return pipe.to(plan.device)


def run_sampling(
    specs: Sequence[SliderSpec],
    scales: Sequence[float],
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    output: str | Path,
    start_noise: int = 750,
    steps: int = 50,
    guidance_scale: float = 5.0,
    pretrained_model: str | None = None,
    device: str | None = None,
    precision: str = "fp32",
    resolution: int | None = None,
    negative_prompt: str = "",
    fused: bool = False,
    transformer: str | Path | None = None,
    quantize: str = "none",
) -> tuple[list[Path], Path]:
    """Validate everything, load the base model once, sample and write the images and `grid.png`.

    The base model and resolution default to those recorded in the first slider's metadata
    (`sliders_base_model`, `sliders_resolution`; 1024 when none is recorded). On FLUX.1,
    `transformer` and `quantize` are `plan_run`'s. Returns the image paths (in generation order)
    and the grid's path.
    """
    # Everything the user gave is checked before any model is loaded.
    plan = plan_run(
        specs, scales, prompts, seeds, output=output, start_noise=start_noise, steps=steps,
        guidance_scale=guidance_scale, pretrained_model=pretrained_model, device=device, precision=precision,
        resolution=resolution, negative_prompt=negative_prompt, transformer=transformer, quantize=quantize,
    )
    check_fused(fused, plan)
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
                fused=fused,
                on_sample=keep,
                processes=processes,
            )
        if processes.is_main:
            write_kept(make_grid(samples, names), grid_path, samples)
    logger.debug("wrote %d images and %s", len(paths), grid_path)
    return paths, grid_path


def check_output_folder(output: Path) -> Path:
    """An output folder that can be made and written, checked before any model loads (nothing is left behind)."""
    return check_writable_folder(output, "output folder", "choose another --output")


@contextmanager
def owned_output(output: Path, is_main: bool) -> Iterator[None]:
    """On the main process: check the output folder, then hold its lock for the block (a second
    sampler or evaluation on the same folder is refused, naming this one) and remove the temporary
    files a killed run left there. The other processes write nothing."""
    if not is_main:
        yield
        return
    check_output_folder(output)
    created = not output.exists()
    try:
        with RunLock(output, "output folder", "choose another --output"):
            remove_leftovers(output)
            yield
    finally:
        if created and output.is_dir() and not any(output.iterdir()):
            output.rmdir()  # a run that wrote nothing leaves no folder behind


@contextmanager
def kept_on_interrupt(samples: list[Sample], names: Sequence[str], folder: Path, grid: Path,
                      write: Callable[[], None] | None = None) -> Iterator[None]:
    """Ctrl-C or SIGTERM in the block: write the grid of the `samples` made so far (their images are
    written already), or call `write` to write it, and raise `Interrupted` saying what was kept. A
    failed write says what was kept."""
    try:
        yield
    except KeyboardInterrupt as stop:
        number = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
        if not samples:
            raise Interrupted("no image was written", number) from None
        try:
            if write is None:
                write_png(make_grid(samples, names), grid)
            else:
                write()
        except OSError as error:
            raise Interrupted(f"kept {len(samples)} images in '{folder}'; the grid could not be written "
                              f"({error.strerror or error})", number) from None
        raise Interrupted(f"kept {len(samples)} images in '{folder}' and their grid '{grid}'", number) from None


def write_kept(image: "Image.Image", path: Path, kept: Sequence[Sample]) -> Path:
    """`write_png`, with a failed write (disk full, folder removed) one `OutputError` saying what is kept."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_png(image, path)
    except OSError as error:
        raise OutputError(f"could not write '{path}' ({error.strerror or error}); kept the {len(kept)} images "
                          f"written before it in '{path.parent}'") from None
