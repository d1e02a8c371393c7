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
    """The spanning scenes over 8 seeds each: every binary mask reaches IoU >= 0.8 with the default
    eq 11 (coverage-normalised); SPEC step 9's plain sum is printed beside it for comparison."""
    from scenarios import MIN_IOU, spanning_ious

    seeds = range(20, 28)
    coverage = spanning_ious(seeds)
    plain = spanning_ious(seeds, mask_combine="sum")
    with capsys.disabled():
        for name in coverage:
            print(f"\n[{name}] IoU over seeds: coverage {coverage[name]} | plain sum {plain[name]}")
    assert all(min(ious) >= MIN_IOU for ious in coverage.values()), coverage
    # the plain sum loses parts of these objects on some draws (docs/method.md has the figures)
    assert min(min(ious) for ious in plain.values()) < MIN_IOU


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
