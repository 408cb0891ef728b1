"""Using a slider elsewhere: convert its file to another key format, and carry `start_noise` into UIs.

`convert_slider` rewrites any slider file `load_slider` reads (every naming of `sliders.formats`,
and the official `.pt` sliders) as `.safetensors` in the `kohya`, `diffusers` or `peft` key format.
It needs no base weights: the UNet's layer names come from its config, built on the meta device.

The exports reproduce the paper's SDEdit-style switch (sliders off while the timestep is above
`start_noise`, at their scale after) in each UI's own terms:

- ComfyUI: a workflow in ComfyUI's API format that applies the slider as a hook LoRA whose keyframes
  hold strength 0 until `start_percent = 1 - start_noise / 1000`, then 1 (the slider's scale).
- AUTOMATIC1111/Forge: the prompt syntax of the step-scheduling extensions (sd-webui-loractl's
  `weight@step` lists; LoRA Block Weight's `start=`) for a given step count.
- diffusers: a Python snippet that sets the adapter weight in `callback_on_step_end`.

Nothing here loads a model's weights or runs a UI; `sliders.cli` prints or writes what these return.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import InputError
from .formats import SDXL_BASE_UNET_CONFIG, check_key_format
from .network import DEFAULT_SCALES, DEFAULT_START_NOISE, load_slider, read_slider_file

logger = logging.getLogger(__name__)

MAX_TIMESTEP = 1000
UIS = ("comfyui", "a1111", "diffusers")


def _config_of_model(name_or_path: str) -> dict[str, Any]:
    """The UNet config of a base model folder, hub id (from the local cache) or built-in name."""
    from diffusers import UNet2DConditionModel

    from .models import resolve_model

    source = resolve_model(name_or_path)
    if Path(source).is_file():
        # A single-file checkpoint carries no diffusers config; single files here are SDXL.
        return dict(SDXL_BASE_UNET_CONFIG)
    try:
        return dict(UNet2DConditionModel.load_config(source, subfolder="unet"))
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"could not read the UNet config of base model '{source}': {first}; check the name or path") from None


def unet_config_for(metadata: Mapping[str, str], pretrained_model: str | None) -> dict[str, Any]:
    """The UNet config a slider's layer names are placed in.

    In order: the given base model, the config recorded in the file (`sliders_unet_config`), the
    base model recorded in it, else SDXL base (files from elsewhere rarely say; SDXL is our target).
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
            logger.warning("base model '%s' of the slider is not available here; assuming SDXL base", base)
    logger.info("the slider does not record its base model; assuming SDXL base (pass --pretrained_model otherwise)")
    return dict(SDXL_BASE_UNET_CONFIG)


