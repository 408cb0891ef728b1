"""Image-pair datasets of the shapes world, for image sliders.

Each stem is one scene (shape, colour, position) drawn at a size that grows with the folder's
slider scale: `size = base * GROWTH ** scale`. Two layouts: `symmetric` (folders `smaller` and
`larger` at scales -1 and 1, the paper's low/high pairs, from a base between "small" and
"medium", so the two folders together span the world's whole size range) and `multiscale` (`base_one_minus`, `base_one`,
`base_one_plus`, `base_k` at 0.67, 1, 1.3, 2, from a smaller base so that 1.4**2 still fits).
Beside the folders, `<stem>.txt` holds the caption of the pair without its size, e.g. "a red
circle" (for `sliders-train-images --captions`). `write_scenes` writes single scenes instead, as
inputs for `sliders-edit`. Only numpy and Pillow.

    python -m sliders.shapes.datasets --out datasets/shapes-size --count 32 --seed 0
    python -m sliders.shapes.datasets --scenes --out output/scenes --count 4   # inputs for sliders-edit
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .world import MARGIN_PX, PALETTE, SHAPES, Scene, render, render_dataset, shape_bounds

GROWTH = 1.4
LAYOUTS = {
    "symmetric": (("smaller", -1.0), ("larger", 1.0)),
    "multiscale": (("base_one_minus", 0.67), ("base_one", 1.0), ("base_one_plus", 1.3), ("base_k", 2.0)),
}
# The range of the base (scale 0) radius, as a fraction of the resolution; world.SIZE_RANGE is
# 0.10-0.34 ("medium" 0.18-0.26). Symmetric: 0.14-0.24, so that the two folders together cover the
# whole range the model draws (smaller 0.10-0.17, larger 0.20-0.34): an image slider pulls towards
# the sizes its folders hold, and a shape already outside them barely moves (EVALUATION.md).
BASE_SIZE = {"symmetric": (0.14, 0.24), "multiscale": (0.10, 0.14)}


def scaled_scenes(
    rng: np.random.Generator, scales: Sequence[float], base_size: tuple[float, float], resolution: int = 64
) -> list[Scene]:
    """One random scene at each scale's size, same shape, colour and centre; all fully inside the image.

    The base radius is drawn uniformly in `base_size` (fractions of the resolution)."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = tuple(PALETTE)[int(rng.integers(len(PALETTE)))]
    base = resolution * rng.uniform(*base_size)
    sizes = [base * GROWTH**scale for scale in scales]
    # Place the centre so that the largest version still fits.
    probe = Scene(shape, colour, max(sizes), resolution / 2, resolution / 2, resolution)
    left, top, right, bottom = shape_bounds(probe)
    half_w, half_h = resolution / 2 - left, resolution / 2 - top
    reach_r, reach_b = right - resolution / 2, bottom - resolution / 2
    cx = rng.uniform(MARGIN_PX + half_w, resolution - MARGIN_PX - reach_r)
    cy = rng.uniform(MARGIN_PX + half_h, resolution - MARGIN_PX - reach_b)
    return [dataclasses.replace(probe, size=size, cx=cx, cy=cy) for size in sizes]


def write_size_pairs(root: str | Path, layout: str, count: int, seed: int = 0, resolution: int = 64) -> Path:
    """Write `count` stems into one folder per scale of `layout` under `root/layout`, and each stem's
    caption as `root/layout/<stem>.txt`; returns `root/layout`."""
    folders = LAYOUTS[layout]
    out = Path(root) / layout
    rng = np.random.default_rng(seed)
    width = max(3, int(math.log10(max(count, 1))) + 1)
    for name, _ in folders:
        (out / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        scenes = scaled_scenes(rng, [scale for _, scale in folders], BASE_SIZE[layout], resolution)
        stem = f"{index:0{width}d}"
        for (name, _), scene in zip(folders, scenes):
            render(scene).save(out / name / f"{stem}.png")
        (out / f"{stem}.txt").write_text(f"a {scenes[0].colour} {scenes[0].shape}\n", encoding="utf-8")
    return out


def write_scenes(out: str | Path, count: int, seed: int = 0, resolution: int = 64,
                 size_word: str | None = "medium") -> list[tuple[Path, str]]:
    """Write `count` single scenes (`scene000.png`, ...) into `out`, with `captions.txt` (one line per
    scene, "scene000.png: a medium red circle"): rendered inputs for `sliders-edit`. Returns the paths
    and captions; the scenes are those `sliders-eval --edit_scenes` edits for the same seed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (image, _, text) in enumerate(render_dataset(count, seed, resolution, size_word)):
        path = out / f"scene{index:03d}.png"
        image.save(path)
        written.append((path, text))
    (out / "captions.txt").write_text("".join(f"{path.name}: {text}\n" for path, text in written), encoding="utf-8")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the shapes-world size datasets for image sliders.")
    parser.add_argument("--out", default="datasets/shapes-size", help="root folder")
    parser.add_argument("--count", type=int, default=32, help="scenes per layout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--scenes", action="store_true",
                        help="write --count single medium-size scenes into --out instead (inputs for sliders-edit)")
    args = parser.parse_args(argv)
    if args.scenes:
        for path, text in write_scenes(args.out, args.count, args.seed, args.resolution):
            print(f"{path}: {text}")
        return 0
    for offset, layout in enumerate(LAYOUTS):
        folder = write_size_pairs(args.out, layout, args.count, args.seed + offset, args.resolution)
        names = ",".join(name for name, _ in LAYOUTS[layout])
        scales = ",".join(f"{scale:g}" for _, scale in LAYOUTS[layout])
        print(f"{folder}: --folders {names} --scales {scales}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
