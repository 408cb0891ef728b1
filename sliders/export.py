"""Using a slider elsewhere: convert its file to another key format, and carry `start_noise` into UIs.

`convert_slider` rewrites any slider file `load_slider` reads (every naming of `sliders.formats`,
and the official `.pt` sliders) as `.safetensors` in the `kohya`, `diffusers` or `peft` key format.
It needs no base weights: the UNet's layer names come from its config, built on the meta device.

The exports reproduce `sliders-sample`'s switch (a step runs with the slider on when its timestep is
at or below `start_noise`, `generation.multipliers_at`) in each UI's own terms, for the UI's own timesteps:

- ComfyUI: a workflow in ComfyUI's API format that applies the slider as a hook LoRA whose keyframes
  hold strength 0 until `comfyui_start_percent(start_noise)`, then 1 (the slider's scale). Node and
  input names, types and ranges are those of `COMFYUI_SOURCE`.
- AUTOMATIC1111/Forge: the prompt syntax of the step-scheduling extensions (sd-webui-loractl's
  `weight@step` lists; LoRA Block Weight's `start=`), for the UIs' default SDXL sampler and schedule
  (`WEBUIS`) at a given step count, allowing for the step counter those extensions read.
- diffusers: a Python snippet that sets the adapter weight in `callback_on_step_end` and draws its
  starting noise as `sliders-sample` does, so it makes the same image.

FLUX.1 (flow matching; the slider is off while `sigma * 1000` is above `start_noise`): ComfyUI's FLUX
graph with the same hook keyframes, placed on its shifted flow sigmas (`comfyui_flux_start_percent`);
Forge's LoRA Block Weight syntax for its FLUX default sampler (`forge_flux_text`); a FluxPipeline
snippet. AUTOMATIC1111 has no FLUX and is refused.

Nothing here loads a model's weights or runs a UI; `sliders.cli` prints or writes what these return.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .config import MAX_TIMESTEPS
from .errors import InputError
from .families import FLUX, SDXL, family_of_slider, family_of_source
from .formats import NAMING_LABELS, SDXL_BASE_UNET_CONFIG, check_key_format, is_flux_file, parse_tensors
from .network import load_slider
from .parsing import check_multiple, check_start_noise, check_steps, recorded_resolution
from .slider_files import DEFAULT_SCALES, read_slider_file, recorded_start_noise

logger = logging.getLogger(__name__)

UIS = ("comfyui", "a1111", "diffusers", "forge")
# The namings AUTOMATIC1111, Forge and ComfyUI map completely (docs/exports.md, "Key formats"); a PEFT file loses
# every attention layer in ComfyUI and Forge and loads nothing in AUTOMATIC1111.
UI_NAMINGS = ("kohya", "diffusers")


def _config_of_model(name_or_path: str) -> dict[str, Any]:
    """The UNet config of a base model folder, hub id (from the local cache) or built-in name."""
    from .models import read_unet_config, resolve_model

    source = resolve_model(name_or_path)
    if Path(source).is_file():
        # A single-file checkpoint carries no diffusers config: its family's reference layout (read from
        # its tensor names; SDXL for a pickled file).
        return dict((family_of_source(source) or SDXL).unet_config)
    config = read_unet_config(source)
    if config is None and Path(source).is_dir() and family_of_source(source) is FLUX:
        config = _transformer_config(source)
    if config is None:
        raise InputError(f"could not read the UNet config of base model '{source}' (unet/config.json); check the "
                         "name or path")
    return config


def _transformer_config(folder: str) -> dict[str, Any] | None:
    """A FLUX folder's `transformer/config.json` (its layer names and shapes), None if unreadable."""
    try:
        return json.loads((Path(folder) / "transformer" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def unet_config_for(metadata: Mapping[str, str], pretrained_model: str | None,
                    keys: Sequence[str] = ()) -> dict[str, Any]:
    """The UNet (FLUX: transformer) config a slider's layer names are placed in.

    In order: the given base model, the config recorded in the file (`sliders_unet_config`), the
    base model recorded in it, else the reference model of the family the file names (kohya's
    `ss_base_model_version`), else FLUX.1-dev where the file's `keys` name FLUX layers (the official
    flux-sliders `.pt` files record nothing), else SDXL base (files from elsewhere rarely say).
    """
    if pretrained_model:
        return _config_of_model(pretrained_model)
    recorded = metadata.get("sliders_unet_config")
    if recorded:
        try:
            return dict(json.loads(recorded))
        except (json.JSONDecodeError, TypeError, ValueError):
            logger.warning("the slider's recorded UNet config is unreadable; using its base model instead")
    base = metadata.get("sliders_base_model")
    if base:
        try:
            return _config_of_model(base)
        except InputError:
            logger.warning("base model '%s' of the slider is not available here; assuming its family's reference "
                           "layout", base)
    family = family_of_slider(metadata)
    if family is not None:
        return dict(family.unet_config)
    if is_flux_file(keys):
        logger.info("the slider names FLUX layers and records no base model; assuming FLUX.1-dev's transformer")
        return dict(FLUX.unet_config)
    logger.info("the slider does not record its base model; assuming SDXL base (pass --pretrained_model otherwise)")
    return dict(SDXL_BASE_UNET_CONFIG)


def meta_unet(config: Mapping[str, Any]):
    """A UNet (FLUX: its transformer) with this config on the meta device: every layer's name and shape,
    no memory, no weights."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    model_class = FluxTransformer2DModel if FLUX.claims(config) else UNet2DConditionModel
    with torch.device("meta"):
        return model_class.from_config(dict(config))


# ---------------------------------------------------------------- checks before any work


def read_checked_slider(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a slider file, refused as `sliders-sample` refuses it: unreadable, no
    UNet LoRA layers, a layer without its down or up weight, or NaN/infinite weights."""
    from .planning import check_slider_file

    path = Path(path)
    tensors, metadata = read_slider_file(path)
    check_slider_file(path, tensors, metadata)
    return tensors, metadata


def check_output_file(path: str | Path, fix: str) -> Path:
    """An output file whose folder can be made and written, checked before any work (nothing is left behind).

    A path through a file (`notes.txt/out.safetensors`), a read-only folder or an existing folder of
    that name is an InputError naming the path and `fix`.
    """
    from .runs import check_writable_folder

    path = Path(path)
    try:
        is_folder = path.is_dir()
    except OSError:
        is_folder = False
    if is_folder:
        raise InputError(f"output '{path}' is a folder; {fix}")
    check_writable_folder(path.parent, "output folder", fix)
    return path


def check_ui_naming(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], ui: str) -> None:
    """Refuse, for ComfyUI and AUTOMATIC1111/Forge, a file whose key naming those UIs drop, with the fix."""
    if ui == "diffusers":
        return
    fix = f"sliders-convert {path} {path.with_name(path.stem + '_kohya.safetensors')} --to kohya"
    if family_of_slider(metadata) is FLUX or is_flux_file(tensors):
        # ComfyUI and Forge map FLUX's BFL names (kohya) and diffusers' `transformer.<path>` (PEFT), not
        # diffusers paths behind lora_unet_ (`tests/test_flux_export.py`).
        unmapped = [key for key in tensors if key.startswith(FLUX_DIFFUSERS_PATH_PREFIXES)]
        if unmapped:
            raise InputError(f"slider file '{path}' has diffusers-path FLUX names ('{unmapped[0]}'), which ComfyUI "
                             f"and Forge do not map; convert it first: {fix}")
        return
    # A key's naming does not depend on the UNet layout: SDXL's places the names well enough to tell it.
    parsed = parse_tensors(tensors, metadata, SDXL_BASE_UNET_CONFIG, f"slider file '{path}'")
    dropped = [naming for naming in parsed.namings if naming not in UI_NAMINGS]
    if dropped:
        raise InputError(
            f"slider file '{path}' has {NAMING_LABELS[dropped[0]]}, which ComfyUI and Forge load only in part (no "
            f"attention layers) and AUTOMATIC1111 not at all; convert it first: {fix}"
        )


# FLUX keys of the official flux-sliders code and of our `diffusers` key format: diffusers module paths.
FLUX_DIFFUSERS_PATH_PREFIXES = ("lora_unet_transformer_blocks_", "lora_unet_single_transformer_blocks_")


# ---------------------------------------------------------------- key formats


def convert_slider(
    source: str | Path, target: str | Path, key_format: str, *, pretrained_model: str | None = None
) -> Path:
    """Write `source` (any readable slider file) to `target` (.safetensors) in `key_format`.

    The weights pass through unchanged (PEFT's folded `alpha / rank` aside), so the converted file
    gives the same UNet output; the source's metadata is kept. The input and the output path are
    checked before anything is built.
    """
    check_key_format(key_format, "--to")
    source, target = Path(source), Path(target)
    if target.suffix.lower() != ".safetensors":
        raise InputError(f"output '{target}' must end in .safetensors; converted sliders are never pickled")
    if target.resolve() == source.resolve():
        raise InputError(f"output '{target}' is the input file; give another output path")
    tensors, metadata = read_checked_slider(source)
    check_output_file(target, "give another output path")
    network = load_slider(source, meta_unet(unet_config_for(metadata, pretrained_model, list(tensors))), attach=False,
                          contents=(tensors, metadata))
    metadata_out = {"ss_output_name": target.stem}
    if "sliders_version" not in metadata:
        metadata_out["sliders_converted_from"] = source.name
    return network.save(target, metadata_out, key_format=key_format)


# What `sliders-convert` says of each key format it writes.
KEY_FORMAT_NOTES = {
    "kohya": "loads completely in diffusers, ComfyUI, Forge and AUTOMATIC1111",
    "diffusers": "loads completely in diffusers, ComfyUI and Forge; AUTOMATIC1111 drops SDXL's first upsampler",
    "peft": "for diffusers/PEFT only: ComfyUI and Forge drop its attention layers and AUTOMATIC1111 loads none of "
            "it; convert to kohya (--to kohya) for those",
}


# The same for FLUX.1 files (`tests/test_flux_export.py` shows the ComfyUI/Forge rules on FLUX.1-dev).
FLUX_KEY_FORMAT_NOTES = {
    "kohya": "kohya's FLUX naming on the BFL layers: loads completely in diffusers, ComfyUI and Forge",
    "diffusers": "diffusers paths behind lora_unet_ (the official flux-sliders naming): ComfyUI and Forge map none "
                 "of it; convert to kohya (--to kohya) for those",
    "peft": "transformer.<path>: loads in diffusers; ComfyUI and Forge map it too (q/k/v into the fused layers)",
}


def key_format_note(path: str | Path, key_format: str) -> str:
    """What `sliders-convert` says of a file it wrote in `key_format`, for the file's family."""
    _, metadata = read_slider_file(path)
    return (FLUX_KEY_FORMAT_NOTES if family_of_slider(metadata) is FLUX else KEY_FORMAT_NOTES)[key_format]


# ---------------------------------------------------------------- recommended settings


def recommended(metadata: Mapping[str, str], start_noise: float | None, scale: float | None) -> tuple[float, float]:
    """(start_noise, scale) for an export: the given values, else the slider's recorded ones.

    The recorded scale is the largest of `sliders_scales` (the strongest "more of the concept").
    """
    start_noise = check_start_noise(recorded_start_noise(metadata) if start_noise is None else start_noise)
    if scale is None:
        try:
            scales = [float(s) for s in json.loads(metadata.get("sliders_scales", "null") or "null") or DEFAULT_SCALES]
        except (json.JSONDecodeError, TypeError, ValueError):
            raise InputError("the slider's sliders_scales is unreadable; pass --scale") from None
        scale = max(scales)
    if not math.isfinite(scale):
        raise InputError(f"--scale must be a finite number, got {scale!r}")
    return float(start_noise), float(scale)


def resolution_for(metadata: Mapping[str, str], path: Path, resolution: int | None) -> int:
    """The image size of a workflow or snippet: `resolution`, else the slider's training resolution, else
    `sliders-sample`'s default."""
    if resolution is None:
        recorded = recorded_resolution(dict(metadata), path)
        default = (family_of_slider(metadata) or SDXL).defaults.sample_resolution
        resolution = default if recorded is None else recorded
    # FLUX packs 2x2 latent cells of 8 px into a token.
    check_multiple(resolution, 16 if family_of_slider(metadata) is FLUX else 8, "--resolution")
    return resolution


# ---------------------------------------------------------------- SDXL's timesteps in the UIs

# SDXL's discrete noise schedule as ComfyUI, Forge and AUTOMATIC1111 build it: betas
# linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2 in float64 (SDXL's "scaled_linear"), sigma_t =
# sqrt((1 - alphabar_t) / alphabar_t), kept in float32 (ComfyUI comfy/model_sampling.py
# ModelSamplingDiscrete; Forge backend/modules/k_prediction.py Prediction).
SDXL_BETA_START, SDXL_BETA_END = 0.00085, 0.012


def sdxl_log_sigmas() -> torch.Tensor:
    """log sigma_t of SDXL's 1000 timesteps, float32, t = 0 first."""
    betas = torch.linspace(SDXL_BETA_START ** 0.5, SDXL_BETA_END ** 0.5, MAX_TIMESTEPS, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log().float()


def karras_sigmas(steps: int, rho: float = 7.0) -> torch.Tensor:
    """k-diffusion's `get_sigmas_karras` between the model's smallest and largest sigma, with the final 0:
    the "Karras" schedule type of AUTOMATIC1111 and Forge (`sd_samplers_kdiffusion.get_sigmas`)."""
    sigmas = sdxl_log_sigmas().exp()
    low, high = float(sigmas[0]) ** (1 / rho), float(sigmas[-1]) ** (1 / rho)
    ramp = torch.linspace(0, 1, steps)
    return torch.cat([(high + ramp * (low - high)) ** rho, torch.zeros(1)])


def timestep_nearest(sigma: float) -> float:
    """The timestep whose sigma is nearest in log: what Forge and ComfyUI give the UNet (`timestep(sigma)`)."""
    distances = (torch.tensor(float(sigma)).log() - sdxl_log_sigmas()).abs()
    return float(distances.argmin())


def timestep_interpolated(sigma: float) -> float:
    """The fractional timestep between the two nearest in log sigma: what AUTOMATIC1111 gives the UNet
    (k-diffusion `DiscreteSchedule.sigma_to_t` without quantization, the webui's default)."""
    log_sigmas = sdxl_log_sigmas()
    log_sigma = math.log(float(sigma))
    low = min(int((log_sigma - log_sigmas >= 0).cumsum(0).argmax()), len(log_sigmas) - 2)
    w = (float(log_sigmas[low]) - log_sigma) / (float(log_sigmas[low]) - float(log_sigmas[low + 1]))
    w = min(max(w, 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)


@dataclass(frozen=True)
class Webui:
    """A webui's default SDXL sampling, which the exported step numbers are computed for."""

    name: str
    sampler: str
    scheduler: str
    sigmas: Callable[[int], torch.Tensor]
    timestep: Callable[[float], float]


WEBUIS = {
    # AUTOMATIC1111 1.10's txt2img default: "DPM++ 2M" with schedule type "Automatic", which is Karras
    # for that sampler (modules/sd_samplers_kdiffusion.py).
    "a1111": Webui("AUTOMATIC1111", "DPM++ 2M", "Automatic (Karras)", karras_sigmas, timestep_interpolated),
    # Forge's SDXL ("xl") UI defaults: "DPM++ 2M SDE" with schedule type "Karras"
    # (modules/processing_scripts/sampler.py).
    "forge": Webui("Forge", "DPM++ 2M SDE", "Karras", karras_sigmas, timestep_nearest),
}


def webui_first_on_step(webui: Webui, steps: int, start_noise: float) -> int:
    """The first sampler step (0-based) whose timestep is at or below `start_noise`; `steps` if none is.

    These samplers call the model once per step, at the step's sigma."""
    sigmas = webui.sigmas(check_steps(steps))
    for step in range(steps):
        if webui.timestep(float(sigmas[step])) <= start_noise:
            return step
    return steps


def extension_counter(step: int) -> int:
    """The step number the extensions read during the model call of sampler step `step` (0-based).

    Both webuis set `shared.state.sampling_step = i` in the sampler's callback, which k-diffusion
    calls after step i's model call, and 0 when sampling starts (`sd_samplers_common.Sampler`): during
    step i the counter still holds i - 1, and 0 for the first two steps. loractl reads it when the
    LoRA weights are applied; LoRA Block Weight in its `on_cfg_denoiser` callback, before the model call.
    """
    return max(step - 1, 0)


def loractl_schedule(scale: float, first: int, steps: int) -> tuple[str, int]:
    """(sd-webui-loractl weight list, the step it switches on at) for the slider on from step `first`.

    loractl interpolates `weight@position` points at the counter; positions above 1 are counter
    values (`lib/utils.calculate_weight`). Steps 0 and 1 read the same counter, so a switch at step 1
    comes at step 2.
    """
    weight = _number(scale)
    if first == 0:
        return weight, 0
    if first >= steps:
        return "0", steps
    first = max(first, 2)
    on = first - 1  # the counter during step `first`
    points = [(0.0, 0)] + ([(0.0, on - 1)] if on - 1 > 0 else []) + [(scale, on)]
    if on <= 1:
        points.append((scale, steps))  # a last position above 1 makes loractl read them as counter values
    return ",".join(f"{_number(w)}@{s}" for w, s in points), first


def lbw_start_a1111(first: int) -> tuple[int | None, int]:
    """(LoRA Block Weight's `start=` in AUTOMATIC1111 or None, the step it switches on at).

    There it sets the LoRA's strength once the counter exceeds start - 2 (`denoiser_callback`)."""
    if first == 0:
        return None, 0
    start = max(first, 2)
    return start, start


def lbw_start_forge(first: int) -> tuple[int, int]:
    """(LoRA Block Weight's `start=` in Forge, the step it switches on at).

    There it holds the LoRA at 0 unless start is 0, and sets its strength when the counter equals start."""
    if first == 0:
        return 0, 0
    start = max(first, 2) - 1
    return start, start + 1


def _number(value: float) -> str:
    return f"{value:g}"


def a1111_prompts(lora_name: str, scale: float, start_noise: float, steps: int) -> dict[str, Any]:
    """Prompt syntax that holds the slider at 0 while the timestep is above `start_noise`, at `scale` after.

    Keys: `loractl` (AUTOMATIC1111), `lbw` (LoRA Block Weight in AUTOMATIC1111), `lbw_forge`, and for
    each, under `<key>_first_on`, the 0-based sampler step the syntax switches on at; `first_on` and
    `forge_first_on` are the steps the rule asks for on each webui's default sampler.
    """
    first = webui_first_on_step(WEBUIS["a1111"], steps, start_noise)
    forge_first = webui_first_on_step(WEBUIS["forge"], steps, start_noise)
    weight = _number(scale)
    schedule, loractl_on = loractl_schedule(scale, first, steps)
    start, lbw_on = lbw_start_a1111(first)
    forge_start, forge_on = lbw_start_forge(forge_first)
    return {
        "loractl": f"<lora:{lora_name}:{schedule}>",
        "lbw": f"<lora:{lora_name}:{weight}:lbw=ALL" + (f":start={start}>" if start is not None else ">"),
        "lbw_forge": f"<lora:{lora_name}:{weight}:lbw=ALL:start={forge_start}>",
        "first_on": first,
        "forge_first_on": forge_first,
        "loractl_first_on": min(loractl_on, steps),
        "lbw_first_on": min(lbw_on, steps),
        "lbw_forge_first_on": min(forge_on, steps),
    }


def _when(first: int, steps: int) -> str:
    """'off for steps 1-9, on from step 10' (counted from 1, as the webuis show steps)."""
    if first >= steps:
        return f"off for all {steps} steps"
    if first == 0:
        return "on from step 1"
    return f"off for steps 1-{first}, on from step {first + 1}"


def a1111_text(lora_name: str, scale: float, start_noise: float, steps: int) -> str:
    syntax = a1111_prompts(lora_name, scale, start_noise, steps)
    a1111, forge = WEBUIS["a1111"], WEBUIS["forge"]
    lines = [
        f"# slider '{lora_name}' at scale {scale:g}, off while the timestep is above {start_noise:g}.",
        f"# Computed for {steps} sampling steps, SDXL, and each webui's default sampler (another sampler, schedule",
        "# type or step count switches at another step: export again with --steps N):",
        f"#   AUTOMATIC1111: sampler {a1111.sampler}, schedule type {a1111.scheduler}: "
        f"{_when(syntax['first_on'], steps)}.",
        f"#   Forge: sampler {forge.sampler}, schedule type {forge.scheduler}: {_when(syntax['forge_first_on'], steps)}.",
        "# The extensions read webui's step counter, which during a step still holds the previous step's",
        "# number (0 for the first two steps); the numbers below allow for that.",
    ]
    if steps > 1 and 1 in (syntax["first_on"], syntax["forge_first_on"]):
        lines.append("# That counter cannot tell step 1 from step 2, so the slider comes on at step 3 here.")
    lines += [
        "# Put the slider file in models/Lora; add one of these to the prompt.",
        "# sd-webui-loractl (https://github.com/cheald/sd-webui-loractl), AUTOMATIC1111:",
        syntax["loractl"],
        "# LoRA Block Weight (https://github.com/hako-mikan/sd-webui-lora-block-weight), its Active box ticked,",
        "# in AUTOMATIC1111:",
        syntax["lbw"],
        "# and in Forge:",
        syntax["lbw_forge"],
        "# Without an extension, <lora:name:w> applies the slider at every step (no start_noise switch):",
        f"<lora:{lora_name}:{_number(scale)}>",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- ComfyUI

# The ComfyUI source the node names, inputs and ranges below were read from (tests/data/comfyui_nodes.json).
COMFYUI_SOURCE = "Comfy-Org/ComfyUI a125cd84 (2025-10-12, v0.3.64)"
COMFYUI_STRENGTH_RANGE = (-20.0, 20.0)  # CreateHookLoraModelOnly's strength_model


def comfyui_start_percent(start_noise: float) -> float:
    """The hook keyframe `start_percent` from which ComfyUI runs a step with the slider on exactly when
    its timestep is at or below `start_noise`.

    ComfyUI gives the UNet the timestep nearest in log sigma (`ModelSamplingDiscrete.timestep`), so a
    step's timestep is at or below N = floor(start_noise) when its sigma is at or below the log-midpoint
    of sigma_N and sigma_N+1. A keyframe is current from the first step whose sigma is at or below
    `percent_to_sigma(p)`, the sigma of timestep (1 - p) * 999 interpolated in log sigma
    (`HookKeyframeGroup.prepare_current_keyframe`); p = 1 - (N + 0.5) / 999 puts it on that midpoint,
    whatever the scheduler. Not rounded: rounding moves the switch. From N = 999 on, every step is on.
    """
    timestep = math.floor(start_noise)
    if timestep >= MAX_TIMESTEPS - 1:
        return 0.0
    return 1.0 - (timestep + 0.5) / (MAX_TIMESTEPS - 1)


def comfyui_workflow(
    lora_name: str,
    scale: float,
    start_noise: float,
    *,
    checkpoint: str = "sd_xl_base_1.0.safetensors",
    prompt: str = "a photo of a person",
    negative_prompt: str = "",
    steps: int = 30,
    cfg: float = 5.0,
    seed: int = 0,
    width: int = 1024,
    height: int = 1024,
) -> dict[str, Any]:
    """A ComfyUI workflow (API format) that applies the slider from `comfyui_start_percent` on.

    The slider is a model-only hook LoRA (`CreateHookLoraModelOnly`, strength = scale) scheduled by
    two `CreateHookKeyframe`s (strength_mult 0 from 0, 1 from the start percent) through
    `SetHookKeyframes`, and attached to both the positive and the negative conditioning with
    `PairConditioningSetProperties` (its `hooks` input), so both classifier-free-guidance branches see
    it, as in our sampling. Inputs as `COMFYUI_SOURCE` declares them.
    """
    low, high = COMFYUI_STRENGTH_RANGE
    if not low <= scale <= high:
        raise InputError(f"--scale {scale:g} is outside ComfyUI's hook LoRA strength range ({low:g} to {high:g})")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
        raise InputError(f"--seed must be a whole number from 0 to 2**64 - 1 for ComfyUI, got {seed!r}")
    percent = comfyui_start_percent(start_noise)

    def node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
        return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}

    return {
        "1": node("CheckpointLoaderSimple", "Load the base checkpoint", ckpt_name=checkpoint),
        "2": node("CreateHookLoraModelOnly", "Slider (model-only hook LoRA)", lora_name=lora_name,
                  strength_model=scale),
        "3": node("CreateHookKeyframe", "Slider off above start_noise", strength_mult=0.0, start_percent=0.0),
        "4": node("CreateHookKeyframe", f"Slider on from start_noise {start_noise:g}", strength_mult=1.0,
                  start_percent=percent, prev_hook_kf=["3", 0]),
        "5": node("SetHookKeyframes", "Schedule the slider", hooks=["2", 0], hook_kf=["4", 0]),
        "6": node("CLIPTextEncode", "Prompt", text=prompt, clip=["1", 1]),
        "7": node("CLIPTextEncode", "Negative prompt", text=negative_prompt, clip=["1", 1]),
        "8": node("PairConditioningSetProperties", "Slider on both CFG branches", positive_NEW=["6", 0],
                  negative_NEW=["7", 0], strength=1.0, set_cond_area="default", hooks=["5", 0]),
        "9": node("EmptyLatentImage", "Latent", width=width, height=height, batch_size=1),
        "10": node("KSampler", "Sample", model=["1", 0], seed=seed, steps=check_steps(steps), cfg=cfg,
                   sampler_name="euler", scheduler="normal", positive=["8", 0], negative=["8", 1],
                   latent_image=["9", 0], denoise=1.0),
        "11": node("VAEDecode", "Decode", samples=["10", 0], vae=["1", 2]),
        "12": node("SaveImage", "Save", images=["11", 0], filename_prefix=f"slider_{scale:+g}"),
    }


# ---------------------------------------------------------------- FLUX.1 in ComfyUI and Forge

# FLUX.1's flow sigmas in ComfyUI and Forge: a table of sigmas at t = k / 10000 (k = 1..10000, float32)
# shifted by mu, sigma = e^mu / (e^mu + 1/t - 1) (ComfyUI comfy/model_sampling.py `ModelSamplingFlux`,
# `flux_time_shift`; Forge backend/modules/k_prediction.py `PredictionFlux`). The model is given sigma and
# scales it by 1000 itself, so its timestep is sigma * 1000: the scale start_noise is read on.
FLUX_TABLE_SIZE = 10000
# ComfyUI's ModelSamplingFlux node (comfy_extras/nodes_model_advanced.py): the shift grows linearly in the
# image's token count (16 x 16 px each) from base_shift at 256 tokens to max_shift at 4096; diffusers'
# `mu` (`sliders.families.flux.flow_mu`) is the same line with FluxPipeline's scheduler defaults.
FLUX_BASE_SHIFT, FLUX_MAX_SHIFT = 0.5, 1.15
FLUX_BASE_TOKENS, FLUX_MAX_TOKENS = 256, 4096
FLUX_GUIDANCE_RANGE = (0.0, 100.0)  # FluxGuidance's guidance
# Forge's FLUX-dev predictor is built once with 4096 tokens, whatever the image size: mu 1.15
# (backend/diffusion_engine/flux.py); its FLUX UI defaults are sampler "Euler", scheduler "Simple"
# (modules/processing_scripts/sampler.py).
FORGE_FLUX_SHIFT = 1.15


def flux_time_shift(mu: float, t: float) -> float:
    """ComfyUI's and Forge's sigma of t in (0, 1] for a shift mu (float64)."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


def flux_shift(width: int, height: int) -> float:
    """The shift ComfyUI's ModelSamplingFlux node gives an image of width x height px (its default base and
    max shift), which is diffusers' `mu` for it: the schedule `sliders-sample` uses."""
    slope = (FLUX_MAX_SHIFT - FLUX_BASE_SHIFT) / (FLUX_MAX_TOKENS - FLUX_BASE_TOKENS)
    return (width * height / (8 * 8 * 2 * 2)) * slope + (FLUX_BASE_SHIFT - slope * FLUX_BASE_TOKENS)


def flux_sigma_table(shift: float) -> torch.Tensor:
    """The 10000 sigmas of the shifted table, float32, smallest first (`ModelSamplingFlux.sigmas`)."""
    t = torch.arange(1, FLUX_TABLE_SIZE + 1, 1) / FLUX_TABLE_SIZE
    return math.exp(shift) / (math.exp(shift) + (1 / t - 1))


def flux_simple_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The "simple" scheduler of ComfyUI (comfy/samplers.py) and Forge (modules/sd_schedulers.py) on the
    table: every (10000 / steps)-th sigma from the largest, then 0. It is FluxPipeline's schedule,
    linspace(1, 1/N) shifted, where N divides 10000."""
    table = flux_sigma_table(shift)
    stride = len(table) / check_steps(steps)
    return torch.tensor([float(table[-(1 + int(x * stride))]) for x in range(steps)] + [0.0])


def comfyui_flux_percent_to_sigma(percent: float, shift: float) -> float:
    """ComfyUI's `ModelSamplingFlux.percent_to_sigma`: 1 at 0, 0 at 1, the shifted sigma of 1 - percent."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    return flux_time_shift(shift, 1.0 - percent)


def comfyui_flux_start_percent(start_noise: float, shift: float) -> float:
    """The hook keyframe `start_percent` from which ComfyUI runs a FLUX step with the slider on exactly when
    the step's timestep (sigma * 1000) is at or below `start_noise`, for a model sampled with this shift.

    A keyframe is current from the first model call whose sigma (float32) is at or below
    `percent_to_sigma(start_percent)` (`HookKeyframeGroup.prepare_current_keyframe` compares them as
    float32). So the keyframe's sigma is put on s, the largest float32 at or below start_noise / 1000:
    1 - percent = t with e^mu / (e^mu + 1/t - 1) = s, t = 1 / (1 + e^mu (1/s - 1)). Whatever the
    scheduler; not rounded. From 1000 on every step is on (percent 0: sigma 1); at 0 none (percent 1).
    """
    import numpy as np

    wanted = start_noise / MAX_TIMESTEPS
    if wanted >= 1.0:
        return 0.0
    if wanted <= 0.0:
        return 1.0
    target = np.float32(wanted)
    if float(target) > wanted:
        target = np.nextafter(target, np.float32(0))
    target = float(target)
    percent = 1.0 - 1.0 / (1.0 + math.exp(shift) * (1.0 / target - 1.0))
    # Float64 rounding can leave the keyframe's sigma a hair off s; step the percent until it rounds to s.
    for _ in range(64):
        got = float(np.float32(comfyui_flux_percent_to_sigma(percent, shift)))
        if got == target:
            break
        percent = math.nextafter(percent, 0.0 if got < target else 1.0)
    return min(max(percent, 0.0), 1.0)


def comfyui_flux_workflow(
    lora_name: str,
    scale: float,
    start_noise: float,
    *,
    transformer: str = "flux1-dev.safetensors",
    prompt: str = "a photo of a person",
    steps: int = 30,
    guidance: float = 3.5,
    seed: int = 0,
    width: int = 512,
    height: int = 512,
) -> dict[str, Any]:
    """ComfyUI's FLUX.1 graph (API format) with the slider as a hook LoRA switched on at `start_noise`.

    The transformer from `UNETLoader`, T5-XXL and CLIP-L from `DualCLIPLoader` (type flux), the VAE from
    `VAELoader`; `ModelSamplingFlux` at the image size gives the schedule the shift `sliders-sample` uses
    (diffusers' mu), and the hook keyframe's `start_percent` is computed for that shift
    (`comfyui_flux_start_percent`). The prompt's guidance goes in as FLUX-dev's embedding (`FluxGuidance`);
    the KSampler runs at cfg 1 (no classifier-free guidance, as FluxPipeline), euler on the "simple"
    schedule (FluxPipeline's linspace(1, 1/N), shifted). Hooks as in `comfyui_workflow`.
    """
    low, high = COMFYUI_STRENGTH_RANGE
    if not low <= scale <= high:
        raise InputError(f"--scale {scale:g} is outside ComfyUI's hook LoRA strength range ({low:g} to {high:g})")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
        raise InputError(f"--seed must be a whole number from 0 to 2**64 - 1 for ComfyUI, got {seed!r}")
    if not FLUX_GUIDANCE_RANGE[0] <= guidance <= FLUX_GUIDANCE_RANGE[1]:
        raise InputError(f"guidance {guidance:g} is outside FluxGuidance's range (0 to 100)")
    shift = flux_shift(width, height)
    percent = comfyui_flux_start_percent(start_noise, shift)

    def node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
        return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}

    return {
        "1": node("UNETLoader", "Load the FLUX transformer (models/diffusion_models)", unet_name=transformer,
                  weight_dtype="default"),
        "2": node("DualCLIPLoader", "Load T5-XXL and CLIP-L (models/text_encoders)", clip_name1="t5xxl_fp16.safetensors",
                  clip_name2="clip_l.safetensors", type="flux"),
        "3": node("VAELoader", "Load the FLUX VAE (models/vae)", vae_name="ae.safetensors"),
        "4": node("ModelSamplingFlux", f"Schedule shift for {width}x{height} (as diffusers)", model=["1", 0],
                  max_shift=FLUX_MAX_SHIFT, base_shift=FLUX_BASE_SHIFT, width=width, height=height),
        "5": node("CreateHookLoraModelOnly", "Slider (model-only hook LoRA)", lora_name=lora_name,
                  strength_model=scale),
        "6": node("CreateHookKeyframe", "Slider off above start_noise", strength_mult=0.0, start_percent=0.0),
        "7": node("CreateHookKeyframe", f"Slider on from start_noise {start_noise:g}", strength_mult=1.0,
                  start_percent=percent, prev_hook_kf=["6", 0]),
        "8": node("SetHookKeyframes", "Schedule the slider", hooks=["5", 0], hook_kf=["7", 0]),
        "9": node("CLIPTextEncode", "Prompt", text=prompt, clip=["2", 0]),
        "10": node("CLIPTextEncode", "Empty negative (unused at cfg 1)", text="", clip=["2", 0]),
        "11": node("FluxGuidance", "Guidance embedding", conditioning=["9", 0], guidance=float(guidance)),
        "12": node("PairConditioningSetProperties", "Slider on the conditioning", positive_NEW=["11", 0],
                   negative_NEW=["10", 0], strength=1.0, set_cond_area="default", hooks=["8", 0]),
        "13": node("EmptySD3LatentImage", "Latent", width=width, height=height, batch_size=1),
        "14": node("KSampler", "Sample", model=["4", 0], seed=seed, steps=check_steps(steps), cfg=1.0,
                   sampler_name="euler", scheduler="simple", positive=["12", 0], negative=["12", 1],
                   latent_image=["13", 0], denoise=1.0),
        "15": node("VAEDecode", "Decode", samples=["14", 0], vae=["3", 0]),
        "16": node("SaveImage", "Save", images=["15", 0], filename_prefix=f"slider_{scale:+g}"),
    }


FORGE_FLUX = Webui("Forge", "Euler", "Simple", lambda steps: flux_simple_sigmas(steps, FORGE_FLUX_SHIFT),
                   lambda sigma: float(sigma) * MAX_TIMESTEPS)


def forge_flux_prompts(lora_name: str, scale: float, start_noise: float, steps: int) -> dict[str, Any]:
    """LoRA Block Weight's syntax for a FLUX slider in Forge, and the steps: `lbw`, `first_on` (the step the
    rule asks for on Forge's FLUX default), `lbw_first_on` (the step the syntax switches on at).

    LoRA Block Weight treats a FLUX model with its 61-weight FLUX presets (`FLUXALL`, every block 1) and
    holds the LoRA at 0 until the counter equals `start` (`lbwf`, then `apply_weight` at that step), as
    for SDXL in Forge (`lbw_start_forge`)."""
    first = webui_first_on_step(FORGE_FLUX, steps, start_noise)
    start, on = lbw_start_forge(first)
    return {"lbw": f"<lora:{lora_name}:{_number(scale)}:lbw=FLUXALL:start={start}>", "first_on": first,
            "lbw_first_on": min(on, steps)}


def forge_flux_text(lora_name: str, scale: float, start_noise: float, steps: int) -> str:
    syntax = forge_flux_prompts(lora_name, scale, start_noise, steps)
    lines = [
        f"# FLUX slider '{lora_name}' at scale {scale:g}, off while the timestep (sigma * 1000) is above {start_noise:g}.",
        f"# Computed for {steps} sampling steps on Forge's FLUX-dev default: sampler {FORGE_FLUX.sampler}, schedule "
        f"type {FORGE_FLUX.scheduler}",
        f"# (Forge's FLUX-dev schedule shift is {FORGE_FLUX_SHIFT:g} at every image size): "
        f"{_when(syntax['first_on'], steps)}.",
        "# Another sampler, schedule type or step count switches at another step: export again with --steps N.",
        "# LoRA Block Weight reads webui's step counter, which during a step still holds the previous step's number",
        "# (0 for the first two steps); the number below allows for that.",
    ]
    if steps > 1 and syntax["first_on"] == 1:
        lines.append("# That counter cannot tell step 1 from step 2, so the slider comes on at step 3 here.")
    lines += [
        "# Put the slider file in models/Lora; with LoRA Block Weight",
        "# (https://github.com/hako-mikan/sd-webui-lora-block-weight) and its Active box ticked, add to the prompt:",
        syntax["lbw"],
        "# Without it, <lora:name:w> applies the slider at every step (no start_noise switch):",
        f"<lora:{lora_name}:{_number(scale)}>",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- diffusers


DIFFUSERS_SNIPPET = '''\
# Concept slider with the start_noise switch, in plain diffusers (needs peft installed).
# The same image as: sliders-sample --slider {slider_flag} --scales {scale:g} --prompt {prompt_flag} \\
#     --seeds {seed} --steps {steps} --start_noise {start_noise:g} --guidance_scale {guidance_scale:g} \\
#     --resolution {height}
import torch
from diffusers import {pipeline_class}

MODEL = {model!r}
SLIDER = {slider!r}
SCALE = {scale!r}  # the slider's strength once it is on
START_NOISE = {start_noise!r}  # the slider is off while the timestep is above this (of 1000)
PROMPT = {prompt!r}
SEED = {seed!r}
STEPS = {steps!r}
HEIGHT, WIDTH = {height!r}, {width!r}

# A GPU in bf16 where there is one (fp16 where bf16 is not supported), else the CPU in fp32.
if torch.cuda.is_available():
    device, dtype = "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
else:
    device, dtype = "cpu", torch.float32

pipe = {pipeline_class}.from_pretrained(MODEL, torch_dtype=dtype).to(device)
pipe.load_lora_weights(SLIDER, adapter_name="slider")


def switch_slider(pipe, step, timestep, callback_kwargs):
    # Runs after each step: set the weight the next step uses from the next step's timestep.
    timesteps = pipe.scheduler.timesteps
    if step + 1 < len(timesteps):
        on = float(timesteps[step + 1]) <= START_NOISE
        pipe.set_adapters(["slider"], adapter_weights=[SCALE if on else 0.0])
    return callback_kwargs


# The first step's weight is set here, before sampling (the callback runs only after a step).
pipe.scheduler.set_timesteps(STEPS, device=pipe.device)
first_on = float(pipe.scheduler.timesteps[0]) <= START_NOISE
pipe.set_adapters(["slider"], adapter_weights=[SCALE if first_on else 0.0])
# The starting noise as sliders-sample draws it: N(0, 1) in float32 on the CPU from the seed, so
# that a seed gives the same image on any device.
factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
shape = (1, pipe.unet.config.in_channels, HEIGHT // factor, WIDTH // factor)
latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(SEED), dtype=torch.float32)
image = pipe(
    PROMPT,
    num_inference_steps=STEPS,
    guidance_scale={guidance_scale!r},
    height=HEIGHT,
    width=WIDTH,
    latents=latents.to(dtype),
    generator=torch.Generator("cpu").manual_seed(SEED),
    callback_on_step_end=switch_slider,
).images[0]
image.save({output!r})
print("wrote", {output!r})
'''


FLUX_DIFFUSERS_SNIPPET = '''\
# FLUX.1 concept slider with the start_noise switch, in plain diffusers (needs peft installed).
# The same image as: sliders-sample --slider {slider_flag} --scales {scale:g} --prompt {prompt_flag} \\
#     --seeds {seed} --steps {steps} --start_noise {start_noise:g} --guidance_scale {guidance_scale:g} \\
#     --resolution {height}
import torch
from diffusers import FluxPipeline

MODEL = {model!r}
SLIDER = {slider!r}
SCALE = {scale!r}  # the slider's strength once it is on
START_NOISE = {start_noise!r}  # the slider is off while the timestep (sigma * 1000) is above this
PROMPT = {prompt!r}
SEED = {seed!r}
STEPS = {steps!r}
GUIDANCE = {guidance_scale!r}  # FLUX-dev's guidance embedding (no classifier-free guidance)
HEIGHT, WIDTH = {height!r}, {width!r}

# A GPU in bf16 where there is one (fp16 where bf16 is not supported), else the CPU in fp32.
if torch.cuda.is_available():
    device, dtype = "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
else:
    device, dtype = "cpu", torch.float32

pipe = FluxPipeline.from_pretrained(MODEL, torch_dtype=dtype).to(device)
pipe.load_lora_weights(SLIDER, adapter_name="slider")


def switch_slider(pipe, step, timestep, callback_kwargs):
    # Runs after each step: set the weight the next step uses from the next step's timestep.
    timesteps = pipe.scheduler.timesteps
    if step + 1 < len(timesteps):
        on = float(timesteps[step + 1]) <= START_NOISE
        pipe.set_adapters(["slider"], adapter_weights=[SCALE if on else 0.0])
    return callback_kwargs


# FLUX's flow schedule starts at sigma 1 (timestep 1000) whatever its shift: the first step's weight.
pipe.set_adapters(["slider"], adapter_weights=[SCALE if 1000 <= START_NOISE else 0.0])
# The starting noise as sliders-sample draws it: N(0, 1) in float32 on the CPU from the seed, (1, C, h, w),
# then packed into FluxPipeline's tokens of 2x2 latent cells.
factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
channels, h, w = pipe.transformer.config.in_channels // 4, HEIGHT // factor, WIDTH // factor
noise = torch.randn((1, channels, h, w), generator=torch.Generator("cpu").manual_seed(SEED), dtype=torch.float32)
latents = noise.view(1, channels, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, h * w // 4, channels * 4)
image = pipe(
    PROMPT,
    num_inference_steps=STEPS,
    guidance_scale=GUIDANCE,
    height=HEIGHT,
    width=WIDTH,
    latents=latents.to(dtype),
    generator=torch.Generator("cpu").manual_seed(SEED),
    max_sequence_length=min(pipe.tokenizer_2.model_max_length, 512),
    callback_on_step_end=switch_slider,
).images[0]
image.save({output!r})
print("wrote", {output!r})
'''


def diffusers_snippet(
    slider: str,
    scale: float,
    start_noise: float,
    *,
    model: str = "stabilityai/stable-diffusion-xl-base-1.0",
    prompt: str = "a photo of a person",
    steps: int = 30,
    guidance_scale: float = 5.0,
    height: int = 1024,
    width: int = 1024,
    seed: int = 0,
    output: str = "slider.png",
    pipeline_class: str = "StableDiffusionXLPipeline",
) -> str:
    """A runnable Python snippet that samples with the slider switched on at `start_noise`.

    The weight follows the same rule as `sliders-sample`: a step runs with the slider on when its
    timestep is at or below `start_noise` (FLUX: a FluxPipeline script, the timestep being sigma * 1000).
    A built-in model name becomes its local folder; the
    device and dtype are chosen where the snippet runs. Its starting noise is drawn as
    `generation.initial_latents` draws it, so it gives `sliders-sample`'s image.
    """
    from .models import resolve_model

    model = resolve_model(model)
    if Path(model).exists():  # a local folder or file: absolute, so that the snippet runs from anywhere
        model = str(Path(model).resolve())
    template = FLUX_DIFFUSERS_SNIPPET if pipeline_class == FLUX.pipeline_class else DIFFUSERS_SNIPPET
    return template.format(
        model=model, slider=slider, scale=float(scale), start_noise=float(start_noise),
        steps=check_steps(steps), prompt=prompt, guidance_scale=float(guidance_scale), height=height, width=width,
        seed=seed, output=output, slider_flag=shlex.quote(slider), prompt_flag=shlex.quote(prompt),
        pipeline_class=pipeline_class,
    )


def check_ui(ui: str) -> str:
    if ui not in UIS:
        raise InputError(f"--ui {ui!r} is unknown; choose one of {', '.join(UIS)}")
    return ui
