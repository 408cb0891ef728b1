"""diffusers: a runnable Python script that samples with a slider switched on at `start_noise`.

`diffusers_snippet` fills one of two templates, `DIFFUSERS_SNIPPET` (SDXL-style UNet pipelines) or
`FLUX_DIFFUSERS_SNIPPET` (FluxPipeline), which set the adapter weight in `callback_on_step_end` by the
same rule as `sliders-sample` and draw the starting noise as it does, so that the script makes the same
image. It is what `sliders-export --ui diffusers` prints; nothing here loads a model.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .families import FLUX
from .parsing import check_steps


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
