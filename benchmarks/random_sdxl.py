"""A full-size SDXL-base-1.0-architecture pipeline with random weights, for benchmarks without downloads.

`build_random_sdxl(folder)` writes a diffusers folder (safetensors) that `sliders.models.load_pipeline`
loads like real SDXL: same UNet, VAE, text encoders and scheduler configs as the published base
model, default (random, finite) initialisation, and a small local CLIP BPE tokenizer from
`sliders.tiny.write_tokenizer` (its ids are far below 49408, so the full-size encoders accept them).
`small=True` writes the tiny test model of `sliders.tiny` instead, for CPU runs.

Run as a script: `python benchmarks/random_sdxl.py --count` builds every full-size module on the
meta device (no memory, no weights) and prints its parameter count; `--build DIR` writes a model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sliders.tiny import DEFAULT_WORDS, build_tiny_pipeline, write_tokenizer  # noqa: E402

# Words the benchmark prompts use, so each encodes as one token.
BENCH_WORDS = tuple(DEFAULT_WORDS) + ("person", "old", "young")

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (every field spelled out).
UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=False,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=2048,
    transformer_layers_per_block=(1, 2, 10),
    encoder_hid_dim=None,
    encoder_hid_dim_type=None,
    attention_head_dim=(5, 10, 20),
    num_attention_heads=None,
    dual_cross_attention=False,
    use_linear_projection=True,
    class_embed_type=None,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    num_class_embeds=None,
    upcast_attention=False,
    resnet_time_scale_shift="default",
    resnet_skip_time_act=False,
    resnet_out_scale_factor=1.0,
    time_embedding_type="positional",
    time_embedding_dim=None,
    time_embedding_act_fn=None,
    timestep_post_act=None,
    time_cond_proj_dim=None,
    conv_in_kernel=3,
    conv_out_kernel=3,
    # 1280 (pooled text embedding of encoder 2) + 6 time ids * 256.
    projection_class_embeddings_input_dim=2816,
    class_embeddings_concat=False,
    mid_block_only_cross_attention=None,
    cross_attention_norm=None,
    addition_embed_type_num_heads=64,
)

# vae/config.json of the base model.
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)

# text_encoder/config.json: OpenAI CLIP ViT-L/14 text tower (CLIPTextModel).
TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_range=0.02,
    initializer_factor=1.0,
)

# text_encoder_2/config.json: OpenCLIP ViT-bigG/14 text tower with projection (CLIPTextModelWithProjection).
TEXT_ENCODER_2_CONFIG = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    projection_dim=1280,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_range=0.02,
    initializer_factor=1.0,
)

# scheduler/scheduler_config.json (the fields EulerDiscreteScheduler takes).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    trained_betas=None,
    prediction_type="epsilon",
    interpolation_type="linear",
    use_karras_sigmas=False,
    timestep_spacing="leading",
    steps_offset=1,
)

# Published parameter counts of SDXL base 1.0, to check the configs above against.
EXPECTED_PARAMETERS = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}


def make_tokenizer(words=BENCH_WORDS):
    """A small CLIP BPE tokenizer (written to a temporary folder and loaded back)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer(Path(folder), words)
        return CLIPTokenizer.from_pretrained(folder)


def _text_config(fields: dict, tokenizer=None):
    from transformers import CLIPTextConfig

    special = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    if tokenizer is not None:
        # Pool at the tokenizer's real end-of-text id (CLIP pools the hidden state at the first EOS).
        special = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    return CLIPTextConfig(**fields, **special)


def build_modules(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0, tokenizer=None
):
    """The four full-size networks (unet, vae, text_encoder, text_encoder_2), made on `device`.

    On the meta device nothing is allocated (for counting parameters). Elsewhere each module is
    initialised in float32 (the libraries' default initialisers) and then cast to `dtype`.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    device = torch.device(device)
    real = device.type != "meta"
    modules = {}
    builders = {
        "unet": lambda: UNet2DConditionModel(**UNET_CONFIG),
        "vae": lambda: AutoencoderKL(**VAE_CONFIG),
        "text_encoder": lambda: CLIPTextModel(_text_config(TEXT_ENCODER_CONFIG, tokenizer)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(_text_config(TEXT_ENCODER_2_CONFIG, tokenizer)),
    }
    for offset, (name, build) in enumerate(builders.items()):
        if real:
            torch.manual_seed(seed + offset)
        with torch.device(device):
            module = build()
        if real:
            module = module.to(dtype)
        modules[name] = module.eval()
    return modules


def count_parameters(modules: dict) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}


def full_size_parameter_counts() -> dict[str, int]:
    """Parameter counts of the full-size modules, built on the meta device (instant, no memory)."""
    return count_parameters(build_modules("meta"))


def build_full_pipeline(device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A StableDiffusionXLPipeline with SDXL-base-1.0 architecture and random weights."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = make_tokenizer()
    modules = build_modules(device, dtype, seed, tokenizer)
    for name, module in modules.items():
        bad = [n for n, p in module.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise RuntimeError(f"random {name} has non-finite weights in {bad[:3]}")
    return StableDiffusionXLPipeline(
        vae=modules["vae"],
        text_encoder=modules["text_encoder"],
        text_encoder_2=modules["text_encoder_2"],
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=modules["unet"],
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
    )


def build_random_sdxl(
    folder: str | os.PathLike,
    *,
    small: bool = False,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a random-weight SDXL pipeline to `folder` (diffusers layout, safetensors) and return it.

    Full size: built on CUDA when available (else the CPU), in bf16 unless `dtype` says otherwise.
    `small=True`: the tiny SDXL-shaped test model of `sliders.tiny` (float32, CPU), for CPU runs.
    The folder is written under a temporary name and renamed into place, so a half-written model
    is never mistaken for a finished one.
    """
    folder = Path(folder).expanduser().resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        with torch.no_grad():
            if small:
                pipe = build_tiny_pipeline(BENCH_WORDS, seed=seed)
            else:
                if device is None:
                    device = "cuda" if torch.cuda.is_available() else "cpu"
                pipe = build_full_pipeline(device, dtype or torch.bfloat16, seed)
        pipe.save_pretrained(staging, safe_serialization=True)
        del pipe
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", action="store_true", help="print full-size parameter counts (meta device)")
    parser.add_argument("--build", metavar="DIR", help="write a random model to DIR")
    parser.add_argument("--small", action="store_true", help="with --build: the tiny CPU model")
    parser.add_argument("--device", default=None, help="with --build: where to initialise (default cuda if present)")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.count and not args.build:
        parser.error("give --count and/or --build DIR")
    if args.count:
        counts = full_size_parameter_counts()
        for name, count in counts.items():
            expected = EXPECTED_PARAMETERS[name]
            mark = "ok" if count == expected else f"MISMATCH (expected {expected:,})"
            print(f"{name:15s} {count:>15,d}  {mark}")
        print(f"{'total':15s} {sum(counts.values()):>15,d}")
    if args.build:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
        start = time.perf_counter()
        path = build_random_sdxl(args.build, small=args.small, seed=args.seed, device=args.device, dtype=dtype)
        print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
