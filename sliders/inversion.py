"""Inverting images into a base model's trajectory and regenerating them with sliders: the algorithms
`sliders-edit` and `sliders-eval --edit_scenes` run.

Holds the image's latents and back (a VAE encode and decode in fp32: SDXL's VAE overflows in fp16), the
conditioning of one image (`encode_conditioning`), the DDIM schedule the edits run on, the inversions
(`INVERSIONS`), and the regeneration with sliders switched on from `start_noise`, or with an edited
prompt. It reads no files, checks no command input and writes nothing (see `editing`); the slider
switch is `generation.multipliers_at`, the DDIM move `models.ddim_update`.

Every inversion yields the latents at the step where the sliders switch on, plus, for each later
step, the unconditional embedding and (for `direct`) the latent correction that the regeneration
uses. Steps above `start_noise` run with the sliders off, so they are the same for every scale and
run once per image.

- `null-text` (Mokady et al. 2023, as the official notebook): DDIM inversion with the prompt alone
  (guidance 1) to the noisiest step, then per step an unconditional embedding (SDXL: the token states
  and the pooled vector) optimised with Adam so that the guided step from the current latents lands on
  the inverted ones (10 iterations, lr 1e-2 falling to half, stop below 1e-5 + 2e-5 i).
- `direct`: DDIM inversion only as deep as the switch, then per later step the difference between the
  inverted latents and the guided step from them is recorded and added back (the latent correction of
  Ju et al. 2024, "Direct Inversion"). At scale 0 it returns the inverted latents, exactly up to
  rounding; each step costs one guided UNet call.
- `negative-prompt` (Miyake et al. 2023): DDIM inversion to the noisiest step; the prompt's embedding
  stands in for the unconditional one, so guidance cancels and the regeneration retraces the inversion
  as well as DDIM inversion is exact.
- `ddim`: plain DDIM inversion to the noisiest step, regenerated with the usual unconditional
  embedding: the reference that shows what the other methods add.
- `guarded`: `direct` for an input the model can draw, `ddim` for one it cannot: an autoencoder
  round trip below `VAE_WARN_DB`, or `direct`'s corrections above `CORRECTION_WARN` of the latents.
  Off the training distribution the corrections carry what the model cannot represent into every
  edit, and plain DDIM stays stable (EVALUATION.md, "Edits off the training distribution").

FLUX (flow matching, no classifier-free guidance) runs the same plan on the flow ODE of the
pipeline's own sigma schedule: sampling takes Euler steps `x' = x + (sigma' - sigma) v(x, t)` from
noise to the image, inversion takes them backwards from the image, with the velocity at the latents
one level cleaner and the step's own timestep (`flow_inversion`, the flow analogue of DDIM
inversion). `ddim` inverts to pure noise and regenerates from there, `direct` inverts only to the
switch and records the latent corrections (exact at scale 0), `guarded` chooses between them as for
UNets. `null-text` and `negative-prompt` act on the unconditional branch of classifier-free
guidance, which FLUX does not have, and are refused (`FLOW_INVERSIONS`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .config import INVERSIONS, NULL_TEXT_ITERATIONS
from .data import to_pixels
from .errors import InputError
from .families import Family, family_of_pipe
from .generation import multipliers_at, set_multipliers
from .diffusion import Conditioning, ddim_update, guided_noise, predict_noise
from .network import SliderNetwork

if TYPE_CHECKING:
    from PIL import Image

NULL_TEXT_LR = 1e-2
NULL_TEXT_EPSILON = 1e-5
# What says an input is beyond the base model (`editing.representation_warnings`; measured in EVALUATION.md).
VAE_WARN_DB = 30.0
CORRECTION_WARN = 0.05
RATIO_STEPS = 25  # the schedule length the correction ratio is expressed for
FLOW_INVERSIONS = ("direct", "ddim", "guarded")  # the others act on classifier-free guidance, which FLUX lacks


# --------------------------------------------------------------------------------------------------
# An image's latents and conditioning
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _fp32(vae) -> Iterator[Any]:
    """The VAE in float32 for the block, its dtype restored after: SDXL's VAE overflows in fp16."""
    dtype = vae.dtype
    if dtype != torch.float32:
        vae.to(torch.float32)
    try:
        yield vae
    finally:
        if dtype != torch.float32:
            vae.to(dtype)


