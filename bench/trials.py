"""Several trials of one benchmark, as the paper reports "the average of three trials".

Trial k runs the whole bench with ``seed = base seed + k`` (the VLM's sampling when
``temperature`` > 0, and the inpainting noise) into ``OUT/trial-<k>/``, a complete run folder
of its own; ``OUT/trials.json`` and ``OUT/trials.md`` then give, per metric, the mean, the
sample standard deviation and every trial's value. A trial's folder resumes like any run.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from .metrics import SUMMARY_KEYS
from .report import EXTRAS, SCORED_MEANING, TABLE

TRIALS_JSON, TRIALS_MD = "trials.json", "trials.md"


def trial_dir(out: str | Path, k: int) -> Path:
    return Path(out) / f"trial-{k}"


def run_trials(run_one: Callable[[int, Path], dict[str, Any]], out: str | Path, trials: int, base_seed: int) -> dict[str, Any]:
    """Run ``trials`` trials: ``run_one(seed, folder)`` benchmarks with ``seed`` into ``folder``
    and returns that run's summary. Writes and returns the aggregate (see the module's doc)."""
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [run_one(base_seed + k, trial_dir(out, k)) for k in range(trials)]
    aggregate = aggregate_trials(summaries, [base_seed + k for k in range(trials)])
    (out / TRIALS_JSON).write_text(json.dumps(aggregate, indent=2) + "\n", encoding="utf-8")
    (out / TRIALS_MD).write_text(trials_markdown(aggregate), encoding="utf-8")
    return aggregate


def aggregate_trials(summaries: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per metric (``SUMMARY_KEYS`` present in every trial): mean, sample std (0 for one trial)
    and the trials' values, in seed order."""
    metrics = {}
    for key in SUMMARY_KEYS:
        values = [s[key] for s in summaries if key in s]
        if len(values) == len(summaries) and values:
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            metrics[key] = {"mean": statistics.fmean(values), "std": std, "trials": values}
    first = summaries[0]
    return {
        "dataset": first["dataset"],
        "task": first["task"],
        "score": first.get("score"),
        "seeds": seeds,
        "images": first["images"],
        "failed": [len(s["failed"]) for s in summaries],
        "metrics": metrics,
    }


def trials_markdown(aggregate: dict[str, Any]) -> str:
    """OUT/trials.md: the paper's Table 1 columns as mean ± std over the trials."""
    cols = [c for c in TABLE + EXTRAS if c[0] in aggregate["metrics"]]
    cell = lambda key: f"{aggregate['metrics'][key]['mean']:.3f} ± {aggregate['metrics'][key]['std']:.3f}"  # noqa: E731
    scored = SCORED_MEANING.get(aggregate.get("score") or "soft", aggregate.get("score"))
    lines = [
        f'# int-engine bench: {aggregate["dataset"]} (task: "{aggregate["task"]}"), {len(aggregate["seeds"])} trials',
        "",
        f"Seeds {', '.join(map(str, aggregate['seeds']))}; scored: each image's {scored}; mean ± sample std.",
        "",
        "| Dataset | " + " | ".join(c[1] for c in cols) + " |",
        "|" + "---|" * (len(cols) + 1),
        f"| {aggregate['dataset']} | " + " | ".join(cell(c[0]) for c in cols) + " |",
    ]
    return "\n".join(lines) + "\n"
