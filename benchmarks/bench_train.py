"""Seconds per iteration and peak GPU memory of the text- and image-slider training loops.

Runs the real training code of `sliders/trainer.py` (setup, objectives, `train_loop`) on a
random-weight SDXL-architecture model (see `random_sdxl.py`), built into --model-dir when that
folder holds no model yet. Nothing in `sliders/` is changed: the objective's `step` and the
network's final `save` are wrapped to take a timestamp (after a CUDA synchronize), so the interval
between two successive `step` calls is one whole iteration (objective, slider forward and backward,
optimizer and LR-schedule steps, progress bar). Setup is timed separately; peak memory is reset
after setup so the training peak is reported apart from the peak that includes setup. The text
objective's partial denoising is timed too (its k varies per iteration), and a third case, `unet`,
times single UNet calls with and without the slider to show where an iteration's time goes.

GPU:  python benchmarks/bench_train.py --model-dir /tmp/random-sdxl --out results.json
CPU:  python benchmarks/bench_train.py --model-dir /tmp/bench_small --small --device cpu \
          --iterations 2 --warmup 1 --resolution 64 --precision fp32
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from random_sdxl import build_random_sdxl  # noqa: E402

from sliders import trainer  # noqa: E402
from sliders.objectives import unet as objectives  # noqa: E402  (where the text objective looks up draw_step)
from sliders.config import load_config  # noqa: E402
from sliders.data import scan_pairs  # noqa: E402
from sliders.models import conditioning, parse_device, predict_noise, time_ids, vae_factor  # noqa: E402
from sliders.prompts import make_entry  # noqa: E402

GIB = 1024**3
CASES = ("text", "image", "unet")
TEXT_ENTRY = {
    "target": "person",
    "positive": "old person",
    "unconditional": "young person",
    "action": "enhance",
    "guidance_scale": 4,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {
        "max_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
        "max_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
        "allocated_gib": torch.cuda.memory_allocated(device) / GIB,
        "reserved_gib": torch.cuda.memory_reserved(device) / GIB,
    }


def write_noise_pairs(root: Path, resolution: int, count: int = 4, seed: int = 0) -> Path:
    """`count` random-noise RGB PNGs of side `resolution` in each of root/low and root/high."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for folder in ("low", "high"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            pixels = rng.integers(0, 256, size=(resolution, resolution, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / folder / f"{index:02d}.png")
    return root


def make_config(args, case: str, save_root: Path):
    return load_config(
        None,
        {
            "pretrained_model.name_or_path": str(args.model_dir),
            "train.precision": args.precision,
            "train.iterations": args.warmup + args.iterations,
            "train.max_denoising_steps": args.max_denoising_steps,
            "save.path": str(save_root),
            "save.name": f"bench_{case}",
            "save.per_steps": args.warmup + args.iterations + 1,  # no intermediate checkpoints
        },
    )


def prepare_text(config, args, device):
    """What `trainer.train_text_slider` runs before `train_loop`."""
    entries = [make_entry({**TEXT_ENTRY, "resolution": args.resolution})]
    return trainer.prepare_text(config, entries, device)


def prepare_image(config, args, device, work: Path):
    """What `trainer.train_image_slider` runs before `train_loop`, on random-noise pairs."""
    root = write_noise_pairs(work / "pairs", args.resolution)
    pairs = scan_pairs(root, ["low", "high"], [-1, 1])
    entry = make_entry({"target": "", "resolution": args.resolution})
    return trainer.prepare_image(config, pairs, entry, device)


