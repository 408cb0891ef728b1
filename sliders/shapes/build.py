"""Train a small text-to-image model on the shapes world and save it as an SDXL (or SD 1.x, or FLUX.1) pipeline folder.

With `family="sd1"` the model has SD 1.x's architecture instead (one CLIP text encoder, whose last
state after the final layer norm conditions a UNet without added conditioning), and may reuse the
autoencoder of an existing shapes model (`vae_from`), so only its UNet is trained. With
`family="flux"` it is a FLUX.1-architecture model: a FluxTransformer2DModel (double- and
single-stream blocks, rotary positions, 2x2-packed latent tokens) conditioned on CLIP's pooled
output and a T5 encoder's states, trained with the rectified-flow velocity loss and sampled by
FluxPipeline; like FLUX.1-schnell it has no guidance embedding and an unshifted schedule. Its
latents have the shapes autoencoder's 4 channels (the transformer takes 4 x 2x2 = 16 features per
token), so it reuses that autoencoder (`vae_from`) where a real FLUX has 16-channel latents.

The result has every part of SDXL (two CLIP text encoders sharing one tokenizer, a KL autoencoder,
a "text_time" UNet, an Euler scheduler), so the package's slider training and sampling, which only
know SDXL, run on it unchanged, while its concepts (colour, shape, size) can be measured from the
pixels. The build is three phases: train the autoencoder on rendered scenes, measure its latent
scale, then train the UNet with the DDPM epsilon loss on those latents, conditioned exactly as
``sliders.models`` conditions SDXL. The text encoders stay frozen at their seeded random init.

Here: the model recipe, a batched torch renderer for the training pool, the caption variants and
the two training loops. Not here: drawing or captioning single scenes (``world``), measuring
images (``measure``), or judging the finished model (``quality``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sliders.errors import InputError, TrainingError
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

logger = logging.getLogger(__name__)

RESOLUTION = 64
FAMILIES = ("sdxl", "sd1", "flux")
COLOURS: tuple[str, ...] = tuple(PALETTE)

# Whole-word tokens. Beyond the caption words, a few spare size words users may write in slider
# prompts; the model never sees them in training, so they only tokenize cleanly.
VOCABULARY: tuple[str, ...] = ("a", *SIZE_WORDS, *COLOURS, *SHAPES, "big", "tiny", "bigger", "smaller", "shape")

# Text encoders: width 64 each, so the UNet's cross-attention sees 64 + 64 features per token.
TEXT_HIDDEN = 64
TEXT_LAYERS = 2
TEXT_PROJECTION = 64
TIME_EMBED_DIM = 8
SDXL_TIME_IDS = (RESOLUTION, RESOLUTION, 0, 0, RESOLUTION, RESOLUTION)

# The training noise schedule, the same as SD/SDXL and as `sliders.models.make_scheduler`.
BETA_START, BETA_END, TRAIN_TIMESTEPS = 0.00085, 0.012, 1000

# Caption dropout. Whole-caption dropout to "" teaches the unconditional branch that
# classifier-free guidance (and the sampler's negative prompt "") uses. Dropping single words
# teaches partial captions such as "large circle", which is what slider prompts look like.
P_UNCONDITIONAL = 0.10
P_DROP_WORD = 0.15
P_DROP_ARTICLE = 0.25

# Min-SNR loss weighting (Hang et al. 2023): caps the weight of the easy low-noise timesteps,
# which speeds up convergence for a fixed step budget.
MIN_SNR_GAMMA = 5.0

# Seconds kept back from a time budget for encoding, saving and the folder swap.
SAVE_RESERVE_S = 15.0


@dataclass
class ScenePool:
    """Rendered training scenes: uint8 images (N, 3, H, W) and their attribute indices (N,)."""

    images: torch.Tensor
    size: torch.Tensor  # index into SIZE_WORDS
    colour: torch.Tensor  # index into COLOURS
    shape: torch.Tensor  # index into SHAPES

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------------


def make_tokenizer(folder: Path):
    """The CLIP tokenizer over `VOCABULARY`, written to and loaded from `folder`."""
    from transformers import CLIPTokenizer

    from sliders.tiny import write_tokenizer

    write_tokenizer(folder, VOCABULARY)
    return CLIPTokenizer.from_pretrained(str(folder))


def make_text_encoders(vocab_size: int, seed: int, family: str = "sdxl"):
    """(CLIPTextModel, CLIPTextModelWithProjection), seeded and in eval mode; for `sd1`, one
    CLIPTextModel as wide as SDXL's two together (the UNet's cross-attention sees as many features)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    hidden = 2 * TEXT_HIDDEN if family == "sd1" else TEXT_HIDDEN
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_PROJECTION,
        # Token ids of `write_tokenizer`: start 0, end (also pad) 1; the pooled output is read at
        # the first end token.
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    first = CLIPTextModel(config).eval()
    if family == "sd1":
        return (first,)
    torch.manual_seed(seed + 1)
    second = CLIPTextModelWithProjection(config).eval()
    return first, second


