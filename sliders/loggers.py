"""Training logs: the optional TensorBoard and Weights & Biases scalars and preview images of a run.

`Loggers` writes the loss and learning rate of each step, and the preview grids, to whichever of the
two the config's `logging` section asks for (each an optional package, imported only then); on any
process but the main one of a multi-process run, and when neither is asked for, it does nothing.
Console progress and `stats.json` are the loop's (`sliders.trainer`, `sliders.stats`).
"""

from __future__ import annotations

from pathlib import Path

from .config import Config, config_to_dict
from .packages import import_optional


class Loggers:
    """Optional TensorBoard and Weights & Biases scalars; silent when neither is configured."""

    def __init__(self, config: Config, folder: Path, enabled: bool = True):
        self.writer = None
        self.wandb = None
        if not enabled:  # a process other than the main one of a multi-process run
            return
        if config.logging.tensorboard_dir:
            tensorboard = import_optional("torch.utils.tensorboard", "tensorboard", "logging.tensorboard_dir")
            self.writer = tensorboard.SummaryWriter(config.logging.tensorboard_dir)
        if config.logging.use_wandb:
            self.wandb = import_optional("wandb", "wandb", "logging.use_wandb")
            self.wandb.init(project="sliders", name=config.save.name, config=config_to_dict(config), dir=str(folder))

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def image(self, step: int, name: str, image) -> None:
        """A PIL image (a preview grid) to TensorBoard and Weights & Biases."""
        if self.writer is not None:
            import numpy as np

            self.writer.add_image(name, np.asarray(image.convert("RGB")), step, dataformats="HWC")
        if self.wandb is not None:
            self.wandb.log({name: self.wandb.Image(image)}, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