def _latent_shift_scale(vae) -> tuple[float, float]:
    shift = getattr(vae.config, "shift_factor", None)
    return float(shift or 0.0), float(vae.config.scaling_factor)


@torch.no_grad()
def encode_image(vae, image: "Image.Image") -> torch.Tensor:
    """The image's latents (1, C, R/f, R/f), float32 on the VAE's device: its posterior mean (no
    sampling, as the notebook inverts), shifted and scaled as the UNet sees latents. Encoded in fp32."""
    shift, scale = _latent_shift_scale(vae)
    with _fp32(vae):
        pixels = to_pixels(image).unsqueeze(0).to(vae.device, torch.float32)  # (1, 3, R, R)
        mean = vae.encode(pixels).latent_dist.mean
    return ((mean - shift) * scale).float()


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> "Image.Image":
    """Latents (1, C, h, w) as an RGB image, decoded in fp32."""
    from PIL import Image

    shift, scale = _latent_shift_scale(vae)
    with _fp32(vae):
        pixels = vae.decode(latents.to(vae.device, torch.float32) / scale + shift).sample[0]  # (3, R, R)
    array = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def encode_conditioning(pipe, prompts: Sequence[str], negative_prompt: str, ids: torch.Tensor,
                        device: torch.device) -> tuple[list[Conditioning], Conditioning | None]:
    """Each prompt's conditioning and the negative prompt's, (1, ...) each with the time ids `ids` (6,)
    where the family has added conditioning, through the pipeline's own prompt encoding (an empty
    negative prompt gives SDXL's zeros). A family without classifier-free guidance (FLUX) has no
    negative prompt: None."""
    family = family_of_pipe(pipe)
    conds, uncond = [], None
    with torch.no_grad():
        for prompt in prompts:
            encoded = {k: v.float() for k, v in family.pipeline_prompt(pipe, prompt, negative_prompt, device).items()}
            pooled, negative_pooled = encoded.get("pooled_prompt_embeds"), encoded.get("negative_pooled_prompt_embeds")
            row = None if pooled is None else ids.unsqueeze(0).to(device)
            conds.append(Conditioning(encoded["prompt_embeds"], pooled, row))
            if uncond is None and "negative_prompt_embeds" in encoded:
                uncond = Conditioning(encoded["negative_prompt_embeds"], negative_pooled, row)
    return conds, uncond


# --------------------------------------------------------------------------------------------------
# The schedule and the inversions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A DDIM schedule of `steps` from the base model's own scheduler config. Level i is the latents
    before step i (level 0 the noisiest, level `steps` the clean latents)."""

    timesteps: torch.Tensor  # (N,) descending
    alphas: torch.Tensor  # (T,) cumulative alphas, float32
    final: torch.Tensor  # the cumulative alpha of the clean level
    v_pred: bool

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def alpha(self, level: int) -> torch.Tensor:
        return self.alphas[int(self.timesteps[level])] if level < self.steps else self.final

    def switch(self, start_noise: float) -> int:
        """The first step whose timestep is at or below `start_noise` (`steps` when none is)."""
        return next((i for i, t in enumerate(self.timesteps) if float(t) <= start_noise), self.steps)


def make_schedule(scheduler_config, steps: int, device: torch.device | str = "cpu") -> Schedule:
    """The edit schedule: DDIM on the base model's betas and timestep spacing, the clean level at
    alphas_cumprod[0] (set_alpha_to_one off, as the null-text notebook)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(steps, device=device)
    alphas = scheduler.alphas_cumprod.to(device, torch.float32)
    return Schedule(
        timesteps=scheduler.timesteps,
        alphas=alphas,
        final=torch.as_tensor(float(scheduler.final_alpha_cumprod), device=device),
        v_pred=scheduler.config.prediction_type == "v_prediction",
    )


