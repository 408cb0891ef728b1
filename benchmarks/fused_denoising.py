"""Hooked against fused partial denoising in text-slider training: time per UNet call and agreement.

A text-slider step first denoises random latents `k` steps with the slider on (no gradient). With
`train.fused_denoising` the slider is folded into the UNet weights for those calls instead of run
through its forward hooks. This script runs the real `TextObjective.step` both ways from the same
random state, on the same slider (a trained one with --slider, else random non-zero weights), and reports
the time of the denoising per UNet call and how far the two paths' outputs differ.

    python benchmarks/fused_denoising.py --config configs/shapes/size.yaml \
        --slider output/models/size_alpha1.0_rank4_noxattn/size_last.safetensors --out result.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sliders import trainer  # noqa: E402
from sliders.objectives import unet as objectives  # noqa: E402  (where the text objective looks up denoise_states)
from sliders.config import load_config  # noqa: E402
from sliders.models import parse_device  # noqa: E402
from sliders.network import load_slider  # noqa: E402
from sliders.prompts import load_prompts  # noqa: E402


def _timed_denoise(times: list[float], calls: list[int]):
    """The text objective's partial denoising (one trajectory to the drawn steps `stops`), timed, with
    the deepest step it reached."""
    original = objectives.denoise_states

    def wrapper(unet, scheduler, latents, stops, *args, **kwargs):
        start = time.perf_counter()
        result = original(unet, scheduler, latents, stops, *args, **kwargs)
        times.append(time.perf_counter() - start)
        calls.append(max(stops))
        return result

    return original, wrapper


def run(args) -> dict:
    config = load_config(args.config, {"train.iterations": 1})
    device = parse_device(args.device)
    entries = load_prompts(config.prompts_file)
    parts, objective, _ = trainer.prepare_text(config, entries, device)
    network = parts.network
    if args.slider:  # a trained slider's weights in place of the fresh (zero-delta) one
        network.detach()
        network = objective.network = load_slider(args.slider, parts.unet)
    else:  # a fresh slider changes nothing; give it a random non-zero delta
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for module in network.loras.values():
                module.lora_up.weight.normal_(0.0, args.up_std, generator=generator)

    times: dict[bool, list[float]] = {False: [], True: []}
    calls: dict[bool, list[int]] = {False: [], True: []}
    diffs: list[dict] = []
    try:
        for index in range(args.steps):
            outputs = {}
            for fused in (False, True):  # same random state for both paths
                objective.fused_denoising = fused
                original, wrapper = _timed_denoise(times[fused], calls[fused])
                objectives.denoise_states = wrapper
                try:
                    terms = objective.step(random.Random(index), torch.Generator().manual_seed(index))
                finally:
                    objectives.denoise_states = original
                outputs[fused] = terms[0]
            hooked, fused_term = outputs[False], outputs[True]
            diffs.append(
                {
                    "k": calls[True][-1],
                    "latents_max_abs_diff": (hooked.latents - fused_term.latents).abs().max().item(),
                    "latents_std": hooked.latents.std().item(),
                    "target_max_abs_diff": (hooked.target - fused_term.target).abs().max().item(),
                    "target_std": hooked.target.std().item(),
                }
            )
    finally:
        objective.fused_denoising = config.train.fused_denoising

    def per_call(fused: bool) -> list[float]:
        # Each denoising step is one batched (uncond, cond) UNet call.
        return [t / k for t, k in zip(times[fused], calls[fused])]

    hooked_ms = statistics.median(per_call(False)) * 1000
    fused_ms = statistics.median(per_call(True)) * 1000
    return {
        "config": args.config,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "slider": args.slider,
        "adapted_layers": len(network.loras),
        "steps": args.steps,
        "k_all": calls[True],
        "denoise_ms_per_unet_call_hooked_median": hooked_ms,
        "denoise_ms_per_unet_call_fused_median": fused_ms,
        "speedup": hooked_ms / fused_ms,
        "agreement": diffs,
        "latents_max_abs_diff_worst": max(d["latents_max_abs_diff"] for d in diffs),
        "target_max_abs_diff_worst": max(d["target_max_abs_diff"] for d in diffs),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes/size.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=8, help="objective steps, each run both ways")
    parser.add_argument("--slider", help="a trained slider file to run (default: random lora_up weights)")
    parser.add_argument("--up_std", type=float, default=0.02, help="std of the random lora_up weights")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
