"""EngineConfig: everything a run depends on, in one typed object.

Loaded from YAML/JSON (``EngineConfig.from_file``), overridden from the command line
(``apply_overrides(cfg, ["iterations=6", "models.inpaint.options.steps=10"])``) and
passed down explicitly; no step reads globals.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

ROLES = ("vlm", "inpaint", "detector", "segmenter", "clip")
SPLITS = ("whole", "halves_h", "halves_v", "quarters")
# eq 11's normalisation of the views' CLIP scores (masks.normalise_weights); promac = the authors' code
MASK_WEIGHTINGS = ("promac", "softmax", "minmax")
# eq 11's sum: "coverage" divides by the weight of the views covering each pixel, "sum" is SPEC step 9 as written
MASK_COMBINES = ("coverage", "sum")


@dataclass
class RoleConfig:
    """Which backend plays a role, from which local path, with which backend options; its
    device and dtype when they differ from ``models.device`` / ``models.dtype`` (None: those)."""

    backend: str
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None


@dataclass
class ModelsConfig:
    """One RoleConfig per role. A role without a path is looked up as ``<models_dir>/<role>``."""

    vlm: RoleConfig = field(default_factory=lambda: RoleConfig("hf"))
    inpaint: RoleConfig = field(default_factory=lambda: RoleConfig("sd"))
    detector: RoleConfig = field(default_factory=lambda: RoleConfig("gdino"))
    segmenter: RoleConfig = field(default_factory=lambda: RoleConfig("sam"))
    clip: RoleConfig = field(default_factory=lambda: RoleConfig("open_clip"))
    device: str = "cpu"
    dtype: str = "float32"

    def role(self, name: str) -> RoleConfig:
        if name not in ROLES:
            raise ConfigError(f"unknown model role {name!r}; roles are {', '.join(ROLES)}")
        return getattr(self, name)

    def device_of(self, name: str) -> str:
        """The device role ``name`` runs on: its own ``device``, else ``models.device``."""
        return self.role(name).device or self.device

    def dtype_of(self, name: str) -> str:
        """The dtype role ``name`` runs in: its own ``dtype``, else ``models.dtype``."""
        return self.role(name).dtype or self.dtype

    @property
    def sync_device(self) -> str:
        """ "cuda" when any role runs on a CUDA device (timers then synchronise the GPU), else "cpu"."""
        return "cuda" if any(self.device_of(r).startswith("cuda") for r in ROLES) else "cpu"


@dataclass
class EngineConfig:
    """The INT algorithm's settings (SPEC.md), with the paper's values as defaults.

    Choices where the paper is silent, each a field so a user can take the other one:
    - ``inpaint_mask_threshold``: the previous mask M_{i-1} is binarised at this fraction
      of its maximum before dilation (eq 4), because M_i is a weighted sum (eq 11) whose
      scale depends on how many views found the object.
    - ``points_grid``: CLIP point prompts are picked on a grid x grid pooling of the
      similarity map so that the top points are spread over distinct cells, not adjacent pixels.
    - ``view_box_overlap``: a merged detection box is given to a view's SAM call when at
      least this fraction of its area lies inside the view (clipped to the view).
    - ``inpaint_scope``: "image" (default, as the authors' released ProMaC code) inpaints the
      whole image once per iteration with the union of the views' masks and crops every view's
      contrast from it; "view" runs eq 4 per view. Measured on the scripted scenarios: every
      claim holds in both with the same IoUs (spanning scenes over 8 seeds: identical figures),
      at 1 inpainting job per image-iteration instead of 3-4 (tests/test_scenarios.py).
    - ``mask_weighting``: eq 11's normalisation of the views' CLIP scores; "promac" is what the
      authors' released ProMaC code does (SPEC step 9), "softmax" and "minmax" the simpler forms.
    - ``mask_combine``: "coverage" (default) takes, at each pixel, the weighted mean over the views
      that cover it before eq 11's min-max rescale; "sum" is the plain weighted sum of SPEC step 9.
      With CLIP scores a few hundredths apart the plain sum erases parts of objects that span
      views (``masks.weighted_sum`` says why; tests/scenarios.py measures it).
    - ``max_side`` / ``min_side``: images are resized for processing so their long side is
      at most ``max_side`` and their short side at least ``min_side``; masks are written
      at the original size.
    - ``max_aspect``: before the views are cut, the image is padded (its mean colour,
      centred) to a long / short side ratio of at most this, and masks are cropped back, so
      that a 5 x 4000 strip's halves and quarters stay inputs every model accepts (each view's
      sides >= min_side // 2); the side bounds above apply to the padded frame.
    """

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
    inpaint_mask_threshold: float = 0.5
    inpaint_dilate_px: int = 11
    inpaint_scope: str = "image"
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    nms_iou: float = 0.5
    view_box_overlap: float = 0.5
    positive_points: int = 3
    negative_points: int = 1
    points_grid: int = 16
    mask_weighting: str = "promac"
    mask_combine: str = "coverage"
    mask_temperature: float = 0.01
    reweight_w: float = 0.3
    binary_threshold: float = 0.5
    early_stop_tol: float | None = None
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
        if not self.trim_heap_every_s >= 0:
            raise ConfigError(f"trim_heap_every_s must be >= 0 seconds, got {self.trim_heap_every_s}")
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown or not self.splits:
            raise ConfigError(f"splits must be a non-empty subset of {SPLITS}, got {self.splits}")
        if self.inpaint_scope not in ("view", "image"):
            raise ConfigError(f"inpaint_scope must be 'view' or 'image', got {self.inpaint_scope!r}")
        if self.mask_combine not in MASK_COMBINES:
            raise ConfigError(f"mask_combine must be one of {', '.join(MASK_COMBINES)}, got {self.mask_combine!r}")
        if self.mask_weighting not in MASK_WEIGHTINGS:
            raise ConfigError(f"mask_weighting must be one of {', '.join(MASK_WEIGHTINGS)}, got {self.mask_weighting!r}")
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
        return _build(cls, data, "config")

    @classmethod
    def from_file(cls, path: str | Path) -> "EngineConfig":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"{p}: cannot read config: {err.strerror or err}") from None
        try:
            data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            where = " ".join(str(err).split())  # YAML's message spans lines: one line, as every error here
            raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {where}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a config file must hold a mapping, got {type(data).__name__}")
        preset = data.pop("preset", None)
        base = preset_config(preset) if preset else cls()
        try:
            return _merge(base, data)
        except ConfigError as err:
            raise ConfigError(f"{p}: {err}") from None


# Task presets (paper §4.1) and baselines expressed as configurations of the same engine.
PRESETS: dict[str, dict[str, Any]] = {
    "cod": {"task": "camouflaged animal", "iterations": 4},
    "polyp": {"task": "polyp", "iterations": 6},
    "skin": {"task": "skin lesion", "iterations": 4},
    "gensam": {"hcg": False, "psnm": False, "pnm": False},
    "promac": {"pnm": False},
}


def preset_config(name: str, base: EngineConfig | None = None) -> EngineConfig:
    """``base`` (default: the defaults) with the preset's fields applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{_did_you_mean(name, PRESETS)}; presets are {', '.join(PRESETS)}")
    return _merge(base or EngineConfig(), PRESETS[name])


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
    return _merge(cfg, data)


def _merge(cfg: Any, data: dict[str, Any]) -> Any:
    current = dataclasses.asdict(cfg)
    _deep_update(current, data, type(cfg), "")
    return _build(type(cfg), current, "config")


def _deep_update(target: dict[str, Any], data: dict[str, Any], cls: type, where: str) -> None:
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key {where + key!r}{_did_you_mean(key, names, where)}; known: {', '.join(names)}")
        sub = _dataclass_type(names[key])
        if sub is not None and isinstance(value, dict):
            _deep_update(target[key], value, sub, f"{where}{key}.")
        elif key == "options" and isinstance(value, dict):
            target[key] = {**target[key], **value}
        else:
            target[key] = value


def _did_you_mean(name: str, known: Any, prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the closest known name (difflib), or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _dataclass_type(f: dataclasses.Field) -> type | None:
    return {"ModelsConfig": ModelsConfig, "RoleConfig": RoleConfig}.get(str(f.type))


_SCALARS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_type(f: dataclasses.Field, value: Any, where: str) -> Any:
    """Reject a value of the wrong type with a message naming the key (YAML turns a typo
    like ``iterations: four`` into a string that would otherwise fail much later)."""
    annotation = str(f.type)
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None and optional:
        return value
    if base in _SCALARS:
        ok = isinstance(value, _SCALARS[base]) and not (base != "bool" and isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{where}.{f.name} must be {base}{' or null' if optional else ''}, got {value!r}")
        return float(value) if base == "float" else value
    if base.startswith("dict[") and not isinstance(value, dict):
        raise ConfigError(f"{where}.{f.name} must be a mapping, got {value!r}")
    if base == "tuple[str, ...]":
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}.{f.name} must be a list of strings, got {value!r}")
        return tuple(value)
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = _dataclass_type(f)
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{f.name} must be a mapping, got {value!r}")
            value = _build(sub, value, f"{where}.{f.name}")
        kwargs[f.name] = _check_type(f, value, where)
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"unknown config key(s) in {where}: {', '.join(sorted(unknown))}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None


# What one request may set for itself; everything else (models, batching, sizes) is the engine's.
REQUEST_OPTIONS = ("task", "preset", "iterations", "seed", "ablation")
ABLATION_SWITCHES = ("hcg", "psnm", "pnm", "smg")


def request_config(base: EngineConfig, **options: Any) -> EngineConfig:
    """The config of one request: ``base`` with the request's algorithm options applied, in
    the order preset < task / iterations / seed < ablation. ``ablation`` maps switches
    (hcg, psnm, pnm, smg; paper Table 3c) to on/off booleans. Raises ConfigError (one line,
    naming the option) on an unknown option, an empty task or a bad value; model settings
    cannot be set per request."""
    unknown = [k for k in options if k not in REQUEST_OPTIONS]
    if unknown:
        raise ConfigError(
            f"unknown request option {unknown[0]!r}{_did_you_mean(unknown[0], REQUEST_OPTIONS)}; "
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
                f"unknown ablation switch {switch!r}{_did_you_mean(switch, ABLATION_SWITCHES)}; "
                f"allowed: {', '.join(ABLATION_SWITCHES)}"
            )
        if not isinstance(state, bool):
            raise ConfigError(f"ablation {switch} must be true or false, got {state!r}")
        data[switch] = state
    return _merge(cfg, data) if data else cfg
