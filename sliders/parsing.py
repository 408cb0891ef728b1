"""Reading and checking what the image-making commands are given: numbers, slider scales, seeds, prompts,
`--slider` arguments, the generation settings (steps, start_noise, guidance) and image sizes.

One parser or check of each, shared by `sliders-sample`, `sliders-eval`, `sliders-edit`, `sliders-export`
and `sliders-train-images`: `parse_scales`/`check_scales` (scales as text or as numbers), `parse_seeds`/
`check_seeds` (seeds, with ranges such as 0-31), `parse_names` (folder names), `parse_slider_arg` (a
slider file with its own scales), `check_steps`, `check_start_noise`, `check_resolution`. A bad value is
an `InputError` naming the flag, the value and the fix. Nothing here reads a slider file, loads a model
or uses torch: resolving a run's defaults from the slider files is `planning`'s.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .config import MAX_RESOLUTION, MAX_SCALE, MAX_TIMESTEPS
from .errors import InputError

if TYPE_CHECKING:
    from .families import Family

# A range such as 0-99999999 would otherwise build a huge list before anything else is checked.
MAX_SEEDS = 100_000
_SEED_PART = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")


@dataclass(frozen=True)
class SliderSpec:
    """One slider file to sample with, and its own scales (None: use the global scales)."""

    path: Path
    scales: tuple[float, ...] | None


# --------------------------------------------------------------------------------------------------
# Scales
# --------------------------------------------------------------------------------------------------


def check_scale(value: Any, what: str) -> float:
    """A slider scale given as a number or its text: finite and within +-MAX_SCALE, -0 read as 0."""
    if isinstance(value, bool):
        raise InputError(f"{what} has {value!r}, which is not a number; give numbers such as -2,0,2")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InputError(f"{what} has {value!r}, which is not a number; give numbers such as -2,0,2") from None
    if not math.isfinite(number):
        raise InputError(f"{what} has {value!r}, which is not finite; give finite numbers such as -2,0,2")
    if abs(number) > MAX_SCALE:
        raise InputError(f"{what} has {value!r}; slider scales from -{MAX_SCALE} to {MAX_SCALE} are meaningful "
                         "(sliders are trained at about -2 to 2)")
    # -0.0 would otherwise be labelled and named "-0", a different file from "+0".
    return number + 0.0


def parse_scales(text: str, what: str = "--scales") -> tuple[float, ...]:
    """'-2,0,2' -> (-2.0, 0.0, 2.0); an empty, non-numeric or non-finite entry is an InputError."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{what} is empty; give comma-separated numbers such as -2,0,2")
    parts = [part.strip() for part in text.split(",")]
    if any(not part for part in parts):
        raise InputError(f"{what} {text!r} has an empty entry; give comma-separated numbers such as -2,0,2")
    return tuple(check_scale(part, what) for part in parts)


def check_scales(scales: Sequence[Any], what: str) -> tuple[float, ...]:
    """Scales as text (read by `parse_scales`) or as numbers (at least one, finite, none repeated) -> floats.

    A bad value is an InputError naming `what`.
    """
    if isinstance(scales, str):
        return parse_scales(scales, what)
    values = tuple(check_scale(value, what) for value in scales)
    if not values:
        raise InputError(f"{what} is empty; give at least one scale such as -2,0,2")
    labels = [f"{value:+g}" for value in values]
    if len(set(labels)) != len(labels):
        raise InputError(f"{what} {', '.join(labels)} repeats a scale; give each scale once")
    return values


def parse_slider_arg(text: str) -> SliderSpec:
    """'x.safetensors' or 'x.safetensors:-2,0,2' (the slider's own scales).

    Only the last ':' can separate scales, and only when what follows it parses as scales, so
    paths with colons (drive letters, odd folder names) still work.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError("--slider is empty; give a slider file, optionally with scales: age.safetensors:-2,0,2")
    text = text.strip()
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scales = parse_scales(tail, f"scales of --slider {head}")
        except InputError:
            # A slider file followed by something that is not scales is a typo in the scales, not a
            # file name with a colon; say so rather than "file does not exist".
            if head.lower().endswith((".safetensors", ".pt", ".ckpt", ".pth")):
                raise
        else:
            return SliderSpec(Path(head), scales)
    return SliderSpec(Path(text), None)


# --------------------------------------------------------------------------------------------------
# Seeds and prompts
# --------------------------------------------------------------------------------------------------


def parse_names(text: str, what: str) -> list[str]:
    """Names separated by commas ('low,high'), at least one."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise InputError(f"{what} is empty; give names separated by commas")
    return names


def parse_seeds(text: str, what: str = "--seeds") -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]: comma-separated seeds and inclusive ranges."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{what} is empty; give seeds such as 0,1,2 or a range such as 0-31")
    seeds: list[int] = []
    for part in (part.strip() for part in text.split(",")):
        match = _SEED_PART.match(part)
        if not match:
            raise InputError(f"{what} has {part!r}, which is not a seed or a range; write e.g. {what} 0-31 or 0,5,9")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise InputError(f"{what} range {part!r} runs backwards; write the smaller seed first, e.g. {last}-{first}")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise InputError(f"{what} {text!r} gives more than {MAX_SEEDS} seeds; give fewer")
        seeds.extend(range(first, last + 1))
    return list(check_seeds(seeds))