# FLUX architecture: 4 heads of 32 (rotary axes 8 + 12 + 12 = 32), two double-stream and four
# single-stream blocks; T5 prompts of at most FLUX_TEXT_TOKENS tokens.
FLUX_HEADS, FLUX_HEAD_DIM, FLUX_DOUBLE, FLUX_SINGLE = 4, 32, 2, 4
FLUX_ROPE = (8, 12, 12)
FLUX_TEXT_TOKENS = 32
T5_WIDTH = 64


def make_t5(vocab_size: int, seed: int):
    """A frozen random T5 encoder (the FLUX family's sequence conditioning), seeded, in eval mode."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=T5_WIDTH, d_kv=16, d_ff=4 * T5_WIDTH, num_layers=TEXT_LAYERS, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).eval()


def make_transformer(seed: int):
    """A FLUX.1-shaped transformer on 16x16x4 latents (8x8 tokens of 16 features), no guidance embedding."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=FLUX_DOUBLE, num_single_layers=FLUX_SINGLE,
        attention_head_dim=FLUX_HEAD_DIM, num_attention_heads=FLUX_HEADS, joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=TEXT_HIDDEN, guidance_embeds=False, axes_dims_rope=FLUX_ROPE,
    )


def make_flow_scheduler():
    """FLUX.1-schnell's sampling schedule: flow-matching Euler, no shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=TRAIN_TIMESTEPS, shift=1.0, use_dynamic_shifting=False)


def make_vae(seed: int):
    """A three-level KL autoencoder: 64x64x3 pixels <-> 16x16x4 latents (factor 4)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=RESOLUTION,
    )


def make_unet(seed: int, family: str = "sdxl"):
    """An SDXL-shaped UNet on 16x16x4 latents: "text_time" added conditioning, linear projections;
    for `sd1` the same blocks shaped as SD 1.x's: no added conditioning, convolutional projections.

    One layer per block keeps it at ~4M parameters and ~350 modules: small on disk, and a tiny
    model on a GPU is bound by kernel launches, so depth costs time more than width does.
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(64, 96, 96),
        layers_per_block=1,
        # Diffusers' legacy name: this is the number of heads per block (32 features each).
        attention_head_dim=(2, 3, 3),
        transformer_layers_per_block=1,
        norm_num_groups=32,
        cross_attention_dim=2 * TEXT_HIDDEN,
        **(dict(use_linear_projection=False) if family == "sd1" else dict(
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_PROJECTION,
        )),
    )


def make_scheduler():
    """The sampling scheduler saved with the pipeline: SDXL's Euler with the training betas."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        num_train_timesteps=TRAIN_TIMESTEPS,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )


