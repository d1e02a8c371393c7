"""``int-engine bench``: a dataset run folder, or runs compared."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from .common import FATAL, _config, _models_dir, add_config_flags


def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..api import IntEngine
    from ..bench.run import run_bench
    from ..errors import IntEngineError

    if args.compare or args.compare_out:
        return _cmd_compare(args)
    if not args.dataset or not args.out:
        print("error: bench needs --dataset and --out (or --compare RUN RUN...)", file=sys.stderr)
        return FATAL
    try:
        dataset = _open_dataset(args)
        if not args.config and not args.preset:
            args.preset = dataset.preset
        cfg = _config(args)
        models_dir = _models_dir(args, cfg)
        # on Ray the actors load the models; the driver only writes the run folder
        engine = None if args.ray else IntEngine(cfg, models_dir=models_dir)
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    total = min(len(dataset.pairs), args.limit) if args.limit else len(dataset.pairs)
    bar = tqdm(total=total, unit="img", disable=args.quiet, desc=dataset.name)
    failures = 0

    def progress(row: dict) -> None:
        nonlocal failures
        failures += not row["ok"]
        if not row["ok"]:
            tqdm.write(f"error: {row['image']}: {row['error']}", file=sys.stderr)
        bar.update(1)
        bar.set_postfix(failed=failures)

    label = str(models_dir) if models_dir else None

    def run_one(trial_cfg, out) -> dict:
        if engine is None:
            return _bench_on_ray(args, trial_cfg, dataset, models_dir, label, progress, out)
        engine.config = trial_cfg  # the next images' algorithm settings (the seed); models and batching stay
        return run_bench(
            engine,
            dataset,
            out,
            limit=args.limit,
            resume=args.resume,
            models_label=label,
            on_image=progress,
            models_dir=models_dir,
            score=args.score,
        )

    try:
        if args.trials is None:
            summary = run_one(cfg, args.out)
            failed = len(summary["failed"])
        else:
            from ..bench.trials import TRIALS_MD, run_trials
            from ..config import apply_overrides

            def trial(seed: int, out: Path) -> dict:
                bar.reset()
                bar.set_description(f"{dataset.name} seed {seed}")
                return run_one(apply_overrides(cfg, [f"seed={seed}"]), out)

            summary = run_trials(trial, args.out, args.trials, cfg.seed)
            failed = max(summary["failed"])
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    finally:
        bar.close()
        if engine is not None:
            engine.close()
    print((Path(args.out) / ("summary.md" if args.trials is None else TRIALS_MD)).read_text(encoding="utf-8"))
    return min(failed, 100)


def _cmd_compare(args: argparse.Namespace) -> int:
    """``bench --compare RUN RUN... [--compare-out DIR]``: the runs side by side."""
    from ..bench.compare import compare

    if not args.compare:
        print("error: --compare-out goes with --compare RUN RUN...", file=sys.stderr)
        return FATAL
    if len(args.compare) < 2:
        print(f"error: --compare needs at least two run folders (got only {args.compare[0]})", file=sys.stderr)
        return FATAL
    try:
        print(compare(args.compare, args.compare_out), end="")
    except (OSError, KeyError, ValueError) as err:
        print(f"error: cannot compare {' '.join(args.compare)}: {err}", file=sys.stderr)
        return FATAL
    if args.compare_out:
        print(f"wrote compare.md, compare.csv, compare.tex to {args.compare_out}", file=sys.stderr)
    return 0


def _open_dataset(args: argparse.Namespace):
    """``_find_dataset``, with a warning for its images without ground truth."""
    dataset = _find_dataset(args)
    if dataset.unpaired_images:
        print(
            f"warning: {len(dataset.unpaired_images)} images have no GT and are skipped (e.g. {dataset.unpaired_images[0]})",
            file=sys.stderr,
        )
    return dataset


def _find_dataset(args: argparse.Namespace):
    """The dataset ``--dataset`` names (synthetic: written to the cache first). Raises
    IntEngineError for missing folders or flags."""
    from ..bench.datasets import find_dataset, folder_dataset
    from ..bench.synthetic import write_synthetic_dataset
    from ..errors import IntEngineError
    from ..models.cache import cache_root

    if args.dataset == "synthetic":
        root = Path(args.data_root) if args.data_root else cache_root() / "synthetic"
        count = args.synthetic_count or args.limit or 100
        dataset = find_dataset("cod10k", write_synthetic_dataset(root, count, seed=args.synthetic_seed))
        dataset.name, dataset.pairs = "Synthetic", dataset.pairs[:count]
        return dataset
    if args.dataset == "folder":
        if not args.images or not args.masks:
            raise IntEngineError("--dataset folder needs --images DIR and --masks DIR")
        return folder_dataset(args.images, args.masks, args.task or "camouflaged animal")
    if not args.data_root:
        raise IntEngineError(f"--dataset {args.dataset} needs --data-root (the folder holding the downloaded dataset)")
    return find_dataset(args.dataset, args.data_root)


def _bench_on_ray(
    args: argparse.Namespace,
    cfg,
    dataset,
    models_dir: Path | None,
    label: str | None,
    progress: Callable[[dict], None],
    out: str | Path,
) -> dict:
    """``--ray``: the same run folder, the images segmented by a pool of Ray actors."""
    from ..bench.ray_bench import RayBenchSettings, run_ray_bench
    from ..errors import IntEngineError

    if args.workers < 1 or (args.gpus_per_worker or 0) < 0:
        raise IntEngineError("--workers must be >= 1 and --gpus-per-worker >= 0")
    settings = RayBenchSettings(
        address=args.ray_address,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        # abspath, not resolve: a short link to a deep folder keeps Ray's socket paths under
        # the 107 bytes AF_UNIX allows
        temp_dir=os.path.abspath(args.ray_temp_dir) if args.ray_temp_dir else None,
    )
    try:
        return run_ray_bench(
            cfg,
            dataset,
            out,
            models_dir,
            settings,
            limit=args.limit,
            resume=args.resume,
            models_label=label,
            on_image=progress,
            score=args.score,
        )
    except ImportError as err:
        raise IntEngineError(f"--ray needs Ray (pip install -c constraints.txt '.[ray]'): {err}") from None


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="benchmark on a dataset: metrics, throughput, report")
    bench.add_argument("--dataset", help="cod10k | camo | chameleon | kvasir | cvc-colondb | isic | synthetic | folder")
    bench.add_argument("--data-root", help="folder holding the downloaded dataset (synthetic: where to generate it)")
    bench.add_argument("--images", help="--dataset folder: the images")
    bench.add_argument("--masks", help="--dataset folder: the GT masks (paired by file name)")
    bench.add_argument(
        "--out",
        help="run folder (results.jsonl, pred/, metrics.csv, curves.npz, summary.json, summary.md, "
        "report.html, config.yaml, env.json)",
    )
    bench.add_argument("--limit", type=int, help="only the first N images")
    bench.add_argument(
        "--score",
        choices=("binary", "soft"),
        default="binary",
        help="what pred/ holds and the metrics score: each image's segmentation, as the authors scored (default), or its soft map",
    )
    bench.add_argument(
        "--trials",
        type=int,
        help="run N trials, seeds --seed .. --seed+N-1, into OUT/trial-<k>/; OUT/trials.md: each metric's mean ± std "
        "(the paper's 'average of three trials': --trials 3 --set temperature=0.2)",
    )
    bench.add_argument("--resume", action="store_true", help="continue a run in --out, skipping finished images")
    bench.add_argument(
        "--compare", nargs="+", metavar="RUN", help="print two or more runs' metrics as one Markdown table (rows: runs)"
    )
    bench.add_argument(
        "--compare-out", metavar="DIR", help="with --compare: also write compare.md, compare.csv, compare.tex here"
    )
    bench.add_argument("--synthetic-count", type=int, help="synthetic: number of scenes (default: --limit or 100)")
    bench.add_argument("--synthetic-seed", type=int, default=0)
    bench.add_argument("--models", help="folder with vlm/ inpaint/ detector/ segmenter/ clip/ (default: the tiny zoo)")
    add_config_flags(bench)
    bench.add_argument("--quiet", action="store_true")
    ray = bench.add_argument_group("Ray", "segment the images on a pool of Ray actors, one IntEngine each")
    ray.add_argument("--ray", action="store_true", help="run the images on Ray (a local loopback cluster unless --ray-address)")
    ray.add_argument("--ray-address", help="an existing cluster (e.g. ray://head:10001 or auto)")
    ray.add_argument("--workers", type=int, default=1, help="actors in the pool (default 1)")
    ray.add_argument(
        "--gpus-per-worker",
        type=float,
        help="GPUs each actor reserves (1: one actor per GPU; default: one per CUDA device the config names)",
    )
    ray.add_argument(
        "--cpus-per-worker",
        type=float,
        help="CPUs each actor reserves (default: 1 beside a GPU, else 3/4 of the cluster's shared out)",
    )
    ray.add_argument("--ray-temp-dir", help="the local cluster's session and log folder (default: Ray's own)")
    bench.set_defaults(func=cmd_bench)
