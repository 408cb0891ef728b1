"""Previews while training: a grid of prompts x seeds at several slider scales every `sample.every` steps.

Built once at setup (`make_previews`), while the text encoders are still loaded: the preview prompts
are encoded then, and a pipeline is assembled from the training UNet (with the slider attached),
the VAE and a copy of the base model's own sampling scheduler, without text encoders.
`Previews.render` generates through `generation.generate` (the `start_noise` switch of
`sliders-sample`, the same starting latents at every step, so grids of different steps compare)
and draws the grid with `grids.make_grid`. The training's random state is left as it was.
No training, no checkpoints here; the trainer decides when to render and writes the files.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .config import SampleConfig
from .distributed import SINGLE, Processes
from .errors import InputError
from .families import Family, family_of_pipe
from .grids import make_grid
from .diffusion import vae_factor
from .network import SliderNetwork
from .generation import generate

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

SAMPLES_FOLDER = "samples"
# What a preview uses where `sample.steps` / `sample.guidance_scale` are not given, on a UNet family
# (fewer steps than sliders-sample's 50: a preview is a glance). FLUX.1 uses its family's own values.
PREVIEW_STEPS, PREVIEW_GUIDANCE = 20, 5.0


def preview_path(folder: str | Path, step: int) -> Path:
    """`samples/step_<N>.png` in the run folder."""
    return Path(folder) / SAMPLES_FOLDER / f"step_{step}.png"


def preview_settings(settings: SampleConfig, family: Family) -> SampleConfig:
    """`settings` with `steps` and `guidance_scale` filled in where the config leaves them out: 20 and
    5.0 on a UNet family; on a flow model (FLUX.1) its sampling steps and guidance embedding (30, 3.5),
    what `sliders-sample` uses there (classifier-free guidance of 5 means nothing to it)."""
    flow = family.flow_matching
    steps = settings.steps if settings.steps is not None else (family.defaults.steps if flow else PREVIEW_STEPS)
    guidance = settings.guidance_scale
    if guidance is None:
        guidance = family.defaults.guidance_scale if flow else PREVIEW_GUIDANCE
    return dataclasses.replace(settings, steps=steps, guidance_scale=guidance)


def encode_preview_prompts(pipe, prompts: Sequence[str], device: torch.device, clip_skip: int | None = None) -> dict:
    """{prompt: the pipeline's embedding arguments}, computed by the pipeline's own `encode_prompt` on
    `device` (where its text encoders must be), kept on the CPU. The negative embeddings are the
    pipeline's for no negative prompt (zeros for SDXL), as `sliders-sample` uses."""
    family = family_of_pipe(pipe)
    encoded = {}
    with torch.no_grad():
        for prompt in dict.fromkeys(prompts):
            arguments = family.pipeline_prompt(pipe, prompt, None, device, clip_skip)
            encoded[prompt] = {name: tensor.cpu() for name, tensor in arguments.items()}
    return encoded


@dataclass
class Previews:
    """What a preview needs: its settings, a text-encoder-free pipeline, the slider and the encoded prompts."""

    settings: SampleConfig
    pipe: Any
    network: SliderNetwork
    prompts: tuple[str, ...]
    encoded: dict
    resolution: int
    device: torch.device
    name: str = "slider"

    def due(self, step: int, total: int) -> bool:
        """Every `sample.every` steps, and at the last step."""
        every = self.settings.every
        return every > 0 and (step % every == 0 or step == total)

    def render(self, processes: Processes = SINGLE) -> "Image.Image | None":
        """The grid (columns: scales, rows: prompt and seed) on the main process; None on the others.

        With several processes the images are split across them (`generate`). The VAE visits the
        device only for the preview (a text slider keeps it on the CPU otherwise).
        """
        vae = self.pipe.vae
        home = next(vae.parameters()).device
        forked = [self.device.index or 0] if self.device.type == "cuda" else []
        # Nothing in generation should draw from the global generators, but a preview must not be
        # able to change the training: their state is put back afterwards.
        with torch.random.fork_rng(devices=forked):
            vae.to(self.device)
            try:
                samples = generate(
                    self.pipe,
                    [self.network],
                    [self.settings.scales],
                    self.prompts,
                    self.settings.seeds,
                    start_noise=self.settings.start_noise,
                    steps=self.settings.steps,
                    guidance_scale=self.settings.guidance_scale,
                    height=self.resolution,
                    width=self.resolution,
                    encoded=self.encoded,
                    processes=processes,
                )
            finally:
                vae.to(home)
        return make_grid(samples, [self.name]) if processes.is_main else None


def make_previews(
    settings: SampleConfig,
    pipe,
    unet: torch.nn.Module,
    network: SliderNetwork,
    default_prompts: Sequence[str],
    resolution: int,
    device: torch.device,
    *,
    encoded: dict | None = None,
    clip_skip: int | None = None,
    name: str = "slider",
) -> Previews | None:
    """Previews for a run, or None when `settings.every` is 0.

    `default_prompts` are used when the settings give none; `resolution` when the settings give none
    (the training resolution); steps and guidance as `preview_settings` fills them in. `encoded`
    (from `encode_preview_prompts`) saves encoding them here, which needs `pipe`'s text encoders on
    `device`.
    """
    if settings.every <= 0:
        return None
    family = family_of_pipe(pipe)
    settings = preview_settings(settings, family)
    prompts = tuple(settings.prompts) or tuple(default_prompts)
    size = settings.resolution or resolution
    multiple = math.lcm(8, family.pixel_multiple(vae_factor(pipe.vae)))  # FLUX: 2x2 patches
    if size % multiple:
        raise InputError(f"config key 'sample.resolution' is {size}, but this model's images need a multiple of "
                         f"{multiple}; pick e.g. {max(multiple, size // multiple * multiple)}")
    if encoded is None:
        encoded = encode_preview_prompts(pipe, prompts, device, clip_skip)
    vae = pipe.vae
    if vae.dtype != unet.dtype:
        # An image slider keeps its VAE in fp32 for encoding; the pipeline decodes in the UNet's dtype.
        vae = copy.deepcopy(vae).to("cpu", unet.dtype)
    # The model's sampling scheduler, not the training one.
    preview_pipe = family.preview_pipeline(pipe, unet, vae, copy.deepcopy(pipe.scheduler))
    preview_pipe.set_progress_bar_config(disable=True)
    logger.info("previews every %d steps: %d prompts x %d seeds at scales %s, %d px, %d steps, guidance %g",
                settings.every, len(prompts), len(settings.seeds), list(settings.scales), size, settings.steps,
                settings.guidance_scale)
    return Previews(settings, preview_pipe, network, prompts, encoded, size, device, name)
