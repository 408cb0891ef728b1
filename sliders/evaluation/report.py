"""The evaluation report: measured rows aggregated into figures (`summarise`), as Markdown, and written.

`summarise` needs only measured rows (as `measurers.measure_samples` makes them), no diffusion
model. `write_report` writes the JSON, the Markdown and the plot (see `plot`), each atomically.
It does not generate or measure images (see `run`, `measurers`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..files import write_text_atomic
from ..grids import combination_label
from ..sampling import write_png
from .measurers import is_reference, pair_key
from .plot import plot_report
from .statistics import describe, linear_fit, spearman

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PLOT = "plot.png"


def _mean(values: Sequence[float]) -> float:
    return describe(values)["mean"]


def jsonable(value: Any) -> Any:
    """Plain JSON types: NaN and infinities become None, tuples lists, numpy scalars Python ones."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _figures(
    rows: Sequence[Mapping],
    references: Mapping[tuple[int, int], Mapping],
    numeric: Sequence[str],
    categorical: Sequence[str],
    structure_keys: Sequence[str],
) -> dict:
    """n, numeric stats, numeric change vs the reference, categorical shares kept, structure means."""
    n = len(rows)
    figures: dict[str, Any] = {"n": n, "numeric": {}, "change": {}, "categorical_preserved": {}, "structure": {}}
    for attr in numeric:
        figures["numeric"][attr] = describe([float(r["values"][attr]) for r in rows])
        figures["change"][attr] = _mean(
            [float(r["values"][attr]) - float(references[pair_key(r)]["values"][attr]) for r in rows]
        )
    for attr in categorical:
        kept = [r["values"][attr] == references[pair_key(r)]["values"][attr] for r in rows]
        figures["categorical_preserved"][attr] = sum(kept) / n if n else math.nan
    for key in structure_keys:
        figures["structure"][key] = _mean([float(r["structure"][key]) for r in rows if key in r.get("structure", {})])
    return figures


