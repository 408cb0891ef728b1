"""The diffusion maths shared by every UNet family: the training noise schedulers (`make_scheduler`,
`prediction_of`, `SIGMA_SCHEDULERS`), prompt encoding and conditioning (`encode_prompts`, `time_ids`,
`Conditioning`, `conditioning`), the UNet's noise prediction with and without classifier-free
guidance (`model_input`, `predict_noise`, `guided_noise`), partial denoising (`denoise_to`,
`denoise_states`, `jump_plan`, `denoise_jumps`), the DDIM update (`ddim_update`),
`training_timestep` and `vae_factor`. Split out of `models.py`, which re-exports these names; it
loads nothing and imports nothing of sliders but `errors`, so `models` (loading) may import it and
never the other way round.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EulerAncestralDiscreteScheduler,
    LMSDiscreteScheduler,
)

from .errors import InputError

# Schedulers whose latents live in sigma space (x0 + sigma * noise) and need 1/sqrt(sigma^2+1) before the UNet.
SIGMA_SCHEDULERS = (EulerAncestralDiscreteScheduler, LMSDiscreteScheduler)


def vae_factor(vae) -> int:
    """Pixels per latent cell, from the VAE's number of resolution levels."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _cat(parts: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(parts)


@dataclass
class Conditioning:
    """What the UNet is conditioned on, batched on the first axis. `pooled` and `time_ids` are SDXL's
    added conditioning; families without it (SD 1.x/2.x) leave them None."""

    embeds: torch.Tensor  # (B, L, D): SDXL: both encoders' penultimate states, concatenated (D1 + D2)
    pooled: torch.Tensor | None = None  # (B, P): SDXL encoder 2's projected pooled output
    time_ids: torch.Tensor | None = None  # (B, 6): original size, crop top-left, target size

    @staticmethod
    def cat(items: Sequence["Conditioning"]) -> "Conditioning":
        return Conditioning(
            torch.cat([c.embeds for c in items]),
            _cat([c.pooled for c in items]),
            _cat([c.time_ids for c in items]),
        )

    def to(self, device: torch.device, dtype: torch.dtype) -> "Conditioning":
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, dtype)

        return Conditioning(self.embeds.to(device, dtype), move(self.pooled), move(self.time_ids))


@torch.no_grad()
def encode_prompts(
    tokenizers: Sequence, text_encoders: Sequence, prompts: Sequence[str], clip_skip: int | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{prompt: (embeds (L, D1+D2), pooled (P,))} for every distinct prompt, float32 on the CPU.

    Uses the penultimate hidden state of each encoder (SDXL's convention; `clip_skip` goes further
    back) and the projected pooled output of the second encoder.
    """
    unique = list(dict.fromkeys(prompts))
    layer = -((clip_skip or 0) + 2)
    states, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        device = next(encoder.parameters()).device
        ids = tokenizer(
            unique,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        output = encoder(ids, output_hidden_states=True)
        states.append(output.hidden_states[layer].float().cpu())
        if hasattr(output, "text_embeds"):
            pooled = output.text_embeds.float().cpu()
    if pooled is None:
        raise InputError("the second text encoder has no projection; the base model is not SDXL-shaped")
    embeds = torch.cat(states, dim=-1)
    return {text: (embeds[i], pooled[i]) for i, text in enumerate(unique)}


def time_ids(height: int, width: int, crop: tuple[int, int] = (0, 0), original: tuple[int, int] | None = None) -> torch.Tensor:
    """SDXL's six added time ids (original size, crop top-left, target size), shape (6,)."""
    original = original or (height, width)
    return torch.tensor([original[0], original[1], crop[0], crop[1], height, width], dtype=torch.float32)


def conditioning(
    embeddings: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]], prompt: str, ids: torch.Tensor | None,
    batch: int | None = None,
) -> Conditioning:
    """Conditioning for one prompt repeated over the batch of time ids `ids` (B, 6), or over `batch`
    for a family without time ids (`ids` None)."""
    embeds, pooled = embeddings[prompt]
    batch = ids.shape[0] if ids is not None else batch
    if pooled is None:
        return Conditioning(embeds.expand(batch, *embeds.shape))
    return Conditioning(embeds.expand(batch, *embeds.shape), pooled.expand(batch, *pooled.shape), ids)


