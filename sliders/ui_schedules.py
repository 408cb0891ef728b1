"""The noise schedules ComfyUI, Forge and AUTOMATIC1111 sample on, rebuilt to place the `start_noise` switch.

SDXL: the discrete 1000-timestep schedule the UIs build (`sdxl_log_sigmas`), the webuis' Karras
schedule (`karras_sigmas`), and the timestep each UI gives the UNet for a sigma (`timestep_nearest` in
ComfyUI and Forge, `timestep_interpolated` in AUTOMATIC1111). FLUX.1: the shifted flow-sigma table of
ComfyUI and Forge (`flux_time_shift`, `flux_sigma_table`) and their "simple" scheduler on it
(`flux_simple_sigmas`). Nothing here knows a UI's prompt syntax or workflow format: `sliders.webui` and
`sliders.comfyui` build on these.
"""

from __future__ import annotations

import math

import torch

from .config import MAX_TIMESTEPS
from .parsing import check_steps


# ---------------------------------------------------------------- SDXL's timesteps in the UIs

# SDXL's discrete noise schedule as ComfyUI, Forge and AUTOMATIC1111 build it: betas
# linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2 in float64 (SDXL's "scaled_linear"), sigma_t =
# sqrt((1 - alphabar_t) / alphabar_t), kept in float32 (ComfyUI comfy/model_sampling.py
# ModelSamplingDiscrete; Forge backend/modules/k_prediction.py Prediction).
SDXL_BETA_START, SDXL_BETA_END = 0.00085, 0.012


def sdxl_log_sigmas() -> torch.Tensor:
    """log sigma_t of SDXL's 1000 timesteps, float32, t = 0 first."""
    betas = torch.linspace(SDXL_BETA_START ** 0.5, SDXL_BETA_END ** 0.5, MAX_TIMESTEPS, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log().float()


def karras_sigmas(steps: int, rho: float = 7.0) -> torch.Tensor:
    """k-diffusion's `get_sigmas_karras` between the model's smallest and largest sigma, with the final 0:
    the "Karras" schedule type of AUTOMATIC1111 and Forge (`sd_samplers_kdiffusion.get_sigmas`)."""
    sigmas = sdxl_log_sigmas().exp()
    low, high = float(sigmas[0]) ** (1 / rho), float(sigmas[-1]) ** (1 / rho)
    ramp = torch.linspace(0, 1, steps)
    return torch.cat([(high + ramp * (low - high)) ** rho, torch.zeros(1)])


def timestep_nearest(sigma: float) -> float:
    """The timestep whose sigma is nearest in log: what Forge and ComfyUI give the UNet (`timestep(sigma)`)."""
    distances = (torch.tensor(float(sigma)).log() - sdxl_log_sigmas()).abs()
    return float(distances.argmin())


def timestep_interpolated(sigma: float) -> float:
    """The fractional timestep between the two nearest in log sigma: what AUTOMATIC1111 gives the UNet
    (k-diffusion `DiscreteSchedule.sigma_to_t` without quantization, the webui's default)."""
    log_sigmas = sdxl_log_sigmas()
    log_sigma = math.log(float(sigma))
    low = min(int((log_sigma - log_sigmas >= 0).cumsum(0).argmax()), len(log_sigmas) - 2)
    w = (float(log_sigmas[low]) - log_sigma) / (float(log_sigmas[low]) - float(log_sigmas[low + 1]))
    w = min(max(w, 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)


# ---------------------------------------------------------------- FLUX.1's flow sigmas in ComfyUI and Forge

# FLUX.1's flow sigmas in ComfyUI and Forge: a table of sigmas at t = k / 10000 (k = 1..10000, float32)
# shifted by mu, sigma = e^mu / (e^mu + 1/t - 1) (ComfyUI comfy/model_sampling.py `ModelSamplingFlux`,
# `flux_time_shift`; Forge backend/modules/k_prediction.py `PredictionFlux`). The model is given sigma and
# scales it by 1000 itself, so its timestep is sigma * 1000: the scale start_noise is read on.
FLUX_TABLE_SIZE = 10000


def flux_time_shift(mu: float, t: float) -> float:
    """ComfyUI's and Forge's sigma of t in (0, 1] for a shift mu (float64)."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


def flux_sigma_table(shift: float) -> torch.Tensor:
    """The 10000 sigmas of the shifted table, float32, smallest first (`ModelSamplingFlux.sigmas`)."""
    t = torch.arange(1, FLUX_TABLE_SIZE + 1, 1) / FLUX_TABLE_SIZE
    return math.exp(shift) / (math.exp(shift) + (1 / t - 1))


def flux_simple_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The "simple" scheduler of ComfyUI (comfy/samplers.py) and Forge (modules/sd_schedulers.py) on the
    table: every (10000 / steps)-th sigma from the largest, then 0. It is FluxPipeline's schedule,
    linspace(1, 1/N) shifted, where N divides 10000."""
    table = flux_sigma_table(shift)
    stride = len(table) / check_steps(steps)
    return torch.tensor([float(table[-(1 + int(x * stride))]) for x in range(steps)] + [0.0])
