"""With early stop's defaults, every scenario's segmentation stays within 0.01 IoU of its
fixed-iteration run, and fewer iterations run (docs/method.md, "Early stop")."""

import pytest
from early_stop_harness import measure

from int_engine.config import EngineConfig

pytestmark = pytest.mark.scenario


def test_the_defaults_keep_every_scenarios_mask(capsys):
    default = (EngineConfig().stop_iou, EngineConfig().min_iterations)
    records = measure([default])[default]
    with capsys.disabled():
        print(
            f"\n[early stop {default}] "
            + ", ".join(f"{r['scenario']} {r['iou']:.3f} {r['stopped']}/{r['fixed']}" for r in records)
        )
    assert {r["scenario"] for r in records} >= {"fig1", "progressive", "eq13", "polyp", "skin_lesion"}
    assert min(r["iou"] for r in records) >= 0.99, records
    assert sum(r["stopped"] for r in records) < sum(r["fixed"] for r in records)
