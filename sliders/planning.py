"""The set-up a run that makes images with slider files shares: its inputs checked into a `RunPlan`, then loaded.

`plan_run` reads every slider file's records and checks every input before any model loads: the files
themselves (`check_slider_file`), that they fit the base model (`check_base_model`, from its configs, no
weights), FLUX.1's `--transformer` and `--quantize` (`check_base_options`), and the defaults a slider
records (base model, resolution, start_noise, guidance). `loaded` then loads the base model once,
checks the resolution against its VAE and attaches the sliders. `sliders-sample`, `sliders-eval` and
`sliders-edit` all start this way, from the flags they share held once in a `GenerationSettings`. It
parses no text (see `parsing`), generates nothing (see `generation`), writes nothing (see `outputs`)
and loads models only through `models`.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from .config import PRECISION_ALIASES, QUANTIZE_MODES
from .errors import InputError
from .families import SDXL, Family, check_family, family_of_pipe, family_of_slider, family_of_source
from .models import (DTYPES, check_quantize, check_transformer_file, load_pipeline, parse_device, quantize_denoiser,
                     resolve_model, vae_factor)
from .network import SliderNetwork, load_slider, read_slider_file
from .outputs import distinct_stems
from .parsing import (SliderSpec, check_multiple, check_prompts, check_resolution, check_scales, check_seeds,
                      check_settings, recorded_resolution)
from .slider_files import recorded_start_noise

logger = logging.getLogger(__name__)


def family_settings(metadata: Mapping[str, str], start_noise: Any, guidance_scale: Any) -> tuple[Any, Any]:
    """(start_noise, guidance_scale) as given, else the slider's recorded start_noise
    (`slider_files.recorded_start_noise`) and its family's guidance (`sliders.families`; SDXL for a file
    that names no family)."""
    if start_noise is None:
        start_noise = recorded_start_noise(metadata)
    if guidance_scale is None:
        guidance_scale = (family_of_slider(metadata) or SDXL).defaults.guidance_scale
    return start_noise, guidance_scale


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
    from .convert import meta_unet
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
    """Every input of a sampling, evaluation or editing run, checked and resolved; `plan_run` builds it.

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


@dataclass(frozen=True)
class GenerationSettings:
    """How a run makes its images and where it writes them: the flags sliders-sample, sliders-eval and
    sliders-edit share (`commands.images.generation_settings` builds it from them). A field left None
    takes the run's own default (`with_defaults`; each run function names its).

    `output` the folder the run writes into; `start_noise` the timestep above which the sliders are off
    (None: the first slider's recorded value, else its family's); `steps` the denoising steps;
    `guidance_scale` classifier-free guidance, on FLUX.1 its guidance embedding (None: the first
    slider's family's); `pretrained_model` the base model (None: the one the first slider records);
    `device` cpu, cuda, cuda:1 or a GPU index (None: the first GPU, else the CPU); `precision` the
    model dtype, fp32, fp16 or bf16; `resolution` the image size (None: the first slider's training
    resolution, else its family's); `negative_prompt` the negative prompt (none on FLUX.1);
    `transformer` FLUX.1 only, a single-file transformer replacing the model's; `quantize` FLUX.1
    only, the transformer's block Linears in none, 8bit or 4bit; `fused` the sliders folded into the
    denoiser's weights while they are on (sampling and evaluation only, fp32 only).
    """

    output: str | Path
    start_noise: float | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    pretrained_model: str | None = None
    device: str | None = None
    precision: str = "fp32"
    resolution: int | None = None
    negative_prompt: str = ""
    transformer: str | Path | None = None
    quantize: str = "none"
    fused: bool = False

    def with_defaults(self, *, steps: int, start_noise: float | None = None) -> GenerationSettings:
        """These settings with a run's own `steps` and `start_noise` where they were left None (a
        `start_noise` still None is `plan_run`'s: the slider's recorded value, else its family's)."""
        return replace(self, steps=steps if self.steps is None else self.steps,
                       start_noise=start_noise if self.start_noise is None else self.start_noise)


