"""The faithful text-slider path against every fast option, side by side, from each run's stats.json.

Trains one slider per option with `sliders-train` (each in its own process, one after another, so
peak memory is per run and no two runs share the CPU), then prints a table of what `stats.json`
counted and timed: UNet samples per iteration, seconds per phase, peak memory, and the wall-time
ratio to the faithful run. Works on any config: the shapes model (`configs/shapes/size.yaml`), the
tiny model, or a full-size random SDXL (`benchmarks/random_sdxl.py`) on a GPU.

    python benchmarks/fast_options.py --config configs/shapes/size.yaml --out output/fast \\
        --options faithful,fast,xk2,reuse8 [--iterations 150] [-- extra sliders-train flags]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# Each option's sliders-train flags; "faithful" is the default path.
OPTIONS = {
    "faithful": [],
    "fast": ["--fast"],  # = xk4-late
    "xk4-late": ["--xk_max_steps", "4"],
    "xk4-even": ["--xk_max_steps", "4", "--xk_spacing", "even"],
    "xk2-even": ["--xk_max_steps", "2", "--xk_spacing", "even"],
    "xk8": ["--xk_max_steps", "8"],
    "reuse8": ["--trajectory_reuse", "8"],
    "reuse12": ["--trajectory_reuse", "12"],
    "reuse4-xk4-late": ["--trajectory_reuse", "4", "--xk_max_steps", "4"],
}


def train(option: str, args, extra: list[str]) -> dict:
    name = f"{args.name}_{option.replace('-', '_')}"
    command = [str(Path(sys.executable).parent / "sliders-train"), "--config", str(args.config), "--name", name,
               "--output_dir", str(args.out), "--overwrite", *OPTIONS[option], *extra]
    if args.iterations:
        command += ["--iterations", str(args.iterations)]
    subprocess.run(command, check=True)
    folder = next(Path(args.out).glob(f"{name}_alpha*"))
    stats = json.loads((folder / "stats.json").read_text())
    stats["slider"] = str(next(folder.glob("*_last.safetensors")))
    return stats


def table(results: dict[str, dict]) -> str:
    base = results.get("faithful")
    rows = [
        "| option | fwd samples/it | bwd samples/it | s/it | denoise s | frozen s | slider f+b s | optim s | peak | vs faithful |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for option, s in results.items():
        sec = s["seconds"]
        peak = ", ".join(f"{k} {v:.2f}" for k, v in s["peak_memory"].items())
        ratio = f"{base['seconds']['per_iteration'] / sec['per_iteration']:.2f}x" if base else "-"
        rows.append(
            f"| {option} | {s['forward_samples_per_iteration']:.2f} | {s['backward_samples_per_iteration']:.2f} | "
            f"{sec['per_iteration']:.3f} | {sec['partial_denoising']:.1f} | {sec['frozen_predictions']:.1f} | "
            f"{sec['slider_forward_backward']:.1f} | {sec['optimizer']:.2f} | {peak} | {ratio} |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="where the run folders go")
    parser.add_argument("--options", default="faithful,fast", help=f"comma separated, of {', '.join(OPTIONS)}")
    parser.add_argument("--iterations", type=int, help="override train.iterations")
    parser.add_argument("--name", default="bench")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    results = {option: train(option, args, extra) for option in args.options.split(",")}
    (args.out / "fast_options.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
