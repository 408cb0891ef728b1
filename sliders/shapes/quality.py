"""Judge a shapes-world base model: does what it draws follow the caption's colour, shape and size?

Generates images from full captions ("a small red circle") through the saved SDXL pipeline, reads
each back with ``measure`` and reports colour accuracy, shape accuracy and the mean measured size
per size word, against the targets a model must meet before sliders are trained on it. It does
not train or build models (see ``build``) and does not use sliders.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sliders.errors import InputError
from sliders.shapes.measure import measure
from sliders.shapes.world import PALETTE, SHAPES, SIZE_WORDS, size_bounds, size_word

logger = logging.getLogger(__name__)

# Default sampling: the pipeline's Euler scheduler, 25 steps, guidance 5 with the negative
# prompt "" (which the model was trained on as its unconditional caption).
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 5.0
RESOLUTION = 64
BATCH = 16

TARGETS = {"colour_accuracy": 0.90, "shape_accuracy": 0.80}


def sample_captions(n: int, seed: int) -> list[tuple[str, str, str]]:
    """`n` (size word, colour, shape) triples, each of the 36 combinations equally often.

    Balanced rather than independent draws, so even 64 samples have ~21 per size word; the order
    within each round of 36 is shuffled from `seed`.
    """
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(SIZE_WORDS, PALETTE, SHAPES))
    out: list[tuple[str, str, str]] = []
    while len(out) < n:
        out.extend(combos[i] for i in rng.permutation(len(combos)))
    return out[:n]


def _check(n, steps, guidance_scale) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a whole number >= 1, got {n!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a whole number >= 1, got {steps!r}")
    if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
        raise InputError(f"guidance_scale must be a finite number, got {guidance_scale!r}")


def measure_base_quality(
    model_dir: str | Path,
    *,
    n: int = 64,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    device: str | torch.device = "cpu",
    batch_size: int = BATCH,
    image_dir: str | Path | None = None,
) -> dict:
    """Generate `n` captioned images from the model at `model_dir`, measure them, summarise.

    Image i starts from CPU noise seeded by a number drawn from `seed`, so a run is repeatable
    and device independent up to float differences. Returns a JSON-ready dict: the settings,
    ``colour_accuracy``, ``shape_accuracy``, ``size_word_accuracy``, ``size_by_word`` (mean
    measured equal-area radius in pixels and count per size word), ``size_ordered``,
    ``per_shape_accuracy``, ``targets``/``passed`` and the per-image ``samples``.
    Writes the images as PNGs into `image_dir` if given.
    """
    from sliders.models import load_pipeline, parse_device

    _check(n, steps, guidance_scale)
    device = parse_device(device)
    started = time.perf_counter()
    pipe = load_pipeline(str(model_dir), torch.float32, device)
    pipe.set_progress_bar_config(disable=True)
    captions = sample_captions(n, seed)
    image_seeds = np.random.default_rng([seed, 1]).integers(0, 2**31 - 1, size=n)
    if image_dir is not None:
        image_dir = Path(image_dir)
        image_dir.mkdir(parents=True, exist_ok=True)

    from sliders.families import family_of_pipe

    family = family_of_pipe(pipe)
    # FLUX samples as sliders sample it: no negative prompt (no classifier-free guidance), prompts
    # padded to the T5 length the model was trained with.
    text_args = {"max_sequence_length": family.sequence_length(pipe)} if family.flow_matching else {}
    samples = []
    for start in range(0, n, batch_size):
        part = captions[start : start + batch_size]
        prompts = [f"a {size} {colour} {shape}" for size, colour, shape in part]
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in image_seeds[start : start + len(part)]]
        with torch.no_grad():
            images = pipe(
                prompt=prompts,
                # Explicit "" rather than None, so a model saved with force_zeros_for_empty_prompt
                # still gets the encoded empty prompt it was trained with.
                **(text_args if family.flow_matching else {"negative_prompt": [""] * len(part)}),
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=generators,
                height=RESOLUTION,
                width=RESOLUTION,
                output_type="pil",
            ).images
        for k, ((size, colour, shape), prompt, image) in enumerate(zip(part, prompts, images)):
            index = start + k
            m = measure(image)
            samples.append(
                {
                    "index": index,
                    "prompt": prompt,
                    "seed": int(image_seeds[index]),
                    "size_word": size,
                    "colour": colour,
                    "shape": shape,
                    "measured_size": m.size,
                    "measured_size_word": size_word(m.size, RESOLUTION) if m.size > 0 else "none",
                    "measured_colour": m.colour,
                    "measured_shape": m.shape,
                    "fill_ratio": m.fill_ratio,
                }
            )
            if image_dir is not None:
                image.save(image_dir / f"{index:04d}_{prompt.replace(' ', '_')}.png")
        logger.info("generated and measured %d/%d images", len(samples), n)

    report = summarise(samples)
    report.update(
        {
            "model": str(model_dir),
            "n": n,
            "seed": seed,
            "steps": steps,
            "guidance_scale": float(guidance_scale),
            "resolution": RESOLUTION,
            "device": str(device),
            "seconds": round(time.perf_counter() - started, 2),
            "samples": samples,
        }
    )
    return report


def summarise(samples: Sequence[dict]) -> dict:
    """The accuracies, sizes per word and target checks for measured samples (see above)."""
    n = len(samples)
    colour = sum(s["measured_colour"] == s["colour"] for s in samples) / n
    shape = sum(s["measured_shape"] == s["shape"] for s in samples) / n
    word = sum(s["measured_size_word"] == s["size_word"] for s in samples) / n
    by_word = {}
    for name in SIZE_WORDS:
        sizes = [s["measured_size"] for s in samples if s["size_word"] == name]
        low, high = size_bounds(name, RESOLUTION)
        by_word[name] = {
            "count": len(sizes),
            "mean": float(np.mean(sizes)) if sizes else None,
            "std": float(np.std(sizes)) if sizes else None,
            "world_range": [low, high],
        }
    means = [by_word[name]["mean"] for name in SIZE_WORDS]
    ordered = all(m is not None for m in means) and all(a < b for a, b in zip(means, means[1:]))
    per_shape = {}
    for name in SHAPES:
        chosen = [s for s in samples if s["shape"] == name]
        per_shape[name] = sum(s["measured_shape"] == name for s in chosen) / len(chosen) if chosen else None
    passed = {
        "colour_accuracy": colour >= TARGETS["colour_accuracy"],
        "shape_accuracy": shape >= TARGETS["shape_accuracy"],
        "size_ordered": ordered,
    }
    return {
        "colour_accuracy": colour,
        "shape_accuracy": shape,
        "size_word_accuracy": word,
        "size_by_word": by_word,
        "size_ordered": ordered,
        "per_shape_accuracy": per_shape,
        "targets": dict(TARGETS, size_ordered=True),
        "passed": passed,
        "all_passed": all(passed.values()),
    }


def markdown(report: dict) -> str:
    """The report as a Markdown table (settings line, then one row per number)."""
    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    def mark(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    lines = [
        f"Model `{report['model']}`: {report['n']} images, {report['steps']} steps, guidance "
        f"{report['guidance_scale']:g}, seed {report['seed']} ({report['seconds']:.0f} s on {report['device']})",
        "",
        "| measure | value | target | |",
        "|---|---|---|---|",
        f"| colour accuracy | {pct(report['colour_accuracy'])} | >= {pct(TARGETS['colour_accuracy'])} "
        f"| {mark(report['passed']['colour_accuracy'])} |",
        f"| shape accuracy | {pct(report['shape_accuracy'])} | >= {pct(TARGETS['shape_accuracy'])} "
        f"| {mark(report['passed']['shape_accuracy'])} |",
    ]
    for name in SHAPES:
        lines.append(f"| shape accuracy, {name} | {pct(report['per_shape_accuracy'][name])} | | |")
    lines.append(f"| size word accuracy | {pct(report['size_word_accuracy'])} | | |")
    for name in SIZE_WORDS:
        entry = report["size_by_word"][name]
        low, high = entry["world_range"]
        value = "-" if entry["mean"] is None else f"{entry['mean']:.2f} px (n={entry['count']})"
        lines.append(f"| mean size, {name} | {value} | world {low:.1f}-{high:.1f} px | |")
    lines.append(f"| size ordered small < medium < large | {report['size_ordered']} | True "
                 f"| {mark(report['passed']['size_ordered'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sliders.shapes.quality MODEL_DIR [--n 64] [--json out.json] [--images DIR]`"""
    parser = argparse.ArgumentParser(description="Measure how well a shapes-world model follows its captions.")
    parser.add_argument("model", help="the model folder written by sliders.shapes.build")
    parser.add_argument("--n", type=int, default=64, help="images to generate (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the full report here (default MODEL/QUALITY.json)")
    parser.add_argument("--images", default=None, help="also save the generated images in this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = measure_base_quality(
            args.model, n=args.n, seed=args.seed, steps=args.steps, guidance_scale=args.guidance,
            device=args.device, image_dir=args.images,
        )
    except InputError as error:
        print(f"error: {error}")
        return 2
    path = Path(args.json) if args.json else Path(args.model) / "QUALITY.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(report))
    print(f"\nfull report: {path}")
    return 0 if report["all_passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