def meta_unet(config: Mapping[str, Any]):
    """A UNet with this config on the meta device: every layer's name and shape, no memory, no weights."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(dict(config))


def convert_slider(
    source: str | Path, target: str | Path, key_format: str, *, pretrained_model: str | None = None
) -> Path:
    """Write `source` (any readable slider file) to `target` (.safetensors) in `key_format`.

    The weights pass through unchanged (PEFT's folded `alpha / rank` aside), so the converted file
    gives the same UNet output; the source's metadata is kept.
    """
    check_key_format(key_format, "--to")
    source, target = Path(source), Path(target)
    if target.suffix.lower() != ".safetensors":
        raise InputError(f"output '{target}' must end in .safetensors; converted sliders are never pickled")
    if target.resolve() == source.resolve():
        raise InputError(f"output '{target}' is the input file; give another output path")
    _, metadata = read_slider_file(source)
    network = load_slider(source, meta_unet(unet_config_for(metadata, pretrained_model)), attach=False)
    metadata_out = {"ss_output_name": target.stem}
    if "sliders_version" not in metadata:
        metadata_out["sliders_converted_from"] = source.name
    return network.save(target, metadata_out, key_format=key_format)


# ---------------------------------------------------------------- recommended settings


def recommended(metadata: Mapping[str, str], start_noise: float | None, scale: float | None) -> tuple[float, float]:
    """(start_noise, scale) for an export: the given values, else the slider's recorded ones.

    The recorded scale is the largest of `sliders_scales` (the strongest "more of the concept").
    """
    if start_noise is None:
        text = metadata.get("sliders_start_noise", str(DEFAULT_START_NOISE))
        try:
            start_noise = float(text)
        except ValueError:
            raise InputError(f"the slider's sliders_start_noise {text!r} is not a number; pass --start_noise") from None
    if not math.isfinite(start_noise) or not 0 <= start_noise <= MAX_TIMESTEP:
        raise InputError(f"--start_noise must be from 0 to {MAX_TIMESTEP}, got {start_noise!r}")
    if scale is None:
        try:
            scales = [float(s) for s in json.loads(metadata.get("sliders_scales", "null") or "null") or DEFAULT_SCALES]
        except (json.JSONDecodeError, TypeError, ValueError):
            raise InputError("the slider's sliders_scales is unreadable; pass --scale") from None
        scale = max(scales)
    if not math.isfinite(scale):
        raise InputError(f"--scale must be a finite number, got {scale!r}")
    return float(start_noise), float(scale)


def start_percent(start_noise: float) -> float:
    """ComfyUI's sampling fraction at which the timestep falls to `start_noise` (0 = first step).

    ComfyUI maps a percent p to the sigma of timestep (1 - p) * 999, so p = 1 - start_noise / 1000.
    """
    return round(1.0 - start_noise / MAX_TIMESTEP, 4)


def first_on_step(steps: int, start_noise: float) -> int:
    """The 0-based step from which the slider is on, of `steps` evenly spread over 1000 timesteps."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"--steps must be a whole number of at least 1, got {steps!r}")
    return min(steps, int(math.floor(steps * (1.0 - start_noise / MAX_TIMESTEP) + 0.5)))


# ---------------------------------------------------------------- ComfyUI


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
    """A ComfyUI workflow (API format) that applies the slider from `start_percent` on.

    The slider is a model-only hook LoRA (`CreateHookLoraModelOnly`, strength = scale) scheduled by
    two `CreateHookKeyframe`s (strength_mult 0 from 0, 1 from `start_percent`) through
    `SetHookKeyframes`, and attached to both the positive and the negative conditioning with
    `PairConditioningSetProperties`, so both classifier-free-guidance branches see it, as in our
    sampling. Node and input names are those of ComfyUI's comfy_extras/nodes_hooks.py and nodes.py.
    """
    percent = start_percent(start_noise)

    def node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
        return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}

    return {
        "1": node("CheckpointLoaderSimple", "Load SDXL checkpoint", ckpt_name=checkpoint),
        "2": node("CreateHookLoraModelOnly", "Slider (model-only hook LoRA)", lora_name=lora_name,
                  strength_model=scale),
        "3": node("CreateHookKeyframe", "Slider off above start_noise", strength_mult=0.0, start_percent=0.0),
        "4": node("CreateHookKeyframe", f"Slider on from start_noise {start_noise:g}", strength_mult=1.0,
                  start_percent=percent, prev_hook_kf=["3", 0]),
        "5": node("SetHookKeyframes", "Schedule the slider", hooks=["2", 0], hook_kf=["4", 0]),
        "6": node("CLIPTextEncode", "Prompt", text=prompt, clip=["1", 1]),
        "7": node("CLIPTextEncode", "Negative prompt", text=negative_prompt, clip=["1", 1]),
        "8": node("PairConditioningSetProperties", "Slider on both CFG branches", positive_NEW=["6", 0],
                  negative_NEW=["7", 0], strength=1.0, set_cond_area="default", opt_hooks=["5", 0]),
        "9": node("EmptyLatentImage", "Latent", width=width, height=height, batch_size=1),
        "10": node("KSampler", "Sample", model=["1", 0], seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                   scheduler="normal", positive=["8", 0], negative=["8", 1], latent_image=["9", 0], denoise=1.0),
        "11": node("VAEDecode", "Decode", samples=["10", 0], vae=["1", 2]),
        "12": node("SaveImage", "Save", images=["11", 0], filename_prefix=f"slider_{scale:+g}"),
    }


# ---------------------------------------------------------------- AUTOMATIC1111 / Forge


def _number(value: float) -> str:
    return f"{value:g}"


