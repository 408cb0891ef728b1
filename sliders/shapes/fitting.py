"""Fitting the shapes models: the autoencoder, its latent scale, the caption table and the denoiser.

`train_vae` fits the autoencoder on rendered scenes, `encode_pool` and `latent_scale` measure its
latents, `encode_captions` runs every caption variant through the family's own prompt encoding,
and `train_unet` trains the UNet with the min-SNR weighted DDPM epsilon loss (or a FLUX
transformer with the rectified-flow velocity loss) on those latents, keeping an EMA of its
weights. The text encoders stay frozen at their seeded random init.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import torch

from sliders.errors import TrainingError
from sliders.shapes.architectures import BETA_END, BETA_START, SDXL_TIME_IDS, TRAIN_TIMESTEPS
from sliders.shapes.training_data import ScenePool, caption_variants, draw_captions, to_unit

logger = logging.getLogger(__name__)

# Min-SNR loss weighting (Hang et al. 2023): caps the weight of the easy low-noise timesteps,
# which speeds up convergence for a fixed step budget.
MIN_SNR_GAMMA = 5.0


def alphas_cumprod(device: torch.device) -> torch.Tensor:
    """The scaled-linear schedule's cumulative alphas (1000,), float32, as diffusers computes them."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(device)



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
