"""EngineConfig: everything a run depends on, in one typed object.

Loaded from YAML/JSON (``EngineConfig.from_file``), overridden from the command line
(``apply_overrides(cfg, ["iterations=6", "models.inpaint.options.steps=10"])``) and
passed down explicitly; no step reads globals.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config_dict import build, did_you_mean, merge, read_mapping
from .errors import ConfigError
from .presets import PRESETS, Preset

__all__ = ["PRESETS", "Preset"]  # re-exported: the presets are data in presets.py

ROLES = ("vlm", "inpaint", "detector", "segmenter", "clip")
# Roles a run may add: "concept" (SAM 3) replaces steps 7-8's segmenter when its backend is not "none".
OPTIONAL_ROLES = ("concept",)
NO_BACKEND = "none"
# |seed| bound: each random stream's seed is seed * 1_000_003 + ... (pipeline.request_seed), which
# must stay a 64-bit integer for torch's generators (a seed of 1e30 crashed the inpainter)
SEED_MAGNITUDE = 2**32 - 1
SPLITS = ("whole", "halves_h", "halves_v", "quarters")
# eq 11's normalisation of the views' CLIP scores (masks.normalise_weights); promac = the authors' code
MASK_WEIGHTINGS = ("promac", "softmax", "minmax")
# eq 11's sum: "sum" is SPEC step 9 (the authors' code); "coverage" divides by the weight of the views covering each pixel
MASK_COMBINES = ("sum", "coverage")
# The string-valued choices of EngineConfig: the first value of each is the default (SPEC / the
# authors' code), the others are the engine's earlier readings, kept reachable (docs/method.md).
CHOICES: dict[str, tuple[str, ...]] = {
    "inpaint_scope": ("image", "view"),
    "vlm_image": ("original", "reweighted"),
    "contrast_mask": ("support", "threshold"),
    "box_source": ("detector", "vlm", "none"),
    "view_boxes": ("own", "overlap"),
    "points_rule": ("threshold", "fixed"),
    "mask_score_input": ("canvas", "crop"),
    "mask_weighting": MASK_WEIGHTINGS,
    "mask_combine": MASK_COMBINES,
    "segmentation": ("selected", "threshold"),
    "reweight_base": ("original", "current"),
    "sam3_negatives": ("none", "mined"),
}


@dataclass
class RoleConfig:
    """Which backend plays a role, from which local path, with which backend options; its
    device and dtype when they differ from ``models.device`` / ``models.dtype`` (None: those)."""

    backend: str
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None


# What dtype "auto" is on each kind of device: float16 on CUDA (LLaVA-1.5-13B is 26.7 GB there,
# 53.4 GB in float32; GroundingDINO keeps float32 weights and runs under autocast), float32
# elsewhere (CPUs lack fast half-precision kernels).
AUTO_DTYPES = {"cuda": "float16"}
AUTO_DTYPE_ELSEWHERE = "float32"


@dataclass
class ModelsConfig:
    """One RoleConfig per role. A role without a path is looked up as ``<models_dir>/<role>``.
    ``dtype`` "auto" (the default) is each role's device's dtype (``AUTO_DTYPES``): float16 on
    CUDA, float32 on CPU; a dtype set here or on a role wins."""

    vlm: RoleConfig = field(default_factory=lambda: RoleConfig("hf"))
    inpaint: RoleConfig = field(default_factory=lambda: RoleConfig("sd"))
    detector: RoleConfig = field(default_factory=lambda: RoleConfig("gdino"))
    segmenter: RoleConfig = field(default_factory=lambda: RoleConfig("sam"))
    clip: RoleConfig = field(default_factory=lambda: RoleConfig("open_clip"))
    # optional: a concept segmenter (backend "sam3") in place of steps 7-8's SAM; "none": unused
    concept: RoleConfig = field(default_factory=lambda: RoleConfig(NO_BACKEND))
    device: str = "cpu"
    dtype: str = "auto"

    def role(self, name: str) -> RoleConfig:
        if name not in ROLES + OPTIONAL_ROLES:
            raise ConfigError(f"unknown model role {name!r}; roles are {', '.join(ROLES + OPTIONAL_ROLES)}")
        return getattr(self, name)

    @property
    def uses_concept(self) -> bool:
        """Whether a concept segmenter (SAM 3) replaces steps 7-8's segmenter."""
        return self.concept.backend != NO_BACKEND

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this config loads: the five, and ``concept`` when it has a backend."""
        return ROLES + (("concept",) if self.uses_concept else ())

    def device_of(self, name: str) -> str:
        """The device role ``name`` runs on: its own ``device``, else ``models.device``."""
        return self.role(name).device or self.device

    def dtype_of(self, name: str) -> str:
        """The dtype role ``name`` runs in: its own ``dtype``, else ``models.dtype``; "auto" is
        resolved by the role's device (``auto_dtype``)."""
        dtype = self.role(name).dtype or self.dtype
        return auto_dtype(self.device_of(name)) if dtype == "auto" else dtype

    @property
    def sync_device(self) -> str:
        """ "cuda" when any role runs on a CUDA device (timers then synchronise the GPU), else "cpu"."""
        return "cuda" if self.cuda_devices else "cpu"

    @property
    def cuda_devices(self) -> tuple[str, ...]:
        """The distinct CUDA devices the roles run on, in role order ("cuda:0", "cuda:1"; plain
        "cuda" is the current device): what a timer synchronises (``trace.cuda_sync``), each of
        them, since a role on another GPU queues its work on that GPU's streams."""
        return tuple(dict.fromkeys(d for d in map(self.device_of, self.roles) if d.startswith("cuda")))