def check_seeds(seeds: Sequence[Any]) -> tuple[int, ...]:
    """Seeds as whole numbers (or their text) from 0 to 2**64-1, at least one, none repeated."""
    if isinstance(seeds, (str, int)) or not seeds:
        raise InputError("no seeds given; pass at least one whole-number seed, e.g. --seeds 0,1")
    checked = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, str)):
            raise InputError(f"seed {seed!r} is not a whole number; write e.g. --seeds 0,1")
        try:
            value = int(seed.strip()) if isinstance(seed, str) else int(seed)
        except ValueError:
            raise InputError(f"seed {seed!r} is not a whole number; write e.g. --seeds 0,1") from None
        if not 0 <= value < 2**64:
            raise InputError(f"seed {value} is out of range; use a whole number from 0 to 2**64-1")
        checked.append(value)
    if len(set(checked)) != len(checked):
        raise InputError(f"seeds {checked} repeat a seed; give each seed once")
    return tuple(checked)


def check_prompts(prompts: Sequence[Any]) -> tuple[str, ...]:
    """At least one prompt, each of them text (a single text is not a list of prompts)."""
    if isinstance(prompts, str) or not prompts:
        raise InputError("no prompt given; pass at least one --prompt")
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise InputError(f"prompt {prompt!r} is not text; pass prompts as text with --prompt")
    return tuple(prompts)


# --------------------------------------------------------------------------------------------------
# Generation settings and image sizes
# --------------------------------------------------------------------------------------------------


def check_steps(steps: Any) -> int:
    """Denoising steps: a whole number from 1 to the noise schedule's length."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TIMESTEPS:
        raise InputError(f"--steps must be a whole number from 1 to {MAX_TIMESTEPS} (the noise schedule's length), "
                         f"got {steps!r}")
    return steps


def check_start_noise(start_noise: Any) -> float:
    """The timestep at or below which the sliders are on: a number from 0 to MAX_TIMESTEPS."""
    if isinstance(start_noise, bool) or not isinstance(start_noise, (int, float)) or not math.isfinite(start_noise):
        raise InputError(f"--start_noise must be a number from 0 to {MAX_TIMESTEPS}, got {start_noise!r}")
    if not 0 <= start_noise <= MAX_TIMESTEPS:
        raise InputError(f"--start_noise must be from 0 to {MAX_TIMESTEPS}, got {start_noise!r}")
    return float(start_noise)


def check_settings(steps: Any, start_noise: Any, guidance_scale: Any) -> tuple[int, float, float]:
    """(steps, start_noise, guidance_scale) of an image-making command, checked."""
    steps, start_noise = check_steps(steps), check_start_noise(start_noise)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise InputError(f"--guidance_scale must be a number, got {guidance_scale!r}")
    if not math.isfinite(guidance_scale):
        raise InputError(f"--guidance_scale must be a finite number, got {guidance_scale!r}")
    return steps, start_noise, float(guidance_scale)


def check_multiple(value: Any, multiple: int, what: str) -> None:
    """An image side: a positive multiple of `multiple`, at most MAX_RESOLUTION."""
    if isinstance(value, bool) or not isinstance(value, int) or value < multiple or value % multiple:
        raise InputError(f"{what} {value!r} must be a positive multiple of {multiple}; pick e.g. 512 or 1024")
    if value > MAX_RESOLUTION:
        raise InputError(f"{what} {value!r} is larger than {MAX_RESOLUTION}; pick e.g. 512 or 1024")


def check_size(height: Any, width: Any, factor: int, what: str = "image") -> None:
    """Both sides of an image on a VAE with `factor` pixels per latent cell."""
    # SDXL pipelines need multiples of 8; the latent grid also needs whole VAE cells.
    multiple = math.lcm(8, factor)
    check_multiple(height, multiple, f"{what} height")
    check_multiple(width, multiple, f"{what} width")


def check_resolution(value: int, what: str, family: "Family", factor: int) -> None:
    """One line when an image side does not fit the family's latents: FLUX packs 2x2 latent cells
    into a token, so its sides are multiples of twice the VAE factor (16 px), not only of 8."""
    multiple = family.pixel_multiple(factor)
    if value % multiple:
        low = max(multiple, value // multiple * multiple)
        raise InputError(f"{what} {value} is not a multiple of {multiple}, which {family.label} needs ({factor} px "
                         f"latent cells{' in 2x2 patches' if multiple == 2 * factor else ''}); pick {low} or "
                         f"{low + multiple}")


def recorded_resolution(metadata: dict[str, str], path: Path) -> int | None:
    """The training resolution a slider file records (`sliders_resolution`), None when it records none."""
    text = metadata.get("sliders_resolution")
    if text is None:
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise InputError(
            f"slider file '{path}' records resolution {text!r}, which is not a whole number; pass --resolution"
        ) from None
    return value
