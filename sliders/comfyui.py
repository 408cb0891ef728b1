"""ComfyUI: workflows in its API format that switch a slider on at `start_noise`, and the `start_percent` maths.

The slider is a model-only hook LoRA whose keyframes hold strength 0 until a `start_percent`, then 1
(the slider's scale). `comfyui_start_percent` (SDXL's discrete timesteps) and
`comfyui_flux_start_percent` (FLUX.1's shifted flow sigmas, at the shift `flux_shift` gives the image
size) put that keyframe exactly where a step's timestep reaches `start_noise`, whatever the scheduler.
`comfyui_workflow` and `comfyui_flux_workflow` build the graphs `sliders-export --ui comfyui` writes;
node and input names, types and ranges are those of `COMFYUI_SOURCE`.
"""

from __future__ import annotations

import math
from typing import Any

from .config import MAX_TIMESTEPS
from .errors import InputError
from .parsing import check_steps
from .ui_schedules import flux_time_shift


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


# ---------------------------------------------------------------- FLUX.1 in ComfyUI

# ComfyUI's ModelSamplingFlux node (comfy_extras/nodes_model_advanced.py): the shift grows linearly in the
# image's token count (16 x 16 px each) from base_shift at 256 tokens to max_shift at 4096; diffusers'
# `mu` (`sliders.families.flux.flow_mu`) is the same line with FluxPipeline's scheduler defaults.
FLUX_BASE_SHIFT, FLUX_MAX_SHIFT = 0.5, 1.15
FLUX_BASE_TOKENS, FLUX_MAX_TOKENS = 256, 4096
FLUX_GUIDANCE_RANGE = (0.0, 100.0)  # FluxGuidance's guidance


def flux_shift(width: int, height: int) -> float:
    """The shift ComfyUI's ModelSamplingFlux node gives an image of width x height px (its default base and
    max shift), which is diffusers' `mu` for it: the schedule `sliders-sample` uses."""
    slope = (FLUX_MAX_SHIFT - FLUX_BASE_SHIFT) / (FLUX_MAX_TOKENS - FLUX_BASE_TOKENS)
    return (width * height / (8 * 8 * 2 * 2)) * slope + (FLUX_BASE_SHIFT - slope * FLUX_BASE_TOKENS)


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
