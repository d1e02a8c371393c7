"""Every scenario with early stop against its fixed-iteration run (docs/method.md, "Early stop").

``measure(settings)`` runs each scenario of ``scenarios.SCENARIOS`` as the suite does, and beside
each of its ``run(...)`` calls the same image, models and config with early stop on at each
(stop_iou, min_iterations) setting; the scenario's own checks see the fixed run. Per setting it
returns each call's IoU with the fixed run's binary mask and the iterations both ran.

    python tests/early_stop_harness.py     # the table in docs/method.md
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import scenarios  # noqa: E402

from int_engine.bench.early_stop import SETTINGS, iou  # noqa: E402


def measure(settings: list[tuple[float, int]]) -> dict[tuple[float, int], list[dict]]:
    """setting -> one record per scenario ``run`` call: scenario, IoU, iterations fixed / stopped."""
    out: dict[tuple[float, int], list[dict]] = {s: [] for s in settings}
    real = scenarios.run
    current = [""]

    def run_both(image, models, cfg, *args, **kwargs):
        fixed = real(image, models, replace(cfg, early_stop=False), *args, **kwargs)
        for stop_iou, min_iterations in settings:
            stopped = real(image, models, replace(cfg, early_stop=True, stop_iou=stop_iou, min_iterations=min_iterations))
            out[(stop_iou, min_iterations)].append(
                {
                    "scenario": current[0],
                    "iou": iou(stopped.binary, fixed.binary),
                    "fixed": len(fixed.trace.iterations),
                    "stopped": len(stopped.trace.iterations),
                }
            )
        return fixed

    scenarios.run = run_both
    try:
        for name, scenario in scenarios.SCENARIOS.items():
            current[0] = name
            scenario()
    finally:
        scenarios.run = real
    return out


def table(measured: dict[tuple[float, int], list[dict]]) -> str:
    lines = [
        "| setting | IoU vs fixed, median | worst (scenario) | iterations run / fixed | fewer iterations |",
        "|---|---|---|---|---|",
    ]
    for (stop_iou, min_iterations), records in measured.items():
        ious = [r["iou"] for r in records]
        worst = min(records, key=lambda r: r["iou"])
        ran, fixed = sum(r["stopped"] for r in records), sum(r["fixed"] for r in records)
        lines.append(
            f"| stop_iou {stop_iou:g}, min_iterations {min_iterations} | {np.median(ious):.4f} | "
            f"{worst['iou']:.4f} ({worst['scenario']}) | {ran} / {fixed} | {100 * (1 - ran / fixed):.0f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(measure(SETTINGS)))
