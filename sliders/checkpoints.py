"""Checkpoints of a training run: saving them, resuming from one, and keeping the slider when a write fails.

`Checkpoints` saves the slider at a step with, beside it, the training state that resumes the run
exactly (slider, optimizer, LR schedule, random states, the objective's own state; written and
found by `sliders.runs`), keeps only the latest state, writes the final slider, and on a failed
write or a non-finite loss saves what it can elsewhere and says where. `check_resume_state` checks a
`--resume` state against the config before the model loads; `load_training_state` loads one. When
to save is the loop's (`sliders.trainer`).
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import Config, SaveConfig, config_to_dict
from .errors import InputError, TrainingError
from .network import SliderNetwork
from .optim import make_lr_scheduler, make_optimizer
from .runs import ResumePoint, checkpoint_path, read_state, state_paths, write_state

if TYPE_CHECKING:
    from .objectives import Objective

logger = logging.getLogger(__name__)


class Checkpoints:
    """Step checkpoints with their training state, the final slider, and what is kept when a step fails."""

    def __init__(self, config: Config, folder: Path, metadata, network, optimizer, lr_scheduler, rng, generator,
                 objective: Objective):
        self.config, self.folder, self.metadata = config, folder, metadata
        self.network, self.optimizer, self.lr_scheduler = network, optimizer, lr_scheduler
        self.rng, self.generator, self.objective = rng, generator, objective
        self.checkpoints: list[Path] = []
        self.latest: Path | None = None  # the latest complete, resumable checkpoint
        self.latest_step = 0

    def _parts(self) -> dict:
        parts = {
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "python_random": self.rng.getstate(),
            "torch_generator": self.generator.get_state(),
            "torch_global": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            parts["torch_cuda"] = torch.cuda.get_rng_state_all()
        state = self.objective.state_dict()
        if state:  # an objective with no state of its own adds no entry
            parts["objective"] = state
        return parts

    def save(self, step: int) -> Path:
        """The slider at `step` and, beside it, everything resuming needs; a failed write keeps the slider elsewhere."""
        path = checkpoint_path(self.folder, self.config.save.name, step)
        meta = {**self.metadata, "sliders_step": str(step)}
        try:
            self.network.save(path, meta, self.config.save.precision, self.config.save.key_format)
            write_state(path, self._parts(), {
                "step": step,
                "config": config_to_dict(self.config),
                "prompts": self.metadata.get("sliders_prompts"),
            })
        except OSError as error:
            kept = _save_elsewhere(self.network, f"{self.config.save.name}_{step}steps", meta, self.config.save)
            earlier = f"the last complete checkpoint is '{self.latest}' (step {self.latest_step}, resumable with --resume)" \
                if self.latest else "no earlier checkpoint was complete"
            raise TrainingError(f"could not write checkpoint '{path}' ({error.strerror or error}); {kept}; {earlier}") from None
        if path not in self.checkpoints:
            self.checkpoints.append(path)
        if self.latest is not None and self.latest != path:
            _drop_state(self.latest)  # only the latest state is needed to resume; the sliders stay
        self.latest, self.latest_step = path, step
        return path

    def restore(self, point: ResumePoint) -> int:
        """Load a checkpoint's training state into the network, optimizer, schedule, random states and objective."""
        parts = read_state(point)
        load_training_state(point, parts, self.network, self.optimizer, self.lr_scheduler, self.rng, self.generator)
        torch.set_rng_state(parts["torch_global"])
        if "torch_cuda" in parts and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(parts["torch_cuda"]))
        if "objective" in parts:
            self.objective.load_state_dict(parts["objective"])
        self.latest, self.latest_step = point.checkpoint, point.step
        return point.step

    def diverged(self, step: int, loss: float) -> str:
        """The message for a non-finite loss at `step`, after keeping the weights of step - 1 (not yet updated)."""
        good = step - 1
        finite = all(torch.isfinite(p).all() for p in self.network.parameters())
        if good >= 1 and finite and self.latest_step != good:
            try:
                self.save(good)
            except TrainingError as error:
                logger.warning("%s", error)
        if self.latest is not None:
            kept = f"kept the last good checkpoint '{self.latest}' (step {self.latest_step})"
        else:
            kept = "no slider was kept (nothing was learned before it)"
        return f"the loss is {loss} at step {step}; {kept}; lower train.lr or train in fp32/bf16"

    def save_last(self, step: int) -> Path:
        """`{name}_last.safetensors`; when it cannot be written, the slider goes to a fallback path and the error says where."""
        name = self.config.save.name
        last = self.folder / f"{name}_last.safetensors"
        meta = {**self.metadata, "sliders_step": str(step)}
        try:
            self.network.save(last, meta, self.config.save.precision, self.config.save.key_format)
        except OSError as error:
            kept = _save_elsewhere(self.network, f"{name}_last", meta, self.config.save)
            raise TrainingError(f"could not write the final slider '{last}' ({error.strerror or error}); {kept}") from None
        if self.latest is not None:
            _drop_state(self.latest)  # the run is finished: nothing is left to resume
        return last