@dataclass
class Inversion:
    """An image inverted: what regeneration needs from the switch on. Lists hold one item per step
    from `start` to the end."""

    method: str
    start: int  # the step at which the sliders switch on
    latents: torch.Tensor  # (1, C, h, w) float32: the latents at level `start`
    cond: Conditioning  # the prompt, (1, ...)
    unconds: list[Conditioning]
    corrections: list[torch.Tensor] | None
    seconds: float = 0.0
    correction_ratio: float | None = None  # `direct`: the largest correction against its latents


def guided_step(unet, schedule: Schedule, latents: torch.Tensor, step: int, uncond: Conditioning,
                cond: Conditioning, guidance_scale: float) -> torch.Tensor:
    """One classifier-free-guided DDIM step from level `step` to `step + 1`."""
    output = guided_noise(unet, torch.cat([latents, latents]), schedule.timesteps[step],
                          Conditioning.cat([uncond, cond]), guidance_scale)
    return ddim_update(latents, output, schedule.alpha(step), schedule.alpha(step + 1), schedule.v_pred)


@torch.no_grad()
def ddim_inversion(unet, schedule: Schedule, latents: torch.Tensor, cond: Conditioning, stop: int = 0) -> dict[int, torch.Tensor]:
    """{level: latents} from the clean level down to level `stop`: each step predicts the noise at the
    step's own timestep from the latents one level cleaner (the usual DDIM inversion), prompt only."""
    states = {schedule.steps: latents.float()}
    for level in range(schedule.steps - 1, stop - 1, -1):
        here = states[level + 1]
        output = predict_noise(unet, here, schedule.timesteps[level], cond).float()
        states[level] = ddim_update(here, output, schedule.alpha(level + 1), schedule.alpha(level), schedule.v_pred)
    return states


@contextlib.contextmanager
def _frozen(*modules) -> Iterator[None]:
    """No parameter of `modules` asks for a gradient in the block: the null-text backward then
    reaches only the embedding being optimised."""
    parameters = [p for module in modules for p in module.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)


def null_text_unconds(unet, schedule: Schedule, states: dict[int, torch.Tensor], cond: Conditioning,
                      uncond: Conditioning, guidance_scale: float, *, start: int, iterations: int = NULL_TEXT_ITERATIONS,
                      lr: float = NULL_TEXT_LR, epsilon: float = NULL_TEXT_EPSILON) -> tuple[torch.Tensor, list[Conditioning]]:
    """Null-text optimisation from the noisiest level: per step, the unconditional embedding that makes
    the guided step land on `states[i + 1]`, warm-started from the previous step's. Returns the latents
    the optimised steps reach at level `start` and the embeddings of steps `start` onwards."""
    latents = states[0]
    embeds = uncond.embeds.detach().float()
    pooled = None if uncond.pooled is None else uncond.pooled.detach().float()
    unconds: list[Conditioning] = []
    with _frozen(unet), torch.enable_grad():
        for step in range(schedule.steps):
            timestep = schedule.timesteps[step]
            with torch.no_grad():
                cond_output = predict_noise(unet, latents, timestep, cond).float()
            embeds = embeds.detach().requires_grad_(True)
            pooled = None if pooled is None else pooled.detach().requires_grad_(True)
            # The notebook's lr 1e-2 * (1 - i/100) over 50 steps, for any number of steps.
            optimiser = torch.optim.Adam([t for t in (embeds, pooled) if t is not None],
                                         lr=lr * (1 - step / (2 * schedule.steps)))
            for _ in range(iterations):
                uncond_output = predict_noise(unet, latents, timestep, Conditioning(embeds, pooled, uncond.time_ids)).float()
                guided = uncond_output + guidance_scale * (cond_output - uncond_output)
                reached = ddim_update(latents, guided, schedule.alpha(step), schedule.alpha(step + 1), schedule.v_pred)
                loss = F.mse_loss(reached, states[step + 1])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if loss.item() < epsilon + step * 2 * epsilon:
                    break
            optimised = Conditioning(embeds.detach(), None if pooled is None else pooled.detach(), uncond.time_ids)
            with torch.no_grad():
                if step == start:
                    start_latents = latents
                latents = guided_step(unet, schedule, latents, step, optimised, cond, guidance_scale)
            if step >= start:
                unconds.append(optimised)
    if start == schedule.steps:
        start_latents = latents
    return start_latents, unconds