def summarise(
    case: str, intervals: list[float], ks: list[int], denoise: list[float], warmup: int, max_steps: int
) -> dict:
    timed, timed_k = intervals[warmup:], ks[warmup:]
    summary = {
        "iterations_timed": len(timed),
        "s_per_it_mean": statistics.fmean(timed) if timed else math.nan,
        "s_per_it_median": statistics.median(timed) if timed else math.nan,
        "s_per_it_min": min(timed) if timed else math.nan,
        "s_per_it_max": max(timed) if timed else math.nan,
        "s_per_it_all": intervals,
        "k_all": ks,
    }
    if case == "text" and len(denoise) == len(ks):
        # A text iteration first denoises k steps (k uniform in 1..max_steps-1, mean max_steps/2) with
        # CFG, then trains; split each iteration into that denoising and the rest, so the long-run
        # mean can be estimated from a few iterations whatever k they happened to draw.
        timed_denoise = denoise[warmup:len(intervals)]
        per_step = [d / k for d, k in zip(timed_denoise, timed_k)]
        rest = [t - d for t, d in zip(timed, timed_denoise)]
        if per_step:
            summary.update(
                denoise_s_all=denoise,
                denoise_s_per_step_mean=statistics.fmean(per_step),
                rest_s_per_it_mean=statistics.fmean(rest),
                expected_s_per_it_at_mean_k=statistics.fmean(rest) + statistics.fmean(per_step) * max_steps / 2,
            )
    return summary