def _drop_state(checkpoint: Path) -> None:
    for path in state_paths(checkpoint):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _save_elsewhere(network: SliderNetwork, stem: str, metadata: dict, save: SaveConfig) -> str:
    """Save the slider into the temp folder, else the working directory; say where (or that it is lost)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for place in (Path(tempfile.gettempdir()), Path.cwd()):
        path = place / f"{stem}-{stamp}-{os.getpid()}.safetensors"
        try:
            network.save(path, metadata, save.precision, save.key_format)
        except OSError:
            continue
        return f"the slider was saved to '{path}' instead"
    return f"the slider could not be saved anywhere (tried {tempfile.gettempdir()} and {Path.cwd()})"


def check_resume_state(config: Config, point: ResumePoint) -> None:
    """The training state `--resume` continues from, read and loaded into a slider, optimizer and LR
    schedule built for this config on the base model's UNet built on the meta device (layer names and
    shapes from its config, no weights), before the model loads: a truncated or damaged state, or the
    state of another network, is one line now instead of after the load. Where the UNet config cannot
    be read without loading the model (a single file, a hub id out of reach), only the file is read
    here, and `Checkpoints.restore` says the rest."""
    from .convert import meta_unet
    from .models import read_unet_config

    parts = read_state(point)
    unet_config = read_unet_config(config.pretrained_model.name_or_path)
    if unet_config is None:
        return
    # Building the slider draws its initial weights: leave the global generator as it was.
    with torch.random.fork_rng(devices=[]):
        network = SliderNetwork.create(meta_unet(unet_config), network_type=config.network.type,
                                       training_method=config.network.training_method, rank=config.network.rank,
                                       alpha=config.network.alpha)
    optimizer = make_optimizer(config.train.optimizer, network.trainable_parameters(), config.train.lr,
                               config.train.optimizer_args)
    lr_scheduler = make_lr_scheduler(config.train.lr_scheduler, optimizer, config.train.iterations, config.train.lr)
    load_training_state(point, parts, network, optimizer, lr_scheduler, random.Random(), torch.Generator())


def load_training_state(point: ResumePoint, parts: dict, network: SliderNetwork, optimizer, lr_scheduler,
                        rng: random.Random, generator: torch.Generator) -> None:
    """Load a training state's slider, optimizer, schedule and random states into these (the global
    torch state is only checked: the caller sets it). One that does not fit is one whole line."""
    where = f"training state '{point.state_tensors}'"
    saved = parts.get("network")
    differences = _state_differences(saved, network.state_dict()) if isinstance(saved, dict) else ""
    if differences:
        raise InputError(f"{where} holds the slider of another network ({differences}); it was not saved by this "
                         "run; start again with --overwrite")
    try:
        network.load_state_dict(parts["network"])
        optimizer.load_state_dict(parts["optimizer"])
        lr_scheduler.load_state_dict(parts["lr_scheduler"])
        state = parts["python_random"]
        rng.setstate((state[0], tuple(state[1]), state[2]))
        generator.set_state(parts["torch_generator"])
        torch.Generator().set_state(parts["torch_global"])
    except (KeyError, IndexError, TypeError, RuntimeError, ValueError) as error:
        reason = f"no entry {error}" if isinstance(error, KeyError) else " ".join(str(error).split())
        raise InputError(f"{where} does not fit this run ({reason or type(error).__name__}); "
                         "start again with --overwrite") from None


def _state_differences(saved: dict, current: dict) -> str:
    """What keeps a saved slider state from loading into this run's network ('' when nothing does):
    tensors of other shapes, missing or extra, each counted with its first example."""
    reshaped = [key for key in current if key in saved and isinstance(saved[key], torch.Tensor)
                and saved[key].shape != current[key].shape]
    missing = [key for key in current if key not in saved]
    extra = [key for key in saved if key not in current]
    said = []
    if reshaped:
        key = reshaped[0]
        said.append(f"{len(reshaped)} of its {len(current)} tensors have other shapes, e.g. '{key}' is "
                    f"{tuple(saved[key].shape)} where this config needs {tuple(current[key].shape)}")
    if missing:
        said.append(f"{len(missing)} tensors of this config are missing, e.g. '{missing[0]}'")
    if extra:
        said.append(f"{len(extra)} tensors are not in this config, e.g. '{extra[0]}'")
    return ", ".join(said)
