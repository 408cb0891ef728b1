"""A full-size Stable-Diffusion-1.5-architecture pipeline with random weights, and a timed text slider on it.

`build_random_sd15(folder)` writes a diffusers folder that `sliders.models.load_pipeline` loads like
real SD 1.5 weights: the UNet of `sliders.families.sd.SD1_UNET_CONFIG` (stable-diffusion-v1-5's), its
CLIP ViT-L text encoder shape (768 wide, 12 layers, quick_gelu), the SD autoencoder (the same network
as SDXL's, scaling factor 0.18215), PNDM, and the small local tokenizer of `random_sdxl`.

`python benchmarks/random_sd15.py --out DIR [--iterations 20]` builds it in DIR/model and trains the
paper's text slider on it (c3lier, noxattn, rank 4, bf16, 512 px, 50 denoising steps) for a few
iterations, then prints the run's stats.json (seconds per phase, UNet samples, peak memory).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.random_sdxl import VAE_CONFIG, _text_config, make_tokenizer  # noqa: E402
from sliders.families.sd import SD1_UNET_CONFIG  # noqa: E402

TEXT_ENCODER_CONFIG = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                           max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, vocab_size=49408)


def build_random_sd15(folder: Path, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = make_tokenizer()
    with torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD1_UNET_CONFIG).to(dtype)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**{**VAE_CONFIG, "scaling_factor": 0.18215}).to(dtype)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(_text_config(TEXT_ENCODER_CONFIG, tokenizer)).to(dtype)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args(argv)
    out = Path(args.out)
    model = build_random_sd15(out / "model")
    prompts = out / "prompts.yaml"
    prompts.write_text('- target: "person"\n  positive: "old person"\n  unconditional: "young person"\n'
                       "  guidance_scale: 4\n  resolution: 512\n", encoding="utf-8")
    config = out / "config.yaml"
    config.write_text(f'prompts_file: "{prompts}"\npretrained_model:\n  name_or_path: "{model}"\n'
                      f"train:\n  precision: bf16\n  iterations: {args.iterations}\n"
                      f'save:\n  name: bench\n  path: "{out / "models"}"\n  per_steps: 1000\n', encoding="utf-8")
    from sliders.cli import train_main

    code = train_main(["--config", str(config)])
    stats = next((out / "models").rglob("stats.json"))
    print(json.dumps(json.loads(stats.read_text()), indent=1))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
