"""Editing real images with sliders: invert each image into the base model's DDIM trajectory, then
regenerate it with the sliders switched on from `start_noise` (the paper's real-image edits).

Holds the image preparation (EXIF, RGB, centre crop, SDXL's added time ids from the real image size,
a VAE encode and decode in fp32), the DDIM schedule the edits run on, the inversions (`INVERSIONS`),
the regeneration with sliders or with an edited prompt, and `run_editing`, which checks every input
before the model loads, inverts each image once for all its sliders and scales, and writes the edited
images, a grid whose first column is the input, and `edits.json` (reconstruction PSNR and seconds per
image). It does not train, does not measure sliders (see `evaluation`) and loads models only through
`sampling.loaded`.

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
guidance, which FLUX does not have, and are refused.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .config import (DEFAULT_INVERSION, EDIT_GUIDANCE, EDIT_START_NOISE, EDIT_STEPS, INVERSIONS,
                     NULL_TEXT_ITERATIONS)
from .data import IMAGE_EXTENSIONS, centre_square, read_rgb, to_pixels
from .errors import InputError
from .families import Family, family_of_pipe
from .files import write_text_atomic
from .models import Conditioning, ddim_update, guided_noise, predict_noise, time_ids
from .network import SliderNetwork
from .sampling import (
    GRID_NAME,
    RunPlan,
    Sample,
    SliderSpec,
    base_options_record,
    combination_label,
    distinct_stems,
    kept_on_interrupt,
    loaded,
    multipliers_at,
    owned_output,
    plan_run,
    set_multipliers,
    write_kept,
    write_png,
)

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_START_NOISE, DEFAULT_STEPS, DEFAULT_GUIDANCE = EDIT_START_NOISE, EDIT_STEPS, EDIT_GUIDANCE
NULL_TEXT_LR = 1e-2
NULL_TEXT_EPSILON = 1e-5
MAX_NULL_TEXT_ITERATIONS = 1000
MAX_IMAGES = 10_000
REPORT_NAME = "edits.json"
INPUT_LABEL = "input"
# What says an input is beyond the base model (`representation_warnings`; measured in EVALUATION.md).
VAE_WARN_DB = 30.0
CORRECTION_WARN = 0.05
RATIO_STEPS = 25  # the schedule length the correction ratio is expressed for
FLOW_INVERSIONS = ("direct", "ddim", "guarded")  # the others act on classifier-free guidance, which FLUX lacks


# --------------------------------------------------------------------------------------------------
# Images in and out
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditImage:
    """One input as the model sees it: the centre square at the run's resolution and its time ids."""

    path: Path
    name: str  # distinct among the run's inputs: it names the output files
    image: "Image.Image"  # (R, R) RGB: the grid's first column and the PSNR reference
    time_ids: torch.Tensor  # (6,): original size, crop top-left, target size


def check_image_files(paths: Sequence[str | Path]) -> tuple[Path, ...]:
    """Every `--image` exists and decodes as an image; a bad one is an InputError naming it."""
    if isinstance(paths, (str, Path)) or not paths:
        raise InputError("no image given; pass at least one --image photo.png")
    if len(paths) > MAX_IMAGES:
        raise InputError(f"{len(paths)} images in one run; give at most {MAX_IMAGES} (split the run)")
    checked = []
    for given in paths:
        path = Path(given)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise InputError(f"--image '{path}' {what}; give an image file ({'/'.join(IMAGE_EXTENSIONS)})")
        try:
            read_rgb(path)
        except Exception as error:  # PIL raises many types for a bad file
            raise InputError(f"--image '{path}' is not a readable image ({error}); re-export it as PNG or JPEG") from None
        checked.append(path)
    return tuple(checked)


def image_prompts(prompt: str | Sequence[str], count: int) -> tuple[str, ...]:
    """One prompt per image: a single text (or a list of one) serves every image; a list must have
    one per image, in the order of the images."""
    texts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else [None]
    for text in texts:
        if not isinstance(text, str):
            raise InputError(f"--prompt must be text, got {text!r}")
    if len(texts) == 1:
        return tuple(texts) * count
    if len(texts) != count:
        raise InputError(f"{len(texts)} prompts for {count} images; give one --prompt for all images or one per image, "
                         "in the order of the --image flags")
    return tuple(texts)


