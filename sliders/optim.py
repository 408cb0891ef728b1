"""Optimizer and learning-rate schedule set-up: from the config's names and `optimizer_args` text.

`make_optimizer` builds torch's Adam/AdamW or an optional package's optimizer (bitsandbytes 8-bit,
Prodigy, D-Adaptation; imported only when chosen), `parse_optimizer_args` reads the
'key=value ...' arguments, and `make_lr_scheduler` builds the official code's LR schedules. The
training loop that steps them is `sliders.trainer`'s.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .errors import InputError
from .packages import import_optional

BNB_OPTIMIZERS = ("adamw8bit", "adam8bit", "lion8bit", "lion")


def parse_optimizer_args(text: str) -> dict:
    """'weight_decay=0.01 betas=0.9,0.99 decouple=True' -> keyword arguments."""
    kwargs = {}
    for part in text.split():
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise InputError(f"train.optimizer_args entry {part!r} is not key=value; write e.g. 'weight_decay=0.01'")
        kwargs[key] = _literal(value)
    return kwargs


def _literal(value: str):
    if "," in value:
        return tuple(_literal(v) for v in value.split(",") if v)
    if value in ("True", "true"):
        return True
    if value in ("False", "false"):
        return False
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def make_optimizer(name: str, params: Sequence[torch.nn.Parameter], lr: float, args: str) -> torch.optim.Optimizer:
    """Optimizer by config name; optional packages are imported only when chosen."""
    kwargs = parse_optimizer_args(args)

    def bnb():
        return import_optional("bitsandbytes", "bitsandbytes", f"optimizer '{name}'", "'sliders[8bit]'")

    def package(module: str):
        return import_optional(module, module, f"optimizer '{name}'")

    builders: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "adam": lambda: torch.optim.Adam(params, lr=lr, **kwargs),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, **kwargs),
        "adamw8bit": lambda: bnb().optim.AdamW8bit(params, lr=lr, **kwargs),
        "adam8bit": lambda: bnb().optim.Adam8bit(params, lr=lr, **kwargs),
        "lion8bit": lambda: bnb().optim.Lion8bit(params, lr=lr, **kwargs),
        "lion": lambda: bnb().optim.Lion(params, lr=lr, **kwargs),
        "prodigy": lambda: package("prodigyopt").Prodigy(params, lr=lr, **kwargs),
        "dadaptadam": lambda: package("dadaptation").DAdaptAdam(params, lr=lr, **kwargs),
        "dadaptlion": lambda: package("dadaptation").DAdaptLion(params, lr=lr, **kwargs),
    }
    try:
        return builders[name]()
    except (TypeError, ValueError) as error:
        raise InputError(f"train.optimizer_args {args!r} do not fit optimizer '{name}': {error}") from None


def make_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, iterations: int, lr: float):
    """The official code's schedules over `iterations` steps (SPEC section 4).

    `constant`; `cosine` from lr to lr/100 over the run; `cosine_with_restarts` from lr to lr/100 in
    cycles of T // 10 steps, each twice the last; `step`, lr times 0.999 every T // 100 steps;
    `linear`, a warm-up from lr/2 to lr over the first T // 100 steps, then lr (the official
    `LinearLR(factor=0.5)` call fails on current torch; this is what it meant). Periods that round to 0
    in short runs are 1 step.
    """
    sched = torch.optim.lr_scheduler
    floor = lr / 100
    tenth = max(1, iterations // 10)
    hundredth = max(1, iterations // 100)
    if name == "constant":
        return sched.LambdaLR(optimizer, lambda _: 1.0)
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=floor)
    if name == "cosine_with_restarts":
        return sched.CosineAnnealingWarmRestarts(optimizer, T_0=tenth, T_mult=2, eta_min=floor)
    if name == "step":
        return sched.StepLR(optimizer, step_size=hundredth, gamma=0.999)
    if name == "linear":
        return sched.LinearLR(optimizer, start_factor=0.5, end_factor=1.0, total_iters=hundredth)
    raise InputError(f"lr scheduler {name!r} is unknown")
