"""SAM 3 as a concept segmenter (``models.concept``), with and without the negatives that
mining found (``sam3_negatives``), in the scripted world.

The scripted concept segmenter (``int_engine.testing.concept``) takes a leaf for a frog, as SAM 3
takes look-alikes for its concept, and honours exemplar boxes as SAM 3 documents. These scenes
say what the mined negatives change in that world; what they change with the real SAM 3 is
unmeasured (no checkpoint can be run here).
"""

import numpy as np
import pytest
from scenarios import MAX_DISTRACTOR, MIN_IOU, H, W, bark_world, distractor_share, frog_scene, iou, picks

from int_engine import concept
from int_engine.config import EngineConfig, apply_overrides
from int_engine.pipeline import run
from int_engine.testing import Thing, scripted_models
from int_engine.testing.concept import ScriptedConceptSegmenter
from int_engine.testing.scenes import compose, ellipse

pytestmark = pytest.mark.scenario

LOOKALIKES = {"frog": {"leaf": 0.7}}  # SAM 3 "sees" a frog in a leaf of its colour and size
# (frog, leaf) ellipses (cx, cy, rx, ry): side by side; the leaf above, off-centre
LAYOUTS = {"side_by_side": ((44, 64, 20, 14), (124, 70, 12, 9)), "leaf_above": ((60, 92, 22, 16), (110, 26, 14, 10))}


def concept_run(scene, world, negatives: str, lookalikes=LOOKALIKES, iterations: int = 3):
    models = scripted_models(world)
    models.concept = ScriptedConceptSegmenter(world, lookalikes)
    cfg = apply_overrides(EngineConfig(iterations=iterations), ["models.concept.backend=sam3", f"sam3_negatives={negatives}"])
    return run(scene.image, models, cfg), models.concept


def leaf_scene(layout: str, seed: int):
    frog, leaf = LAYOUTS[layout]
    world = bark_world(Thing("leaf", (130, 130, 20)), seed=seed)
    return world, compose(world, "bark", [("frog", ellipse(H, W, *frog)), ("leaf", ellipse(H, W, *leaf))], H, W, seed=seed)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_mined_negatives_take_the_lookalike_out_of_the_mask(layout, capsys):
    """Over six draws of the scene and the models' errors: without negatives SAM 3 segments the
    frog and the leaf it takes for one; with the boxes of the names mining rejected as negatives
    the leaf is suppressed and the frog kept, whenever mining picked the frog. Never worse."""
    rows = []
    for seed in range(6):
        world, scene = leaf_scene(layout, seed)
        plain, plain_model = concept_run(scene, world, "none")
        mined, mined_model = concept_run(scene, world, "mined")
        assert plain_model.negatives_seen == 0
        frog, leaf_before = scene.gt("frog"), distractor_share(plain, scene, "leaf")
        before, after = iou(plain.binary, frog), iou(mined.binary, frog)
        rows.append((seed, picks(mined)[-1], round(before, 3), round(after, 3), round(leaf_before, 3)))
        assert after >= before
        if picks(mined) != ["frog"] * 3:  # mining's own error: no negative can mend the pick
            continue
        assert mined_model.negatives_seen > 0 and all(it.concept_negatives for it in mined.trace.iterations)
        assert (plain.binary & frog).sum() >= 0.9 * frog.sum() and leaf_before > 0.5  # the look-alike error shows
        assert after >= MIN_IOU and distractor_share(mined, scene, "leaf") <= MAX_DISTRACTOR
    assert sum(r[1] == "frog" for r in rows) >= 5, rows
    with capsys.disabled():
        for seed, pick, a, b, leaf in rows:
            print(
                f"\n[{layout} seed {seed}] pick {pick}: frog IoU {a} without negatives, {b} mined; leaf in mask without: {leaf}"
            )


def test_with_one_name_there_is_nothing_to_mine():
    """A large central frog that every view names: no name is rejected, so ``mined`` passes no
    negative and changes nothing; the look-alike stays in the mask (a limit of the option)."""
    world = bark_world(Thing("leaf", (130, 130, 20)), seed=0)
    scene = compose(
        world, "bark", [("frog", ellipse(H, W, 80, 64, 36, 26)), ("leaf", ellipse(H, W, 140, 112, 12, 10))], H, W, seed=0
    )
    plain, _ = concept_run(scene, world, "none")
    mined, model = concept_run(scene, world, "mined")
    assert all(len(it.candidates) == 1 for it in mined.trace.iterations) and model.negatives_seen == 0
    assert np.array_equal(plain.binary, mined.binary)
    assert distractor_share(mined, scene, "leaf") > 0.5


def test_a_rejected_name_boxed_on_the_object_is_not_a_negative(monkeypatch):
    """Fig. 1's scene: the whole view names a snake and boxes the frog. That box is the frog's,
    so it is not a negative (``concept.SAME_OBJECT_OVERLAP``); with the guard off it is, and SAM 3
    suppresses the frog itself."""
    world, scene = frog_scene([ellipse(H, W, 120, 40, 14, 10)], seed=1)
    kept, _ = concept_run(scene, world, "mined", lookalikes={}, iterations=2)
    assert picks(kept) == ["frog", "frog"]
    assert iou(kept.binary, scene.gt("frog")) >= MIN_IOU
    monkeypatch.setattr(concept, "SAME_OBJECT_OVERLAP", float("inf"))
    unguarded, model = concept_run(scene, world, "mined", lookalikes={}, iterations=2)
    assert model.negatives_seen > 0
    assert iou(unguarded.binary, scene.gt("frog")) < 0.5


def test_the_concept_path_replaces_sam_and_spatial_clip():
    """With ``models.concept`` set, steps 7-8 make no SAM and no Spatial CLIP call: the concept
    segmenter's masks are what step 9 weighs."""
    world, scene = leaf_scene("side_by_side", 0)
    models = scripted_models(world)
    models.concept = ScriptedConceptSegmenter(world, LOOKALIKES)

    class Refuses:
        def segment(self, requests):
            raise AssertionError("SAM was called")

    models.segmenter = Refuses()
    models.clip.similarity_maps = lambda *a, **k: (_ for _ in ()).throw(AssertionError("Spatial CLIP was called"))
    cfg = apply_overrides(EngineConfig(iterations=1), ["models.concept.backend=sam3"])
    r = run(scene.image, models, cfg)
    assert (r.binary & scene.gt("frog")).sum() >= 0.9 * scene.gt("frog").sum()
    assert np.isfinite(r.soft).all()