@torch.no_grad()
def _advance(unet, schedule: Schedule, latents: torch.Tensor, uncond: Conditioning, cond: Conditioning,
             guidance_scale: float, stop: int) -> torch.Tensor:
    """The guided steps from level 0 to level `stop`, the sliders off: shared by every scale."""
    for step in range(stop):
        latents = guided_step(unet, schedule, latents, step, uncond, cond, guidance_scale)
    return latents


def invert(unet, schedule: Schedule, latents: torch.Tensor, cond: Conditioning, uncond: Conditioning, *,
           method: str, start_noise: float, guidance_scale: float,
           null_text_iterations: int = NULL_TEXT_ITERATIONS) -> Inversion:
    """Invert the clean `latents` (1, C, h, w) with `method` (one of INVERSIONS); the sliders on
    `unet` must be at 0. `cond`/`uncond`: the prompt and the negative prompt, (1, ...) each."""
    if method not in INVERSIONS or method == "guarded":
        raise InputError(f"inversion {method!r} is unknown here; choose one of direct, null-text, negative-prompt, "
                         "ddim (guarded chooses among them per image: invert_guarded)")
    started = time.perf_counter()
    start = schedule.switch(start_noise)
    after = schedule.steps - start
    corrections = None
    if method == "direct":
        states = ddim_inversion(unet, schedule, latents, cond, stop=start)
        corrections = []
        with torch.no_grad():
            for step in range(start, schedule.steps):
                reached = guided_step(unet, schedule, states[step], step, uncond, cond, guidance_scale)
                corrections.append(states[step + 1] - reached)
        begin, unconds = states[start], [uncond] * after
    elif method == "null-text":
        states = ddim_inversion(unet, schedule, latents, cond)
        begin, unconds = null_text_unconds(unet, schedule, states, cond, uncond, guidance_scale, start=start,
                                           iterations=null_text_iterations)
    else:
        states = ddim_inversion(unet, schedule, latents, cond)
        # Negative-prompt inversion: the prompt as its own unconditional, so guidance cancels.
        stand_in = cond if method == "negative-prompt" else uncond
        begin, unconds = _advance(unet, schedule, states[0], stand_in, cond, guidance_scale, start), [stand_in] * after
    ratio = correction_ratio(corrections, states, start, schedule.steps) if corrections is not None else None
    return Inversion(method, start, begin, cond, unconds, corrections, time.perf_counter() - started, ratio)


def invert_guarded(unet, schedule: Schedule, latents: torch.Tensor, cond: Conditioning, uncond: Conditioning, *,
                   psnr_vae: float, start_noise: float, guidance_scale: float) -> Inversion:
    """`guarded`: `direct` where the model can draw the input, else `ddim` (module docstring). The
    result keeps `direct`'s correction ratio when it was measured, and the method actually used."""
    return _guarded(lambda method: invert(unet, schedule, latents, cond, uncond, method=method,
                                          start_noise=start_noise, guidance_scale=guidance_scale), psnr_vae)


def _guarded(run: Callable[[str], Inversion], psnr_vae: float) -> Inversion:
    """`guarded` with `run(method)` inverting by `direct` or `ddim` (UNet or flow)."""
    if math.isfinite(psnr_vae) and psnr_vae < VAE_WARN_DB:
        return run("ddim")
    direct = run("direct")
    if direct.correction_ratio <= CORRECTION_WARN:
        return direct
    fallback = run("ddim")
    return dataclasses.replace(fallback, seconds=direct.seconds + fallback.seconds,
                               correction_ratio=direct.correction_ratio)


def correction_ratio(corrections: Sequence[torch.Tensor], states: dict[int, torch.Tensor], start: int,
                     steps: int) -> float:
    """The largest per-step latent correction of an exact inversion, as a fraction of the latents it
    corrects: max over steps of rms(correction) / rms(inverted latents after the step), on the scale
    of a `RATIO_STEPS`-step schedule. Small when the model's own guided step nearly retraces the
    inversion (an image the model can draw); large when the corrections carry what it cannot represent.
    Longer steps leave larger gaps: on the world's scenes the largest ratio was 0.071, 0.023 and 0.018
    at 4, 25 and 50 steps, about as 1/sqrt(steps), so it is scaled by sqrt(steps / RATIO_STEPS)."""
    ratios = [float(c.float().pow(2).mean().sqrt() / states[start + n + 1].float().pow(2).mean().sqrt().clamp_min(1e-8))
              for n, c in enumerate(corrections)]
    return max(ratios, default=0.0) * math.sqrt(steps / RATIO_STEPS)


