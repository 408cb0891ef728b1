"""Measuring what `sliders-edit` wrote (`sliders-eval --edit_results FOLDER`): real images and their edits.

Reads the folder's `edits.json` (the input images, their prompts, the sliders and scales) and the
edited images beside it, then measures them as `run_evaluation` measures generated images: the
target and every numeric attribute per scale, their change against the scale-0 edit of the same
input, and the quality figures (`quality`). The structure figures (LPIPS, CLIP image distance, ...)
of every edit, the scale-0 one included, are taken against the input image itself, so the
reference row shows how far the reconstruction already is from the photo. No diffusion model is
loaded; it does not edit (see `editing`) and does not define the command line (see `cli`).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path
from typing import Sequence

from PIL import Image

from .. import __version__
from ..editing import REPORT_NAME
from ..errors import InputError, OutputError
from ..generation import Sample
from ..models import parse_device
from ..outputs import edit_name
from ..parsing import SliderSpec
from .measurers import Measurer, is_reference, measure_samples, measurer_name, pair_key
from .report import jsonable, summarise, write_report
from .run import build_measurer, check_measurer, measured_quality, measurer_settings

logger = logging.getLogger(__name__)


def _read_run(folder: Path) -> dict:
    path = folder / REPORT_NAME
    if not path.is_file():
        raise InputError(f"--edit_results '{folder}' has no {REPORT_NAME}; give a folder sliders-edit wrote")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
        sliders = run["settings"]["sliders"]
        images = run["images"]
        prompts = run["settings"]["prompts"]
        names = [str(s["name"]) for s in sliders]
        scales = [[float(v) for v in s["scales"]] for s in sliders]
        inputs = [(Path(str(row["image"])), str(row["name"])) for row in images]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"'{path}' is not an edits.json that sliders-edit wrote ({error}); edit the images again") from None
    if len(prompts) != len(inputs) or not inputs or not sliders:
        raise InputError(f"'{path}' lists {len(inputs)} images, {len(prompts)} prompts and {len(sliders)} sliders; "
                         "edit the images again")
    return {"run": run, "names": names, "scales": scales, "inputs": inputs, "prompts": [str(p) for p in prompts]}


def _open(path: Path, what: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise InputError(f"{what} '{path}' cannot be read ({error}); edit the images again") from None


def edit_result_samples(folder: str | Path) -> tuple[dict, list[Sample], dict[tuple[int, int], Image.Image]]:
    """(the edit run, every edited image as a Sample (prompt index = input index, seed 0), each input image
    by (index, 0)). Every slider's scales must hold 0: the scale-0 edit is the reference."""
    folder = Path(folder)
    found = _read_run(folder)
    for name, scales in zip(found["names"], found["scales"]):
        if 0.0 not in scales:
            raise InputError(f"slider '{name}' in '{folder / REPORT_NAME}' was not edited at scale 0, the reference an "
                             "edit evaluation measures against; edit again with 0 among the scales")
    samples, inputs = [], {}
    for index, ((source, name), prompt) in enumerate(zip(found["inputs"], found["prompts"])):
        if not source.is_file():
            raise InputError(f"input image '{source}' (of {folder / REPORT_NAME}) is not there any more; the edits are "
                             "measured against their inputs, so put it back")
        inputs[(index, 0)] = _open(source, "input image")
        for combo in itertools.product(*found["scales"]):
            path = folder / edit_name(name, combo, found["names"])
            if not path.is_file():
                raise InputError(f"edited image '{path}' is missing; edit the images again")
            samples.append(Sample(index, prompt, 0, tuple(combo), _open(path, "edited image")))
    return found, samples, inputs


def run_edit_results_evaluation(
    folder: str | Path,
    *,
    output: str | Path,
    measurer: "str | Measurer" = "shapes",
    target: str | None = None,
    measurer_args: Sequence[str] | dict | None = None,
    device: str | None = None,
) -> dict[str, Path]:
    """Measure a `sliders-edit` output folder and write the report (`report.json`, `report.md`,
    `plot.png`, and `scores.png` for a text-pair measurer) into `output`."""
    started = time.perf_counter()
    registered, target = check_measurer(measurer, target)
    found, samples, inputs = edit_result_samples(folder)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"output '{output}' exists and is not a folder; choose another --output")
    specs = [SliderSpec(Path(s["path"]), None) for s in found["run"]["settings"]["sliders"]
             if Path(str(s.get("path", ""))).is_file()]
    measurer_instance = build_measurer(registered, measurer, measurer_args, parse_device(device), specs)

    edits = {pair_key(s): s.image for s in samples if is_reference(s.multipliers)}
    rows = measure_samples(samples, measurer_instance, kind="slider", references=inputs)
    # Values change against the scale-0 edit (the reference row); structure stays against the input.
    names = found["names"]
    summary = summarise(rows, target=target, numeric=measurer_instance.numeric,
                        categorical=measurer_instance.categorical, slider_names=names)
    summary["quality"] = measured_quality(rows, measurer_instance, target, names)
    width, height = samples[0].image.size
    settings = found["run"]["settings"]
    report = {
        "sliders_version": __version__,
        "settings": {
            "sliders": [{"name": n, "path": s.get("path"), "scales": v}
                        for n, s, v in zip(names, settings["sliders"], found["scales"])],
            "edit_results": str(folder),
            "prompts": found["prompts"],
            "seeds": [0],
            "baseline_prompts": None,
            "measurer": measurer_name(measurer_instance),
            "measurer_settings": measurer_settings(measurer_instance),
            "target": target,
            "numeric": list(measurer_instance.numeric),
            "categorical": list(measurer_instance.categorical),
            "reference": (f"the scale-0 edit of each of the {len(edits)} input images; structure figures against "
                          "the input image itself"),
            "start_noise": settings.get("start_noise", 0), "steps": settings.get("steps", 0),
            "guidance_scale": settings.get("guidance_scale", 0), "height": height, "width": width,
            "negative_prompt": settings.get("negative_prompt", ""), "fused": False,
            "base_model": settings.get("model"), "inversion": settings.get("inversion"),
        },
        **summary,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 2),
    }
    try:
        paths = write_report(jsonable(report), output)
    except OSError as error:
        raise OutputError(f"could not write the report into '{output}' ({error.strerror or error})") from None
    logger.info("measured %d edits of %d images in %.1f s", len(samples), len(inputs), report["seconds"])
    return paths


__all__ = ["edit_result_samples", "run_edit_results_evaluation"]
