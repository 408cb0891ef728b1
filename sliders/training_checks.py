"""Checks of a training config that need torch, an optional package or the base model's files.

Run by the commands before any model loads, after the config has validated itself: the optimizer
and its arguments, the logging packages asked for, the FLUX.1-only options against the base
model's family, and every training resolution against how that family packs its latents. What can
only be known once the model is loaded is checked in `sliders.trainer.setup`; a resumed run's
training state, in `sliders.checkpoints.check_resume_state`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .config import Config
from .errors import InputError
from .families import family_of_source
from .optim import BNB_OPTIMIZERS, make_optimizer
from .packages import import_optional
from .parsing import check_resolution
from .planning import read_vae_factor


def check_training_inputs(config: Config) -> None:
    """What only torch or an optional package can judge, checked before any model loads: the optimizer
    and its `optimizer_args` (built once on a dummy parameter) and the logging packages asked for."""
    name, args = config.train.optimizer, config.train.optimizer_args
    dummy = torch.nn.Parameter(torch.zeros(2))
    optimizer = make_optimizer(name, [dummy], config.train.lr, args)
    if name not in BNB_OPTIMIZERS:  # bitsandbytes steps only on a GPU: its arguments are checked by the constructor
        dummy.grad = torch.ones_like(dummy)
        try:
            optimizer.step()
        except (TypeError, ValueError, RuntimeError) as error:
            raise InputError(f"train.optimizer_args {args!r} do not work with optimizer '{name}': {error}") from None
    _check_base_options(config)
    _check_companions(config)
    if config.logging.tensorboard_dir:
        import_optional("torch.utils.tensorboard", "tensorboard", "logging.tensorboard_dir")
    if config.logging.use_wandb:
        import_optional("wandb", "wandb", "logging.use_wandb")


def _check_base_options(config: Config) -> None:
    """`pretrained_model.transformer` and `.quantize` (FLUX.1 only) before the model loads, where the
    base model's family is known from its files; whether bitsandbytes runs on the device is `setup`'s."""
    from .models import check_transformer_file, resolve_model

    model = config.pretrained_model
    if not model.transformer and model.quantize == "none":
        return
    family = family_of_source(resolve_model(model.name_or_path), family=model.family, v2=model.v2)
    for key, on in (("transformer", bool(model.transformer)), ("quantize", model.quantize != "none")):
        if on and family is not None and not family.flow_matching:
            raise InputError(f"config key 'pretrained_model.{key}' is for FLUX.1, but base model "
                             f"'{model.name_or_path}' is {family.label}; remove the key")
    if model.transformer:
        check_transformer_file(model.transformer)


def check_resolutions(config: Config, resolutions: Sequence[tuple[str, int]]) -> None:
    """Before the model loads: every (key, resolution) of the run, and `sample.resolution`, fits the base
    model's latents where its family packs them (FLUX: multiples of 16, `parsing.check_resolution`).
    A model whose family is known only once loaded is checked then (`setup`)."""
    from .models import resolve_model

    model = config.pretrained_model
    family = family_of_source(resolve_model(model.name_or_path), family=model.family, v2=model.v2)
    if family is None or not family.flow_matching:
        return
    factor = read_vae_factor(model.name_or_path, family)
    extra = [("config key 'sample.resolution'", config.sample.resolution)] if config.sample.resolution else []
    for what, value in [*resolutions, *extra]:
        check_resolution(value, what, family, factor)


def _check_companions(config: Config) -> None:
    """`train.with_sliders`: each entry a slider file that exists, with valid scales; whether it fits the
    base model is known once the model is loaded (`companions.Companions.load`)."""
    from .companions import parse_companion

    for entry in config.train.with_sliders:
        if not isinstance(entry, str):
            raise InputError(f"config key 'train.with_sliders' has {entry!r}; give slider files as text, "
                             "e.g. ['roundness.safetensors:0,1,2']")
        path, _ = parse_companion(entry)
        if not path.is_file():
            raise InputError(f"config key 'train.with_sliders' names '{path}', which does not exist; give a slider "
                             "file trained on this base model, e.g. roundness.safetensors:0,1,2")
