"""Stable Diffusion 1.x and 2.x (epsilon, and 2.x's 768-v v-prediction).

One CLIP text encoder: its last hidden state after the final layer norm (`clip_skip` n takes the
state n layers earlier, normed, as diffusers does), no pooled vector, no added conditioning. SD 2.x
differs from 1.x in the encoder (OpenCLIP ViT-H, `gelu`; 1.x: OpenAI CLIP ViT-L, `quick_gelu`),
linear projections in the UNet's transformers, and 768 px v-prediction for 2.x-768-v. kohya names
these layers by their diffusers paths (`lora_unet_down_blocks_0_attentions_0_...`), which A1111,
Forge and ComfyUI map; there is no LDM naming to write.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .base import Defaults, Family


def _is_sd(unet_config: Mapping[str, Any], pipeline_class: str | None) -> bool:
    if pipeline_class:
        return pipeline_class in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    if "joint_attention_dim" in unet_config:  # a transformer's config (FLUX), not a UNet's
        return False
    return unet_config.get("addition_embed_type") is None and unet_config.get("class_embed_type") is None


def is_sd2_config(unet_config: Mapping[str, Any]) -> bool:
    """SD 2.x UNets: 1024-wide cross-attention (OpenCLIP ViT-H) and linear transformer projections."""
    return unet_config.get("cross_attention_dim") == 1024 or bool(unet_config.get("use_linear_projection"))


# The UNets of stable-diffusion-v1-5 and stable-diffusion-2-1 (the fields that shape their modules).
_SD_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
}
SD1_UNET_CONFIG = {**_SD_UNET, "cross_attention_dim": 768, "attention_head_dim": 8}
SD2_UNET_CONFIG = {**_SD_UNET, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
                   "use_linear_projection": True}


class SDFamily(Family):
    v2: bool = False

    def claims(self, unet_config, pipeline_class=None):
        return _is_sd(unet_config, pipeline_class) and is_sd2_config(unet_config) == self.v2

    def claims_checkpoint(self, keys):
        marker = "cond_stage_model.model." if self.v2 else "cond_stage_model.transformer."
        return any(key.startswith(marker) for key in keys)

    def text_encoders(self, pipe):
        return [pipe.tokenizer], [pipe.text_encoder]

    @torch.no_grad()
    def encode_prompts(self, tokenizers, encoders, prompts, clip_skip=None):
        unique = list(dict.fromkeys(prompts))
        tokenizer, encoder = tokenizers[0], encoders[0]
        device = next(encoder.parameters()).device
        ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        if clip_skip:
            output = encoder(ids, output_hidden_states=True)
            states = encoder.text_model.final_layer_norm(output.hidden_states[-(clip_skip + 1)])
        else:
            states = encoder(ids)[0]  # last hidden state, final layer norm applied
        states = states.float().cpu()  # (N, L, D)
        return {text: (states[i], None) for i, text in enumerate(unique)}

    def pipeline_prompt(self, pipe, prompt, negative_prompt, device, clip_skip=None):
        embeds, negative = pipe.encode_prompt(
            prompt=prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=negative_prompt or None, clip_skip=clip_skip,
        )
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}  # (1, L, D) each

    def preview_pipeline(self, pipe, unet, vae, scheduler):
        return type(pipe)(
            vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )

    def base_model_version(self, v_pred: bool) -> str:
        return self.base_version + ("_v" if v_pred else "")


class SD2Family(SDFamily):
    v2 = True


SD1 = SDFamily(
    name="sd1",
    label="Stable Diffusion 1.x",
    pipeline_class="StableDiffusionPipeline",
    # The official SD 1.x scripts and sampling notebook: 512 px, start_noise 850, guidance 7.5.
    defaults=Defaults(resolution=512, sample_resolution=512, start_noise=850, guidance_scale=7.5, steps=50),
    kohya_ldm_names=False,
    base_version="sd_v1",
    comfyui_checkpoint="v1-5-pruned-emaonly.safetensors",
    hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    unet_config=SD1_UNET_CONFIG,
)

SD2 = SD2Family(
    name="sd2",
    label="Stable Diffusion 2.x",
    pipeline_class="StableDiffusionPipeline",
    defaults=Defaults(resolution=512, sample_resolution=768, start_noise=850, guidance_scale=7.5, steps=50),
    kohya_ldm_names=False,
    base_version="sd_v2",
    comfyui_checkpoint="v2-1_768-ema-pruned.safetensors",
    hub_id="stabilityai/stable-diffusion-2-1",
    unet_config=SD2_UNET_CONFIG,
)
