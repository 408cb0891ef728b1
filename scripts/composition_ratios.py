"""Each slider's effect with the other on, as a share of its effect alone, from a two-slider
`sliders-eval` report (every combination of the two sliders' scales): per combination of non-zero
scales, the mean change of each target against the image with both at 0, together over alone, with
a 95% bootstrap interval over the prompt-seed pairs (EVALUATION.md, "Composition").

Usage: python scripts/composition_ratios.py REPORT.json [--targets size,fill_ratio] [--draws 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("--targets", default="size,fill_ratio", help="the first slider's target, the second's")
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args(argv)
    report = json.loads(open(args.report, encoding="utf-8").read())
    targets = args.targets.split(",")
    values: dict[tuple, dict[tuple, dict]] = defaultdict(dict)  # (prompt, seed) -> multipliers -> values
    for row in report["rows"]:
        if row["kind"] == "slider":
            values[(row["prompt_index"], row["seed"])][tuple(row["multipliers"])] = row["values"]
    pairs = sorted(values)
    scales = sorted({m for per in values.values() for m in per})
    rng = random.Random(0)
    print("| scales | " + " | ".join(f"{t}: together / alone" for t in targets) + " |")
    print("|---|" + "---|" * len(targets))
    for both in scales:
        if 0.0 in both:
            continue
        cells = []
        for i, target in enumerate(targets):
            alone = tuple(s if j == i else 0.0 for j, s in enumerate(both))
            zero = tuple(0.0 for _ in both)

            def ratio(sample):
                together = sum(values[p][both][target] - values[p][zero][target] for p in sample)
                single = sum(values[p][alone][target] - values[p][zero][target] for p in sample)
                return together / single if single else float("nan")

            point = ratio(pairs)
            boot = sorted(ratio([rng.choice(pairs) for _ in pairs]) for _ in range(args.draws))
            low, high = boot[int(0.025 * args.draws)], boot[int(0.975 * args.draws) - 1]
            cells.append(f"{100 * point:.0f}% [{100 * low:.0f}%, {100 * high:.0f}%]")
        print(f"| {', '.join(f'{s:g}' for s in both)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
