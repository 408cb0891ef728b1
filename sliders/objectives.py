"""The slider objectives: what one training step asks the slider to predict.

`Objective` is everything the training loop and its checkpoints ask of one: its `step` returns a
list of `Term`s (latents, timestep, conditioning, target and slider multiplier), which the trainer
runs the slider on and regresses to their targets. The text objective builds the guided
noise-difference target of SPEC section 2; the image objective the paired-image, multi-scale target
of SPEC section 3; each has a flow-matching counterpart (FLUX). `OBJECTIVES` is the one table of
them, keyed by (kind, flow matching); `make_objective` builds the one a run's config and family
call for. No optimizer, checkpoint or progress bar here.
"""

from __future__ import annotations

import abc
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from .config import Config
from .data import LatentSource, PairedFolders
from .errors import InputError
from .families import SDXL, Family
from .models import (
    Conditioning,
    conditioning,
    denoise_jumps,
    denoise_states,
    jump_plan,
    model_input,
    predict_noise,
    training_timestep,
)
from .network import SliderNetwork
from .prompts import PromptEntry

if TYPE_CHECKING:
    from .stats import RunStats

# The paper denoises the starting latents with the slider on at classifier-free guidance 3.
DENOISE_GUIDANCE = 3.0


@dataclass
class Term:
    """One slider prediction of a step and what it must match."""

    latents: torch.Tensor  # (B, C, H/f, W/f), ready for the UNet
    timestep: torch.Tensor
    cond: Conditioning
    target: torch.Tensor  # (B, C, H/f, W/f), float32
    multiplier: float
    guidance: float | None = None  # the guidance embedding of a flow-matching family (FLUX-dev); None for UNets


@dataclass(frozen=True)
class ObjectiveInputs:
    """What the trainer's set-up made that every objective is built from (`Objective.from_config`)."""

    denoiser: torch.nn.Module  # the UNet, or a flow-matching family's transformer
    scheduler: Any
    network: SliderNetwork
    embeddings: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    family: Family
    factor: int  # pixels per latent cell (`models.vae_factor`)
    device: torch.device


@dataclass(frozen=True)
class ImagePairs:
    """What an image slider trains on: its paired folders, their latents and its one prompt entry."""

    pairs: PairedFolders
    latents: LatentSource
    entry: PromptEntry


class Objective(abc.ABC):
    """What the training loop (`sliders.trainer.train_loop`) and its checkpoints
    (`sliders.checkpoints.Checkpoints`) ask of an objective; every objective subclasses it.

    `step` draws one training point and returns its terms. `describe` is what the objective's options
    change in what is learned (`stats.json`); `state_dict` what a resumed run needs beyond the random
    states, which `load_state_dict` puts back: an objective with no state of its own keeps the
    defaults ({} is saved as no entry at all). The loop sets `stats` to the run's `RunStats` before the
    first step (None: phases are not timed). `from_config` builds a registered objective (`OBJECTIVES`).
    """

    stats: RunStats | None = None

    @classmethod
    def from_config(cls, config: Config, inputs: ObjectiveInputs, data: Any) -> Objective:
        """The objective a run of `config` trains on `data` (the prompt entries of a text slider, the
        `ImagePairs` of an image slider); every class in `OBJECTIVES` defines it."""
        raise NotImplementedError(f"{cls.__name__} is not built from a config; construct it directly")

    @abc.abstractmethod
    def step(self, rng: random.Random, generator: torch.Generator) -> list[Term]:
        """One training point's terms, drawn from `rng` and `generator` (which alone make it reproducible)."""

    def describe(self) -> dict[str, object]:
        """What the options change in what is learned, for stats.json; a fresh dict the caller may extend."""
        return {}

    def state_dict(self) -> dict[str, object]:
        """What a resumed run needs to continue exactly, beyond the random states the loop keeps."""
        return {}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Put back what `state_dict` returned."""


def flow_guidance(config: Config, family: Family) -> float:
    """The guidance embedding the frozen and slider predictions are made at (FLUX-dev): `train.flow_guidance`,
    else the family's sampling value, so the slider is trained where it is used."""
    return config.train.flow_guidance if config.train.flow_guidance is not None else family.defaults.guidance_scale