def make_scheduler(name: str, v_pred: bool = False, zero_snr: bool = False):
    """The training noise scheduler: SD's betas (0.00085..0.012, scaled_linear), 1000 steps; `zero_snr`
    rescales them to zero terminal SNR (Lin et al. 2024), as v-prediction fine-tunes trained so need."""
    kwargs = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction" if v_pred else "epsilon",
    )
    if zero_snr:
        kwargs["rescale_betas_zero_snr"] = True
    if name == "ddim":
        return DDIMScheduler(clip_sample=False, **kwargs)
    if name == "ddpm":
        return DDPMScheduler(clip_sample=False, **kwargs)
    if name == "lms":
        if zero_snr:
            raise InputError("this model uses zero-terminal-SNR betas, which the lms scheduler lacks; "
                             "set train.noise_scheduler to ddim, ddpm or euler_a")
        return LMSDiscreteScheduler(**kwargs)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler(**kwargs)
    raise InputError(f"noise scheduler {name!r} is unknown; choose ddim, ddpm, lms or euler_a")


def prediction_of(model_scheduler, v_pred: bool = False) -> tuple[bool, bool]:
    """(v-prediction, zero terminal SNR) of a model, from its own scheduler config; the official
    `v_pred` flag forces v-prediction (for single files that do not say)."""
    config = model_scheduler.config
    v = bool(v_pred) or config.get("prediction_type") == "v_prediction"
    return v, bool(config.get("rescale_betas_zero_snr", False))


