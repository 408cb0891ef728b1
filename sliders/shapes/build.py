"""Build a shapes-world model: train it and save it as an SDXL, SD 1.x or FLUX.1 pipeline folder.

`build_shapes_model` (and `python -m sliders.shapes.build`) renders a pool of scenes, trains the
autoencoder on them (or reuses one with `vae_from`), measures its latent scale, trains the UNet (or
FLUX transformer) on those latents conditioned exactly as ``sliders.models`` conditions the
family, and saves the pipeline with a `BUILD.json` record. The parts live in ``architectures``
(the model recipe), ``training_data`` (the rendered pool and the captions) and ``fitting`` (the
training loops); their names are importable from here too. Not here: drawing or captioning single
scenes (``world``), measuring images (``measure``), or judging the finished model (``quality``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sliders.errors import InputError
from sliders.shapes.architectures import (
    COLOURS,
    FAMILIES,
    FLUX_TEXT_TOKENS,
    RESOLUTION,
    VOCABULARY,
    make_flow_scheduler,
    make_scheduler,
    make_t5,
    make_text_encoders,
    make_tokenizer,
    make_transformer,
    make_unet,
    make_vae,
)
from sliders.shapes.fitting import MIN_SNR_GAMMA, encode_captions, encode_pool, latent_scale, train_unet, train_vae
from sliders.shapes.training_data import (
    P_DROP_ARTICLE,
    P_DROP_WORD,
    P_UNCONDITIONAL,
    UNCONDITIONAL_INDEX,
    ScenePool,
    caption_index,
    caption_variants,
    draw_captions,
    make_pool,
    render_batch,
)

__all__ = [
    "COLOURS",
    "FAMILIES",
    "MIN_SNR_GAMMA",
    "RESOLUTION",
    "UNCONDITIONAL_INDEX",
    "VOCABULARY",
    "ScenePool",
    "build_shapes_model",
    "caption_index",
    "caption_variants",
    "draw_captions",
    "main",
    "make_pool",
    "render_batch",
]

logger = logging.getLogger(__name__)

# Seconds kept back from a time budget for encoding, saving and the folder swap.
SAVE_RESERVE_S = 15.0


def _check_count(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return value


def _versions() -> dict:
    import diffusers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def _place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished staging folder to `out_dir`, replacing an old build only if allowed."""
    if out_dir.exists():
        if any(out_dir.iterdir()):
            if not overwrite:
                raise InputError(f"output folder '{out_dir}' is not empty; pass --overwrite or pick a new one")
            shutil.rmtree(out_dir)
        else:
            out_dir.rmdir()
    os.replace(staging, out_dir)