def auto_dtype(device: str) -> str:
    """What dtype "auto" means on ``device``: float16 on CUDA, float32 elsewhere (``AUTO_DTYPES``)."""
    return AUTO_DTYPES.get(device.split(":", 1)[0], AUTO_DTYPE_ELSEWHERE)


@dataclass
class EngineConfig:
    """The INT algorithm's settings (SPEC.md). The defaults are the ``paper`` preset: the paper,
    and where the paper is silent the authors' released code (ProMaC's, INT's predecessor).
    Each string choice lists its values in ``CHOICES``, the default first; docs/method.md says for
    every step which source its default follows and why each other value exists.

    The steps' choices (default first):
    - ``vlm_image``: "original": the VLM (steps 2, 4) and the inpainter (step 3) see the original
      image X, guided by M_{i-1} through the inpainting mask (the authors' code); "reweighted":
      they see X_i.
    - ``contrast_mask``: eq 4's mask from iteration 2 on. "support": the pixels of the previous
      soft map above ``contrast_support`` (1/255, the authors' non-zero rule on an 8-bit map);
      "threshold": M_{i-1} >= ``inpaint_mask_threshold`` x its maximum, dilated by
      ``inpaint_dilate_px``.
    - ``inpaint_scope``: "image" inpaints the whole image once per iteration with the union of the
      views' masks and crops every view's contrast from it (the authors' code); "view" runs eq 4 per view.
    - ``box_source``: eq 9's boxes. "detector": GroundingDINO on every view (eq 8); "vlm": the VLM's
      own P_B box, one per iteration (the whole view's, else the first view's), clipped to every
      view it touches (ProMaC); "none": points only (GenSAM).
    - ``view_boxes``: "own": each view's SAM gets that view's detections (eq 8-9); "overlap": the
      boxes of all views merged by NMS, and a view gets those with >= ``view_box_overlap`` of
      their area inside it.
    - ``points_rule``: eq 9's Spatial CLIP points. "threshold": the map resampled to
      ``points_grid`` x ``points_grid`` cells (28: twice CLIP's 14 x 14 tokens), n = the cells >=
      ``points_threshold`` (capped at half the cells), the n highest positive and the n lowest
      negative (the authors' ``similarity_map_to_points``); "fixed": ``positive_points`` /
      ``negative_points`` cells of the grid.
    - ``clip_background``: subtract the background names' map from the object's (the authors'
      ``clip_use_bg_text``, FgBgHm).
    - ``mask_score_input``: eq 10's image. "canvas": the view's masked pixels pasted on a black
      canvas of the image's size (the authors' ``patch_match_list``); "crop": the masked view.
    - ``mask_weighting``: eq 11's normalisation ("promac": softmax over views at
      ``mask_temperature``, min-max, divided by the sum, as the authors' code).
    - ``segmentation``: the iteration's binary mask M_i^bin. "selected": the union of the binary
      masks of the views whose min-max weight is > ``select_weight`` (0.7), plus the whole view
      (the authors' ``clip_similarity``); "threshold": M_i >= ``binary_threshold``.
    - ``mask_combine``: the soft map M_i. "sum": Σ_k w_k p_k rescaled to [0, 1] (eq 11);
      "coverage": each pixel's weighted mean over the views covering it, then rescaled.
    - ``reweight_base``: eq 12's X. "original": X_{i+1} = w·(X ⊙ M_i) + (1 − w)·X_i (the paper's
      "applied to the original image", the authors' ``clipInputEMA``); "current": X_i ⊙ M_i.
    - ``sam3_negatives`` (with ``models.concept``): "none"; "mined": the P_B boxes of the names
      mining rejected go to the concept segmenter as negative exemplars (``concept.py``).
    - ``temperature`` / ``seed``: the VLM's decoding, greedy at 0 (the authors sample at 0.2; the
      paper reports the average of three trials); ``seed`` also seeds the inpainting noise.
    - ``max_side`` / ``min_side``: images are resized for processing so their long side is
      at most ``max_side`` and their short side at least ``min_side``; masks are written
      at the original size.
    - ``max_aspect``: before the views are cut, the image is padded (its mean colour,
      centred) to a long / short side ratio of at most this, and masks are cropped back, so
      that a 5 x 4000 strip's halves and quarters stay inputs every model accepts (each view's
      sides >= min_side // 2); the side bounds above apply to the padded frame.
    """

    # the preset this config was built from (``PRESETS``; fields set after it are kept)
    preset: str = "paper"
    task: str = "camouflaged animal"
    iterations: int = 4
    splits: tuple[str, ...] = SPLITS
    # ablation switches (paper Table 3c), each changes only its step
    hcg: bool = True
    psnm: bool = True
    pnm: bool = True
    smg: bool = True
    eps: float = 1e-3
    max_new_tokens: int = 48
    temperature: float = 0.0
    vlm_image: str = "original"
    contrast_mask: str = "support"
    contrast_support: float = 1.0 / 255.0
    inpaint_mask_threshold: float = 0.5
    inpaint_dilate_px: int = 11
    inpaint_scope: str = "image"
    box_source: str = "detector"
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    nms_iou: float = 0.5
    view_boxes: str = "own"
    view_box_overlap: float = 0.5
    points_rule: str = "threshold"
    points_grid: int = 28
    points_threshold: float = 0.9
    positive_points: int = 3
    negative_points: int = 1
    clip_background: bool = True
    mask_score_input: str = "canvas"
    mask_weighting: str = "promac"
    mask_temperature: float = 0.01
    segmentation: str = "selected"
    select_weight: float = 0.7
    mask_combine: str = "sum"
    binary_threshold: float = 0.5
    reweight_base: str = "original"
    reweight_w: float = 0.3
    # with a concept segmenter (models.concept, SAM 3; not in the paper): the instances kept, and
    # whether the boxes of the names mining rejected go to it as negative exemplars ("mined")
    concept_threshold: float = 0.5
    sam3_negatives: str = "none"
    # SPEC "Early stop" (off in the paper, whose authors always run every iteration): after
    # iteration i (0-based) >= min_iterations, stop when A_i^u == A_{i-1}^u and
    # IoU(M_i^bin, M_{i-1}^bin) >= stop_iou; eq 13 then chooses among the iterations that ran.
    # The defaults were measured (docs/method.md, "Early stop"); the `fast` preset turns it on.
    early_stop: bool = False
    stop_iou: float = 0.95
    min_iterations: int = 1
    max_side: int = 1536
    min_side: int = 32
    max_aspect: float = 4.0
    seed: int = 0
    # the scheduler (many images at once): images whose state is held, and requests per model
    # call (backends also cut their own forward passes: e.g. vlm max_batch_size, sam batch_size)
    max_in_flight: int = 8
    max_batch_items: int = 4096
    # hand the heap pages the ticks freed back to the OS (engine.memory) when the loop goes idle
    # and at most every trim_heap_every_s under load: resident memory stays flat over long runs
    # instead of keeping every tick's high-water mark. Not after every tick: the pages given back
    # are faulted in again by the next tick (tiny zoo, 8 images: 1.39 s trimming every tick,
    # 1.28 s never).
    trim_heap: bool = True
    trim_heap_every_s: float = 1.0
    models: ModelsConfig = field(default_factory=ModelsConfig)

    def __post_init__(self) -> None:
        self.splits = tuple(self.splits)
        self.validate()

    def validate(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if not -SEED_MAGNITUDE <= self.seed <= SEED_MAGNITUDE:
            raise ConfigError(f"seed must be between {-SEED_MAGNITUDE} and {SEED_MAGNITUDE}, got {self.seed}")
        if not 0.0 < self.stop_iou <= 1.0 or self.min_iterations < 1:
            raise ConfigError(f"need 0 < stop_iou <= 1 and min_iterations >= 1, got {self.stop_iou}, {self.min_iterations}")
        if not self.trim_heap_every_s >= 0:
            raise ConfigError(f"trim_heap_every_s must be >= 0 seconds, got {self.trim_heap_every_s}")
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown or not self.splits:
            raise ConfigError(f"splits must be a non-empty subset of {SPLITS}, got {self.splits}")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}{did_you_mean(str(value), allowed)}")
        if self.preset not in PRESETS:
            raise ConfigError(
                f"unknown preset {self.preset!r}{did_you_mean(self.preset, PRESETS)}; presets are {', '.join(PRESETS)}"
            )
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0 (0 is greedy decoding), got {self.temperature}")
        if not 0.0 <= self.contrast_support < 1.0 or not 0.0 <= self.select_weight < 1.0:
            raise ConfigError(
                f"contrast_support and select_weight must be in [0, 1), got {self.contrast_support}, {self.select_weight}"
            )
        if self.points_grid < 1 or not 0.0 < self.points_threshold <= 1.0:
            raise ConfigError(
                f"need points_grid >= 1 and 0 < points_threshold <= 1, got {self.points_grid}, {self.points_threshold}"
            )
        if not 0.0 <= self.concept_threshold <= 1.0:
            raise ConfigError(f"concept_threshold must be in [0, 1], got {self.concept_threshold}")
        if not 0.0 <= self.reweight_w <= 1.0:
            raise ConfigError(f"reweight_w must be in [0, 1], got {self.reweight_w}")
        if self.eps <= 0:
            raise ConfigError(f"eps must be > 0, got {self.eps}")
        if self.min_side < 2 or self.max_side < self.min_side:
            raise ConfigError(f"need 2 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
        if not 1.0 <= self.max_aspect < float("inf"):
            raise ConfigError(f"max_aspect must be a finite number >= 1, got {self.max_aspect}")
        if self.max_in_flight < 1 or self.max_batch_items < 1:
            raise ConfigError(f"max_in_flight and max_batch_items must be >= 1, got {self.max_in_flight}, {self.max_batch_items}")
        if not self.task.strip():
            raise ConfigError("task must be a non-empty task-generic prompt such as 'camouflaged animal'")

    @property
    def active_splits(self) -> tuple[str, ...]:
        """The views actually used: ``hcg=False`` keeps only the whole image (Table 3c)."""
        return self.splits if self.hcg else ("whole",)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineConfig":
        return build(cls, data, "config")

    @classmethod
    def from_file(cls, path: str | Path) -> "EngineConfig":
        p = Path(path)
        data = read_mapping(p)
        preset = data.pop("preset", None)
        try:
            base = preset_config(str(preset)) if preset else cls()
            return merge(base, data)
        except ConfigError as err:
            raise ConfigError(f"{p}: {err}") from None


def preset_config(name: str, base: EngineConfig | None = None) -> EngineConfig:
    """``base`` (default: the defaults, which are ``paper``) with the preset's fields applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)}; presets are {', '.join(PRESETS)}")
    return merge(base or EngineConfig(), {**PRESETS[name].fields, "preset": name})


def apply_overrides(cfg: EngineConfig, overrides: list[str]) -> EngineConfig:
    """Apply ``key=value`` strings (dotted keys reach nested fields; values parsed as YAML)."""
    data: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return merge(cfg, data)


# What one request may set for itself; everything else (models, batching, sizes) is the engine's.
REQUEST_OPTIONS = ("task", "preset", "iterations", "seed", "ablation")
ABLATION_SWITCHES = ("hcg", "psnm", "pnm", "smg")


def largest_preset_iterations() -> int:
    """The most iterations a preset (or the default config) runs: polyp's 6 (paper §4.1); the
    default of ``int-engine serve --max-iterations``."""
    return max([EngineConfig().iterations] + [p.fields.get("iterations", 0) for p in PRESETS.values()])


def request_config(base: EngineConfig, **options: Any) -> EngineConfig:
    """The config of one request: ``base`` with the request's algorithm options applied, in
    the order preset < task / iterations / seed < ablation. ``ablation`` maps switches
    (hcg, psnm, pnm, smg; paper Table 3c) to on/off booleans. Raises ConfigError (one line,
    naming the option) on an unknown option, an empty task or a bad value; model settings
    cannot be set per request."""
    unknown = [k for k in options if k not in REQUEST_OPTIONS]
    if unknown:
        raise ConfigError(
            f"unknown request option {unknown[0]!r}{did_you_mean(unknown[0], REQUEST_OPTIONS)}; "
            f"allowed: {', '.join(REQUEST_OPTIONS)}"
        )
    cfg = base
    if options.get("preset") is not None:
        cfg = preset_config(options["preset"], cfg)
    data: dict[str, Any] = {}
    if options.get("task") is not None:
        task = options["task"]
        if not isinstance(task, str) or not task.strip():
            raise ConfigError(f"task must be a non-empty string, got {task!r}")
        data["task"] = task.strip()
    for key in ("iterations", "seed"):
        if options.get(key) is not None:
            data[key] = options[key]
    for switch, state in (options.get("ablation") or {}).items():
        if switch not in ABLATION_SWITCHES:
            raise ConfigError(
                f"unknown ablation switch {switch!r}{did_you_mean(switch, ABLATION_SWITCHES)}; "
                f"allowed: {', '.join(ABLATION_SWITCHES)}"
            )
        if not isinstance(state, bool):
            raise ConfigError(f"ablation {switch} must be true or false, got {state!r}")
        data[switch] = state
    return merge(cfg, data) if data else cfg
