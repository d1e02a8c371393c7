"""The benchmark datasets: where their test splits live and how images pair with ground truth.

Each dataset is found under ``--data-root`` in one of the layouts people download it in
(the original archive, or the ``TestDataset/<NAME>`` packaging of the SINet/PraNet code),
or with ``--data-root`` pointing at the dataset folder itself. Images pair with GT masks by
file stem (ISIC's GT adds ``_segmentation``); every unpaired file is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    preset: str
    layouts: tuple[tuple[str, str], ...]  # (images dir, GT dir) relative to the data root
    gt_suffix: str = ""  # GT stem = image stem + gt_suffix
    image_filter: str = ""  # keep only images whose name contains this (COD10K: its camouflaged split)


DATASETS: dict[str, DatasetSpec] = {
    "cod10k": DatasetSpec(
        "COD10K",
        "camouflaged animal",
        "cod",
        (
            ("COD10K-v3/Test/Image", "COD10K-v3/Test/GT_Object"),
            ("TestDataset/COD10K/Imgs", "TestDataset/COD10K/GT"),
            ("COD10K/Imgs", "COD10K/GT"),
            ("COD10K/Test/Image", "COD10K/Test/GT_Object"),
        ),
        image_filter="-CAM-",
    ),
    "camo": DatasetSpec(
        "CAMO",
        "camouflaged animal",
        "cod",
        (
            ("CAMO-V.1.0-CVIU2019/Images/Test", "CAMO-V.1.0-CVIU2019/GT"),
            ("TestDataset/CAMO/Imgs", "TestDataset/CAMO/GT"),
            ("CAMO/Imgs", "CAMO/GT"),
            ("CAMO/Images/Test", "CAMO/GT"),
        ),
    ),
    "chameleon": DatasetSpec(
        "CHAMELEON",
        "camouflaged animal",
        "cod",
        (
            ("CHAMELEON/Imgs", "CHAMELEON/GT"),
            ("TestDataset/CHAMELEON/Imgs", "TestDataset/CHAMELEON/GT"),
            ("CHAMELEON/Image", "CHAMELEON/GT"),
        ),
    ),
    "kvasir": DatasetSpec(
        "Kvasir",
        "polyp",
        "polyp",
        (
            ("Kvasir-SEG/images", "Kvasir-SEG/masks"),
            ("TestDataset/Kvasir/images", "TestDataset/Kvasir/masks"),
            ("Kvasir/images", "Kvasir/masks"),
        ),
    ),
    "cvc-colondb": DatasetSpec(
        "CVC-ColonDB",
        "polyp",
        "polyp",
        (("TestDataset/CVC-ColonDB/images", "TestDataset/CVC-ColonDB/masks"), ("CVC-ColonDB/images", "CVC-ColonDB/masks")),
    ),
    "isic": DatasetSpec(
        "ISIC",
        "skin lesion",
        "skin",
        (
            ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
            ("ISIC/images", "ISIC/masks"),
            ("TestDataset/ISIC/images", "TestDataset/ISIC/masks"),
        ),
        gt_suffix="_segmentation",
    ),
}
SYNTHETIC_LAYOUT = ("COD10K-v3/Test/Image", "COD10K-v3/Test/GT_Object")


@dataclass(frozen=True)
class Pair:
    """One test image and its GT mask; ``name`` is the GT file's stem (the prediction's name)."""

    name: str
    image: Path
    gt: Path


@dataclass
class Dataset:
    name: str
    task: str
    preset: str
    images_dir: Path
    gt_dir: Path
    pairs: list[Pair]
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_gt: list[Path] = field(default_factory=list)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _candidates(root: Path, rel: str) -> list[Path]:
    """``root/rel``, and ``root/<rel without its first folder>`` for a root that is the dataset folder."""
    parts = Path(rel).parts
    out = [root / rel]
    for cut in range(1, len(parts)):
        out.append(root / Path(*parts[cut:]))
    return out


def pair_files(spec: DatasetSpec, images_dir: Path, gt_dir: Path) -> Dataset:
    images = [p for p in _files(images_dir) if spec.image_filter in p.name]
    gts = {p.stem: p for p in _files(gt_dir)}
    pairs, unpaired = [], []
    for img in images:
        gt = gts.pop(img.stem + spec.gt_suffix, None)
        if gt is None:
            unpaired.append(img)
        else:
            pairs.append(Pair(gt.stem, img, gt))
    return Dataset(spec.name, spec.task, spec.preset, images_dir, gt_dir, pairs, unpaired, sorted(gts.values()))


def find_dataset(key: str, data_root: str | Path) -> Dataset:
    """The dataset ``key`` under ``data_root``; a ConfigError naming every layout tried if absent."""
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset {key!r}; known: {', '.join(DATASETS)}, synthetic, folder")
    spec = DATASETS[key]
    root = Path(data_root).expanduser()
    tried = []
    for img_rel, gt_rel in spec.layouts:
        for img_dir, gt_dir in zip(_candidates(root, img_rel), _candidates(root, gt_rel)):
            tried.append(f"{img_dir} + {gt_dir}")
            if img_dir.is_dir() and gt_dir.is_dir():
                return pair_files(spec, img_dir, gt_dir)
    layouts = "; ".join(f"{i}/ + {g}/" for i, g in spec.layouts)
    raise ConfigError(f"{spec.name} not found under {root}: expected one of the layouts {layouts} (tried {len(tried)} paths)")


def folder_dataset(images: str | Path, masks: str | Path, task: str) -> Dataset:
    """``--dataset folder --images DIR --masks DIR``: pairs by stem."""
    img_dir, gt_dir = Path(images).expanduser(), Path(masks).expanduser()
    for d, what in ((img_dir, "--images"), (gt_dir, "--masks")):
        if not d.is_dir():
            raise ConfigError(f"{what} {d}: not a directory")
    return pair_files(DatasetSpec("folder", task, "cod", ()), img_dir, gt_dir)