def build_shapes_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    vae_steps: int = 2000,
    unet_steps: int = 3500,
    batch_size: int = 256,
    vae_batch_size: int = 64,
    lr: float = 5e-4,
    vae_lr: float = 1e-3,
    kl_weight: float = 1e-5,
    pool_size: int = 100_000,
    time_budget_s: float | None = None,
    save_dtype: str = "fp16",
    overwrite: bool = False,
    log_every: int = 100,
    family: str = "sdxl",
    vae_from: str | Path | None = None,
    unet_from: str | Path | None = None,
) -> Path:
    """Train the shapes model and save it as a diffusers SDXL folder at `out_dir`; returns the path.

    Deterministic from `seed` on the CPU (same folder, bit for bit). On CUDA it is best-effort:
    the same ops and seeds, but cuDNN and atomics may differ between runs, and a `time_budget_s`
    fits the UNet step count to the measured speed. `pool_size` caps the rendered scenes; the pool
    is never larger than the samples training draws. `save_dtype` "fp16" halves the folder
    (about 11 MB); it loads in float32 through `load_pipeline`. `family` is `sdxl` or `sd1`;
    `vae_from` (a shapes model folder) reuses its autoencoder and scale instead of training one;
    `unet_from` (a shapes model folder of the same family) starts the UNet (or transformer) from its
    weights, to train a build further: its `BUILD.json` steps are added to this one's in the record.
    """
    from diffusers import AutoencoderKL, FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    from sliders.families import family_named
    from sliders.models import parse_device

    started = time.perf_counter()
    deadline = None if time_budget_s is None else started + float(time_budget_s) - SAVE_RESERVE_S
    for value, what in ((vae_steps, "vae_steps"), (unet_steps, "unet_steps"), (batch_size, "batch_size"),
                        (vae_batch_size, "vae_batch_size"), (pool_size, "pool_size"), (log_every, "log_every")):
        _check_count(value, what)
    if family not in FAMILIES:
        raise InputError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if save_dtype not in ("fp16", "fp32"):
        raise InputError(f"save_dtype must be fp16 or fp32, got {save_dtype!r}")
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output '{out_dir}' is a file; give a folder path for --out")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise InputError(f"output folder '{out_dir}' is not empty; pass --overwrite or pick a new one")
    device = parse_device(device)
    if device.type == "cuda":
        # Free speed on tensor cores; part of why CUDA builds are only best-effort deterministic.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolutions
        logger.info("building on %s; CUDA runs are deterministic only on a best-effort basis", torch.cuda.get_device_name(device))
    torch.manual_seed(seed)
    np.random.seed(seed)
    generator = torch.Generator(device).manual_seed(seed)

    timings = {}
    phase = time.perf_counter()
    n_pool = min(pool_size, max(vae_steps * vae_batch_size, unet_steps * batch_size))
    pool = make_pool(n_pool, seed, device)
    timings["pool_s"] = time.perf_counter() - phase
    logger.info("rendered a pool of %d scenes in %.1f s", n_pool, timings["pool_s"])

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = make_tokenizer(Path(folder))
    tokenizers = None
    if family == "flux":
        from sliders.tiny import t5_tokenizer

        tokenizers = [tokenizer, t5_tokenizer(VOCABULARY, FLUX_TEXT_TOKENS)]
        text_encoders = (make_text_encoders(len(tokenizer), seed + 1)[0], make_t5(len(tokenizers[1]), seed + 2))
    else:
        text_encoders = make_text_encoders(len(tokenizer), seed + 1, family)
    vae = make_vae(seed + 3).to(device)
    if vae_from is not None:
        vae = AutoencoderKL.from_pretrained(str(vae_from), subfolder="vae", torch_dtype=torch.float32).to(device)
    unet = (make_transformer(seed + 4) if family == "flux" else make_unet(seed + 4, family)).to(device)
    steps_before = 0
    if unet_from is not None:
        unet_from = Path(unet_from)
        sub = "transformer" if family == "flux" else "unet"
        try:
            start = type(unet).from_pretrained(str(unet_from), subfolder=sub, torch_dtype=torch.float32)
            steps_before = json.loads((unet_from / "BUILD.json").read_text(encoding="utf-8"))["unet_steps"]
        except (OSError, ValueError, KeyError) as error:
            raise InputError(f"--unet-from {unet_from}: not a {family} shapes model folder ({error})") from None
        unet.load_state_dict(start.state_dict())
    for encoder in text_encoders:
        encoder.requires_grad_(False)
        if save_dtype == "fp16":
            # Round the frozen encoders to what the folder will store, so the UNet trains on
            # exactly the embeddings the saved pipeline computes.
            with torch.no_grad():
                for param in encoder.parameters():
                    param.copy_(param.half().float())

    phase = time.perf_counter()
    vae_history = [] if vae_from is not None else train_vae(
        vae, pool, steps=vae_steps, batch_size=vae_batch_size, lr=vae_lr, kl_weight=kl_weight, generator=generator,
        log_every=log_every)
    vae.requires_grad_(False)
    timings["vae_s"] = time.perf_counter() - phase

    phase = time.perf_counter()
    means, stds = encode_pool(vae, pool)
    scale, latent_stats = latent_scale(means, stds, generator)
    if vae_from is None:
        vae.register_to_config(scaling_factor=scale)
    if family == "flux":
        vae.register_to_config(shift_factor=0.0)  # FluxPipeline decodes latents / scale + shift
    scale = vae.config.scaling_factor  # a reused autoencoder keeps the scale its latents were measured with
    logger.info("latent std %.4f -> scaling_factor %.4f", latent_stats["std"], scale)
    embeds, pooled = encode_captions(tokenizer, [e.to(device) for e in text_encoders], device, family, tokenizers)
    timings["encode_s"] = time.perf_counter() - phase

    phase = time.perf_counter()
    ema, unet_history, unet_run = train_unet(
        unet, means, stds, scale, pool, embeds, pooled, steps=unet_steps, batch_size=batch_size, lr=lr,
        generator=generator, log_every=log_every, deadline=deadline,
        flow=family_named("flux") if family == "flux" else None,
    )
    with torch.no_grad():
        for name, param in unet.named_parameters():
            param.copy_(ema[name])
    timings["unet_s"] = time.perf_counter() - phase

    phase = time.perf_counter()
    storage = torch.float16 if save_dtype == "fp16" else torch.float32
    for module in (vae, unet, *text_encoders):
        # `.cpu().half()` rather than `.to(dtype)`: same result without diffusers' cast warnings.
        module.cpu()
        if storage == torch.float16:
            module.half()
    if family == "flux":
        pipe = FluxPipeline(scheduler=make_flow_scheduler(), vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizer,
                            text_encoder_2=text_encoders[1], tokenizer_2=tokenizers[1], transformer=unet)
    elif family == "sd1":
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizer, unet=unet, scheduler=make_scheduler(),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoders[0],
            text_encoder_2=text_encoders[1],
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=make_scheduler(),
            # Training dropped captions to the encoded "", not to zeros: keep the empty negative
            # prompt encoded so classifier-free guidance uses what the model learned.
            force_zeros_for_empty_prompt=False,
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        timings["save_s"] = time.perf_counter() - phase
        timings["total_s"] = time.perf_counter() - started
        record = {
            "family": family,
            "vae_from": None if vae_from is None else Path(vae_from).name,
            "seed": seed,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "deterministic": device.type == "cpu" and time_budget_s is None,
            "vae_steps": vae_steps,
            "unet_steps_planned": unet_steps,
            "unet_steps": steps_before + unet_run,
            "unet_from": None if unet_from is None else {"folder": Path(unet_from).name, "unet_steps": steps_before},
            "batch_size": batch_size,
            "vae_batch_size": vae_batch_size,
            "lr": lr,
            "vae_lr": vae_lr,
            "kl_weight": kl_weight,
            "pool_size": n_pool,
            "time_budget_s": time_budget_s,
            "save_dtype": save_dtype,
            "caption_dropout": {"unconditional": P_UNCONDITIONAL, "word": P_DROP_WORD, "article": P_DROP_ARTICLE},
            "min_snr_gamma": None if family == "flux" else MIN_SNR_GAMMA,
            "loss": "velocity, logit-normal sigma" if family == "flux" else "epsilon, min-SNR weighted",
            "scaling_factor": scale,
            "latents": latent_stats,
            "parameters": {
                "unet": sum(p.numel() for p in unet.parameters()),
                "vae": sum(p.numel() for p in vae.parameters()),
                "text_encoders": sum(p.numel() for e in text_encoders for p in e.parameters()),
            },
            "vae_losses": vae_history,
            "unet_losses": unet_history,
            "final_vae_loss": vae_history[-1]["loss"] if vae_history else None,
            "final_unet_loss": unet_history[-1]["loss"],
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "ms_per_step": {
                "vae": round(1e3 * timings["vae_s"] / vae_steps, 2) if vae_history else None,
                "unet": round(1e3 * timings["unet_s"] / unet_run, 2),
            },
            "versions": _versions(),
        }
        (staging / "BUILD.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _place(staging, out_dir, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved the shapes model to %s in %.1f s", out_dir, time.perf_counter() - started)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sliders.shapes.build --out DIR [--device cuda] [--seed 0] [--vae-steps N] ...`"""
    parser = argparse.ArgumentParser(description="Train the shapes-world text-to-image model and save it as an SDXL folder.")
    parser.add_argument("--out", required=True, help="output folder (a diffusers StableDiffusionXLPipeline)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--unet-steps", type=int, default=3500)
    parser.add_argument("--batch-size", type=int, default=256, help="UNet batch size")
    parser.add_argument("--vae-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4, help="UNet learning rate")
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-5)
    parser.add_argument("--pool-size", type=int, default=100_000, help="most scenes to render for training")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="fit the UNet step count so the whole build ends within this many seconds")
    parser.add_argument("--save-dtype", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing build in --out")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--family", choices=FAMILIES, default="sdxl", help="architecture (default sdxl)")
    parser.add_argument("--vae-from", help="reuse the autoencoder of this shapes model folder (no VAE training)")
    parser.add_argument("--unet-from", help="start the UNet (transformer) from this shapes model folder's weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        out = build_shapes_model(
            args.out, seed=args.seed, device=args.device, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
            batch_size=args.batch_size, vae_batch_size=args.vae_batch_size, lr=args.lr, vae_lr=args.vae_lr,
            kl_weight=args.kl_weight, pool_size=args.pool_size, time_budget_s=args.time_budget,
            save_dtype=args.save_dtype, overwrite=args.overwrite, log_every=args.log_every, family=args.family,
            vae_from=args.vae_from, unet_from=args.unet_from,
        )
    except InputError as error:
        print(f"error: {error}")
        return 2
    record = json.loads((out / "BUILD.json").read_text(encoding="utf-8"))
    print(
        f"saved {out}: vae loss {record['final_vae_loss'] or 0:.5f}, unet loss {record['final_unet_loss']:.5f} "
        f"after {record['unet_steps']} steps, {record['timings_s']['total_s']:.0f} s on {record['device']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