def a1111_prompts(lora_name: str, scale: float, start_noise: float, steps: int) -> dict[str, str]:
    """Prompt syntax that holds the slider at 0 for the first steps and at `scale` after.

    `loractl` (cheald/sd-webui-loractl): `weight@step` points, interpolated per step; steps above 1
    are absolute step numbers (0-based), so the list ends above 1 even when the switch comes at
    step 0 or 1. `lbw` (hako-mikan/sd-webui-lora-block-weight, its Active box ticked): `start=N`
    turns the LoRA on from the N-th step, counted from 1 in AUTOMATIC1111.
    """
    first = first_on_step(steps, start_noise)
    weight = _number(scale)
    if first == 0:
        schedule = weight
    else:
        points = [(0.0, 0)] + ([(0.0, first - 1)] if first - 1 > 0 else []) + [(scale, first)]
        if points[-1][1] <= 1:
            points.append((scale, max(steps, 2)))
        schedule = ",".join(f"{_number(w)}@{s}" for w, s in points)
    return {
        "loractl": f"<lora:{lora_name}:{schedule}>",
        "lbw": f"<lora:{lora_name}:{weight}:lbw=ALL:start={first + 1}>",
        "first_on_step": str(first),
    }


def a1111_text(lora_name: str, scale: float, start_noise: float, steps: int) -> str:
    syntax = a1111_prompts(lora_name, scale, start_noise, steps)
    first = int(syntax["first_on_step"])
    return "\n".join([
        f"# slider '{lora_name}' at scale {scale:g}, off while the timestep is above {start_noise:g}:",
        f"# with {steps} steps the slider is off for steps 1-{first} and on from step {first + 1} (counted from 1).",
        "# Put the slider file in models/Lora; add one of these to the prompt.",
        "# sd-webui-loractl (https://github.com/cheald/sd-webui-loractl):",
        syntax["loractl"],
        "# LoRA Block Weight (https://github.com/hako-mikan/sd-webui-lora-block-weight), its Active box ticked;",
        "# Forge counts start= from 0, so there the slider comes on one step later:",
        syntax["lbw"],
        "# Without an extension, <lora:name:w> applies the slider at every step (no start_noise switch):",
        f"<lora:{lora_name}:{_number(scale)}>",
    ])


# ---------------------------------------------------------------- diffusers


DIFFUSERS_SNIPPET = '''\
# Concept slider with the start_noise switch, in plain diffusers (needs peft installed).
import torch
from diffusers import StableDiffusionXLPipeline

MODEL = {model!r}
SLIDER = {slider!r}
SCALE = {scale!r}  # the slider's strength once it is on
START_NOISE = {start_noise!r}  # the slider is off while the timestep is above this (of 1000)

pipe = StableDiffusionXLPipeline.from_pretrained(MODEL, torch_dtype={dtype})
pipe.to({device!r})
pipe.load_lora_weights(SLIDER, adapter_name="slider")
pipe.set_adapters(["slider"], adapter_weights=[0.0])  # off for the first, layout-making steps


def switch_slider(pipe, step, timestep, callback_kwargs):
    # Runs after each step: set the weight the next step uses from the next step's timestep.
    timesteps = pipe.scheduler.timesteps
    if step + 1 < len(timesteps):
        on = float(timesteps[step + 1]) <= START_NOISE
        pipe.set_adapters(["slider"], adapter_weights=[SCALE if on else 0.0])
    return callback_kwargs


# The first step's weight is set here, before sampling (the callback runs only after a step).
pipe.scheduler.set_timesteps({steps}, device=pipe.device)
first_on = float(pipe.scheduler.timesteps[0]) <= START_NOISE
pipe.set_adapters(["slider"], adapter_weights=[SCALE if first_on else 0.0])
image = pipe(
    {prompt!r},
    num_inference_steps={steps},
    guidance_scale={guidance_scale!r},
    height={height},
    width={width},
    generator=torch.Generator("cpu").manual_seed(0),
    callback_on_step_end=switch_slider,
).images[0]
image.save({output!r})
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
    output: str = "slider.png",
    device: str = "cuda",
    dtype: str = "torch.float16",
) -> str:
    """A runnable Python snippet that samples with the slider switched on at `start_noise`.

    The weight follows the same rule as `sliders-sample`: a step runs with the slider on when its
    timestep is at or below `start_noise`.
    """
    first_on_step(steps, start_noise)  # validates steps
    return DIFFUSERS_SNIPPET.format(
        model=model, slider=slider, scale=float(scale), start_noise=float(start_noise), steps=steps,
        prompt=prompt, guidance_scale=float(guidance_scale), height=height, width=width, output=output,
        device=device, dtype=dtype,
    )


def check_ui(ui: str) -> str:
    if ui not in UIS:
        raise InputError(f"--ui {ui!r} is unknown; choose one of {', '.join(UIS)}")
    return ui

