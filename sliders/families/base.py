"""The family interface: what a model family decides, with the behaviour most UNet families share.

A `Family` answers every family-specific question the rest of the package asks: which diffusers
pipeline class loads it, whether a UNet config or a checkpoint's keys belong to it, how prompts
become conditioning (text embeddings, a pooled vector, added time ids), how UIs name its layers in
slider files, and the defaults a user of that family expects. It holds no model; it is asked with
one. Families are module-level singletons (`sliders.families.FAMILIES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch


@dataclass(frozen=True)
class Defaults:
    """What a user of the family expects where they give nothing."""

    resolution: int  # training resolution (px)
    sample_resolution: int  # sampling/editing resolution when the slider records none
    start_noise: int  # the slider is off while the timestep is above this (of 1000)
    guidance_scale: float  # classifier-free guidance when sampling
    steps: int  # sampling steps
    vae_factor: int = 8  # pixels per latent cell of the family's VAE, for a model whose VAE config is not at hand


@dataclass(frozen=True)
class Family:
    """One family of base models. Subclasses override what differs; see `sliders.families` for how to add one."""

    name: str  # config value of `pretrained_model.family`, recorded as the slider's `sliders_family`
    label: str  # for messages
    pipeline_class: str  # the diffusers pipeline class that loads it
    defaults: Defaults
    kohya_ldm_names: bool  # kohya's naming uses LDM module paths (SDXL) rather than diffusers paths (SD 1.x/2.x)
    base_version: str  # kohya's `ss_base_model_version` (epsilon); `_v` is added for v-prediction where kohya does
    comfyui_checkpoint: str  # the checkpoint name a ComfyUI workflow starts from
    hub_id: str  # the model a diffusers snippet loads when the slider records none
    unet_config: Mapping[str, Any]  # the shape-giving UNet config of the family's reference model (layer names
    # of files that record no base model, and the interop tests' full-size layout)

    flow_matching = False  # a flow-matching transformer (FLUX) rather than a UNet on a DDPM schedule

    # ---------------------------------------------------------------- detection

    def claims(self, unet_config: Mapping[str, Any], pipeline_class: str | None = None) -> bool:
        """Whether a model with this UNet config (and, when known, this pipeline class) is of this family."""
        raise NotImplementedError

    def claims_checkpoint(self, keys: Sequence[str]) -> bool:
        """Whether a single-file (LDM/SGM layout) checkpoint with these tensor names is of this family."""
        raise NotImplementedError

    def pixel_multiple(self, vae_factor: int) -> int:
        """What an image's height and width must be a multiple of, for a VAE of `vae_factor` pixels per
        latent cell: whole cells (UNet families; their pipelines also want multiples of 8)."""
        return vae_factor

    def pipeline_type(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    # ---------------------------------------------------------------- the denoiser

    def denoiser(self, pipe):
        """The pipeline's denoising model (the UNet; FLUX: the transformer)."""
        return pipe.unet

    def predict(self, model, latents: torch.Tensor, timestep: torch.Tensor, cond, guidance: float | None = None
                ) -> torch.Tensor:
        """The denoiser's prediction for latents (B, C, h, w); `guidance` is a guidance embedding (FLUX-dev),
        unused by UNet families, which call `sliders.models.predict_noise`."""
        from ..diffusion import predict_noise

        return predict_noise(model, latents, timestep, cond)

    def target_modules(self, model, network_type: str, training_method: str):
        """The (dotted name, layer) pairs a network type and training method wrap (`sliders.targets`)."""
        from ..targets import select_targets

        return select_targets(model, network_type, training_method)

    # ---------------------------------------------------------------- prompts and conditioning

    def text_encoders(self, pipe) -> tuple[list, list]:
        """(tokenizers, text encoders) of a loaded pipeline, in the order `encode_prompts` takes them."""
        raise NotImplementedError

    def encode_prompts(self, tokenizers: Sequence, encoders: Sequence, prompts: Sequence[str],
                       clip_skip: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """{prompt: (embeds (L, D), pooled (P,) or None)} for every distinct prompt, float32 on the CPU."""
        raise NotImplementedError

    def time_ids(self, height: int, width: int, crop: tuple[int, int] = (0, 0),
                 original: tuple[int, int] | None = None) -> torch.Tensor | None:
        """The added time ids of one image (SDXL's six), or None where the family has none."""
        return None

    def pipeline_prompt(self, pipe, prompt: str, negative_prompt: str | None, device, clip_skip: int | None = None
                        ) -> dict[str, torch.Tensor]:
        """The pipeline's own prompt encoding, as the keyword arguments its `__call__` takes
        (`prompt_embeds`, `negative_prompt_embeds`, and the pooled ones where the family has them)."""
        raise NotImplementedError

    def preview_pipeline(self, pipe, unet, vae, scheduler):
        """A copy of `pipe` without text encoders, for sampling from precomputed embeddings."""
        raise NotImplementedError

    # ---------------------------------------------------------------- files

    def base_model_version(self, v_pred: bool) -> str:
        return self.base_version