def alphas_cumprod(device: torch.device) -> torch.Tensor:
    """The scaled-linear schedule's cumulative alphas (1000,), float32, as diffusers computes them."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(device)


# --------------------------------------------------------------------------------------------------
# Data: a batched renderer and the caption variants
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of `base` at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _optimizer(params, lr: float, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernel matters on a GPU, where a model this small is bound by kernel launches.
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0, **fused)


def _finite(value: float, what: str, step: int) -> float:
    if not math.isfinite(value):
        raise TrainingError(f"{what} loss became {value} at step {step}; lower the learning rate")
    return value


def train_vae(
    vae, pool: ScenePool, *, steps: int, batch_size: int, lr: float, kl_weight: float,
    generator: torch.Generator, log_every: int,
) -> list[dict]:
    """Reconstruction (L1 + MSE) plus `kl_weight` x KL, both per element; returns the logged losses.

    L1 keeps the flat colours and sharp edges the measurement reads; the MSE term pulls the few
    badly wrong pixels in faster. Horizontal flips are free extra data (every shape is symmetric).
    """
    device = pool.images.device
    vae.train()
    optimizer = _optimizer(vae.parameters(), lr, device)
    warmup = max(1, min(200, steps // 10))
    history, window, window_rec, seen = [], torch.zeros((), device=device), torch.zeros((), device=device), 0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        idx = torch.randint(len(pool), (batch_size,), generator=generator, device=device)
        flip = torch.rand(batch_size, generator=generator, device=device) < 0.5
        x = to_unit(pool.images[idx])
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator, device=device)
        recon = vae.decode(z).sample
        rec = (recon - x).abs().mean() + ((recon - x) ** 2).mean()
        kl = 0.5 * (posterior.mean**2 + posterior.var - 1.0 - posterior.logvar).mean()
        loss = rec + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        window += loss.detach()
        window_rec += rec.detach()
        seen += 1
        if seen == log_every or step == steps - 1:
            mean, mean_rec = _finite(window.item() / seen, "VAE", step), window_rec.item() / seen
            history.append({"step": step + 1, "loss": mean, "reconstruction": mean_rec})
            logger.info("vae step %d/%d loss %.5f (reconstruction %.5f)", step + 1, steps, mean, mean_rec)
            window.zero_(), window_rec.zero_()
            seen = 0
    vae.eval()
    return history


@torch.no_grad()
def encode_pool(vae, pool: ScenePool, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every pool image, float32 (N, 4, h, w) each."""
    means, stds = [], []
    for start in range(0, len(pool), chunk):
        posterior = vae.encode(to_unit(pool.images[start : start + chunk])).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


def latent_scale(means: torch.Tensor, stds: torch.Tensor, generator: torch.Generator) -> tuple[float, dict]:
    """1 / std of posterior samples (what the UNet trains on), and per-channel stats to record."""
    sample = means + stds * torch.randn(means.shape, generator=generator, device=means.device)
    std = float(sample.std())
    stats = {
        "std": std,
        "mean": float(sample.mean()),
        "channel_mean": [float(v) for v in sample.mean(dim=(0, 2, 3))],
        "channel_std": [float(v) for v in sample.std(dim=(0, 2, 3))],
        "posterior_std_mean": float(stds.mean()),
    }
    return 1.0 / std, stats


