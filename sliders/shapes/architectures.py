"""The shapes models' architectures: tokenizer, text encoders, autoencoder, denoisers and schedulers.

Three families share one autoencoder recipe and one vocabulary. `sdxl` has every part of SDXL (two
CLIP text encoders sharing one tokenizer, a KL autoencoder, a "text_time" UNet, an Euler
scheduler), so the package's slider training and sampling run on it unchanged. `sd1` has SD 1.x's
shape: one CLIP text encoder as wide as SDXL's two, whose last state after the final layer norm
conditions a UNet without added conditioning. `flux` is FLUX.1-shaped: a FluxTransformer2DModel
(double- and single-stream blocks, rotary positions, 2x2-packed latent tokens) conditioned on
CLIP's pooled output and a T5 encoder's states, with FLUX.1-schnell's unshifted flow-matching
schedule and no guidance embedding. Its latents have the shapes autoencoder's 4 channels (the
transformer takes 4 x 2x2 = 16 features per token) where a real FLUX has 16-channel latents.

Every `make_*` seeds torch itself and returns an untrained module; nothing here trains or renders.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sliders.shapes.world import PALETTE, SHAPES, SIZE_WORDS

RESOLUTION = 64
FAMILIES = ("sdxl", "sd1", "flux")
COLOURS: tuple[str, ...] = tuple(PALETTE)

# Whole-word tokens. Beyond the caption words, a few spare size words users may write in slider
# prompts; the model never sees them in training, so they only tokenize cleanly.
VOCABULARY: tuple[str, ...] = ("a", *SIZE_WORDS, *COLOURS, *SHAPES, "big", "tiny", "bigger", "smaller", "shape")

# Text encoders: width 64 each, so the UNet's cross-attention sees 64 + 64 features per token.
TEXT_HIDDEN = 64
TEXT_LAYERS = 2
TEXT_PROJECTION = 64
TIME_EMBED_DIM = 8
SDXL_TIME_IDS = (RESOLUTION, RESOLUTION, 0, 0, RESOLUTION, RESOLUTION)

# The training noise schedule, the same as SD/SDXL and as `sliders.models.make_scheduler`.
BETA_START, BETA_END, TRAIN_TIMESTEPS = 0.00085, 0.012, 1000


def make_tokenizer(folder: Path):
    """The CLIP tokenizer over `VOCABULARY`, written to and loaded from `folder`."""
    from transformers import CLIPTokenizer

    from sliders.tiny import write_tokenizer

    write_tokenizer(folder, VOCABULARY)
    return CLIPTokenizer.from_pretrained(str(folder))


def make_text_encoders(vocab_size: int, seed: int, family: str = "sdxl"):
    """(CLIPTextModel, CLIPTextModelWithProjection), seeded and in eval mode; for `sd1`, one
    CLIPTextModel as wide as SDXL's two together (the UNet's cross-attention sees as many features)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    hidden = 2 * TEXT_HIDDEN if family == "sd1" else TEXT_HIDDEN
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_PROJECTION,
        # Token ids of `write_tokenizer`: start 0, end (also pad) 1; the pooled output is read at
        # the first end token.
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    first = CLIPTextModel(config).eval()
    if family == "sd1":
        return (first,)
    torch.manual_seed(seed + 1)
    second = CLIPTextModelWithProjection(config).eval()
    return first, second


# FLUX architecture: 4 heads of 32 (rotary axes 8 + 12 + 12 = 32), two double-stream and four
# single-stream blocks; T5 prompts of at most FLUX_TEXT_TOKENS tokens.
FLUX_HEADS, FLUX_HEAD_DIM, FLUX_DOUBLE, FLUX_SINGLE = 4, 32, 2, 4
FLUX_ROPE = (8, 12, 12)
FLUX_TEXT_TOKENS = 32
T5_WIDTH = 64


def make_t5(vocab_size: int, seed: int):
    """A frozen random T5 encoder (the FLUX family's sequence conditioning), seeded, in eval mode."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=T5_WIDTH, d_kv=16, d_ff=4 * T5_WIDTH, num_layers=TEXT_LAYERS, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).eval()


def make_transformer(seed: int):
    """A FLUX.1-shaped transformer on 16x16x4 latents (8x8 tokens of 16 features), no guidance embedding."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=FLUX_DOUBLE, num_single_layers=FLUX_SINGLE,
        attention_head_dim=FLUX_HEAD_DIM, num_attention_heads=FLUX_HEADS, joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=TEXT_HIDDEN, guidance_embeds=False, axes_dims_rope=FLUX_ROPE,
    )


def make_flow_scheduler():
    """FLUX.1-schnell's sampling schedule: flow-matching Euler, no shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=TRAIN_TIMESTEPS, shift=1.0, use_dynamic_shifting=False)


def make_vae(seed: int):
    """A three-level KL autoencoder: 64x64x3 pixels <-> 16x16x4 latents (factor 4)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=RESOLUTION,
    )


def make_unet(seed: int, family: str = "sdxl"):
    """An SDXL-shaped UNet on 16x16x4 latents: "text_time" added conditioning, linear projections;
    for `sd1` the same blocks shaped as SD 1.x's: no added conditioning, convolutional projections.

    One layer per block keeps it at ~4M parameters and ~350 modules: small on disk, and a tiny
    model on a GPU is bound by kernel launches, so depth costs time more than width does.
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(64, 96, 96),
        layers_per_block=1,
        # Diffusers' legacy name: this is the number of heads per block (32 features each).
        attention_head_dim=(2, 3, 3),
        transformer_layers_per_block=1,
        norm_num_groups=32,
        cross_attention_dim=2 * TEXT_HIDDEN,
        **(dict(use_linear_projection=False) if family == "sd1" else dict(
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_PROJECTION,
        )),
    )


def make_scheduler():
    """The sampling scheduler saved with the pipeline: SDXL's Euler with the training betas."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        num_train_timesteps=TRAIN_TIMESTEPS,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )

