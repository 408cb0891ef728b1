"""A small model of the parts of ComfyUI that decide when a hook keyframe switches, for the export tests.

Written from ComfyUI's source (Comfy-Org/ComfyUI a125cd84, 2025-10-12, v0.3.64), not copied:

- `comfy/model_sampling.py` `ModelSamplingDiscrete`: SDXL's discrete schedule (ComfyUI's "linear" betas,
  linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2 in float64; sigmas and log-sigmas kept in float32),
  `sigma(t)` (log-linear between the two nearest timesteps), `timestep(sigma)` (the nearest timestep
  in log-sigma, which is what the UNet is given) and `percent_to_sigma(p)` (the sigma of timestep
  (1 - p) * 999).
- `comfy/samplers.py` and `comfy/k_diffusion/sampling.py`: the sigmas of every scheduler of the KSampler.
- `comfy/hooks.py` `HookKeyframeGroup.prepare_current_keyframe`: which keyframe is current at a model
  call; `comfy/model_patcher.py` passes it the call's sigma (`curr_t = t[0]`).

The samplers the workflow may be run with call the model once per step at that step's sigma (euler,
the exported default; dpmpp_2m and the like), so a step runs with the keyframe current at its sigma.
"""

from __future__ import annotations

import math

import numpy as np
import torch

STEPS_OF_MODEL = 1000


def _schedule() -> tuple[torch.Tensor, torch.Tensor]:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, STEPS_OF_MODEL, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    return sigmas.float(), sigmas.log().float()


SIGMAS, LOG_SIGMAS = _schedule()
SIGMA_MIN, SIGMA_MAX = SIGMAS[0], SIGMAS[-1]


def sigma(timestep) -> torch.Tensor:
    t = torch.clamp(torch.as_tensor(timestep).float(), min=0, max=len(SIGMAS) - 1)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * LOG_SIGMAS[low] + w * LOG_SIGMAS[high]).exp()


def timestep(sigma_value) -> int:
    distances = torch.as_tensor(sigma_value).float().log() - LOG_SIGMAS[:, None]
    return int(distances.abs().argmin(dim=0).view(()))


def percent_to_sigma(percent: float) -> float:
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    return sigma(torch.tensor((1.0 - percent) * 999.0)).item()


# ------------------------------------------------------------------ schedulers


def _normal(steps: int, sgm: bool = False) -> torch.Tensor:
    start, end = timestep(SIGMA_MAX), timestep(SIGMA_MIN)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    values = [float(sigma(t)) for t in timesteps]
    return torch.FloatTensor(values + ([0.0] if append_zero else []))


def _simple(steps: int) -> torch.Tensor:
    stride = len(SIGMAS) / steps
    return torch.FloatTensor([float(SIGMAS[-(1 + int(x * stride))]) for x in range(steps)] + [0.0])


def _ddim_uniform(steps: int) -> torch.Tensor:
    x = 1
    values = [] if math.isclose(float(SIGMAS[x]), 0, abs_tol=0.00001) else [0.0]
    if not values:
        steps += 1
    stride = max(len(SIGMAS) // steps, 1)
    while x < len(SIGMAS):
        values.append(float(SIGMAS[x]))
        x += stride
    return torch.FloatTensor(values[::-1])


def _beta(steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    from scipy import stats

    total = len(SIGMAS) - 1
    ts = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta) * total)
    values, last = [], -1
    for t in ts:
        if t != last:
            values.append(float(SIGMAS[int(t)]))
        last = t
    return torch.FloatTensor(values + [0.0])


def _linear_quadratic(steps: int, threshold_noise: float = 0.025) -> torch.Tensor:
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps ** 2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps ** 2)
        const = quadratic_coef * (linear_steps ** 2)
        quadratic = [quadratic_coef * (i ** 2) + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quadratic + [1.0]]
    return torch.FloatTensor(schedule) * SIGMA_MAX


def _append_zero(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values, values.new_zeros([1])])


def _karras(steps: int, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, steps)
    low, high = float(SIGMA_MIN) ** (1 / rho), float(SIGMA_MAX) ** (1 / rho)
    return _append_zero((high + ramp * (low - high)) ** rho)


def _exponential(steps: int) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(float(SIGMA_MAX)), math.log(float(SIGMA_MIN)), steps).exp())


def _kl_optimal(steps: int) -> torch.Tensor:
    index = torch.arange(steps, dtype=torch.float).div_(steps - 1)
    values = index.new_zeros(steps + 1)
    values[:-1] = (index * math.atan(float(SIGMA_MIN)) + (1 - index) * math.atan(float(SIGMA_MAX))).tan_()
    return values


SCHEDULERS = {
    "simple": _simple,
    "sgm_uniform": lambda steps: _normal(steps, sgm=True),
    "karras": _karras,
    "exponential": _exponential,
    "ddim_uniform": _ddim_uniform,
    "beta": _beta,
    "normal": _normal,
    "linear_quadratic": _linear_quadratic,
    "kl_optimal": _kl_optimal,
}


def sigmas_of(scheduler: str, steps: int) -> torch.Tensor:
    return SCHEDULERS[scheduler](steps)


# ------------------------------------------------------------------ hook keyframes


def keyframe_strengths(sigmas: torch.Tensor, keyframes: list[tuple[float, float]]) -> list[float]:
    """The strength multiplier of each step (one model call at sigmas[i]) under `keyframes`
    [(start_percent, strength), ...] in the order the CreateHookKeyframe chain adds them, each with
    CreateHookKeyframe's guarantee_steps of 1."""
    order = sorted(range(len(keyframes)), key=lambda i: keyframes[i][0])  # stable, as ComfyUI's sort
    frames = [{"strength": keyframes[i][1], "start_t": percent_to_sigma(keyframes[i][0]), "guarantee": 1}
              for i in order]
    max_sigma = float(torch.max(sigmas))

    def guarantee(frame) -> int:
        return 0 if frame["start_t"] > max_sigma else frame["guarantee"]

    index, used, strengths = 0, 0, []
    for curr_t in sigmas[:-1]:
        if used >= guarantee(frames[index]):
            for i in range(index + 1, len(frames)):
                if frames[i]["start_t"] >= curr_t:
                    index, used = i, 0
                    if guarantee(frames[i]) > 0:
                        break
                else:
                    break
        used += 1
        strengths.append(frames[index]["strength"])
    return strengths
