"""AUTOMATIC1111 and Forge: the prompt syntax that switches a slider on at `start_noise`.

The webuis have no switch of their own; their step-scheduling extensions have one (sd-webui-loractl's
`weight@step` lists, LoRA Block Weight's `start=`). The syntax is computed for each webui's default
sampler and schedule (`WEBUIS` for SDXL, `FORGE_FLUX` for FLUX.1 in Forge) at a given step count
(`webui_first_on_step`), allowing for the step counter those extensions read (`extension_counter`).
`a1111_text` and `forge_flux_text` are what `sliders-export --ui a1111` or `--ui forge` prints;
AUTOMATIC1111 has no FLUX.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .config import MAX_TIMESTEPS
from .parsing import check_steps
from .ui_schedules import flux_simple_sigmas, karras_sigmas, timestep_interpolated, timestep_nearest


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


# ---------------------------------------------------------------- FLUX.1 in Forge

# Forge's FLUX-dev predictor is built once with 4096 tokens, whatever the image size: mu 1.15
# (backend/diffusion_engine/flux.py); its FLUX UI defaults are sampler "Euler", scheduler "Simple"
# (modules/processing_scripts/sampler.py).
FORGE_FLUX_SHIFT = 1.15


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