@torch.no_grad()
def regenerate(unet, schedule: Schedule, inversion: Inversion, sliders: Sequence[SliderNetwork],
               scales: Sequence[float], *, start_noise: float, guidance_scale: float,
               edited: Conditioning | None = None) -> torch.Tensor:
    """The clean latents of `inversion` regenerated with each slider at its scale once the timestep is
    at or below `start_noise`, or, with `edited`, with that prompt instead from then on (the prompt-
    editing comparison). Every slider is at 0 afterwards, also on error."""
    return _retrace(schedule, inversion, sliders, scales, start_noise, edited, lambda latents, step, n, cond: guided_step(
        unet, schedule, latents, step, inversion.unconds[n], cond, guidance_scale))


def _retrace(schedule: "Schedule | FlowSchedule", inversion: Inversion, sliders: Sequence[SliderNetwork],
             scales: Sequence[float], start_noise: float, edited: Conditioning | None,
             move: Callable[[torch.Tensor, int, int, Conditioning], torch.Tensor]) -> torch.Tensor:
    """The regeneration both model kinds share: from the inversion's latents, `move(latents, step, n,
    cond)` takes step `step` (the n-th after the switch) with the sliders set for its timestep and the
    prompt (or `edited` once the sliders are on), then the step's latent correction is added back."""
    latents = inversion.latents
    try:
        for n, step in enumerate(range(inversion.start, schedule.steps)):
            timestep = float(schedule.timesteps[step])
            set_multipliers(sliders, multipliers_at(timestep, scales, start_noise))
            cond = edited if edited is not None and timestep <= start_noise else inversion.cond
            latents = move(latents, step, n, cond)
            if inversion.corrections is not None:
                latents = latents + inversion.corrections[n]
    finally:
        set_multipliers(sliders, [0.0] * len(sliders))
    return latents


# --------------------------------------------------------------------------------------------------
# Flow matching (FLUX): the same inversions on the flow ODE
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowSchedule:
    """The pipeline's own N-step flow schedule for latents of one size (`families.flux.set_flow_schedule`).
    Level i is the latents at `sigmas[i]`: level 0 pure noise (sigma 1), level N the clean latents (sigma 0)."""

    timesteps: torch.Tensor  # (N,) sigma * 1000, descending
    sigmas: torch.Tensor  # (N + 1,) float32, the last 0

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def switch(self, start_noise: float) -> int:
        """The first step whose timestep is at or below `start_noise` (`steps` when none is)."""
        return next((i for i, t in enumerate(self.timesteps) if float(t) <= start_noise), self.steps)


def make_flow_schedule(scheduler, steps: int, height: int, width: int, device: torch.device | str = "cpu"
                       ) -> FlowSchedule:
    """The schedule FluxPipeline samples latents of (height, width) cells on, in `steps` steps."""
    from .families.flux import set_flow_schedule

    scheduler = copy.deepcopy(scheduler)  # set_timesteps resets the pipeline scheduler's step state
    set_flow_schedule(scheduler, steps, height, width, device)
    return FlowSchedule(scheduler.timesteps.to(device, torch.float32), scheduler.sigmas.to(device, torch.float32))


def flow_update(latents: torch.Tensor, velocity: torch.Tensor, sigma_here: torch.Tensor, sigma_there: torch.Tensor
                ) -> torch.Tensor:
    """One Euler move of the flow ODE from noise level `sigma_here` to `sigma_there`, given the velocity:
    `x + (sigma_there - sigma_here) v`. Towards sigma 0 it denoises; away from it it is an inversion step
    (the flow counterpart of `models.ddim_update`)."""
    return latents + (sigma_there - sigma_here) * velocity


