"""The flow-matching objectives (FLUX): velocity targets on the pipeline's own sigma schedule.

`FlowTextObjective` is the prompt-pair slider of the official flux-sliders code (`flow_target`);
`FlowImageObjective` the paired-image slider on flow-matching noising. `flow_guidance` is the guidance
embedding both are trained at.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from ..config import Config
from ..data import LatentSource, PairedFolders
from ..diffusion import Conditioning, conditioning
from ..errors import InputError
from ..families import Family
from ..network import SliderNetwork
from ..prompts import PromptEntry
from .base import ImagePairs, Objective, ObjectiveInputs, Term
from .draws import draw_pairs, draw_size, draw_step, pair_conditioning


def flow_guidance(config: Config, family: Family) -> float:
    """The guidance embedding the frozen and slider predictions are made at (FLUX-dev): `train.flow_guidance`,
    else the family's sampling value, so the slider is trained where it is used."""
    return config.train.flow_guidance if config.train.flow_guidance is not None else family.defaults.guidance_scale


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
        from ..families.flux import set_flow_schedule

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
        from ..families.flux import set_flow_schedule

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
