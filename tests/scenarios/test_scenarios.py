"""The paper's claims end to end on generated scenes with scripted, error-making models
(tests/scenarios.py says what each scenario claims; docs/method.md maps them to SPEC steps)."""

import pytest
from scenarios import SCENARIOS

pytestmark = pytest.mark.scenario


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name, capsys):
    figures = SCENARIOS[name]()
    with capsys.disabled():
        print(f"\n[{name}] {figures}")


def test_objects_spanning_views_hold_over_many_draws_of_the_models_errors(capsys):
    """The spanning scenes over 8 seeds each: every segmentation reaches IoU >= 0.8 with the
    paper's defaults; the engine's earlier readings (the coverage-normalised soft map cut at 0.5,
    and all of them together) are printed beside it (docs/method.md has the figures)."""
    from scenarios import EARLIER_READING, MIN_IOU, spanning_ious

    seeds = range(20, 28)
    paper = spanning_ious(seeds)
    coverage = spanning_ious(seeds, mask_combine="coverage", segmentation="threshold")
    earlier = spanning_ious(seeds, **EARLIER_READING)
    with capsys.disabled():
        for name in paper:
            print(f"\n[{name}] IoU over seeds: paper {paper[name]} | coverage cut {coverage[name]} | earlier {earlier[name]}")
    assert all(min(ious) >= MIN_IOU for ious in paper.values()), paper


@pytest.mark.parametrize("name", ["progressive", "clip_weighting", "polyp", "skin_lesion"])
def test_scenes_with_a_distractor_hold_over_many_draws_of_the_models_errors(name, capsys):
    """The scenarios whose scene has a distractor, or a medical task, over 8 draws of the scene's
    texture and the models' errors (``ColourWorld.seed``). Each claim holds on every draw, except
    where GroundingDINO boxed the distractor in the whole view: the authors' segmentation always
    keeps the whole view's mask, so that false positive is in the output (docs/method.md)."""
    import scenarios

    ious, leaks = [], []
    for seed in range(8):
        try:
            figures = getattr(scenarios, name)(seed)
        except scenarios.OutcomeFailure as failed:
            figures = failed.args[0]
            assert isinstance(figures, dict) and figures.get("whole_view_boxed_distractor"), (seed, figures)
            leaks.append(seed)
        ious.append(figures["iou"])
    with capsys.disabled():
        print(f"\n[{name}] IoU over seeds: {ious}; distractor boxed in the whole view: seeds {leaks}")
    assert len(leaks) <= 1


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_in_the_other_inpaint_scope(name, monkeypatch, capsys):
    """Every claim also holds with eq 4 per view (inpaint_scope="view"; the default is "image")."""
    from int_engine.config import EngineConfig

    assert EngineConfig().inpaint_scope == "image"
    init = EngineConfig.__init__
    monkeypatch.setattr(EngineConfig, "__init__", lambda self, *a, **k: init(self, *a, **{"inpaint_scope": "view", **k}))
    figures = SCENARIOS[name]()
    with capsys.disabled():
        print(f"\n[{name}, inpaint_scope=view] {figures}")