def run_case(case: str, args, device: torch.device, work: Path) -> dict:
    config = make_config(args, case, work / f"save_{case}")
    result: dict = {"case": case}
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        result["memory_at_start"] = _memory(device)

    ks: list[int] = []
    original_draw = objectives.draw_step

    def recording_draw(rng, total_steps):
        k = original_draw(rng, total_steps)
        ks.append(k)
        return k

    denoise_s: list[float] = []
    # The text objective's partial denoising: one trajectory (denoise_states) or, with xk_max_steps,
    # a few DDIM jumps (denoise_jumps); whichever runs is timed.
    original_denoise = {name: getattr(objectives, name) for name in ("denoise_states", "denoise_jumps")}

    def timed(function):
        def wrapper(*a, **kw):
            _sync(device)
            start = time.perf_counter()
            states = function(*a, **kw)
            _sync(device)
            denoise_s.append(time.perf_counter() - start)
            return states
        return wrapper

    # Record k and the time of the text objective's partial denoising; results are unchanged.
    objectives.draw_step = recording_draw
    for name, function in original_denoise.items():
        setattr(objectives, name, timed(function))
    parts = objective = None
    try:
        _sync(device)
        start = time.perf_counter()
        if case == "text":
            parts, objective, metadata = prepare_text(config, args, device)
        else:
            parts, objective, metadata = prepare_image(config, args, device, work)
        _sync(device)
        result["setup_s"] = time.perf_counter() - start
        result["setup_memory"] = _memory(device)
        result["lora_parameters"] = sum(p.numel() for p in parts.network.trainable_parameters())
        result["lora_modules"] = len(parts.network.loras)
        result["unet_parameters"] = sum(p.numel() for p in parts.unet.parameters())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        stamps: list[float] = []
        step, save = objective.step, parts.network.save

        def timed_step(rng, generator):
            _sync(device)
            stamps.append(time.perf_counter())
            return step(rng, generator)

        def timed_save(*a, **kw):
            _sync(device)
            if len(stamps) == config.train.iterations:
                stamps.append(time.perf_counter())  # end of the last iteration
            return save(*a, **kw)

        objective.step = timed_step
        parts.network.save = timed_save
        run = trainer.train_loop(config, parts, objective, trainer.run_folder(config), metadata)
        train_memory = _memory(device)
        intervals = [b - a for a, b in zip(stamps, stamps[1:])]
        result.update(summarise(case, intervals, ks, denoise_s, args.warmup, config.train.max_denoising_steps))
        result["losses"] = run.losses
        if device.type == "cuda":
            result["train_peak_allocated_gib"] = train_memory["max_allocated_gib"]
            result["train_peak_reserved_gib"] = train_memory["max_reserved_gib"]
            result["peak_allocated_incl_setup_gib"] = max(
                train_memory["max_allocated_gib"], result["setup_memory"]["max_allocated_gib"]
            )
            result["peak_reserved_incl_setup_gib"] = max(
                train_memory["max_reserved_gib"], result["setup_memory"]["max_reserved_gib"]
            )
    except Exception as error:  # keep the other case's numbers
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()
        print(result["traceback"], file=sys.stderr)
    finally:
        objectives.draw_step = original_draw
        for name, function in original_denoise.items():
            setattr(objectives, name, function)
        if objective is not None:
            objective.__dict__.pop("step", None)  # drop the wrapper (and its reference cycle)
        if parts is not None:
            parts.network.__dict__.pop("save", None)
            parts.network.detach()
        del parts, objective
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _time_call(fn, device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {
        "ms_median": 1000 * statistics.median(times),
        "ms_min": 1000 * min(times),
        "ms_mean": 1000 * statistics.fmean(times),
    }


def run_unet_case(args, device: torch.device, work: Path) -> dict:
    """Where the time of a slider iteration goes: single UNet calls with and without the slider.

    The calls a text iteration makes are k x `denoise_b2_slider_on` + `frozen_b3_slider_off` +
    `train_b1_fwd_bwd`; an image iteration makes two `train_b1_fwd_bwd` calls.
    """
    config = make_config(args, "unet", work / "save_unet")
    result: dict = {"case": "unet"}
    parts = None
    gc.collect()
    try:
        parts = trainer.setup(config, [""], device, keep_vae=False)
        unet, network = parts.unet, parts.network
        side = args.resolution // vae_factor(parts.vae)
        channels = unet.config.in_channels
        generator = torch.Generator().manual_seed(0)
        timestep = torch.tensor(500, device=device)

        def inputs(batch):
            latents = torch.randn((batch, channels, side, side), generator=generator).to(device)
            ids = time_ids(args.resolution, args.resolution).expand(batch, -1)
            return latents, conditioning(parts.embeddings, "", ids)

        b1, b2, b3 = inputs(1), inputs(2), inputs(3)
        target = torch.randn((1, channels, side, side), generator=generator).to(device)

        def forward(batch, multiplier):
            latents, cond = batch
            with torch.no_grad(), network.scaled(multiplier):
                predict_noise(unet, latents, timestep, cond)

        def train_step():
            latents, cond = b1
            with network.scaled(1.0):
                prediction = predict_noise(unet, latents, timestep, cond).float()
                torch.nn.functional.mse_loss(prediction, target).backward()

        warm, reps = (1, 2) if device.type == "cpu" else (3, 10)
        timings = {}
        network.detach()
        timings["denoise_b2_no_slider"] = _time_call(lambda: forward(b2, 0.0), device, warm, reps)
        network.attach()
        timings["denoise_b2_slider_off"] = _time_call(lambda: forward(b2, 0.0), device, warm, reps)
        timings["denoise_b2_slider_on"] = _time_call(lambda: forward(b2, 1.0), device, warm, reps)
        timings["frozen_b3_slider_off"] = _time_call(lambda: forward(b3, 0.0), device, warm, reps)
        timings["train_b1_fwd_bwd"] = _time_call(train_step, device, warm, reps)
        if device.type == "cuda":
            previous = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True
            try:
                timings["denoise_b2_slider_on_cudnn_benchmark"] = _time_call(
                    lambda: forward(b2, 1.0), device, warm, reps
                )
            finally:
                torch.backends.cudnn.benchmark = previous
        result["timings"] = timings
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()
        print(result["traceback"], file=sys.stderr)
    finally:
        if parts is not None:
            parts.network.detach()
        del parts
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(device: torch.device) -> dict:
    import diffusers
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "host": platform.node(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = props.total_memory / GIB
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["sdpa_flash"] = torch.backends.cuda.flash_sdp_enabled()
    return info


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    env, settings = report["environment"], report["settings"]
    lines = [
        f"Device: {env.get('gpu', env['device'])}; torch {env['torch']}, diffusers {env['diffusers']}, "
        f"transformers {env['transformers']}; {settings['precision']}, {settings['resolution']} px, "
        f"{settings['warmup']} warm-up + {settings['iterations']} timed iterations, "
        f"max_denoising_steps {settings['max_denoising_steps']}",
        "",
        "| case | s/it mean | s/it median | s/it min | s/it max | train peak alloc GiB | train peak reserved GiB "
        "| peak alloc incl. setup GiB | peak reserved incl. setup GiB | setup s | LoRA params | timed k |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, r in report["results"].items():
        if case == "unet":
            continue
        if "error" in r:
            lines.append(f"| {case} | error: {r['error'][:120]} |" + " |" * 11)
            continue
        ks = r["k_all"][settings["warmup"]:] if case == "text" else []
        lines.append(
            f"| {case} | {_fmt(r['s_per_it_mean'])} | {_fmt(r['s_per_it_median'])} | {_fmt(r['s_per_it_min'])} "
            f"| {_fmt(r['s_per_it_max'])} | {_fmt(r.get('train_peak_allocated_gib'), 2)} "
            f"| {_fmt(r.get('train_peak_reserved_gib'), 2)} | {_fmt(r.get('peak_allocated_incl_setup_gib'), 2)} "
            f"| {_fmt(r.get('peak_reserved_incl_setup_gib'), 2)} | {_fmt(r['setup_s'], 1)} "
            f"| {r['lora_parameters']:,} | {','.join(map(str, ks)) or '-'} |"
        )
    text = report["results"].get("text", {})
    if "expected_s_per_it_at_mean_k" in text:
        lines += [
            "",
            f"Text slider: an iteration is k denoising steps with CFG at {text['denoise_s_per_step_mean']:.3f} s each "
            f"plus {text['rest_s_per_it_mean']:.3f} s (frozen predictions, slider forward/backward, optimizer); "
            f"k is uniform in 1..{settings['max_denoising_steps'] - 1}, so the long-run mean is "
            f"~{text['expected_s_per_it_at_mean_k']:.3f} s/it.",
        ]
    unet = report["results"].get("unet", {})
    if "timings" in unet:
        lines += ["", "Single UNet calls (ms, median):", "", "| call | ms median | ms min |", "|---|---|---|"]
        lines += [f"| {name} | {t['ms_median']:.1f} | {t['ms_min']:.1f} |" for name, t in unet["timings"].items()]
    elif "error" in unet:
        lines += ["", f"UNet calls: error {unet['error'][:200]}"]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark the text- and image-slider training loops.")
    parser.add_argument("--model-dir", required=True, type=Path, help="random SDXL folder; built here if missing")
    parser.add_argument("--small", action="store_true", help="build the tiny CPU model instead of full-size SDXL")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations before them")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-denoising-steps", type=int, default=50, help="train.max_denoising_steps (default 50)")
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated subset of text,image,unet (unet: single UNet calls)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model weights")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - set(CASES)
    if unknown or not args.cases:
        parser.error(f"--cases takes a subset of {','.join(CASES)}, got {sorted(unknown)}")
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = parse_device(args.device)
    args.model_dir = args.model_dir.expanduser().resolve()
    build_s = None
    if not (args.model_dir / "model_index.json").is_file():
        print(f"building random {'tiny' if args.small else 'full-size SDXL'} model in {args.model_dir}", flush=True)
        start = time.perf_counter()
        build_random_sdxl(args.model_dir, small=args.small, seed=args.seed,
                          device=device if device.type == "cuda" else "cpu")
        build_s = time.perf_counter() - start
        print(f"built in {build_s:.1f} s", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    report = {
        "environment": environment(device),
        "settings": {
            "model_dir": str(args.model_dir),
            "small": args.small,
            "precision": args.precision,
            "resolution": args.resolution,
            "warmup": args.warmup,
            "iterations": args.iterations,
            "max_denoising_steps": args.max_denoising_steps,
            "model_build_s": build_s,
        },
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="sliders-bench-") as work:
        for case in args.cases:
            print(f"\n=== {'single UNet calls' if case == 'unet' else case + ' slider'} ===", flush=True)
            if case == "unet":
                report["results"][case] = run_unet_case(args, device, Path(work))
            else:
                report["results"][case] = run_case(case, args, device, Path(work))
            if args.out:  # write as we go, so a crash in a later case keeps earlier numbers
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    table = markdown(report)
    report["markdown"] = table
    print("\n" + table)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 1 if any("error" in r for r in report["results"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