def summarise(
    rows: Sequence[Mapping],
    *,
    target: str,
    numeric: Sequence[str],
    categorical: Sequence[str] = (),
    slider_names: Sequence[str] | None = None,
) -> dict:
    """Aggregate measured rows (as `measure_samples` makes them) into the report's figures.

    Returns (JSON-able, undefined figures as None):
    `combinations`: per scale combination (sorted), its figures against the reference;
    `sliders`: per slider, slope/intercept of the target on that slider's multiplier over every
    slider image, Spearman per prompt x seed averaged (`spearman_mean`) and pooled, and the curve
    (target stats per multiplier, pooled over the other sliders) the plot draws;
    `preservation`: figures over every non-reference slider image;
    `baseline`: figures of the "baseline" rows (prompt edits) against the unedited reference, or None.
    """
    numeric, categorical = tuple(numeric), tuple(categorical)
    if target not in numeric:
        raise ValueError(f"target {target!r} is not among the numeric attributes {numeric}")
    slider_rows = [r for r in rows if r.get("kind", "slider") != "baseline"]
    baseline_rows = [r for r in rows if r.get("kind") == "baseline"]
    if not slider_rows:
        raise ValueError("summarise needs at least one slider row")
    count = len(slider_rows[0]["multipliers"])
    if any(len(r["multipliers"]) != count for r in slider_rows):
        raise ValueError("every slider row needs one multiplier per slider")
    names = list(slider_names) if slider_names is not None else [f"slider{j + 1}" for j in range(count)]
    if len(names) != count:
        raise ValueError(f"{len(names)} slider names for {count} multipliers per row")

    references: dict[tuple[int, int], Mapping] = {}
    for row in slider_rows:
        if is_reference(row["multipliers"]):
            references.setdefault(pair_key(row), row)
    for row in rows:
        if pair_key(row) not in references:
            prompt_index, seed = pair_key(row)
            raise ValueError(f"no reference row (every multiplier 0) for prompt {prompt_index} seed {seed}")
    structure_keys = list(dict.fromkeys(key for r in rows for key in r.get("structure", {})))

    def figures(chosen: Sequence[Mapping]) -> dict:
        return _figures(chosen, references, numeric, categorical, structure_keys)

    combinations = []
    for combo in sorted({tuple(float(m) for m in r["multipliers"]) for r in slider_rows}):
        chosen = [r for r in slider_rows if tuple(float(m) for m in r["multipliers"]) == combo]
        combinations.append(
            {
                "multipliers": list(combo),
                "label": combination_label(names, combo),
                "reference": is_reference(combo),
                **figures(chosen),
            }
        )

    groups: dict[tuple[int, int], list[Mapping]] = {}
    for row in slider_rows:
        groups.setdefault(pair_key(row), []).append(row)
    sliders = []
    for j, name in enumerate(names):
        x = [float(r["multipliers"][j]) for r in slider_rows]
        y = [float(r["values"][target]) for r in slider_rows]
        slope, intercept = linear_fit(x, y)
        per_pair = [
            spearman([float(r["multipliers"][j]) for r in group], [float(r["values"][target]) for r in group])
            for group in groups.values()
        ]
        curve = []
        for multiplier in sorted(set(x)):
            values = [v for m, v in zip(x, y) if m == multiplier]
            curve.append({"multiplier": multiplier, "n": len(values), **describe(values)})
        sliders.append(
            {
                "name": name,
                "index": j,
                "target": target,
                "slope": slope,
                "intercept": intercept,
                "spearman_mean": float(np.mean(per_pair)),
                "spearman_pooled": spearman(x, y),
                "n": len(slider_rows),
                "pairs": len(per_pair),
                "curve": curve,
            }
        )

    changed = [r for r in slider_rows if not is_reference(r["multipliers"])]
    preservation = figures(changed)
    baseline = None
    if baseline_rows:
        prompts = {int(r["prompt_index"]): r["prompt"] for r in baseline_rows}
        baseline = {"prompts": [prompts[i] for i in sorted(prompts)], **figures(baseline_rows)}
    return jsonable(
        {"combinations": combinations, "sliders": sliders, "preservation": preservation, "baseline": baseline}
    )


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table_row(label: str, figures: Mapping, settings: Mapping, structure_keys: Sequence[str]) -> str:
    target = settings["target"]
    stats = figures["numeric"][target]
    cells = [label, str(figures["n"]), f"{_fmt(stats['mean'])} ± {_fmt(stats['std'])}"]
    cells.append(_fmt(figures["change"][target]))
    cells += [_fmt(figures["numeric"][attr]["mean"]) for attr in settings["numeric"] if attr != target]
    cells += [_pct(figures["categorical_preserved"][attr]) for attr in settings["categorical"]]
    cells += [_fmt(figures["structure"].get(key)) for key in structure_keys]
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def _table_header(settings: Mapping, structure_keys: Sequence[str], first: str) -> list[str]:
    target = settings["target"]
    columns = [first, "n", f"{target} mean ± std", f"{target} change"]
    columns += [f"{attr} mean" for attr in settings["numeric"] if attr != target]
    columns += [f"{attr} kept" for attr in settings["categorical"]]
    columns += [f"{key} mean" for key in structure_keys]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def report_markdown(report: Mapping) -> str:
    """The report as Markdown: settings, a row per scale combination, slope/Spearman lines, baseline."""
    settings = report["settings"]
    target = settings["target"]
    structure_keys = list(report["preservation"]["structure"])
    sliders = ", ".join(
        s["name"] + (f" (`{s['path']}`)" if s.get("path") else "") + " at " + ", ".join(f"{v:+g}" for v in s["scales"])
        for s in settings["sliders"]
    )
    lines = [
        f"# Slider evaluation: {target}",
        "",
        f"Sliders: {sliders}. Measurer `{settings['measurer']}`, target `{target}`.",
        (f"{len(settings['prompts'])} rendered scenes edited ({settings['edit']['inversion']} inversion, each "
         "scene's caption as the prompt)" if settings.get("edit") else
         f"{len(settings['prompts'])} prompts x {len(settings['seeds'])} seeds") + f"; {settings['steps']} steps, guidance "
        f"{settings['guidance_scale']:g}, start_noise {settings['start_noise']:g}, "
        f"{settings['width']}x{settings['height']}"
        + (f", base model `{settings['base_model']}`" if settings.get("base_model") else "")
        + (", sliders fused into the weights" if settings.get("fused") else "")
        + ".",
        f"Reference: every multiplier 0, {settings['reference']}. Change and kept are against the reference "
        "image of the same prompt and seed.",
        "",
    ]
    lines += _table_header(settings, structure_keys, "combination")
    for combo in report["combinations"]:
        label = combo["label"] + (" (reference)" if combo["reference"] else "")
        lines.append(_table_row(label, combo, settings, structure_keys))
    lines.append("")
    for s in report["sliders"]:
        lines.append(
            f"- {s['name']}: slope {_fmt(s['slope'])} {target} per unit multiplier; Spearman "
            f"{_fmt(s['spearman_mean'])} (mean over {s['pairs']} prompt x seed pairs), "
            f"{_fmt(s['spearman_pooled'])} pooled over {s['n']} images."
        )
    preservation = report["preservation"]
    kept = ", ".join(f"{attr} kept {_pct(v)}" for attr, v in preservation["categorical_preserved"].items())
    means = ", ".join(f"mean {key} {_fmt(v)}" for key, v in preservation["structure"].items())
    figures = "; ".join(part for part in (kept, means) if part)
    lines.append(f"- Preservation over {preservation['n']} non-reference images: {figures}.")
    baseline = report.get("baseline")
    if baseline:
        lines += ["", "## Baseline: prompt editing", ""]
        for index, (before, after) in enumerate(zip(settings["prompts"], settings["baseline_prompts"])):
            lines.append(f"- prompt {index}: \"{before}\" -> \"{after}\"")
        lines.append("")
        lines += _table_header(settings, structure_keys, "images")
        lines.append(_table_row("edited prompts", baseline, settings, structure_keys))
    if report.get("reconstruction"):
        lines += _reconstruction_lines(report)
    return "\n".join(lines) + "\n"