@torch.no_grad()
def encode_captions(tokenizer, text_encoders, device: torch.device, family: str = "sdxl",
                    tokenizers: Sequence | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(embeds (C, 77, 128), pooled (C, 64), None for sd1) for `caption_variants()`, through the
    family's own prompt encoding (`sliders.families`).

    Going through the package's own encoding guarantees training sees exactly the conditioning that
    slider training and the pipeline compute at use time.
    """
    from sliders.families import family_named

    captions = caption_variants()
    tokenizers = list(tokenizers) if tokenizers is not None else [tokenizer] * len(text_encoders)
    table = family_named(family).encode_prompts(tokenizers, text_encoders, captions)
    embeds = torch.stack([table[c][0] for c in captions]).to(device)
    if table[captions[0]][1] is None:
        return embeds, None
    pooled = torch.stack([table[c][1] for c in captions]).to(device)
    return embeds, pooled


def train_unet(
    unet, means: torch.Tensor, stds: torch.Tensor, scale: float, pool: ScenePool,
    embeds: torch.Tensor, pooled: torch.Tensor, *, steps: int, batch_size: int, lr: float,
    generator: torch.Generator, log_every: int, deadline: float | None = None, flow=None,
) -> tuple[dict, list[dict], int]:
    """Epsilon-prediction DDPM training (with `flow`, a flow-matching family such as FLUX, whose
    `predict` calls the model: velocity training); returns (EMA weights, logged losses, steps run).

    With a `deadline` (time.perf_counter seconds) the step count is fitted to it once, after timing
    the first steps, and the cosine schedule follows the fitted count; without one every run has
    exactly `steps` steps and is deterministic on the CPU.
    """
    from sliders.models import Conditioning

    device = means.device
    unet.train()
    optimizer = _optimizer(unet.parameters(), lr, device)
    params = list(unet.parameters())
    ema = [p.detach().clone() for p in params]
    warmup = max(1, min(500, steps // 10))
    alpha_bar = alphas_cumprod(device)
    snr = alpha_bar / (1.0 - alpha_bar)
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    time_ids = torch.tensor(SDXL_TIME_IDS, dtype=torch.float32, device=device).expand(batch_size, 6)
    total, probe_start, probe = steps, None, (10, 40)
    history, window, seen = [], torch.zeros((), device=device), 0
    step = 0
    while step < total:
        if deadline is not None and step in probe:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            if step == probe[0]:
                probe_start = now
            else:
                per_step = (now - probe_start) / (probe[1] - probe[0])
                fitted = probe[1] + int(max(deadline - now, 0.0) / per_step)
                if fitted < total:
                    logger.warning(
                        "unet: %.1f ms/step, so %d of the %d steps fit the time budget; training %d",
                        per_step * 1e3, fitted, total, fitted,
                    )
                    total = max(fitted, probe[1])
                else:
                    logger.info("unet: %.1f ms/step; all %d steps fit the time budget", per_step * 1e3, total)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, total, lr, warmup)
        idx = torch.randint(len(pool), (batch_size,), generator=generator, device=device)
        mu = means[idx]
        latents = (mu + stds[idx] * torch.randn(mu.shape, generator=generator, device=device)) * scale
        caption = draw_captions(pool, idx, generator)
        if flow:
            # Rectified flow: x_sigma = (1 - sigma) x0 + sigma noise, velocity target noise - x0, sigma
            # drawn logit-normal (SD3's choice; it favours the middle of the schedule).
            sigma = torch.sigmoid(torch.randn(batch_size, generator=generator, device=device))
            noise = torch.randn(latents.shape, generator=generator, device=device)
            s = sigma[:, None, None, None]
            noisy = (1.0 - s) * latents + s * noise
            prediction = flow.predict(unet, noisy, sigma * 1000, Conditioning(embeds[caption], pooled[caption]))
            per_item = ((prediction.float() - (noise - latents)) ** 2).mean(dim=(1, 2, 3))
            loss = per_item.mean()
        else:
            t = torch.randint(TRAIN_TIMESTEPS, (batch_size,), generator=generator, device=device)
            noise = torch.randn(latents.shape, generator=generator, device=device)
            a = alpha_bar[t][:, None, None, None]
            noisy = a.sqrt() * latents + (1.0 - a).sqrt() * noise
            added = None if pooled is None else {"text_embeds": pooled[caption], "time_ids": time_ids}
            prediction = unet(noisy, t, encoder_hidden_states=embeds[caption], added_cond_kwargs=added).sample
            per_item = ((prediction.float() - noise) ** 2).mean(dim=(1, 2, 3))
            loss = (weight[t] * per_item).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        # EMA with a warm-up so short runs are not dominated by the random init.
        decay = min(0.999, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - decay)
        window += per_item.detach().mean()
        seen += 1
        step += 1
        if seen == log_every or step == total:
            # The plain epsilon (or velocity) MSE, not min-SNR weighted, so runs with other weightings compare.
            mean = _finite(window.item() / seen, "UNet", step)
            history.append({"step": step, "loss": mean, "lr": optimizer.param_groups[0]["lr"]})
            logger.info("unet step %d/%d loss %.5f", step, total, mean)
            window.zero_()
            seen = 0
    unet.eval()
    names = [name for name, _ in unet.named_parameters()]
    return dict(zip(names, ema)), history, total


# --------------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------------


def _check_count(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return value


def _versions() -> dict:
    import diffusers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def _place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished staging folder to `out_dir`, replacing an old build only if allowed."""
    if out_dir.exists():
        if any(out_dir.iterdir()):
            if not overwrite:
                raise InputError(f"output folder '{out_dir}' is not empty; pass --overwrite or pick a new one")
            shutil.rmtree(out_dir)
        else:
            out_dir.rmdir()
    os.replace(staging, out_dir)


def build_shapes_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    vae_steps: int = 2000,
    unet_steps: int = 3500,
    batch_size: int = 256,
    vae_batch_size: int = 64,
    lr: float = 5e-4,
    vae_lr: float = 1e-3,
    kl_weight: float = 1e-5,
    pool_size: int = 100_000,
    time_budget_s: float | None = None,
    save_dtype: str = "fp16",
    overwrite: bool = False,
    log_every: int = 100,
    family: str = "sdxl",
    vae_from: str | Path | None = None,
    unet_from: str | Path | None = None,
) -> Path:
    """Train the shapes model and save it as a diffusers SDXL folder at `out_dir`; returns the path.

    Deterministic from `seed` on the CPU (same folder, bit for bit). On CUDA it is best-effort:
    the same ops and seeds, but cuDNN and atomics may differ between runs, and a `time_budget_s`
    fits the UNet step count to the measured speed. `pool_size` caps the rendered scenes; the pool
    is never larger than the samples training draws. `save_dtype` "fp16" halves the folder
    (about 11 MB); it loads in float32 through `load_pipeline`. `family` is `sdxl` or `sd1`;
    `vae_from` (a shapes model folder) reuses its autoencoder and scale instead of training one;
    `unet_from` (a shapes model folder of the same family) starts the UNet (or transformer) from its
    weights, to train a build further: its `BUILD.json` steps are added to this one's in the record.
    """
    from diffusers import AutoencoderKL, FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    from sliders.families import family_named
    from sliders.models import parse_device

    started = time.perf_counter()
    deadline = None if time_budget_s is None else started + float(time_budget_s) - SAVE_RESERVE_S
    for value, what in ((vae_steps, "vae_steps"), (unet_steps, "unet_steps"), (batch_size, "batch_size"),
                        (vae_batch_size, "vae_batch_size"), (pool_size, "pool_size"), (log_every, "log_every")):
        _check_count(value, what)
    if family not in FAMILIES:
        raise InputError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if save_dtype not in ("fp16", "fp32"):
        raise InputError(f"save_dtype must be fp16 or fp32, got {save_dtype!r}")
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output '{out_dir}' is a file; give a folder path for --out")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise InputError(f"output folder '{out_dir}' is not empty; pass --overwrite or pick a new one")
    device = parse_device(device)
    if device.type == "cuda":
        # Free speed on tensor cores; part of why CUDA builds are only best-effort deterministic.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolutions
        logger.info("building on %s; CUDA runs are deterministic only on a best-effort basis", torch.cuda.get_device_name(device))
    torch.manual_seed(seed)
    np.random.seed(seed)
    generator = torch.Generator(device).manual_seed(seed)

    timings = {}
    phase = time.perf_counter()
    n_pool = min(pool_size, max(vae_steps * vae_batch_size, unet_steps * batch_size))
    pool = make_pool(n_pool, seed, device)
    timings["pool_s"] = time.perf_counter() - phase
    logger.info("rendered a pool of %d scenes in %.1f s", n_pool, timings["pool_s"])

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = make_tokenizer(Path(folder))
    tokenizers = None
    if family == "flux":
        from sliders.tiny import t5_tokenizer

        tokenizers = [tokenizer, t5_tokenizer(VOCABULARY, FLUX_TEXT_TOKENS)]
        text_encoders = (make_text_encoders(len(tokenizer), seed + 1)[0], make_t5(len(tokenizers[1]), seed + 2))
    else:
        text_encoders = make_text_encoders(len(tokenizer), seed + 1, family)
    vae = make_vae(seed + 3).to(device)
    if vae_from is not None:
        vae = AutoencoderKL.from_pretrained(str(vae_from), subfolder="vae", torch_dtype=torch.float32).to(device)
    unet = (make_transformer(seed + 4) if family == "flux" else make_unet(seed + 4, family)).to(device)
    steps_before = 0
    if unet_from is not None:
        unet_from = Path(unet_from)
        sub = "transformer" if family == "flux" else "unet"
        try:
            start = type(unet).from_pretrained(str(unet_from), subfolder=sub, torch_dtype=torch.float32)
            steps_before = json.loads((unet_from / "BUILD.json").read_text(encoding="utf-8"))["unet_steps"]
        except (OSError, ValueError, KeyError) as error:
            raise InputError(f"--unet-from {unet_from}: not a {family} shapes model folder ({error})") from None
        unet.load_state_dict(start.state_dict())
    for encoder in text_encoders:
        encoder.requires_grad_(False)
        if save_dtype == "fp16":
            # Round the frozen encoders to what the folder will store, so the UNet trains on
            # exactly the embeddings the saved pipeline computes.
            with torch.no_grad():
                for param in encoder.parameters():
                    param.copy_(param.half().float())

    phase = time.perf_counter()
    vae_history = [] if vae_from is not None else train_vae(
        vae, pool, steps=vae_steps, batch_size=vae_batch_size, lr=vae_lr, kl_weight=kl_weight, generator=generator,
        log_every=log_every)
    vae.requires_grad_(False)
    timings["vae_s"] = time.perf_counter() - phase

    phase = time.perf_counter()
    means, stds = encode_pool(vae, pool)
    scale, latent_stats = latent_scale(means, stds, generator)
    if vae_from is None:
        vae.register_to_config(scaling_factor=scale)
    if family == "flux":
        vae.register_to_config(shift_factor=0.0)  # FluxPipeline decodes latents / scale + shift
    scale = vae.config.scaling_factor  # a reused autoencoder keeps the scale its latents were measured with
    logger.info("latent std %.4f -> scaling_factor %.4f", latent_stats["std"], scale)
    embeds, pooled = encode_captions(tokenizer, [e.to(device) for e in text_encoders], device, family, tokenizers)
    timings["encode_s"] = time.perf_counter() - phase

    phase = time.perf_counter()
    ema, unet_history, unet_run = train_unet(
        unet, means, stds, scale, pool, embeds, pooled, steps=unet_steps, batch_size=batch_size, lr=lr,
        generator=generator, log_every=log_every, deadline=deadline,
        flow=family_named("flux") if family == "flux" else None,
    )
    with torch.no_grad():
        for name, param in unet.named_parameters():
            param.copy_(ema[name])
    timings["unet_s"] = time.perf_counter() - phase

    phase = time.perf_counter()
    storage = torch.float16 if save_dtype == "fp16" else torch.float32
    for module in (vae, unet, *text_encoders):
        # `.cpu().half()` rather than `.to(dtype)`: same result without diffusers' cast warnings.
        module.cpu()
        if storage == torch.float16:
            module.half()
    if family == "flux":
        pipe = FluxPipeline(scheduler=make_flow_scheduler(), vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizer,
                            text_encoder_2=text_encoders[1], tokenizer_2=tokenizers[1], transformer=unet)
    elif family == "sd1":
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizer, unet=unet, scheduler=make_scheduler(),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoders[0],
            text_encoder_2=text_encoders[1],
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=make_scheduler(),
            # Training dropped captions to the encoded "", not to zeros: keep the empty negative
            # prompt encoded so classifier-free guidance uses what the model learned.
            force_zeros_for_empty_prompt=False,
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        timings["save_s"] = time.perf_counter() - phase
        timings["total_s"] = time.perf_counter() - started
        record = {
            "family": family,
            "vae_from": None if vae_from is None else Path(vae_from).name,
            "seed": seed,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "deterministic": device.type == "cpu" and time_budget_s is None,
            "vae_steps": vae_steps,
            "unet_steps_planned": unet_steps,
            "unet_steps": steps_before + unet_run,
            "unet_from": None if unet_from is None else {"folder": Path(unet_from).name, "unet_steps": steps_before},
            "batch_size": batch_size,
            "vae_batch_size": vae_batch_size,
            "lr": lr,
            "vae_lr": vae_lr,
            "kl_weight": kl_weight,
            "pool_size": n_pool,
            "time_budget_s": time_budget_s,
            "save_dtype": save_dtype,
            "caption_dropout": {"unconditional": P_UNCONDITIONAL, "word": P_DROP_WORD, "article": P_DROP_ARTICLE},
            "min_snr_gamma": None if family == "flux" else MIN_SNR_GAMMA,
            "loss": "velocity, logit-normal sigma" if family == "flux" else "epsilon, min-SNR weighted",
            "scaling_factor": scale,
            "latents": latent_stats,
            "parameters": {
                "unet": sum(p.numel() for p in unet.parameters()),
                "vae": sum(p.numel() for p in vae.parameters()),
                "text_encoders": sum(p.numel() for e in text_encoders for p in e.parameters()),
            },
            "vae_losses": vae_history,
            "unet_losses": unet_history,
            "final_vae_loss": vae_history[-1]["loss"] if vae_history else None,
            "final_unet_loss": unet_history[-1]["loss"],
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "ms_per_step": {
                "vae": round(1e3 * timings["vae_s"] / vae_steps, 2) if vae_history else None,
                "unet": round(1e3 * timings["unet_s"] / unet_run, 2),
            },
            "versions": _versions(),
        }
        (staging / "BUILD.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _place(staging, out_dir, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved the shapes model to %s in %.1f s", out_dir, time.perf_counter() - started)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sliders.shapes.build --out DIR [--device cuda] [--seed 0] [--vae-steps N] ...`"""
    parser = argparse.ArgumentParser(description="Train the shapes-world text-to-image model and save it as an SDXL folder.")
    parser.add_argument("--out", required=True, help="output folder (a diffusers StableDiffusionXLPipeline)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--unet-steps", type=int, default=3500)
    parser.add_argument("--batch-size", type=int, default=256, help="UNet batch size")
    parser.add_argument("--vae-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4, help="UNet learning rate")
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-5)
    parser.add_argument("--pool-size", type=int, default=100_000, help="most scenes to render for training")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="fit the UNet step count so the whole build ends within this many seconds")
    parser.add_argument("--save-dtype", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing build in --out")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--family", choices=FAMILIES, default="sdxl", help="architecture (default sdxl)")
    parser.add_argument("--vae-from", help="reuse the autoencoder of this shapes model folder (no VAE training)")
    parser.add_argument("--unet-from", help="start the UNet (transformer) from this shapes model folder's weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        out = build_shapes_model(
            args.out, seed=args.seed, device=args.device, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
            batch_size=args.batch_size, vae_batch_size=args.vae_batch_size, lr=args.lr, vae_lr=args.vae_lr,
            kl_weight=args.kl_weight, pool_size=args.pool_size, time_budget_s=args.time_budget,
            save_dtype=args.save_dtype, overwrite=args.overwrite, log_every=args.log_every, family=args.family,
            vae_from=args.vae_from, unet_from=args.unet_from,
        )
    except InputError as error:
        print(f"error: {error}")
        return 2
    record = json.loads((out / "BUILD.json").read_text(encoding="utf-8"))
    print(
        f"saved {out}: vae loss {record['final_vae_loss'] or 0:.5f}, unet loss {record['final_unet_loss']:.5f} "
        f"after {record['unet_steps']} steps, {record['timings_s']['total_s']:.0f} s on {record['device']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
