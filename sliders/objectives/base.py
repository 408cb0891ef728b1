"""The objective protocol: what the training loop and its checkpoints ask of an objective.

`Objective` is everything the training loop (`sliders.trainer.train_loop`) and its checkpoints ask of
one: its `step` returns a list of `Term`s (latents, timestep, conditioning, target and slider
multiplier), which the trainer runs the slider on and regresses to their targets. `ObjectiveInputs` is
what the trainer's set-up hands every objective; `ImagePairs` what an image slider trains on. No
draws, no targets and no model calls here.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..config import Config
from ..data import LatentSource, PairedFolders
from ..diffusion import Conditioning
from ..families import Family
from ..network import SliderNetwork
from ..prompts import PromptEntry

if TYPE_CHECKING:
    from ..stats import RunStats


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
