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
from ..outputs import write_png
from .measurers import is_reference, pair_key
from .plot import plot_report, plot_scores
from .statistics import describe, linear_fit, spearman

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PLOT = "plot.png"
# Every figure against the multiplier; written for measurers that score a text pair (CLIP).
REPORT_SCORES = "scores.png"


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
    if report.get("quality"):
        lines += _quality_lines(report)
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


def _quality_lines(report: Mapping) -> list[str]:
    """The slider-quality section (`quality`): one row per slider and the baseline, side by side, the
    definitions, and every figure per multiplier."""
    quality, settings = report["quality"], report["settings"]
    target, key = quality["target"], quality["preservation_key"]
    positive, negative = quality["positive_attribute"], quality["negative_attribute"]
    measured = settings.get("measurer_settings") or {}
    lines = ["", "## Slider quality", ""]
    if measured.get("positive"):
        lines.append(f"Texts ({measured.get('texts_from', 'options')}): positive \"{_cell(measured['positive'])}\", "
                     f"negative \"{_cell(measured['negative'])}\"; model `{measured.get('model', '')}`"
                     + (f"; LPIPS {measured['lpips']}" if measured.get("lpips") else
                        f"; LPIPS not measured: {measured.get('lpips_missing')}") + ".")
        lines.append("")
    sp = f"SP ({key})" if key else "SP"
    lines += [f"| | pairs | CR | CSM | monotone share | {sp} | {target} change at the largest multiplier |",
              "|---|---|---|---|---|---|---|"]
    for s in quality["sliders"]:
        top = s["curves"][-1] if s["curves"] else None
        change = _fmt(top["change"].get(target)) + f" (at {top['multiplier']:+g})" if top else "-"
        lines.append(f"| {_cell(s['name'])} | {s['pairs']} | {_fmt(s['range'])} | {_fmt(s['smoothness'])} | "
                     f"{_pct(s['monotone_share'])} | {_fmt(s['preservation'])} | {change} |")
    if quality.get("baseline"):
        b = quality["baseline"]
        lines.append(f"| prompt edit | {b['n']} images | - | - | - | {_fmt(b['preservation'])} | "
                     f"{_fmt(b['change'].get(target))} |")
    cr = (f"((P(m_max) - P(m_min)) + (N(m_min) - N(m_max))) / 2 with P = `{positive}`, N = `{negative}`"
          if positive and negative else f"`{target}`(m_max) - `{target}`(m_min)")
    lines += [
        "",
        "Per slider and prompt x seed pair, over that slider's multipliers (other sliders at 0, the reference "
        "included), averaged over pairs (after FreeSliders, arXiv 2511.00103; docs/metrics.md):",
        f"- CR, Conceptual Range (higher: reaches further): {cr}.",
        f"- CSM, Conceptual Smoothness (lower: even steps): the standard deviation of the per-unit steps of "
        f"`{target}` between consecutive multipliers.",
        f"- Monotone share: the share of pairs whose `{target}` rises strictly with the multiplier.",
        "- SP, Semantic Preservation (lower: less changed): "
        + (f"the mean `{key}` of the non-reference images against the reference image." if key else
           f"not measured (LPIPS: {measured['lpips_missing']})." if measured.get("lpips_missing") else
           "not measured (the measurer has no preservation figure)."),
    ]
    if positive and negative:
        lines.append(f"- `{positive}`, `{negative}`: CLIP score, 100 x cosine of the image and text embeddings; "
                     f"`{target}` = `{positive}` - `{negative}`; a change is against the scale-0 image of the same "
                     "prompt and seed (the paper's change in CLIP score); `clip_image_distance`: 1 - cosine of the two "
                     "images' CLIP embeddings; `lpips`: LPIPS to the scale-0 image.")
    for s in quality["sliders"]:
        keys = list(dict.fromkeys(k for c in s["curves"] for k in c["structure"]))
        columns = ["multiplier", "n"] + [f"{a} mean" for a in settings["numeric"]] + \
                  [f"{a} change" for a in settings["numeric"]] + keys
        lines += ["", f"{_cell(s['name'])}, every figure per multiplier:", "",
                  "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for c in s["curves"]:
            cells = [f"{c['multiplier']:+g}", str(c["n"])] + [_fmt(c["values"][a]) for a in settings["numeric"]]
            cells += [_fmt(c["change"][a]) for a in settings["numeric"]] + [_fmt(c["structure"].get(k)) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(report: Mapping, output_dir: str | Path) -> dict[str, Path]:
    """Write `report.json`, `report.md` and `plot.png` into `output_dir` (and `scores.png`, every figure
    against the multiplier, for a measurer that scores a text pair); returns their paths by kind."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = jsonable(report)
    paths = {
        "json": write_text_atomic(output / REPORT_JSON, json.dumps(report, indent=2, allow_nan=False) + "\n"),
        "markdown": write_text_atomic(output / REPORT_MD, report_markdown(report)),
        "plot": write_png(plot_report(report), output / REPORT_PLOT),
    }
    if report.get("quality") and report["quality"].get("positive_attribute"):
        paths["scores"] = write_png(plot_scores(report), output / REPORT_SCORES)
    logger.debug("wrote %s, %s and %s", *paths.values())
    return paths
