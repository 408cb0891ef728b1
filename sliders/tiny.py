"""Built-in tiny models: pipelines of each supported family with random weights, made locally.

`builtin:tiny-sdxl` has every part real SDXL has (two CLIP text encoders and tokenizers, a UNet with "text_time"
added conditioning, a KL autoencoder, a scheduler) at a size that runs on a CPU in seconds, so the
whole training and sampling loop can be shown and tested without downloads. It is saved as a
diffusers folder and loaded back through the same function as real SDXL weights. It learns nothing
meaningful: real sliders need real SDXL weights.

`builtin:tiny-sdxl-vpred` is the same with the schedule of SDXL v-prediction fine-tunes
(v-prediction, zero terminal SNR, trailing timesteps).

`builtin:tiny-sd1` (epsilon) and `builtin:tiny-sd2v` (v-prediction, 768-v style) are the same for
SD 1.x and 2.x: one CLIP text encoder, a UNet without added conditioning, the scheduler their real
counterparts ship (PNDM for SD 1.5, DDIM v-prediction for SD 2.1). The SD 2 one has what tells the
families apart in real weights: linear projections in the UNet's transformers and a `gelu` text
encoder (OpenCLIP) where SD 1.x has `quick_gelu` (OpenAI CLIP).

`builtin:tiny-flux` is FLUX.1-dev-shaped: a FluxTransformer2DModel (two double-stream and two
single-stream blocks, guidance embedding), a CLIP text encoder for the pooled vector, a T5 encoder
for the sequence (its Unigram tokenizer is written locally, like the CLIP one), a 16-channel KL
autoencoder and FLUX-dev's flow-matching Euler scheduler (dynamic shift).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)

TINY_VERSION = "1"

# Words the tiny tokenizer knows as whole tokens; anything else falls back to characters.
DEFAULT_WORDS = (
    "a photo of person man woman male female old young smiling smile face portrait detailed blurry "
    "small large big tiny medium red green blue yellow circle square triangle shape picture image "
    "high quality low dog cat car house tree with the and"
).split()


def cache_root() -> Path:
    """Where built-in models live: $SLIDERS_HOME, else ~/.cache/sliders."""
    return Path(os.environ.get("SLIDERS_HOME", Path.home() / ".cache" / "sliders"))


def write_tokenizer(folder: Path, words: Iterable[str], model_max_length: int = 77) -> None:
    """A CLIP BPE tokenizer whose vocabulary is the letters plus the given whole words.

    Each word gets the merges that build it from its letters left to right, so it encodes as one
    token; other text still encodes, letter by letter.
    """
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!'-")
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for token in ["<|startoftext|>", "<|endoftext|>"]:
        add(token)
    for letter in letters:
        add(letter)
        add(letter + "</w>")
    merges: list[str] = []
    for word in dict.fromkeys(w.lower() for w in words):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merge = f"{current} {piece}"
            if merge not in merges:
                merges.append(merge)
            current = current + piece
            add(current)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "model_max_length": model_max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}), encoding="utf-8"
    )


def _tokenizer(words: Iterable[str]):
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer(Path(folder), words)
        return CLIPTokenizer.from_pretrained(folder)


def _unet(sample_size: int, **family):
    """The tiny UNet's blocks, with the family's conditioning fields."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        norm_num_groups=16,
        **family,
    )


def _vae(sample_size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=sample_size * 2,
    )


def _text_config(vocab_size: int, hidden_size: int = 32, hidden_act: str = "gelu"):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=3,
        vocab_size=vocab_size,
        hidden_act=hidden_act,
        projection_dim=32,
    )


def build_tiny_pipeline(words: Iterable[str] = DEFAULT_WORDS, seed: int = 0, *, sample_size: int = 32,
                        v_pred: bool = False):
    """A StableDiffusionXLPipeline with tiny random weights, deterministic from `seed`. With `v_pred`,
    scheduled as SDXL v-prediction fine-tunes are: v-prediction, zero terminal SNR, trailing timesteps."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = _tokenizer(words)
    torch.manual_seed(seed)
    unet = _unet(sample_size, use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                 transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=8 * 6 + 32,
                 cross_attention_dim=64)
    torch.manual_seed(seed + 1)
    vae = _vae(sample_size)
    text_config = _text_config(len(tokenizer))
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config)
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="trailing" if v_pred else "leading",
        **({"prediction_type": "v_prediction", "rescale_betas_zero_snr": True} if v_pred else {}),
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )


def build_tiny_sd_pipeline(v2: bool = False, words: Iterable[str] = DEFAULT_WORDS, seed: int = 0, *,
                           sample_size: int = 32):
    """A StableDiffusionPipeline with tiny random weights: SD 1.x-shaped (epsilon, PNDM), or with
    `v2` SD 2.x-768-v-shaped (linear projections, `gelu` encoder, DDIM with v-prediction)."""
    import torch
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer = _tokenizer(words)
    torch.manual_seed(seed)
    unet = _unet(sample_size, use_linear_projection=v2, cross_attention_dim=48 if v2 else 32)
    torch.manual_seed(seed + 1)
    vae = _vae(sample_size)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer), 48 if v2 else 32, "gelu" if v2 else "quick_gelu"))
    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if v2:
        scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                  prediction_type="v_prediction", **betas)
    else:
        scheduler = PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, **betas)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def t5_tokenizer(words: Iterable[str], model_max_length: int = 32):
    """A T5 tokenizer (Unigram, sentencepiece-style `▁` word starts) whose vocabulary is the letters plus
    the given whole words; other text encodes letter by letter. Built with the tokenizers library: no download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!'-")
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + w, -1.0) for w in dict.fromkeys(w.lower() for w in words)] + [(c, -5.0) for c in letters]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save(f"{folder}/tokenizer.json")
        return T5TokenizerFast(tokenizer_file=f"{folder}/tokenizer.json", eos_token="</s>", unk_token="<unk>",
                               pad_token="<pad>", extra_ids=0, model_max_length=model_max_length)


def build_tiny_flux_pipeline(words: Iterable[str] = DEFAULT_WORDS, seed: int = 0):
    """A FluxPipeline with tiny random weights, FLUX.1-dev-shaped (guidance embedding, dynamic-shift
    flow-matching schedule), deterministic from `seed`."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = _tokenizer(words)
    tokenizer_2 = t5_tokenizer(words)
    torch.manual_seed(seed)
    # Rotary axes must sum to the head dim; in_channels = 16 latent channels x 2x2 patches.
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=16, norm_num_groups=16,
        sample_size=64, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    torch.manual_seed(seed + 3)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


TINY_BUILDERS = {
    "tiny-sdxl": lambda: build_tiny_pipeline(),
    "tiny-sdxl-vpred": lambda: build_tiny_pipeline(v_pred=True),
    "tiny-sd1": lambda: build_tiny_sd_pipeline(v2=False),
    "tiny-sd2v": lambda: build_tiny_sd_pipeline(v2=True),
    "tiny-flux": lambda: build_tiny_flux_pipeline(),
}


def ensure_tiny_model(root: Path | None = None, kind: str = "tiny-sdxl") -> Path:
    """The folder of a built-in tiny model (`TINY_BUILDERS`), built on first use (atomically) and reused after."""
    folder = (root or cache_root()) / f"{kind}-v{TINY_VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building the built-in %s model in %s", kind, folder)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
    try:
        TINY_BUILDERS[kind]().save_pretrained(staging)
        try:
            os.replace(staging, folder)
        except OSError:
            # Another process finished first; its copy is identical.
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder
