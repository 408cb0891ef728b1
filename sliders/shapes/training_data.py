"""The shapes models' training data: a rendered pool of scenes and the captions training shows.

A batched torch renderer (the same pixels as ``world.render``) fills a `ScenePool` of uint8 images
with their size, colour and shape indices; every caption training can show is one of
`caption_variants()`, picked per item by `draw_captions` with word and whole-caption dropout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from sliders.errors import InputError
from sliders.shapes.architectures import COLOURS, RESOLUTION
from sliders.shapes.world import (
    BACKGROUND,
    PALETTE,
    SHAPES,
    SIZE_WORDS,
    SUPERSAMPLE,
    Scene,
    random_scene,
    shape_bounds,
    size_word,
)

# Caption dropout. Whole-caption dropout to "" teaches the unconditional branch that
# classifier-free guidance (and the sampler's negative prompt "") uses. Dropping single words
# teaches partial captions such as "large circle", which is what slider prompts look like.
P_UNCONDITIONAL = 0.10
P_DROP_WORD = 0.15
P_DROP_ARTICLE = 0.25


@dataclass
class ScenePool:
    """Rendered training scenes: uint8 images (N, 3, H, W) and their attribute indices (N,)."""

    images: torch.Tensor
    size: torch.Tensor  # index into SIZE_WORDS
    colour: torch.Tensor  # index into COLOURS
    shape: torch.Tensor  # index into SHAPES

    def __len__(self) -> int:
        return int(self.images.shape[0])



def render_batch(scenes: Sequence[Scene], device: torch.device | str = "cpu", chunk: int = 4096) -> torch.Tensor:
    """The scenes as uint8 images (N, 3, H, W) on `device`, matching `world.render` to one level.

    Same recipe as `world.render` (4x4 sub-samples per pixel, box average, rounded), vectorised so
    a GPU renders a pool of 10^5 scenes in about a second instead of minutes. Float64 keeps the
    inside/outside decision of samples that sit almost exactly on an edge the same as numpy's.
    """
    device = torch.device(device)
    if not scenes:
        raise InputError("render_batch needs at least one scene")
    resolution = scenes[0].resolution
    if any(scene.resolution != resolution for scene in scenes):
        raise InputError("render_batch needs scenes of one resolution; render each size separately")
    # Half-widths per unit size from the world's own geometry: shape_bounds is linear in size.
    unit = {name: shape_bounds(Scene(name, COLOURS[0], 1.0, 0.0, 0.0, resolution))[2] for name in SHAPES}
    f64 = dict(dtype=torch.float64, device=device)
    background = torch.tensor(BACKGROUND, **f64)
    palette = torch.tensor([PALETTE[name] for name in COLOURS], **f64)
    offsets = (torch.arange(SUPERSAMPLE, **f64) + 0.5) / SUPERSAMPLE
    pixels = torch.arange(resolution, **f64)
    out = []
    for start in range(0, len(scenes), chunk):
        part = scenes[start : start + chunk]
        kind = torch.tensor([SHAPES.index(s.shape) for s in part], device=device)[:, None, None]
        size = torch.tensor([s.size for s in part], **f64)[:, None, None]
        cx = torch.tensor([s.cx for s in part], **f64)[:, None, None]
        cy = torch.tensor([s.cy for s in part], **f64)[:, None, None]
        half_square = size * unit["square"]
        h = size * unit["triangle"]
        count = torch.zeros(len(part), resolution, resolution, **f64)
        for oy in offsets:
            dy = (pixels + oy)[None, :, None] - cy
            for ox in offsets:
                dx = (pixels + ox)[None, None, :] - cx
                circle = dx * dx + dy * dy <= size * size
                square = (dx.abs() <= half_square) & (dy.abs() <= half_square)
                down = dy + 4.0 * h / 3.0  # below the apex; sides widen by 1/2 per unit down
                triangle = (down >= 0) & (dy <= 2.0 * h / 3.0) & (dx.abs() <= down / 2.0)
                inside = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))
                count += inside
        colour = palette[torch.tensor([COLOURS.index(s.colour) for s in part], device=device)]
        cover = (count / SUPERSAMPLE**2)[:, None]
        mixed = background[None, :, None, None] + (colour[:, :, None, None] - background[None, :, None, None]) * cover
        out.append(torch.floor(mixed + 0.5).clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def make_pool(n: int, seed: int, device: torch.device | str = "cpu") -> ScenePool:
    """`n` scenes from `world.random_scene` (uniform over shape, colour and size word), rendered."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, resolution=RESOLUTION) for _ in range(n)]
    device = torch.device(device)

    def index(values: list[str], options: Sequence[str]) -> torch.Tensor:
        return torch.tensor([options.index(v) for v in values], dtype=torch.long, device=device)

    return ScenePool(
        images=render_batch(scenes, device),
        size=index([size_word(s) for s in scenes], SIZE_WORDS),
        colour=index([s.colour for s in scenes], COLOURS),
        shape=index([s.shape for s in scenes], SHAPES),
    )


def caption_variants() -> list[str]:
    """Every caption training can show, at the index `caption_index` gives.

    Article present/absent x each size word or none x each colour or none x each shape or none;
    the all-absent variant is "" (the unconditional caption).
    """
    captions = []
    for article in ("a", None):
        for size in (*SIZE_WORDS, None):
            for colour in (*COLOURS, None):
                for shape in (*SHAPES, None):
                    captions.append(" ".join(w for w in (article, size, colour, shape) if w))
    return captions


def caption_index(article: torch.Tensor, size: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Index into `caption_variants()`; 0 means article present, and len(options) means "none"."""
    return ((article * (len(SIZE_WORDS) + 1) + size) * (len(COLOURS) + 1) + colour) * (len(SHAPES) + 1) + shape


UNCONDITIONAL_INDEX = (((1 * (len(SIZE_WORDS) + 1) + len(SIZE_WORDS)) * (len(COLOURS) + 1) + len(COLOURS)) * (len(SHAPES) + 1)) + len(SHAPES)


def draw_captions(pool: ScenePool, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Caption indices for pool items `idx`, with the word and whole-caption dropout above."""
    n, device = idx.shape[0], idx.device
    u = torch.rand(5, n, generator=generator, device=device)
    size = torch.where(u[0] < P_DROP_WORD, len(SIZE_WORDS), pool.size[idx])
    colour = torch.where(u[1] < P_DROP_WORD, len(COLOURS), pool.colour[idx])
    shape = torch.where(u[2] < P_DROP_WORD, len(SHAPES), pool.shape[idx])
    article = (u[3] < P_DROP_ARTICLE).long()
    index = caption_index(article, size, colour, shape)
    return torch.where(u[4] < P_UNCONDITIONAL, UNCONDITIONAL_INDEX, index)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1], the VAE's input range."""
    return images.float() / 127.5 - 1.0