def _reconstruction_lines(report: Mapping) -> list[str]:
    """The reconstruction section of an edit evaluation (`evaluation.edits`)."""
    figures, edit = report["reconstruction"], report["settings"]["edit"]
    target = report["settings"]["target"]

    kept = ", ".join(f"{attr} {100 * share:.1f}%" for attr, share in figures["kept"].items())
    structure = ", ".join(f"{key} {_fmt(value)}" for key, value in figures["structure"].items())
    return [
        "",
        f"## Reconstruction ({edit['inversion']} inversion)",
        "",
        f"{figures['n']} rendered scenes (seed {edit['scene_seed']}), each inverted once with its caption. "
        f"PSNR of the scale-0 edit against the input: mean {_fmt(figures['psnr_db']['mean'])} dB "
        f"(min {_fmt(figures['psnr_db']['min'])}); of the VAE alone: {_fmt(figures['psnr_vae_db']['mean'])} dB. "
        f"Inversion: {_fmt(figures['inversion_seconds']['mean'])} s per image. "
        f"The scale-0 edit against its input: {kept}; {target} change {_fmt(figures['change'][target])}"
        + (f"; {structure}" if structure else "") + ".",
    ]


def write_report(report: Mapping, output_dir: str | Path) -> dict[str, Path]:
    """Write `report.json`, `report.md` and `plot.png` into `output_dir`; returns their paths by kind."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = jsonable(report)
    paths = {
        "json": write_text_atomic(output / REPORT_JSON, json.dumps(report, indent=2, allow_nan=False) + "\n"),
        "markdown": write_text_atomic(output / REPORT_MD, report_markdown(report)),
        "plot": write_png(plot_report(report), output / REPORT_PLOT),
    }
    logger.debug("wrote %s, %s and %s", *paths.values())
    return paths