def model_input(scheduler, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """Latents as the UNet expects them at `timestep`; stateless (does not touch the scheduler's step index)."""
    if not isinstance(scheduler, SIGMA_SCHEDULERS):
        return latents
    alpha_bar = scheduler.alphas_cumprod[int(timestep)]
    sigma_sq = (1 - alpha_bar) / alpha_bar
    return latents / (sigma_sq + 1) ** 0.5


def predict_noise(unet, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
    """The UNet's prediction, in the UNet's dtype; latents (B, C, h, w) and cond are batched alike."""
    dtype = unet.dtype
    cond = cond.to(latents.device, dtype)
    added = None if cond.pooled is None else {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
    return unet(latents.to(dtype), timestep, encoder_hidden_states=cond.embeds, added_cond_kwargs=added).sample


def guided_noise(unet, inputs: torch.Tensor, timestep: torch.Tensor, both: Conditioning, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance from one batched call on (uncond, cond): `u + g * (c - u)`, float32.
    `inputs` is the latents twice over, (2B, C, h, w); `both` the unconditional then the conditional."""
    noise_uncond, noise_cond = predict_noise(unet, inputs, timestep, both).float().chunk(2)
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


@torch.no_grad()
def denoise_to(
    unet,
    scheduler,
    latents: torch.Tensor,
    steps: int,
    total_steps: int,
    cond: Conditioning,
    uncond: Conditioning,
    guidance_scale: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run the first `steps` of a `total_steps` schedule from `latents` with classifier-free guidance.

    Each step is one batched UNet call on (uncond, cond); the result is float32.
    """
    return denoise_states(unet, scheduler, latents, [steps], total_steps, cond, uncond, guidance_scale, generator)[steps]


@torch.no_grad()
def denoise_states(
    unet,
    scheduler,
    latents: torch.Tensor,
    stops: Sequence[int],
    total_steps: int,
    cond: Conditioning,
    uncond: Conditioning,
    guidance_scale: float,
    generator: torch.Generator | None = None,
) -> dict[int, torch.Tensor]:
    """{k: latents after the first k steps} for every k in `stops`, from one run of `max(stops)` steps
    of the `total_steps` schedule (what `denoise_to` gives for each k, from a single trajectory)."""
    scheduler.set_timesteps(total_steps, device=latents.device)
    # Stochastic samplers (DDPM, Euler ancestral) draw from `generator`; deterministic ones take none.
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    both = Conditioning.cat([uncond, cond])
    latents = latents.float()
    wanted = set(stops)
    states = {0: latents} if 0 in wanted else {}
    for index, timestep in enumerate(scheduler.timesteps[: max(stops)], start=1):
        inputs = scheduler.scale_model_input(torch.cat([latents, latents]), timestep)
        guided = guided_noise(unet, inputs, timestep, both, guidance_scale)
        latents = scheduler.step(guided, timestep, latents, **extra).prev_sample
        if index in wanted:
            states[index] = latents
    return states


def jump_plan(stops: Sequence[int], max_calls: int, spacing: str = "late") -> list[int]:
    """Schedule indices a coarse run visits: at most `max_calls` jumps from 0 to max(stops), plus
    every stop (each stop costs one more call where it is not already on the way). `even` jumps are
    of equal length; `late` ones shorten towards the end (positions end * (1 - (1 - i/n)^2)), so the
    last steps before x_k, which set its detail, are the finest."""
    end = max(stops)
    if end <= max_calls:
        visited = set(range(end + 1))
    elif spacing == "late":
        visited = {round(end * (1 - (1 - i / max_calls) ** 2)) for i in range(max_calls + 1)}
    else:
        visited = {round(end * i / max_calls) for i in range(max_calls + 1)}
    return sorted(visited | set(stops) | {0})


@torch.no_grad()
def denoise_jumps(
    unet,
    scheduler,
    latents: torch.Tensor,
    indices: Sequence[int],
    total_steps: int,
    cond: Conditioning,
    uncond: Conditioning,
    guidance_scale: float,
) -> dict[int, torch.Tensor]:
    """{i: latents at schedule index i} for the increasing `indices` (starting at 0), one guided UNet
    call per jump, each a deterministic DDIM update (eta 0) from timestep `t_a` to `t_b` of the
    `total_steps` schedule: x0 = (x - sqrt(1 - a_a) eps) / sqrt(a_a), x_b = sqrt(a_b) x0 + sqrt(1 - a_b) eps.

    With jumps of one index this is what DDIMScheduler.step does, so longer jumps reach the same noise
    level as `denoise_to` in fewer calls, along a coarser path. Needs a scheduler in alpha space
    (DDIM, DDPM); epsilon or v prediction.
    """
    if isinstance(scheduler, SIGMA_SCHEDULERS):
        raise InputError("coarse partial denoising needs train.noise_scheduler ddim or ddpm")
    scheduler.set_timesteps(total_steps, device=latents.device)
    timesteps = scheduler.timesteps
    alphas = scheduler.alphas_cumprod.to(latents.device, torch.float32)
    v_pred = scheduler.config.prediction_type == "v_prediction"
    both = Conditioning.cat([uncond, cond])
    latents = latents.float()
    states = {indices[0]: latents}
    for here, there in zip(indices[:-1], indices[1:]):
        timestep = timesteps[here]
        guided = guided_noise(unet, torch.cat([latents, latents]), timestep, both, guidance_scale)
        a_here = alphas[int(timestep)]
        a_there = alphas[int(timesteps[there])]  # there <= total_steps - 1: never past the schedule
        latents = ddim_update(latents, guided, a_here, a_there, v_pred)
        states[there] = latents
    return states


def ddim_update(
    latents: torch.Tensor, model_output: torch.Tensor, a_here: torch.Tensor, a_there: torch.Tensor, v_pred: bool
) -> torch.Tensor:
    """One deterministic DDIM move (eta 0) of `latents` from the noise level with cumulative alpha
    `a_here` to the one with `a_there`, given the model's output at `a_here` (epsilon or v):
    x0 = (x - sqrt(1 - a_here) eps) / sqrt(a_here), x' = sqrt(a_there) x0 + sqrt(1 - a_there) eps.
    With `a_there` > `a_here` it denoises; with `a_there` < `a_here` it is a DDIM inversion step."""
    if v_pred:
        x0 = a_here.sqrt() * latents - (1 - a_here).sqrt() * model_output
        eps = a_here.sqrt() * model_output + (1 - a_here).sqrt() * latents
    else:
        x0 = (latents - (1 - a_here).sqrt() * model_output) / a_here.sqrt()
        eps = model_output
    return a_there.sqrt() * x0 + (1 - a_there).sqrt() * eps


def training_timestep(scheduler, step: int, total_steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The timestep at which step `step` of `total_steps` is trained: entry int(step*1000/total) of the 1000-step schedule."""
    scheduler.set_timesteps(scheduler.config.num_train_timesteps, device=device)
    return scheduler.timesteps[int(step * scheduler.config.num_train_timesteps / total_steps)]