def prepare_image(path: Path, name: str, resolution: int) -> EditImage:
    """Read `path` as the image-slider folders are read (EXIF, RGB, centre square resized to
    `resolution`), with SDXL's added time ids from the real image: its size before resizing and
    where the square sits in the image resized so that its shorter side is `resolution`."""
    try:
        rgb = read_rgb(path)
    except Exception as error:
        raise InputError(f"--image '{path}' could not be read ({error}); re-export it as PNG or JPEG") from None
    width, height = rgb.size
    resized = resolution / min(width, height)
    crop = (round((height * resized - resolution) / 2), round((width * resized - resolution) / 2))
    ids = time_ids(resolution, resolution, crop, (height, width))
    return EditImage(path, name, centre_square(rgb, resolution), ids)


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


def psnr(image_a: "Image.Image", image_b: "Image.Image") -> float:
    """Peak signal-to-noise ratio in dB of two RGB images of one size (inf when identical)."""
    a = np.asarray(image_a.convert("RGB"), dtype=np.float64)
    b = np.asarray(image_b.convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr of images of sizes {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


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
    latents = inversion.latents
    try:
        for n, step in enumerate(range(inversion.start, schedule.steps)):
            timestep = float(schedule.timesteps[step])
            set_multipliers(sliders, multipliers_at(timestep, scales, start_noise))
            cond = edited if edited is not None and timestep <= start_noise else inversion.cond
            latents = guided_step(unet, schedule, latents, step, inversion.unconds[n], cond, guidance_scale)
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


def flow_step(model, family: Family, schedule: FlowSchedule, latents: torch.Tensor, step: int, cond: Conditioning,
              guidance: float) -> torch.Tensor:
    """One Euler step of the flow ODE from level `step` to `step + 1`, as the pipeline's scheduler takes it:
    `x + (sigma_{i+1} - sigma_i) v(x, t_i)`, in float32."""
    velocity = family.predict(model, latents, schedule.timesteps[step], cond, guidance).float()
    return latents.float() + (schedule.sigmas[step + 1] - schedule.sigmas[step]) * velocity


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
        states[level] = here + (schedule.sigmas[level] - schedule.sigmas[level + 1]) * velocity
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
    latents = inversion.latents
    try:
        for n, step in enumerate(range(inversion.start, schedule.steps)):
            timestep = float(schedule.timesteps[step])
            set_multipliers(sliders, multipliers_at(timestep, scales, start_noise))
            cond = edited if edited is not None and timestep <= start_noise else inversion.cond
            latents = flow_step(model, family, schedule, latents, step, cond, guidance)
            if inversion.corrections is not None:
                latents = latents + inversion.corrections[n]
    finally:
        set_multipliers(sliders, [0.0] * len(sliders))
    return latents


# --------------------------------------------------------------------------------------------------
# The conditioning of one image
# --------------------------------------------------------------------------------------------------


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
# Editing images in a loaded model
# --------------------------------------------------------------------------------------------------


@dataclass
class Edited:
    """An image's edits: one Sample per scale combination (prompt_index = the image's index, prompt
    its prompt, seed 0), the reconstruction figures and, with an edited prompt, its regeneration."""

    image: EditImage
    prompt: str
    samples: list[Sample]
    inversion_seconds: float
    psnr_vae: float
    psnr_zero: float | None
    edited_prompt: Sample | None = None
    correction_ratio: float | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    inversion_used: str | None = None  # `guarded` records which inversion it chose


def _figure(value: float) -> float | None:
    return None if value is None else (round(value, 3) if math.isfinite(value) else None)


def edit_images(pipe, sliders: Sequence[SliderNetwork], scale_lists: Sequence[Sequence[float]],
                images: Sequence[EditImage], prompts: Sequence[str], *, method: str = DEFAULT_INVERSION,
                start_noise: float = DEFAULT_START_NOISE, steps: int = DEFAULT_STEPS,
                guidance_scale: float = DEFAULT_GUIDANCE, negative_prompt: str = "",
                edited_prompts: Sequence[str] | None = None, null_text_iterations: int = NULL_TEXT_ITERATIONS,
                on_edit: Callable[[Edited], None] | None = None, on_sample: Callable[[Sample], None] | None = None,
                ) -> list[Edited]:
    """Invert each image once (with its prompt: `prompts` has one per image) and regenerate it for
    every combination of the sliders' scales (cartesian product of `scale_lists`); with
    `edited_prompts` (one per image) also once with that prompt from `start_noise` on, sliders at 0.
    `sliders` must be attached to the pipeline's denoiser. `on_sample` gets each edited image as soon as
    it is made, `on_edit` each image's results once all are made. On a flow model (FLUX) the inversion
    runs on its flow ODE (module docstring) and `guidance_scale` is its guidance embedding."""
    family = family_of_pipe(pipe)
    unet = family.denoiser(pipe)
    device = unet.device
    flow = family.flow_matching
    if flow and method not in FLOW_INVERSIONS:
        raise InputError(_flow_method_message(method, family))
    schedule = None if flow else make_schedule(pipe.scheduler.config, steps, device)
    combinations = list(itertools.product(*[tuple(float(s) for s in scales) for scales in scale_lists]))
    results = []
    for index, item in enumerate(images):
        texts = [prompts[index]] + ([edited_prompts[index]] if edited_prompts is not None else [])
        conds, uncond = encode_conditioning(pipe, texts, negative_prompt, item.time_ids, device)
        latents = encode_image(pipe.vae, item.image).to(device)
        psnr_vae = psnr(decode_latents(pipe.vae, latents), item.image)
        set_multipliers(sliders, [0.0] * len(sliders))
        if flow:
            schedule = make_flow_schedule(pipe.scheduler, steps, *latents.shape[-2:], device)
            if method == "guarded":
                inversion = invert_flow_guarded(unet, family, schedule, latents, conds[0], psnr_vae=psnr_vae,
                                                start_noise=start_noise, guidance=guidance_scale)
            else:
                inversion = invert_flow(unet, family, schedule, latents, conds[0], method=method,
                                        start_noise=start_noise, guidance=guidance_scale)
        elif method == "guarded":
            inversion = invert_guarded(unet, schedule, latents, conds[0], uncond, psnr_vae=psnr_vae,
                                       start_noise=start_noise, guidance_scale=guidance_scale)
        else:
            inversion = invert(unet, schedule, latents, conds[0], uncond, method=method, start_noise=start_noise,
                               guidance_scale=guidance_scale, null_text_iterations=null_text_iterations)
        logger.debug("inverted %s (%s) in %.1f s", item.path, method, inversion.seconds)

        def remake(scales: Sequence[float], edited: Conditioning | None = None) -> torch.Tensor:
            if flow:
                return regenerate_flow(unet, family, schedule, inversion, sliders, scales, start_noise=start_noise,
                                       guidance=guidance_scale, edited=edited)
            return regenerate(unet, schedule, inversion, sliders, scales, start_noise=start_noise,
                              guidance_scale=guidance_scale, edited=edited)

        samples = []
        for scales in combinations:
            out = remake(scales)
            samples.append(Sample(index, prompts[index], 0, tuple(scales), decode_latents(pipe.vae, out)))
            if on_sample is not None:
                on_sample(samples[-1])
        edited = None
        if edited_prompts is not None:
            out = remake([0.0] * len(sliders), edited=conds[1])
            edited = Sample(index, edited_prompts[index], 0, tuple(0.0 for _ in sliders), decode_latents(pipe.vae, out))
        zero = next((s for s in samples if all(m == 0 for m in s.multipliers)), None)
        result = Edited(
            image=item,
            prompt=prompts[index],
            samples=samples,
            inversion_seconds=inversion.seconds,
            psnr_vae=psnr_vae,
            psnr_zero=None if zero is None else psnr(zero.image, item.image),
            edited_prompt=edited,
            correction_ratio=inversion.correction_ratio,
            inversion_used=inversion.method,
        )
        result.warnings = representation_warnings(result)
        for warning in result.warnings:
            logger.warning("%s", warning)
        results.append(result)
        if on_edit is not None:
            on_edit(result)
    return results


# --------------------------------------------------------------------------------------------------
# The grid and the report
# --------------------------------------------------------------------------------------------------


def representation_warnings(result: Edited) -> list[str]:
    """One line each for what says the base model cannot represent this input (EVALUATION.md,
    "Edits off the training distribution", for the thresholds): its autoencoder's round trip below
    `VAE_WARN_DB`, or `direct`'s corrections above `CORRECTION_WARN` of the latents."""
    name = result.image.path.name
    warnings = []
    if math.isfinite(result.psnr_vae) and result.psnr_vae < VAE_WARN_DB:
        warnings.append(f"'{name}': the base model's autoencoder reproduces it at {result.psnr_vae:.1f} dB (below "
                        f"{VAE_WARN_DB:g}): edits cannot look like this input (--inversion guarded, the default, "
                        "edits it by plain DDIM); use a base model made for such images")
    if result.correction_ratio is not None and result.correction_ratio > CORRECTION_WARN:
        warnings.append(f"'{name}': the inversion's corrections reach {result.correction_ratio:.2f} of the latents "
                        f"(above {CORRECTION_WARN:g}): the model does not draw this image by itself; --inversion "
                        "guarded (the default) edits it by plain DDIM, --inversion direct keeps the corrections (exact "
                        "at scale 0, artefacts at other scales)")
    return warnings


def edit_grid(results: Sequence[Edited], slider_names: Sequence[str]) -> "Image.Image":
    """A row per input image (labelled with its prompt and file name), the input in the first column,
    then one column per scale combination."""
    from .grids import draw_grid

    columns = list(dict.fromkeys(s.multipliers for r in results for s in r.samples))
    cells = {}
    for row, result in enumerate(results):
        cells[(row, 0)] = result.image.image
        for sample in result.samples:
            cells[(row, 1 + columns.index(sample.multipliers))] = sample.image
    labels = [INPUT_LABEL] + [combination_label(slider_names, combo) for combo in columns]
    return draw_grid(cells, [(r.prompt, r.image.path.name) for r in results], labels)


def edit_report(results: Sequence[Edited], settings: dict) -> dict:
    """edits.json: the settings and, per image, its inversion time and reconstruction PSNR (of the
    VAE alone, and of the whole edit at scale 0 when every slider has 0 among its scales)."""
    rows = [
        {
            "image": str(r.image.path),
            "name": r.image.name,
            "time_ids": [int(v) for v in r.image.time_ids.tolist()],
            "inversion_seconds": round(r.inversion_seconds, 3),
            "psnr_vae_db": _figure(r.psnr_vae),
            "psnr_scale0_db": _figure(r.psnr_zero),
            "correction_ratio": _figure(r.correction_ratio),
            "inversion_used": r.inversion_used,
            "warnings": list(r.warnings),
        }
        for r in results
    ]
    zero = [r.psnr_zero for r in results if r.psnr_zero is not None]
    return {
        "sliders_version": __version__,
        "settings": settings,
        "images": rows,
        "mean_psnr_vae_db": _figure(float(np.mean([r.psnr_vae for r in results]))) if results else None,
        "mean_psnr_scale0_db": _figure(float(np.mean(zero))) if zero else None,
        "mean_inversion_seconds": round(float(np.mean([r.inversion_seconds for r in results])), 3) if results else None,
    }


def write_json(data: dict, path: Path) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def edit_name(image: str, multipliers: Sequence[float], slider_names: Sequence[str]) -> str:
    """'photo_age+2_smile-1.png': the input's name, then each slider's name and scale."""
    from .sampling import _safe

    return "_".join([_safe(image)] + [f"{_safe(n)}{v:+g}" for n, v in zip(slider_names, multipliers)]) + ".png"


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------


def _flow_method_message(method: str, family: Family) -> str:
    return (f"--inversion {method} acts on the unconditional branch of classifier-free guidance, which "
            f"{family.label} does not use; choose {', '.join(FLOW_INVERSIONS)}")


def check_family_edit(plan: RunPlan, method: str) -> None:
    """Before the model loads: on a flow model (FLUX), an inversion that needs classifier-free guidance
    is one line (a negative prompt is refused by `plan_run`)."""
    if plan.family.flow_matching and method not in FLOW_INVERSIONS:
        raise InputError(_flow_method_message(method, plan.family))


def check_edit_settings(method: Any, null_text_iterations: Any) -> str:
    if not isinstance(method, str) or method not in INVERSIONS:
        raise InputError(f"--inversion {method!r} is unknown; choose one of {', '.join(INVERSIONS)}")
    if (isinstance(null_text_iterations, bool) or not isinstance(null_text_iterations, int)
            or not 1 <= null_text_iterations <= MAX_NULL_TEXT_ITERATIONS):
        raise InputError(f"--null_text_iterations must be a whole number from 1 to {MAX_NULL_TEXT_ITERATIONS}, "
                         f"got {null_text_iterations!r}")
    return method


@dataclass
class EditRun:
    """What `run_editing` wrote."""

    images: list[Path]
    grid: Path
    report: Path
    results: list[Edited]


def run_editing(
    images: Sequence[str | Path],
    specs: Sequence[SliderSpec],
    scales: Sequence[float] | str | None,
    *,
    prompt: str | Sequence[str] = "",
    output: str | Path,
    method: str = DEFAULT_INVERSION,
    start_noise: float = DEFAULT_START_NOISE,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float | None = DEFAULT_GUIDANCE,
    pretrained_model: str | None = None,
    device: str | None = None,
    precision: str = "fp32",
    resolution: int | None = None,
    negative_prompt: str = "",
    null_text_iterations: int = NULL_TEXT_ITERATIONS,
    transformer: str | Path | None = None,
    quantize: str = "none",
) -> EditRun:
    """Check everything, load the base model once, edit every image at every scale combination and
    write the images, `grid.png` (input first) and `edits.json`. `prompt` is one text for every image
    or one per image, in order; it may be empty. `guidance_scale` None is DEFAULT_GUIDANCE, on a flow
    model (FLUX) its family's guidance embedding (3.5); `transformer` and `quantize` (FLUX.1) are
    `sampling.plan_run`'s."""
    method = check_edit_settings(method, null_text_iterations)
    paths = check_image_files(images)
    prompts = image_prompts(prompt, len(paths))
    plan = plan_run(
        specs, scales, prompts, (0,), output=output, start_noise=start_noise, steps=steps,
        guidance_scale=guidance_scale, pretrained_model=pretrained_model, device=device, precision=precision,
        resolution=resolution, negative_prompt=negative_prompt, transformer=transformer, quantize=quantize,
    )
    check_family_edit(plan, method)
    if guidance_scale is None and not plan.family.flow_matching:
        plan = dataclasses.replace(plan, guidance_scale=DEFAULT_GUIDANCE)
    names = distinct_stems(paths)
    slider_names = plan.slider_names
    written: list[Path] = []
    made: list[Sample] = []
    results: list[Edited] = []

    def keep(sample: Sample) -> None:
        made.append(sample)
        name = edit_name(names[sample.prompt_index], sample.multipliers, slider_names)
        written.append(write_kept(sample.image, plan.output / name, made[:-1]))

    grid_path, report_path = plan.output / GRID_NAME, plan.output / REPORT_NAME
    settings = {
        "inversion": method, "prompts": list(prompts), "negative_prompt": negative_prompt, "steps": plan.steps,
        "start_noise": plan.start_noise, "guidance_scale": plan.guidance_scale, "resolution": plan.resolution,
        "precision": plan.precision, "model": plan.model, **base_options_record(plan),
        "sliders": [{"name": n, "path": str(s.path), "scales": list(v)}
                    for n, s, v in zip(slider_names, plan.specs, plan.scale_lists)],
    }
    if method == "null-text":
        settings["null_text_iterations"] = null_text_iterations
    def write_finished() -> None:
        """On an interruption: the grid and report of the images whose every edit was made."""
        if results:
            write_png(edit_grid(results, slider_names), grid_path)
            write_json(edit_report(results, settings), report_path)

    with owned_output(plan.output, True), kept_on_interrupt(made, slider_names, plan.output, grid_path, write_finished):
        with loaded(plan) as (pipe, sliders):
            prepared = [prepare_image(path, name, plan.resolution) for path, name in zip(paths, names)]
            edit_images(pipe, sliders, plan.scale_lists, prepared, prompts, method=method,
                        start_noise=plan.start_noise, steps=plan.steps, guidance_scale=plan.guidance_scale,
                        negative_prompt=plan.negative_prompt, null_text_iterations=null_text_iterations,
                        on_edit=results.append, on_sample=keep)
        write_kept(edit_grid(results, slider_names), grid_path, made)
        write_json(edit_report(results, settings), report_path)
    return EditRun(written, grid_path, report_path, results)
