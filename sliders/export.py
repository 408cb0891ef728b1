"""`sliders-export`: carry a slider's `start_noise` switch into other UIs; what every UI's export shares.

The exports reproduce `sliders-sample`'s switch (a step runs with the slider on when its timestep is
at or below `start_noise`, `generation.multipliers_at`) in each UI's own terms, for the UI's own timesteps:

- ComfyUI (`sliders.comfyui`): a workflow in ComfyUI's API format that applies the slider as a hook LoRA
  whose keyframes hold strength 0 until `comfyui_start_percent(start_noise)`, then 1 (the slider's
  scale); for FLUX.1, the FLUX graph with the keyframe placed on its shifted flow sigmas
  (`comfyui_flux_start_percent`).
- AUTOMATIC1111/Forge (`sliders.webui`): the prompt syntax of the step-scheduling extensions
  (sd-webui-loractl's `weight@step` lists; LoRA Block Weight's `start=`) for the UIs' default sampler
  and schedule at a given step count; for FLUX.1, Forge's LoRA Block Weight syntax (`forge_flux_text`).
  AUTOMATIC1111 has no FLUX and is refused.
- diffusers (`sliders.snippets`): a Python snippet that sets the adapter weight in
  `callback_on_step_end` and draws its starting noise as `sliders-sample` does, so it makes the same image.

The UIs' noise schedules are `sliders.ui_schedules`'; key-format conversion (`sliders-convert`) is
`sliders.convert`'s. Here: the UI names (`UIS`), the refusal of key namings a UI drops
(`check_ui_naming`), and the settings an export defaults to (`recommended`, `resolution_for`). The
names the command and the tests use are re-exported from their modules, so `from sliders.export import
...` gives all of them. Nothing here loads a model's weights or runs a UI; `sliders.cli` prints or
writes what these return.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import torch

from .comfyui import (COMFYUI_SOURCE, COMFYUI_STRENGTH_RANGE, FLUX_GUIDANCE_RANGE, comfyui_flux_percent_to_sigma,
                      comfyui_flux_start_percent, comfyui_flux_workflow, comfyui_start_percent, comfyui_workflow,
                      flux_shift)
from .convert import (FLUX_KEY_FORMAT_NOTES, KEY_FORMAT_NOTES, check_output_file, convert_slider, key_format_note,
                      meta_unet, read_checked_slider, unet_config_for)
from .errors import InputError
from .families import FLUX, SDXL, family_of_slider
from .formats import NAMING_LABELS, SDXL_BASE_UNET_CONFIG, is_flux_file, parse_tensors
from .parsing import check_multiple, check_start_noise, recorded_resolution
from .slider_files import DEFAULT_SCALES, recorded_start_noise
from .snippets import DIFFUSERS_SNIPPET, FLUX_DIFFUSERS_SNIPPET, diffusers_snippet
from .ui_schedules import (flux_sigma_table, flux_simple_sigmas, flux_time_shift, karras_sigmas, sdxl_log_sigmas,
                           timestep_interpolated, timestep_nearest)
from .webui import (FORGE_FLUX, FORGE_FLUX_SHIFT, WEBUIS, Webui, a1111_prompts, a1111_text, extension_counter,
                    forge_flux_prompts, forge_flux_text, lbw_start_a1111, lbw_start_forge, loractl_schedule,
                    webui_first_on_step)

__all__ = [
    # this module
    "UIS", "UI_NAMINGS", "FLUX_DIFFUSERS_PATH_PREFIXES", "check_ui", "check_ui_naming", "recommended",
    "resolution_for",
    # sliders.convert
    "FLUX_KEY_FORMAT_NOTES", "KEY_FORMAT_NOTES", "check_output_file", "convert_slider", "key_format_note",
    "meta_unet", "read_checked_slider", "unet_config_for",
    # sliders.comfyui
    "COMFYUI_SOURCE", "COMFYUI_STRENGTH_RANGE", "FLUX_GUIDANCE_RANGE", "comfyui_flux_percent_to_sigma",
    "comfyui_flux_start_percent", "comfyui_flux_workflow", "comfyui_start_percent", "comfyui_workflow",
    "flux_shift",
    # sliders.webui
    "FORGE_FLUX", "FORGE_FLUX_SHIFT", "WEBUIS", "Webui", "a1111_prompts", "a1111_text", "extension_counter",
    "forge_flux_prompts", "forge_flux_text", "lbw_start_a1111", "lbw_start_forge", "loractl_schedule",
    "webui_first_on_step",
    # sliders.snippets
    "DIFFUSERS_SNIPPET", "FLUX_DIFFUSERS_SNIPPET", "diffusers_snippet",
    # sliders.ui_schedules
    "flux_sigma_table", "flux_simple_sigmas", "flux_time_shift", "karras_sigmas", "sdxl_log_sigmas",
    "timestep_interpolated", "timestep_nearest",
]

UIS = ("comfyui", "a1111", "diffusers", "forge")
# The namings AUTOMATIC1111, Forge and ComfyUI map completely (docs/exports.md, "Key formats"); a PEFT file loses
# every attention layer in ComfyUI and Forge and loads nothing in AUTOMATIC1111.
UI_NAMINGS = ("kohya", "diffusers")


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


def check_ui(ui: str) -> str:
    if ui not in UIS:
        raise InputError(f"--ui {ui!r} is unknown; choose one of {', '.join(UIS)}")
    return ui
