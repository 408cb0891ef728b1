"""The random draws and conditioning the objectives share, each in the order training makes it.

A text step draws its entry, its step `k` (`draw_step`), its size (`draw_size`) and its added time ids
(`draw_time_ids`); an image-pair step its folders (`choose_folders`), stems, `k`, posterior samples and
noise (`draw_pairs`) and is conditioned by `pair_conditioning`. `image_prompts` lists every text an
image slider conditions on, for encoding before training. These functions are the reproducibility
contract of a run: each draws from the `random.Random` and `torch.Generator` it is given, in a fixed
order, and nothing else.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from ..data import PairedFolders
from ..diffusion import Conditioning, conditioning, training_timestep
from ..errors import InputError
from ..families import SDXL, Family
from ..prompts import PromptEntry


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