def guided_target(
    neutral: torch.Tensor, positive: torch.Tensor, unconditional: torch.Tensor, sign: int, guidance: float
) -> torch.Tensor:
    """`n + s * eta * (p - u)`: move the neutral prediction along the concept direction."""
    return neutral + sign * guidance * (positive - unconditional)


def pair_prompt(caption: str | None, prompt: str) -> str:
    """The text an image pair is conditioned on: its caption, then the entry's prompt, comma-joined
    (either may be absent or empty)."""
    return ", ".join(part for part in (caption, prompt) if part)


def image_prompts(pairs: PairedFolders, entry: PromptEntry) -> list[str]:
    """Every text an image objective conditions on, for encoding before training."""
    captions = pairs.captions if pairs.captions is not None else (None,)
    return sorted({pair_prompt(c, p) for c in captions for p in (entry.positive, entry.neutral)})


def is_symmetric(scales: Sequence[float]) -> bool:
    """Every scale `s` has its mirror `-s`: the official low/high pairing applies."""
    present = set(scales)
    return all(-s in present for s in scales)


def choose_folders(scales: Sequence[float], rng: random.Random, folders_per_step: int | None = None) -> list[int]:
    """Indices of the folders trained this step (SPEC section 3, step 1).

    Symmetric sets: one magnitude uniformly, then the folder of `-|s|` and that of `+|s|`.
    Otherwise every folder, or a random `folders_per_step` of them.
    """
    scales = list(scales)
    if is_symmetric(scales):
        magnitude = rng.choice(sorted({abs(s) for s in scales}))
        return [scales.index(-magnitude), scales.index(magnitude)]
    indices = list(range(len(scales)))
    if folders_per_step is not None and folders_per_step < len(indices):
        indices = sorted(rng.sample(indices, folders_per_step))
    return indices


def draw_step(rng: random.Random, total_steps: int) -> int:
    """`k` uniform in 1 .. total_steps - 1."""
    return rng.randint(1, total_steps - 1)


