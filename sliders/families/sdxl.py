"""Stable Diffusion XL and its fine-tunes (epsilon or v-prediction, base or few-step).

Two CLIP text encoders whose penultimate states are concatenated, the second's projected pooled
output, and six added time ids (original size, crop top-left, target size) through the UNet's
"text_time" added embedding. kohya names SDXL layers by their LDM/SGM paths (`input_blocks_4_1_...`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..config import DEFAULT_START_NOISE
from ..formats import SDXL_BASE_UNET_CONFIG
from .base import Defaults, Family


class SDXLFamily(Family):
    def claims(self, unet_config: Mapping[str, Any], pipeline_class: str | None = None) -> bool:
        if pipeline_class:
            return pipeline_class.startswith("StableDiffusionXL")
        return unet_config.get("addition_embed_type") == "text_time"

    def claims_checkpoint(self, keys: Sequence[str]) -> bool:
        return any(key.startswith("conditioner.embedders.1.") for key in keys)

    def text_encoders(self, pipe) -> tuple[list, list]:
        return [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2]

    def encode_prompts(self, tokenizers, encoders, prompts, clip_skip=None):
        from ..diffusion import encode_prompts

        return encode_prompts(tokenizers, encoders, prompts, clip_skip)

    def time_ids(self, height, width, crop=(0, 0), original=None):
        from ..diffusion import time_ids

        return time_ids(height, width, crop, original)

    def pipeline_prompt(self, pipe, prompt, negative_prompt, device, clip_skip=None):
        # An empty negative prompt is passed as None: SDXL then uses zero embeddings
        # (force_zeros_for_empty_prompt), as a plain pipeline call without one does.
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=negative_prompt or None, clip_skip=clip_skip,
        )
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative,  # (1, L, D1 + D2)
                "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}  # (1, P)

    def preview_pipeline(self, pipe, unet, vae, scheduler):
        return type(pipe)(
            vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
            scheduler=scheduler, force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt,
            add_watermarker=getattr(pipe, "watermark", None) is not None,
        )

    def base_model_version(self, v_pred: bool) -> str:
        return "sdxl_base_v1-0_v" if v_pred else self.base_version


SDXL = SDXLFamily(
    name="sdxl",
    label="Stable Diffusion XL",
    pipeline_class="StableDiffusionXLPipeline",
    defaults=Defaults(resolution=512, sample_resolution=1024, start_noise=DEFAULT_START_NOISE, guidance_scale=5.0, steps=50),
    kohya_ldm_names=True,
    base_version="sdxl_base_v1-0",
    comfyui_checkpoint="sd_xl_base_1.0.safetensors",
    hub_id="stabilityai/stable-diffusion-xl-base-1.0",
    unet_config=SDXL_BASE_UNET_CONFIG,
)
