"""Tabulate the reports of scripts/image_slider_options.sh: per option, slope, mean Spearman and the
colour and shape kept at each seed, and their means (Markdown, for EVALUATION.md).

Usage: python scripts/summarize_image_options.py [output/eval/image-options]
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path


def kept(report: dict, name: str) -> float:
    """The share of non-reference images whose `name` (colour, shape) equals the scale-0 image's."""
    return float(report["preservation"]["categorical_preserved"][name])


def main(argv=None) -> int:
    root = Path((argv or sys.argv[1:] or ["output/eval/image-options"])[0])
    table: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for path in sorted(root.glob("*-s*/report.json")):
        match = re.fullmatch(r"(.+)-s(\d+)", path.parent.name)
        if match:
            table[match[1]].append((int(match[2]), json.loads(path.read_text(encoding="utf-8"))))
    print("| option | seeds | slope px/unit per seed | Spearman per seed | mean Spearman | colour / shape kept (mean) |")
    print("|---|---|---|---|---|---|")
    for name, runs in table.items():
        runs.sort()
        slopes = [r["sliders"][0]["slope"] for _, r in runs]
        spearman = [r["sliders"][0]["spearman_mean"] for _, r in runs]
        colour = [kept(r, "colour") for _, r in runs]
        shape = [kept(r, "shape") for _, r in runs]

        def mean(values):
            values = [v for v in values if v is not None]
            return sum(values) / len(values) if values else float("nan")

        print(f"| {name} | {' '.join(str(s) for s, _ in runs)} | {' / '.join(f'{v:.2f}' for v in slopes)} "
              f"| {' / '.join(f'{v:.2f}' for v in spearman)} | {mean(spearman):.2f} "
              f"| {100 * mean(colour):.0f}% / {100 * mean(shape):.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
