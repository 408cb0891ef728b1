"""Measuring sliders the way the paper does: attribute change per scale, structure kept, prompt editing.

A package by concern, every public name importable from here:
`measurers`  what is read from each image (`Measurer`, the `MEASURERS` registry: one module per
             measurer, `shapes` and `clip`) and the measured rows (`measure_samples`, in batches);
`statistics` Spearman, the least-squares line and value summaries, through `scipy.stats`;
`quality`    range, smoothness, monotone share and preservation of each slider (after FreeSliders);
`report`     the rows aggregated (`summarise`, no diffusion model needed), as Markdown, and written;
`plot`       the report's plots, drawn by matplotlib;
`run`        `evaluate` (generate and measure), `run_evaluation` (validate, load, evaluate, write)
             and the reading of the `sliders-eval` inputs (prompt files, replacements; seed ranges are
             `sliders.parsing.parse_seeds`, importable from here too);
`edits`, `edit_results`  edits measured: rendered scenes edited here, or a `sliders-edit` folder.
It does not define the command line (see `cli`) and does not train.
"""

from ..parsing import MAX_SEEDS, parse_seeds
from ..planning import GenerationSettings
from .measurers import MEASURERS, Measurer, ShapesMeasurer, get_measurer, measure_samples, parse_measurer_args
from .plot import PLOT_BOTTOM, PLOT_LEFT, PLOT_RIGHT, PLOT_SIZE, PLOT_TOP, SERIES_COLOURS, plot_report, plot_scores
from .quality import conceptual_range, conceptual_smoothness, is_monotone, quality, slider_quality
from .report import REPORT_JSON, REPORT_MD, REPORT_PLOT, REPORT_SCORES, report_markdown, summarise, write_report
from .run import (
    BASELINE_GRID_NAME,
    IMAGES_FOLDER,
    baseline_from_replace,
    evaluate,
    parse_replacements,
    read_prompt_lines,
    run_evaluation,
)
from .statistics import average_ranks, linear_fit, spearman

__all__ = [
    "BASELINE_GRID_NAME",
    "IMAGES_FOLDER",
    "MAX_SEEDS",
    "MEASURERS",
    "PLOT_BOTTOM",
    "PLOT_LEFT",
    "PLOT_RIGHT",
    "PLOT_SIZE",
    "PLOT_TOP",
    "REPORT_JSON",
    "REPORT_MD",
    "REPORT_PLOT",
    "REPORT_SCORES",
    "SERIES_COLOURS",
    "GenerationSettings",
    "Measurer",
    "ShapesMeasurer",
    "average_ranks",
    "baseline_from_replace",
    "conceptual_range",
    "conceptual_smoothness",
    "evaluate",
    "get_measurer",
    "is_monotone",
    "linear_fit",
    "measure_samples",
    "parse_measurer_args",
    "parse_replacements",
    "parse_seeds",
    "plot_report",
    "plot_scores",
    "quality",
    "read_prompt_lines",
    "report_markdown",
    "run_evaluation",
    "slider_quality",
    "spearman",
    "summarise",
    "write_report",
]