def draw_size(entry: PromptEntry, rng: random.Random) -> tuple[int, int]:
    """(height, width): the entry's resolution, or with `dynamic_resolution` a random multiple of 64
    in [resolution/2, resolution], inclusive, for each side."""
    if not entry.dynamic_resolution:
        return entry.resolution, entry.resolution
    low = -(-entry.resolution // 2 // 64) * 64
    choices = list(range(max(low, 64), entry.resolution + 1, 64)) or [entry.resolution]
    return rng.choice(choices), rng.choice(choices)


def draw_time_ids(entry: PromptEntry, height: int, width: int, rng: random.Random, family: Family = SDXL
                  ) -> torch.Tensor | None:
    """(B, 6) add_time_ids; `dynamic_crops` draws an original size up to twice the target and a crop in it.
    None for a family without added time ids (nothing is drawn)."""
    if family.time_ids(height, width) is None:
        return None
    rows = []
    for _ in range(entry.batch_size):
        if entry.dynamic_crops:
            original = (rng.randint(height, 2 * height), rng.randint(width, 2 * width))
            crop = (rng.randint(0, original[0] - height), rng.randint(0, original[1] - width))
            rows.append(family.time_ids(height, width, crop, original))
        else:
            rows.append(family.time_ids(height, width))
    return torch.stack(rows)


@dataclass
class _StartPoint:
    """A training point's starting latents `x_k` and everything drawn with them."""

    entry: PromptEntry
    k: int
    cond: dict[str, Conditioning]
    latents: torch.Tensor  # (B, C, H/f, W/f) float32: x_k
    made_at: int  # the step whose slider weights generated x_k


class TextObjective(Objective):
    """Prompt-pair sliders: the guided noise-difference loss of the paper (SPEC section 2).

    Faithful by default: every step draws its own entry, noise and `k` and denoises `k` steps with the
    current slider. Two fast options change where `x_k` comes from (and nothing after it):
    `xk_max_steps` reaches `x_k`'s noise level in at most that many UNet calls (DDIM jumps along the
    same schedule, with the current slider); `trajectory_reuse` R lets one trajectory (one entry,
    one noise) supply `x_k` for R consecutive steps, each with its own `k`, so `x_k` was made by
    slider weights up to R - 1 steps old.
    """

    def __init__(
        self,
        entries: Sequence[PromptEntry],
        embeddings: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        unet,
        scheduler,
        network: SliderNetwork,
        *,
        max_denoising_steps: int,
        factor: int,
        device: torch.device,
        bidirectional: bool = False,
        fused_denoising: bool = False,
        xk_max_steps: int | None = None,
        xk_spacing: str = "late",
        trajectory_reuse: int = 1,
        compile_unet: bool = False,
        family: Family = SDXL,
    ):
        if max_denoising_steps < 2:
            raise InputError("train.max_denoising_steps must be at least 2 for text sliders")
        self.entries = list(entries)
        self.embeddings = embeddings
        self.unet = unet
        # The no-grad calls (partial denoising, frozen predictions) may run a compiled UNet: the same
        # math with less host overhead. The slider's hooks are traced with it; the multiplier is read
        # from a tensor, so switching it between 0 and 1 reuses the two compiled graphs.
        self.nograd_unet = torch.compile(unet, dynamic=False) if compile_unet else unet
        self.scheduler = scheduler
        self.network = network
        self.total_steps = max_denoising_steps
        self.factor = factor
        self.channels = unet.config.in_channels
        self.device = device
        self.bidirectional = bidirectional
        self.fused_denoising = fused_denoising
        self.xk_max_steps = xk_max_steps
        self.xk_spacing = xk_spacing
        self.trajectory_reuse = trajectory_reuse
        self.family = family
        self.stats = None  # a RunStats, when the trainer times phases
        self._queue: list[_StartPoint] = []
        self._steps = 0
        self.staleness: list[int] = []  # per step: how many optimizer steps old the x_k weights were

    @classmethod
    def from_config(cls, config: Config, inputs: ObjectiveInputs, data: Sequence[PromptEntry]) -> TextObjective:
        train = config.train
        return cls(data, inputs.embeddings, inputs.denoiser, inputs.scheduler, inputs.network,
                   max_denoising_steps=train.max_denoising_steps, factor=inputs.factor, device=inputs.device,
                   bidirectional=train.bidirectional, fused_denoising=train.fused_denoising,
                   xk_max_steps=train.xk_max_steps, xk_spacing=train.xk_spacing,
                   trajectory_reuse=train.trajectory_reuse, compile_unet=train.compile, family=inputs.family)

    def _phase(self, name: str):
        return self.stats.phase(name) if self.stats is not None else nullcontext()

    def _refill(self, rng: random.Random, generator: torch.Generator) -> None:
        """Draw one entry, noise and `trajectory_reuse` values of k; denoise once to every k.

        With one k per trajectory the draws are those of the faithful step, in the same order.
        """
        entry = rng.choice(self.entries)
        ks = [draw_step(rng, self.total_steps) for _ in range(self.trajectory_reuse)]
        height, width = draw_size(entry, rng)
        ids = draw_time_ids(entry, height, width, rng, self.family)
        cond = {role: conditioning(self.embeddings, text, ids, entry.batch_size) for role, text in zip(
            ("target", "positive", "unconditional", "neutral"), entry.roles())}
        shape = (entry.batch_size, self.channels, height // self.factor, width // self.factor)
        noise = torch.randn(shape, generator=generator).to(self.device)  # (B, C, H/f, W/f)
        self.scheduler.set_timesteps(self.total_steps, device=self.device)
        latents = noise * self.scheduler.init_noise_sigma
        # The starting latents need no gradient: with `fused_denoising` the slider is folded into the
        # weights for these UNet calls rather than run through its hooks (same function, other rounding).
        args = (cond["target"], cond["unconditional"], DENOISE_GUIDANCE)
        with self._phase("partial_denoising"), self.network.scaled(1.0), (
            self.network.fused() if self.fused_denoising else nullcontext()
        ):
            if self.xk_max_steps is None:
                states = denoise_states(self.nograd_unet, self.scheduler, latents, ks, self.total_steps, *args, generator)
            else:
                plan = jump_plan(ks, self.xk_max_steps, self.xk_spacing)
                states = denoise_jumps(self.nograd_unet, self.scheduler, latents, plan, self.total_steps, *args)
        self._queue = [_StartPoint(entry, k, cond, states[k], self._steps) for k in ks]

    def step(self, rng: random.Random, generator: torch.Generator) -> list[Term]:
        if not self._queue:
            self._refill(rng, generator)
        point = self._queue.pop(0)
        self.staleness.append(self._steps - point.made_at)
        self._steps += 1
        entry, cond = point.entry, point.cond
        timestep = training_timestep(self.scheduler, point.k, self.total_steps, self.device)
        inputs = model_input(self.scheduler, point.latents, timestep)
        batch = entry.batch_size
        with self._phase("frozen_predictions"), torch.no_grad(), self.network.scaled(0.0):
            frozen = predict_noise(
                self.nograd_unet,
                inputs.repeat(3, 1, 1, 1),
                timestep,
                Conditioning.cat([cond["positive"], cond["neutral"], cond["unconditional"]]),
            ).float()
        positive, neutral, unconditional = frozen.split(batch)
        target = guided_target(neutral, positive, unconditional, entry.sign, entry.guidance_scale)
        terms = [Term(inputs, timestep, cond["target"], target, 1.0)]
        if self.bidirectional:
            mirrored = guided_target(neutral, positive, unconditional, -entry.sign, entry.guidance_scale)
            terms.append(Term(inputs, timestep, cond["target"], mirrored, -1.0))
        return terms

    def state_dict(self) -> dict[str, object]:
        """What a resumed run needs to continue exactly: the step count, the staleness seen and, with
        `trajectory_reuse`, the starting points still queued (entry index, k, time ids, latents)."""
        return {
            "steps": self._steps,
            "staleness": list(self.staleness),
            "queue": [
                {"entry": self.entries.index(p.entry), "k": p.k, "time_ids": p.cond["target"].time_ids,
                 "latents": p.latents, "made_at": p.made_at}
                for p in self._queue
            ],
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self._steps = int(state["steps"])
        self.staleness = [int(s) for s in state["staleness"]]
        self._queue = []
        for point in state["queue"]:
            entry = self.entries[point["entry"]]
            ids = point["time_ids"]
            cond = {role: conditioning(self.embeddings, text, ids, entry.batch_size) for role, text in zip(
                ("target", "positive", "unconditional", "neutral"), entry.roles())}
            self._queue.append(_StartPoint(entry, int(point["k"]), cond, point["latents"].to(self.device), int(point["made_at"])))

    def describe(self) -> dict[str, object]:
        """What the options change in what is learned, with the staleness actually seen (stats.json)."""
        return {
            "xk_source": "faithful: k scheduler steps with the current slider"
            if self.xk_max_steps is None
            else f"at most {self.xk_max_steps} DDIM jumps ({self.xk_spacing} spacing) to the same noise level, "
            "with the current slider",
            "xk_max_steps": self.xk_max_steps,
            "xk_spacing": self.xk_spacing if self.xk_max_steps is not None else None,
            "trajectory_reuse": self.trajectory_reuse,
            "xk_staleness_steps_max": max(self.staleness, default=0),
            "xk_staleness_steps_mean": sum(self.staleness) / max(len(self.staleness), 1),
            "fused_denoising": self.fused_denoising,
            "compiled_nograd_unet": self.nograd_unet is not self.unet,
            "bidirectional": self.bidirectional,
        }


class ImageObjective(Objective):
    """Image-pair sliders: denoise each folder's image with the slider at that folder's scale (SPEC section 3)."""

    def __init__(
        self,
        pairs: PairedFolders,
        latents: LatentSource,
        entry: PromptEntry,
        embeddings: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        scheduler,
        *,
        max_denoising_steps: int,
        device: torch.device,
        folders_per_step: int | None = None,
        family: Family = SDXL,
        timestep_range: tuple[int, int] | None = None,
    ):
        if max_denoising_steps < 2:
            raise InputError("train.max_denoising_steps must be at least 2 for image sliders")
        v_pred = scheduler.config.prediction_type == "v_prediction"
        if v_pred and not hasattr(scheduler, "get_velocity"):
            raise InputError("v-prediction training needs train.noise_scheduler ddim or ddpm")
        self.pairs = pairs
        self.latents = latents
        self.entry = entry
        self.embeddings = embeddings
        self.scheduler = scheduler
        self.total_steps = max_denoising_steps
        self.device = device
        self.folders_per_step = folders_per_step
        self.v_pred = v_pred
        self.family = family
        self.step_choices = None if timestep_range is None else steps_in_range(
            scheduler, max_denoising_steps, timestep_range, device)

    @classmethod
    def from_config(cls, config: Config, inputs: ObjectiveInputs, data: ImagePairs) -> ImageObjective:
        return cls(data.pairs, data.latents, data.entry, inputs.embeddings, inputs.scheduler,
                   max_denoising_steps=config.train.max_denoising_steps, device=inputs.device,
                   folders_per_step=config.data.folders_per_step, family=inputs.family,
                   timestep_range=config.data.timestep_range)

    def step(self, rng: random.Random, generator: torch.Generator) -> list[Term]:
        chosen, stems, k, clean, noise = draw_pairs(self, rng, generator, self.total_steps, self.step_choices)
        first = clean[chosen[0]]
        self.scheduler.set_timesteps(self.total_steps, device=self.device)
        noising = self.scheduler.timesteps[k].repeat(first.shape[0])
        noisy = {i: self.scheduler.add_noise(clean[i], noise, noising) for i in chosen}
        targets = {
            i: self.scheduler.get_velocity(clean[i], noise, noising) if self.v_pred else noise for i in chosen
        }
        timestep = training_timestep(self.scheduler, k, self.total_steps, self.device)
        positive = pair_conditioning(self, stems, self.entry.positive)
        neutral = pair_conditioning(self, stems, self.entry.neutral)
        return [
            Term(
                model_input(self.scheduler, noisy[i], timestep),
                timestep,
                positive if self.pairs.scales[i] > 0 else neutral,
                targets[i].float(),
                self.pairs.scales[i],
            )
            for i in chosen
        ]



def steps_in_range(scheduler, total_steps: int, bounds: tuple[int, int], device) -> list[int]:
    """The steps `k` (1 .. total_steps - 1, as `draw_step` draws) whose training timestep lies in
    `bounds` (inclusive); an InputError when none does."""
    low, high = bounds
    chosen = [k for k in range(1, total_steps)
              if low <= int(training_timestep(scheduler, k, total_steps, device)) <= high]
    if not chosen:
        raise InputError(f"no training step of the {total_steps}-step schedule has its timestep in data.timestep_range "
                         f"[{low}, {high}]; widen the range")
    return chosen


def draw_pairs(objective, rng: random.Random, generator: torch.Generator, steps: int,
               choices: Sequence[int] | None = None):
    """What an image-pair step draws, in this order: the folders to train, one stem per batch element,
    the step `k` of a `steps`-step schedule (one of `choices` when given), a fresh posterior sample of
    every chosen image (as the official code draws; folders, then stems) and one noise shared by every
    chosen folder.
    `objective` holds the pairs, latents, entry, folders_per_step and device. Returns
    (chosen, stems, k, {folder: clean latents (B, C, H/f, W/f)}, noise)."""
    chosen = choose_folders(objective.pairs.scales, rng, objective.folders_per_step)
    stems = [rng.randrange(len(objective.pairs.stems)) for _ in range(objective.entry.batch_size)]
    k = draw_step(rng, steps) if choices is None else rng.choice(choices)
    device = objective.device
    clean = {i: torch.cat([objective.latents.get(i, s, generator) for s in stems]).to(device) for i in chosen}
    noise = torch.randn(clean[chosen[0]].shape, generator=generator).to(device)
    return chosen, stems, k, clean, noise


def pair_conditioning(objective, stems: Sequence[int], prompt: str) -> Conditioning:
    """`prompt` for every batch element of an image-pair step, after the caption of its stem when
    there are captions, with the family's added time ids where it has them."""
    resolution = objective.entry.resolution
    ids = objective.family.time_ids(resolution, resolution)
    ids = None if ids is None else ids.expand(1, -1)  # (1, 6)
    embeddings, captions = objective.embeddings, objective.pairs.captions
    if captions is None:
        return conditioning(embeddings, prompt, None if ids is None else ids.expand(len(stems), -1), len(stems))
    return Conditioning.cat([conditioning(embeddings, pair_prompt(captions[j], prompt), ids, 1) for j in stems])


# --------------------------------------------------------------------------------------------------
# Flow-matching families (FLUX): velocity targets on the pipeline's own sigma schedule
# --------------------------------------------------------------------------------------------------


def flow_target(base: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, sign: int, eta: float,
                rescale: bool = False) -> torch.Tensor:
    """`base + s * eta * (positive - negative)` in velocity space; with `rescale`, scaled to the global
    norm of the positive prediction, as the official flux-sliders code does."""
    target = base + sign * eta * (positive - negative)
    if rescale:
        target = target * (positive.norm() / target.norm())
    return target


class FlowTextObjective(Objective):
    """Prompt-pair sliders on a flow-matching transformer (FLUX), as the official flux-sliders code defines them.

    Each step: draw an entry and `k` in 1 .. N-1; denoise fresh noise `k` Euler steps of the pipeline's own
    N-step sigma schedule for that image size, conditioned on the target prompt at the guidance embedding,
    with the slider on at +1 (the paper's recipe; the official FLUX code has it off from the second step
    on, because its network context zeroes the multiplier on exit); three frozen predictions at that same
    noise level (target prompt as the neutral base, positive, and the entry's `unconditional` prompt as the
    negative) with the same guidance embedding (no classifier-free guidance); target
    `base + s * eta * (positive - negative)`, eta the entry's `guidance_scale`, optionally rescaled to the
    positive prediction's norm. The slider's velocity is regressed to it with MSE. The model is given the
    timestep of the sigma that produced x_t (`timesteps[k]`); the official code instead takes it from a
    1000-step unshifted schedule at the index it drew, a different noise level (docs/models.md, FLUX, "Timestep").
    """

    def __init__(self, entries, embeddings, model, scheduler, network: SliderNetwork, family: Family, *,
                 steps: int, factor: int, device: torch.device, guidance: float, rescale: bool = False,
                 bidirectional: bool = False):
        self.entries = list(entries)
        self.embeddings = embeddings
        self.model = model
        self.scheduler = scheduler
        self.network = network
        self.family = family
        self.steps = steps
        self.factor = factor
        self.channels = model.config.in_channels // 4  # packed 2x2 patches of the VAE's latent channels
        self.device = device
        self.guidance = guidance
        self.rescale = rescale
        self.bidirectional = bidirectional
        self.stats = None

    @classmethod
    def from_config(cls, config: Config, inputs: ObjectiveInputs, data: Sequence[PromptEntry]) -> FlowTextObjective:
        family = inputs.family
        return cls(data, inputs.embeddings, inputs.denoiser, inputs.scheduler, inputs.network, family,
                   steps=config.train.flow_steps or family.defaults.steps, factor=inputs.factor, device=inputs.device,
                   guidance=flow_guidance(config, family), rescale=config.train.flow_target_rescale,
                   bidirectional=config.train.bidirectional)

    def step(self, rng: random.Random, generator: torch.Generator) -> list[Term]:
        from .families.flux import set_flow_schedule

        entry = rng.choice(self.entries)
        k = draw_step(rng, self.steps)
        height, width = draw_size(entry, rng)
        h, w = height // self.factor, width // self.factor
        cond = {role: conditioning(self.embeddings, text, None, entry.batch_size) for role, text in zip(
            ("target", "positive", "negative"), (entry.target, entry.positive, entry.unconditional))}
        latents = torch.randn((entry.batch_size, self.channels, h, w), generator=generator).to(self.device)
        set_flow_schedule(self.scheduler, self.steps, h, w, self.device)
        sigmas = self.scheduler.sigmas.to(self.device, torch.float32)
        with torch.no_grad(), self.network.scaled(1.0):
            for i in range(k):  # Euler steps of the flow ODE: x <- x + (sigma_{i+1} - sigma_i) v
                velocity = self.family.predict(self.model, latents, self.scheduler.timesteps[i], cond["target"],
                                               self.guidance).float()
                latents = latents + (sigmas[i + 1] - sigmas[i]) * velocity
        timestep = self.scheduler.timesteps[k]  # sigma_k * 1000: the noise level x_t is at
        with torch.no_grad(), self.network.scaled(0.0):
            frozen = self.family.predict(self.model, latents.repeat(3, 1, 1, 1), timestep, Conditioning.cat(
                [cond["target"], cond["positive"], cond["negative"]]), self.guidance).float()
        base, positive, negative = frozen.split(entry.batch_size)
        target = flow_target(base, positive, negative, entry.sign, entry.guidance_scale, self.rescale)
        terms = [Term(latents, timestep, cond["target"], target, 1.0, self.guidance)]
        if self.bidirectional:
            mirrored = flow_target(base, positive, negative, -entry.sign, entry.guidance_scale, self.rescale)
            terms.append(Term(latents, timestep, cond["target"], mirrored, -1.0, self.guidance))
        return terms


class FlowImageObjective(Objective):
    """Image-pair sliders on a flow-matching transformer: each chosen folder's latents noised to
    `x = (1 - sigma_k) x0 + sigma_k noise` (one noise shared by the folders, `k` drawn on the pipeline's
    N-step schedule), the slider at that folder's scale regressed to the velocity `noise - x0`;
    symmetric scale sets train a -s/+s pair, and the multi-scale folders as for UNets (SPEC section 3)."""

    def __init__(self, pairs: PairedFolders, latents: LatentSource, entry: PromptEntry, embeddings, scheduler,
                 family: Family, *, steps: int, device: torch.device, guidance: float,
                 folders_per_step: int | None = None):
        self.pairs = pairs
        self.latents = latents
        self.entry = entry
        self.embeddings = embeddings
        self.scheduler = scheduler
        self.family = family
        self.steps = steps
        self.device = device
        self.guidance = guidance
        self.folders_per_step = folders_per_step

    @classmethod
    def from_config(cls, config: Config, inputs: ObjectiveInputs, data: ImagePairs) -> FlowImageObjective:
        if config.data.timestep_range is not None:
            raise InputError("data.timestep_range is for UNet families; on FLUX remove it (the flow schedule's "
                             "steps are drawn uniformly)")
        family = inputs.family
        return cls(data.pairs, data.latents, data.entry, inputs.embeddings, inputs.scheduler, family,
                   steps=config.train.flow_steps or family.defaults.steps, device=inputs.device,
                   guidance=flow_guidance(config, family), folders_per_step=config.data.folders_per_step)

    def step(self, rng: random.Random, generator: torch.Generator) -> list[Term]:
        from .families.flux import set_flow_schedule

        chosen, stems, k, clean, noise = draw_pairs(self, rng, generator, self.steps)
        first = clean[chosen[0]]  # (B, C, H/f, W/f)
        set_flow_schedule(self.scheduler, self.steps, first.shape[2], first.shape[3], self.device)
        sigma = self.scheduler.sigmas[k].to(self.device, torch.float32)
        timestep = self.scheduler.timesteps[k]
        positive = pair_conditioning(self, stems, self.entry.positive)
        neutral = pair_conditioning(self, stems, self.entry.neutral)
        return [
            Term((1 - sigma) * clean[i] + sigma * noise, timestep, positive if self.pairs.scales[i] > 0 else neutral,
                 (noise - clean[i]).float(), self.pairs.scales[i], self.guidance)
            for i in chosen
        ]


# --------------------------------------------------------------------------------------------------
# The table of objectives
# --------------------------------------------------------------------------------------------------

# Every objective, keyed by the kind of slider ("text": prompt entries, "image": paired folders) and
# whether the family is flow-matching (`Family.flow_matching`). A new objective is a subclass of
# `Objective` with its `from_config`, and a row here.
OBJECTIVES: dict[tuple[str, bool], type[Objective]] = {
    ("text", False): TextObjective,
    ("text", True): FlowTextObjective,
    ("image", False): ImageObjective,
    ("image", True): FlowImageObjective,
}


def make_objective(kind: str, config: Config, inputs: ObjectiveInputs, data: Any) -> Objective:
    """The objective of a `kind` slider ("text" or "image") on `inputs.family`, built from `config`
    and `data` (`Objective.from_config`)."""
    return OBJECTIVES[kind, inputs.family.flow_matching].from_config(config, inputs, data)
