"""The seam between the algorithm and the scheduler: the model calls and their tick order are
declared once (``calls.Call``), the scheduler ranks by that declaration, and nothing outside the
engine's drivers builds step generators (the CLI and the benchmark use ``IntEngine``)."""

import ast
import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest
from scheduler_scenes import WORLD, jobs, scenes  # every image-iteration of these scenes mines

import int_engine.calls as calls_module
from int_engine.api import IntEngine
from int_engine.calls import MINE_ROLE, ROLE_FIELD, Call, CallKind, ModelCall, run_model
from int_engine.config import OPTIONAL_ROLES, ROLES, EngineConfig, apply_overrides
from int_engine.errors import ImageError
from int_engine.io import write_png
from int_engine.loop import EngineLoop
from int_engine.pipeline import drive, image_steps, run
from int_engine.protocols import Models
from int_engine.scheduler import Scheduler, _Job
from int_engine.testing import scripted_models
from int_engine.testing.concept import ScriptedConceptSegmenter

ROOT = Path(__file__).resolve().parents[2]


def reversed_table() -> type[CallKind]:
    """The same calls as ``Call``, in the opposite tick order."""
    return CallKind("Call", [(m.name, m.value) for m in reversed(Call)])


def waiting(kind: CallKind) -> _Job:
    """A scheduler job paused at a call of ``kind`` (one request; nothing runs it)."""
    return _Job(kind.label, None, kind.call(([None],)))


def test_the_declaration_is_the_tick_order_and_names_every_role():
    assert [k.rank for k in Call] == list(range(len(Call)))
    assert Call.GENERATE.rank == 0 and Call.MINE.rank == 3 and Call.IMAGE_TEXT_SIMILARITY.rank == len(Call) - 1
    # one role -> Models map, over config.ROLES, the optional roles and mining, naming Models' own fields
    assert tuple(ROLE_FIELD) == (*ROLES, *OPTIONAL_ROLES, MINE_ROLE)
    assert set(ROLE_FIELD.values()) == {f.name for f in dataclasses.fields(Models)}
    assert {k.role for k in Call} == set(ROLE_FIELD)  # every role is called, nothing else is
    hints = typing.get_type_hints(Models)
    for kind in Call:  # each declared method is a method of the role's protocol: mining too
        protocol = [t for t in typing.get_args(hints[kind.field]) if t is not type(None)] or [hints[kind.field]]
        assert callable(getattr(protocol[0], kind.method, None)), kind.label
    assert Call.MINE.field == "miner"
    assert Call.of("inpaint", "inpaint") is Call.INPAINT and Call.INPAINT.field == "inpainter"


def test_a_call_that_is_not_declared_cannot_be_made():
    with pytest.raises(ValueError, match="vlm.caption is not a declared model call"):
        ModelCall("propose", "vlm", "caption", ([],))
    with pytest.raises(ValueError, match="declared in stage 'detect'"):
        ModelCall("segment", "detector", "detect", ([],))
    call = Call.DETECT.call((["img"], ["frog"]), (0.3, 0.25))
    assert (call.stage, call.role, call.method, call.label, call.kind) == (
        "detect",
        "detector",
        "detect",
        "detector.detect",
        Call.DETECT,
    )


def planned(inflight: list[_Job]) -> list[list[str]]:
    """The keys of each batch a scheduler holding ``inflight`` plans for its next tick."""
    sched = Scheduler(max_in_flight=8, max_batch_items=64)
    sched.inflight = inflight
    return [list(batch.keys) for batch in sched.schedule().batches]


def test_permuting_the_declaration_changes_the_schedulers_rank(monkeypatch):
    assert planned([waiting(Call.DETECT), waiting(Call.GENERATE), waiting(Call.SEGMENT)]) == [["vlm.generate"]]
    table = reversed_table()
    monkeypatch.setattr(calls_module, "Call", table)  # calls made from now on are ranked by it
    inflight = [waiting(table.DETECT), waiting(table.GENERATE), waiting(table.SEGMENT)]
    assert [k.rank for k in (table.IMAGE_TEXT_SIMILARITY, table.GENERATE)] == [0, len(Call) - 1]
    assert planned(inflight) == [["segmenter.segment"]]


def test_the_order_decides_the_batches_never_the_masks(monkeypatch):
    # a third image joins two that are 3 calls ahead: the order decides who goes first
    cfg = EngineConfig(iterations=2)
    images, models = scenes(3), scripted_models(WORLD)
    eager = [run(im, models, cfg) for im in images]

    def ticks() -> list[str]:
        sched, seen, out = EngineLoop(models, cfg), [], {}
        sched.on_batch = lambda name, n, s: seen.append(name)
        (a, b, late) = jobs(images, cfg)
        assert sched.admit(*a) is None and sched.admit(*b) is None
        while len(seen) < 3:  # generate, inpaint, score for the first two
            out.update(sched.step())
        assert sched.admit(*late) is None
        while sched.inflight:
            out.update(sched.step())
        for i, ref in enumerate(eager):
            assert np.array_equal(out[i].soft, ref.soft)
            assert [it.pick for it in out[i].trace.iterations] == [it.pick for it in ref.trace.iterations]
        return seen

    declared = ticks()
    # the earliest call first: the newcomer catches up alone, then all three share every batch
    assert declared[3:7] == ["vlm.generate", "inpaint.inpaint", "vlm.score", "mine.mine"]
    # 3 each alone, 5 shared to the end of iteration 1, 7 shared in iteration 2 (which asks the VLM
    # nothing new: its greedy answers on the original views are iteration 1's)
    assert len(declared) == 3 + 3 + 5 + 7
    monkeypatch.setattr(calls_module, "Call", reversed_table())
    permuted = ticks()
    # the latest call first: the leaders run on, so fewer calls are shared and there are more batches
    assert permuted[3] == "mine.mine" and len(permuted) == 3 + 5 + 7 + 8 + 7


