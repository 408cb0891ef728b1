"""Companion sliders: other, frozen sliders present in the model while one slider trains
(`train.with_sliders`), so that it learns its concept where they are on as well as off.

Sliders compose by adding their deltas to the same layers, but the UNet is not linear: a slider
trained alone meets the other's delta only at sampling time, and its effect there can differ
(EVALUATION.md, "Composition"). With companions, every training step draws one scale per
companion from its list and all the step's denoiser calls (the partial denoising, the frozen
predictions and the slider's own) see the base model with those sliders on. The draw is a function
of the run's seed and the step only, so a resumed run draws the same scales and the run's other
random draws are those of a run without companions. Off by default: the paper trains on the base
model alone.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import torch

from .errors import InputError
from .network import SliderNetwork, load_slider
from .slider_files import read_slider_file


def parse_companion(text: str) -> tuple[Path, tuple[float, ...]]:
    """'roundness.safetensors' (at scale 1) or 'roundness.safetensors:0,1,2' (one of them each step)."""
    from .parsing import parse_slider_arg

    spec = parse_slider_arg(text)
    return spec.path, spec.scales if spec.scales is not None else (1.0,)


class Companions:
    """The companion sliders of one run, hooked into the denoiser, and their per-step scales."""

    def __init__(self, networks: Sequence[SliderNetwork], scales: Sequence[tuple[float, ...]], seed: int):
        self.networks, self.scales, self.seed = list(networks), [tuple(s) for s in scales], seed

    @classmethod
    def load(cls, entries: Sequence[str], unet: torch.nn.Module, seed: int, base: str, family: str) -> "Companions":
        networks, scales = [], []
        for entry in entries:
            path, choices = parse_companion(entry)
            if not path.is_file():
                raise InputError(f"config key 'train.with_sliders' names '{path}', which does not exist; give a "
                                 "slider file trained on this base model, e.g. roundness.safetensors:0,1,2")
            contents = read_slider_file(path)
            recorded = contents[1].get("sliders_family")
            if recorded and recorded != family:
                raise InputError(f"config key 'train.with_sliders': '{path}' was trained on a {recorded} model and "
                                 f"this base model is {family}; give sliders of this base model")
            network = load_slider(path, unet, base=base, contents=contents,
                                  fix="train.with_sliders needs sliders of this base model")
            network.requires_grad_(False)
            networks.append(network)
            scales.append(choices)
        return cls(networks, scales, seed)

    def draw(self, step: int) -> tuple[float, ...]:
        """Each companion's scale at `step`, set on its network."""
        rng = random.Random(self.seed * 1_000_003 + step)
        chosen = tuple(rng.choice(choices) for choices in self.scales)
        for network, scale in zip(self.networks, chosen):
            network.multiplier = scale
        return chosen

    def off(self) -> None:
        for network in self.networks:
            network.multiplier = 0.0

    def describe(self) -> list[dict]:
        return [{"scales": list(choices)} for choices in self.scales]
