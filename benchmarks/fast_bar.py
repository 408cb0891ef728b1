"""The fast text-slider bar of EVALUATION.md: each slider's sliders-eval report against a faithful one.

    python benchmarks/fast_bar.py FAITHFUL_REPORT_DIR OTHER_REPORT_DIR [...]

Prints, per report: slope, mean Spearman, colour and shape kept, mean centroid shift, and for every
report after the first its slope relative to the first's and whether each bar holds (Spearman >= 0.95,
slope within 15%, colour and shape within 2 points, centroid shift no larger).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summary(folder: Path) -> dict:
    report = json.loads((folder / "report.json").read_text())
    slider = report["sliders"][0]
    kept = report["preservation"]
    return {
        "name": slider["name"],
        "slope": slider["slope"],
        "spearman": slider["spearman_mean"],
        "colour": 100 * kept["categorical_preserved"]["colour"],
        "shape": 100 * kept["categorical_preserved"]["shape"],
        "centroid": kept["structure"]["centroid_shift"],
    }


def main(argv: list[str]) -> int:
    rows = [summary(Path(folder)) for folder in argv]
    base = rows[0]
    print("| slider | slope | vs first | Spearman | colour kept | shape kept | centroid shift | bar |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        ratio = row["slope"] / base["slope"] - 1
        checks = [
            row["spearman"] >= 0.95,
            abs(ratio) <= 0.15,
            row["colour"] >= base["colour"] - 2,
            row["shape"] >= base["shape"] - 2,
            row["centroid"] <= base["centroid"],
        ]
        verdict = "-" if row is base else ("met" if all(checks) else "missed: " + ", ".join(
            name for name, ok in zip(("Spearman", "slope", "colour", "shape", "centroid"), checks) if not ok))
        print(f"| {row['name']} | {row['slope']:.3f} | {ratio:+.1%} | {row['spearman']:.2f} | {row['colour']:.1f}% | "
              f"{row['shape']:.1f}% | {row['centroid']:.3f} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
