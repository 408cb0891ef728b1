"""The evaluation plot: the target's mean per slider multiplier, min-to-max bars, the baseline as a dashed line.

Drawn by matplotlib on its Agg canvas (a `Figure` of its own, no pyplot), so no global backend or
style state is touched; `plot_report` returns a PIL image, which `report.write_report` writes
atomically. It reads a finished report and computes no statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

# The plot, in pixels: the axes sit inside these margins; the right margin holds the legend.
PLOT_SIZE = (720, 440)
PLOT_DPI = 100
PLOT_LEFT, PLOT_TOP, PLOT_RIGHT, PLOT_BOTTOM = 80, 40, 180, 60
SERIES_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75))
BASELINE_COLOUR = (90, 90, 90)
GRID_COLOUR = (225, 225, 225)
# Sliders sharing a multiplier are drawn this many pixels apart, so their bars do not hide each other.
NUDGE = 5
# Multipliers are ticked one by one up to this many; more get matplotlib's own ticks.
MAX_EXACT_TICKS = 11
LEGEND_CHARS = 20


def _colour(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(channel / 255 for channel in rgb)


def _literal(text: str) -> str:
    # matplotlib reads text between two '$' as math, and fails to draw what does not parse as math.
    return text.replace("$", r"\$")


def plot_report(report: Mapping) -> "Image.Image":
    """The target's mean (bars: min to max) against each slider's multiplier; dashed: the baseline mean."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import offset_copy
    from PIL import Image

    target = report["settings"]["target"]
    series = [(s["name"], [p for p in s["curve"] if p["mean"] is not None]) for s in report["sliders"]]
    baseline = report.get("baseline")
    baseline_mean = baseline["numeric"][target]["mean"] if baseline else None

    width, height = PLOT_SIZE
    figure = Figure(figsize=(width / PLOT_DPI, height / PLOT_DPI), dpi=PLOT_DPI, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_axes((
        PLOT_LEFT / width, PLOT_BOTTOM / height,
        (width - PLOT_LEFT - PLOT_RIGHT) / width, (height - PLOT_TOP - PLOT_BOTTOM) / height,
    ))
    axes.set_axisbelow(True)
    axes.grid(axis="y", color=_colour(GRID_COLOUR))

    handles = []
    for j, (name, points) in enumerate(series):
        spread = [[p["mean"] - p["min"] for p in points], [p["max"] - p["mean"] for p in points]]
        short = name if len(name) <= LEGEND_CHARS else name[: LEGEND_CHARS - 1] + "..."
        handles.append(axes.errorbar(
            [p["multiplier"] for p in points], [p["mean"] for p in points], yerr=spread,
            color=_colour(SERIES_COLOURS[j % len(SERIES_COLOURS)]), linewidth=2, elinewidth=1, capsize=4,
            marker="o", markersize=6, label=_literal(short),
        ))
        # Shifted on the screen only, after the axis limits took the data in: the limits stay those of
        # the multipliers themselves.
        shift = offset_copy(axes.transData, figure, x=(j - (len(series) - 1) / 2) * NUDGE, y=0, units="dots")
        for artist in handles[-1].get_children():
            artist.set_transform(shift)
    if baseline_mean is not None:
        handles.append(axes.axhline(baseline_mean, color=_colour(BASELINE_COLOUR), linestyle="--", linewidth=2,
                                    label="baseline (prompt edit)"))

    multipliers = sorted({p["multiplier"] for _, points in series for p in points})
    if multipliers and len(multipliers) <= MAX_EXACT_TICKS:
        axes.set_xticks(multipliers, labels=[f"{value:+g}" if value else "0" for value in multipliers])
    axes.set_xlabel("slider multiplier")
    axes.set_ylabel(_literal(target))
    axes.set_title(_literal(f"{target}: mean per multiplier (bars: min to max)"))
    if handles:  # in drawing order: the sliders, then the baseline
        axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
                    fontsize="small", handlelength=1.5)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


# The scores plot: one panel per measured figure, this many panels to a row, each this big (pixels).
SCORES_COLUMNS = 3
SCORES_PANEL = (340, 260)


def plot_scores(report: Mapping) -> "Image.Image":
    """Every figure against each slider's multiplier (its other sliders at 0), one panel each: the mean
    of every numeric attribute, its change against the reference, and every structure figure; the
    prompt-editing baseline as a dashed line where it has that figure. Reads `report["quality"]`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    quality = report["quality"]
    sliders = quality["sliders"]
    numeric = list(report["settings"]["numeric"])
    structure = list(dict.fromkeys(key for s in sliders for c in s["curves"] for key in c["structure"]))
    baseline = report.get("baseline")
    panels = ([("values", attr, attr, baseline["numeric"][attr]["mean"] if baseline else None) for attr in numeric]
              + [("change", attr, f"{attr} change vs scale 0", baseline["change"][attr] if baseline else None)
                 for attr in numeric]
              + [("structure", key, f"{key} vs scale 0", baseline["structure"].get(key) if baseline else None)
                 for key in structure])
    columns = min(SCORES_COLUMNS, len(panels))
    rows = -(-len(panels) // columns)
    width, height = SCORES_PANEL[0] * columns, SCORES_PANEL[1] * rows
    figure = Figure(figsize=(width / PLOT_DPI, height / PLOT_DPI), dpi=PLOT_DPI, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    for index, (part, key, title, dashed) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.grid(color=_colour(GRID_COLOUR))
        for j, s in enumerate(sliders):
            points = [(c["multiplier"], c[part].get(key)) for c in s["curves"]]
            points = [(x, y) for x, y in points if y is not None and np.isfinite(y)]
            if points:
                axes.plot(*zip(*points), marker="o", color=_colour(SERIES_COLOURS[j % len(SERIES_COLOURS)]),
                          label=_literal(s["name"][:LEGEND_CHARS]))
        if dashed is not None:
            axes.axhline(dashed, color=_colour(BASELINE_COLOUR), linestyle="--", label="prompt edit")
        axes.set_title(_literal(title), fontsize="small")
        axes.set_xlabel("multiplier", fontsize="small")
        axes.tick_params(labelsize="x-small")
        if index == 0:
            axes.legend(fontsize="x-small", frameon=False)
    figure.tight_layout()
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