def plan_run(
    specs: Sequence[SliderSpec] | SliderSpec,
    scales: Sequence[float] | str | None,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    settings: GenerationSettings,
) -> RunPlan:
    """Check every input of a run and resolve its defaults, without loading any model.

    `settings` holds the run's generation settings, its own defaults already in place
    (`GenerationSettings.with_defaults`); `settings.fused` is the run's to check (`check_fused`).
    Reads each slider file's metadata (an InputError when one is missing or unreadable); a slider
    without its own scales uses `scales`. The base model and resolution default to those recorded
    in the first slider's metadata (`sliders_base_model`, `sliders_resolution`; else its family's sample
    resolution), with a warning for a later slider recorded on another base model; `start_noise` and
    `guidance_scale` None to its recorded or family values (`family_settings`). That base model
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
    start_noise, guidance_scale = family_settings(metadatas[0], settings.start_noise, settings.guidance_scale)
    steps, start_noise_value, guidance = check_settings(settings.steps, start_noise, guidance_scale)
    negative_prompt, precision = settings.negative_prompt, settings.precision
    if not isinstance(negative_prompt, str):
        raise InputError(f"--negative_prompt must be text, got {negative_prompt!r}")
    if not isinstance(precision, str) or precision.lower() not in PRECISION_ALIASES:
        raise InputError(f"--precision {precision!r} is unknown; choose fp32, fp16 or bf16")
    precision = PRECISION_ALIASES[precision.lower()]
    torch_device = parse_device(settings.device)

    first = specs[0].path
    pretrained_model = settings.pretrained_model
    model = pretrained_model or metadatas[0].get("sliders_base_model")
    if not model:
        raise InputError(f"slider file '{first}' does not record its base model; pass --pretrained_model")
    if pretrained_model is None:
        for spec, metadata in zip(specs[1:], metadatas[1:]):
            other = metadata.get("sliders_base_model")
            if other and other != model:
                logger.warning("slider '%s' was trained on %s, not %s; it may not fit", spec.path, other, model)
    resolution = settings.resolution
    if resolution is None:
        recorded = recorded_resolution(metadatas[0], first)
        default = (family_of_slider(metadatas[0]) or SDXL).defaults.sample_resolution
        resolution = default if recorded is None else recorded
        logger.debug("resolution %d (from slider metadata or the default)", resolution)
    check_multiple(resolution, 8, "--resolution")

    output = Path(settings.output)
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
    transformer_path, quantize = check_base_options(model, family, settings.transformer, settings.quantize,
                                                    torch_device, DTYPES[precision])
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
def loaded(plan: RunPlan) -> Iterator[tuple[Any, list[SliderNetwork]]]:
    """Load the plan's base model once, check its resolution against the VAE and attach its sliders.

    Yields `(pipe, sliders)`, the sliders in the order of `plan.specs`, and detaches every attached
    slider on exit, also on error. The model comes through `models.load_pipeline` (where tests put
    another loader with `models.injected_loader`).
    """
    logger.info("loading base model %s (%s on %s)", plan.model, plan.precision, plan.device)
    pipe = _load_base(plan)
    check_multiple(plan.resolution, math.lcm(8, vae_factor(pipe.vae)), "--resolution")
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


def _load_base(plan: RunPlan):
    """The plan's pipeline on its device: with `plan.transformer` the transformer from that file, with
    `plan.quantize` its blocks quantized layer by layer onto the device before the rest moves there
    (the float weights never reach it), as training does."""
    extra = {"transformer": str(plan.transformer)} if plan.transformer else {}
    if plan.quantize == "none":
        return load_pipeline(plan.model, plan.dtype, plan.device, **extra)
    pipe = load_pipeline(plan.model, plan.dtype, "cpu", **extra)
    family = family_of_pipe(pipe)
    quantize_denoiser(family.denoiser(pipe), plan.quantize, plan.device, family, plan.dtype, "--quantize")
    return pipe.to(plan.device)
