"""Model calls as data: which calls there are, in which order a tick takes them, and how one runs.

The algorithm (``pipeline.image_steps``) yields ``ModelCall``s and receives their results;
a driver decides how to run them: the eager driver one call at a time, the scheduler one
batch per model for many images, the sequential reference one item at a time.

``Call`` declares every kind of call once: its role, method, SPEC stage and (through
``ROLE_FIELD``) the ``Models`` attribute that answers it. Its member order is the scheduler's
tick order. Nothing else restates the roles or the calls.

Importing this module does not import torch (``int_engine.models.load`` uses ``ROLE_FIELD``
and stays light).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .config import OPTIONAL_ROLES, ROLES
from .protocols import Models

# role (config.ROLES: the names in ModelsConfig, model calls, traces and work counters) ->
# attribute of Models; "inpaint" and "mine" are spelled differently there. "mine" (negative
# mining) is a role of the calls, not of ModelsConfig: it has no checkpoint to load.
MINE_ROLE = "mine"
ROLE_FIELD: dict[str, str] = {
    role: {"inpaint": "inpainter", MINE_ROLE: "miner"}.get(role, role) for role in (*ROLES, *OPTIONAL_ROLES, MINE_ROLE)
}


class CallKind(enum.Enum):
    """What a ``Call`` member knows: ``value`` is (role, method, SPEC stage).

    It has no members itself, so that a table in another order can be made from it
    (``CallKind("Call", [(m.name, m.value) for m in order])``), as the tick-order test does.
    """

    @property
    def role(self) -> str:
        """The model role (``config.ROLES``), or ``"mine"`` for negative mining."""
        return self.value[0]

    @property
    def method(self) -> str:
        """The method of the role's protocol (``protocols``) that answers the call."""
        return self.value[1]

    @property
    def stage(self) -> str:
        """The SPEC stage its time is charged to (``trace.STAGES``)."""
        return self.value[2]

    @property
    def field(self) -> str:
        """The ``Models`` attribute that answers it."""
        return ROLE_FIELD[self.role]

    @property
    def label(self) -> str:
        """``"role.method"``, as traces, stats and metrics print it."""
        return f"{self.role}.{self.method}"

    @property
    def rank(self) -> int:
        """Its position in the tick order (the member order of its table)."""
        return type(self)._member_names_.index(self.name)

    @classmethod
    def of(cls, role: str, method: str) -> "CallKind":
        """The member for ``role.method``; ValueError for a call the table does not declare."""
        for kind in cls:
            if kind.role == role and kind.method == method:
                return kind
        raise ValueError(f"{role}.{method} is not a declared model call (int_engine.calls.Call)")

    def call(self, items: tuple[list, ...], params: tuple = (), keywords: tuple[str, ...] = ()) -> "ModelCall":
        """This call with ``items`` (parallel per-request lists), shared ``params`` and the
        names of the trailing items passed by keyword (``ModelCall.keywords``)."""
        return ModelCall(self.stage, self.role, self.method, items, params, keywords)


class Call(CallKind):
    """Every model call of an iteration, in the order the iteration makes them (SPEC steps 2-9).

    A tick runs the earliest of these that any in-flight image is waiting at, so images that
    skipped a stage (no contrast, a single candidate) wait for the others at the next one, and
    every call stays one batch for all the images in flight.
    """

    GENERATE = ("vlm", "generate", "propose")  # step 2: P_B and P_A for every view
    INPAINT = ("inpaint", "inpaint", "inpaint")  # step 3: the contrast views X'_k
    SCORE = ("vlm", "score", "score")  # step 4: s(c | X_k), s(c | X'_k)
    MINE = (MINE_ROLE, "mine", "mine")  # steps 5-6: negative mining (one Miner launch per tick)
    DETECT = ("detector", "detect", "detect")  # step 7: boxes for the picked name
    SIMILARITY_MAPS = ("clip", "similarity_maps", "segment")  # step 8: CLIP point prompts
    SEGMENT = ("segmenter", "segment", "segment")  # step 8: SAM with points and boxes
    SEGMENT_CONCEPTS = ("concept", "segment_concepts", "segment")  # steps 7-8 by SAM 3, when configured
    IMAGE_TEXT_SIMILARITY = ("clip", "image_text_similarity", "weight")  # step 9: mask weights


def call_kind(role: str, method: str) -> CallKind:
    """The declared kind of ``role.method`` (looked up in this module's ``Call`` when called)."""
    return Call.of(role, method)


@dataclass(frozen=True)
class ModelCall:
    """``role.method(*items, *params, **keyword_items)``: ``items`` are parallel lists (one entry
    per request), ``params`` scalars shared by all requests; the last ``len(keywords)`` items are
    passed by those names (an optional per-request argument such as the VLM's sampling ``seeds``,
    so that a backend without it still answers the calls that do not use it); ``stage`` names the
    SPEC step for timing.

    ``kind`` is the declared ``Call`` member, found when the call is made: a call that is not
    declared, or whose stage differs from the declaration, raises ValueError at once.
    """

    stage: str
    role: str
    method: str
    items: tuple[list, ...]
    params: tuple = ()
    keywords: tuple[str, ...] = ()
    kind: CallKind = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kind = call_kind(self.role, self.method)
        if kind.stage != self.stage:
            raise ValueError(f"{kind.label} is declared in stage {kind.stage!r}, made in {self.stage!r}")
        object.__setattr__(self, "kind", kind)  # frozen: set once, here

    @property
    def size(self) -> int:
        return len(self.items[0]) if self.items else 0

    @property
    def key(self) -> tuple:
        """Calls with the same key can be concatenated into one batch."""
        return (self.role, self.method, self.params, self.keywords)

    @property
    def label(self) -> str:
        """``"role.method"``."""
        return self.kind.label


@dataclass
class Reply:
    """A call's result, and the seconds of model time the image is charged for it (its share of the batch)."""

    result: Any
    seconds: float


def run_model(models: Models, call: ModelCall) -> Any:
    """Execute one call as it is (one batch)."""
    fn: Callable = getattr(getattr(models, call.kind.field), call.method)
    n = len(call.items) - len(call.keywords)
    return fn(*call.items[:n], *call.params, **dict(zip(call.keywords, call.items[n:])))


def run_each(models: Models, call: ModelCall) -> Any:
    """Execute a call one request at a time (the sequential reference's way)."""
    parts = [
        run_model(
            models,
            ModelCall(call.stage, call.role, call.method, tuple([it[j]] for it in call.items), call.params, call.keywords),
        )
        for j in range(call.size)
    ]
    return concat(parts)


def concat(parts: list[Any]) -> Any:
    """Join per-call results (lists, arrays) in order."""
    if parts and isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [x for p in parts for x in p]


def split(result: Any, sizes: list[int]) -> list[Any]:
    """Cut a batched result back into per-call results of the given sizes."""
    out, start = [], 0
    for n in sizes:
        out.append(result[start : start + n])
        start += n
    return out
