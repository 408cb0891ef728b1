"""The UNet objectives (epsilon and v-prediction): text sliders and image sliders.

`TextObjective` builds the guided noise-difference target of SPEC section 2 (`guided_target`) from
starting latents `x_k` denoised with the slider on; `ImageObjective` the paired-image, multi-scale
target of SPEC section 3 on the scheduler's own noising. Their flow-matching counterparts are
`sliders.objectives.flow`'s.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..config import Config
from ..data import LatentSource, PairedFolders
from ..diffusion import (
    Conditioning,
    conditioning,
    denoise_jumps,
    denoise_states,
    jump_plan,
    model_input,
    predict_noise,
    training_timestep,
)
from ..errors import InputError
from ..families import SDXL, Family
from ..network import SliderNetwork
from ..prompts import PromptEntry
from .base import ImagePairs, Objective, ObjectiveInputs, Term
from .draws import draw_pairs, draw_size, draw_step, draw_time_ids, pair_conditioning, steps_in_range

# The paper denoises the starting latents with the slider on at classifier-free guidance 3.
DENOISE_GUIDANCE = 3.0


def guided_target(
    neutral: torch.Tensor, positive: torch.Tensor, unconditional: torch.Tensor, sign: int, guidance: float
) -> torch.Tensor:
    """`n + s * eta * (p - u)`: move the neutral prediction along the concept direction."""
    return neutral + sign * guidance * (positive - unconditional)


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