@pytest.mark.parametrize("concept", [False, True])
def test_every_call_of_a_two_iteration_image_is_declared_in_the_order_it_is_made(concept):
    """Every declared call is made (SAM and Spatial CLIP, or with ``models.concept`` the concept
    segmenter in their place), each in the declared order, once per iteration."""
    cfg = EngineConfig(iterations=2)
    models = scripted_models(WORLD)
    if concept:
        cfg = apply_overrides(cfg, ["models.concept.backend=sam3"])
        models.concept = ScriptedConceptSegmenter(WORLD)
    made: list[ModelCall] = []

    def execute(models, call):
        made.append(call)
        return run_model(models, call)

    drive(image_steps(scenes(1)[0], cfg), models, execute)
    assert all(isinstance(c.kind, Call) and c.kind.stage == c.stage for c in made)
    replaced = {Call.SEGMENT, Call.SIMILARITY_MAPS} if concept else {Call.SEGMENT_CONCEPTS}
    assert {c.kind for c in made} == set(Call) - replaced  # no declared call is dead
    per_iteration = [[]]
    for c in made:  # a call earlier in the order than the last one starts the next iteration
        if per_iteration[-1] and c.kind.rank <= per_iteration[-1][-1]:
            per_iteration.append([])
        per_iteration[-1].append(c.kind.rank)
    assert len(per_iteration) == cfg.iterations
    assert per_iteration[0][0] == Call.GENERATE.rank and Call.GENERATE.rank not in per_iteration[1]  # asked once
    for ranks in per_iteration:  # within an iteration, calls come in the declared order, each once
        assert ranks == sorted(set(ranks))


# Modules that drive step generators themselves: the engine's own drivers, and the throughput
# benchmark, whose subject is the comparison of two drivers (the scheduler against a sequential,
# one-request-per-call reference that no public method runs).
DRIVERS = {"engine/api.py", "engine/pipeline.py", "engine/scheduler.py", "bench/throughput.py"}


def step_builders() -> dict[str, list[int]]:
    """Source files under engine/, bench/ and kernels/ that name ``image_steps`` in code (an
    import, a call, ``pipeline.image_steps``), with the lines; docstrings do not count."""
    found: dict[str, list[int]] = {}
    for folder in ("engine", "bench", "kernels"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                named = (
                    isinstance(node, ast.ImportFrom)
                    and any(a.name == "image_steps" for a in node.names)
                    or isinstance(node, ast.Name)
                    and node.id == "image_steps"
                    or isinstance(node, ast.Attribute)
                    and node.attr == "image_steps"
                )
                if named:
                    found.setdefault(path.relative_to(ROOT).as_posix(), []).append(node.lineno)
    return found


def test_only_the_drivers_build_step_generators():
    found = step_builders()
    assert "engine/api.py" in found and "engine/pipeline.py" in found  # the walk sees real uses
    outside = {path: lines for path, lines in found.items() if path not in DRIVERS}
    assert outside == {}, f"build step generators through IntEngine instead: {outside}"


def test_segment_many_reads_through_load_when_admitted(tmp_path):
    engine = IntEngine(EngineConfig(iterations=1, max_in_flight=2), models=scripted_models(WORLD))
    paths = []
    for i, image in enumerate(scenes(3)):
        paths.append(tmp_path / f"{i}.png")
        write_png(paths[-1], image)
    kept, order = {}, []

    def load(path: Path, key: str):
        order.append(key)
        if key == "bad":
            raise ImageError(f"{path}: refused")
        image = engine.read(path, keep_original=True)
        kept[key] = image.original
        return image

    items = [("0", paths[0]), ("bad", paths[1]), ("2", paths[2])]
    try:
        out = dict(engine.segment_many(items, load=load))
    finally:
        engine.close()
    assert sorted(order) == ["0", "2", "bad"]
    assert isinstance(out["bad"], ImageError) and "refused" in str(out["bad"])
    for key in ("0", "2"):  # the original pixels as stored, the masks as the eager pipeline's
        assert np.array_equal(kept[key], scenes(3)[int(key)])
        assert out[key].trace.source == str(paths[int(key)])
        assert np.array_equal(out[key].soft, run(scenes(3)[int(key)], scripted_models(WORLD), engine.config).soft)
    assert engine.read(paths[0]).original is None