def flow_step(model, family: Family, schedule: FlowSchedule, latents: torch.Tensor, step: int, cond: Conditioning,
              guidance: float) -> torch.Tensor:
    """One Euler step of the flow ODE from level `step` to `step + 1`, as the pipeline's scheduler takes it:
    `x + (sigma_{i+1} - sigma_i) v(x, t_i)`, in float32."""
    velocity = family.predict(model, latents, schedule.timesteps[step], cond, guidance).float()
    return flow_update(latents.float(), velocity, schedule.sigmas[step], schedule.sigmas[step + 1])


@torch.no_grad()
def flow_inversion(model, family: Family, schedule: FlowSchedule, latents: torch.Tensor, cond: Conditioning,
                   guidance: float, stop: int = 0) -> dict[int, torch.Tensor]:
    """{level: latents} from the clean level back to level `stop`: the Euler step run the other way,
    `x_i = x_{i+1} + (sigma_i - sigma_{i+1}) v(x_{i+1}, t_i)`, the velocity taken at the latents one level
    cleaner and the step's own timestep (as DDIM inversion takes the noise), so that `flow_step` from
    `x_i` nearly lands on `x_{i+1}`."""
    states = {schedule.steps: latents.float()}
    for level in range(schedule.steps - 1, stop - 1, -1):
        here = states[level + 1]
        velocity = family.predict(model, here, schedule.timesteps[level], cond, guidance).float()
        states[level] = flow_update(here, velocity, schedule.sigmas[level + 1], schedule.sigmas[level])
    return states


def invert_flow(model, family: Family, schedule: FlowSchedule, latents: torch.Tensor, cond: Conditioning, *,
                method: str, start_noise: float, guidance: float) -> Inversion:
    """Invert the clean `latents` (1, C, h, w) of a flow model by `direct` or `ddim` (module docstring);
    the sliders on `model` must be at 0. `guidance` is the guidance embedding (FLUX-dev)."""
    if method not in ("direct", "ddim"):
        raise InputError(f"inversion {method!r} is not one for a flow model here; choose direct or ddim "
                         "(guarded chooses between them per image: invert_flow_guarded)")
    started = time.perf_counter()
    start = schedule.switch(start_noise)
    corrections = None
    with torch.no_grad():
        if method == "direct":
            states = flow_inversion(model, family, schedule, latents, cond, guidance, stop=start)
            corrections = [states[step + 1] - flow_step(model, family, schedule, states[step], step, cond, guidance)
                           for step in range(start, schedule.steps)]
            begin = states[start]
        else:
            states = flow_inversion(model, family, schedule, latents, cond, guidance)
            begin = states[0]
            for step in range(start):  # the sliders are off above the switch: shared by every scale
                begin = flow_step(model, family, schedule, begin, step, cond, guidance)
    ratio = correction_ratio(corrections, states, start, schedule.steps) if corrections is not None else None
    return Inversion(method, start, begin, cond, [], corrections, time.perf_counter() - started, ratio)


def invert_flow_guarded(model, family: Family, schedule: FlowSchedule, latents: torch.Tensor, cond: Conditioning, *,
                        psnr_vae: float, start_noise: float, guidance: float) -> Inversion:
    """`guarded` on a flow model: `direct` where the model can draw the input, else `ddim`."""
    return _guarded(lambda method: invert_flow(model, family, schedule, latents, cond, method=method,
                                               start_noise=start_noise, guidance=guidance), psnr_vae)


@torch.no_grad()
def regenerate_flow(model, family: Family, schedule: FlowSchedule, inversion: Inversion,
                    sliders: Sequence[SliderNetwork], scales: Sequence[float], *, start_noise: float, guidance: float,
                    edited: Conditioning | None = None) -> torch.Tensor:
    """`regenerate` on a flow model: Euler steps from the inversion's latents, each slider at its scale once
    the timestep (sigma * 1000) is at or below `start_noise`, or with `edited` as the prompt from then on.
    Every slider is at 0 afterwards, also on error."""
    return _retrace(schedule, inversion, sliders, scales, start_noise, edited, lambda latents, step, n, cond: flow_step(
        model, family, schedule, latents, step, cond, guidance))
