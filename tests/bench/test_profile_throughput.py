"""`int-engine profile` and `bench/throughput.py`: the figures they print are the ones measured."""

import json

import numpy as np
from PIL import Image

from int_engine import IntEngine
from int_engine.config import EngineConfig
from int_engine.profile import profile
from int_engine.testing import ColourWorld, Thing, scripted_models
from int_engine.testing.scenes import compose, ellipse


def test_profile_writes_table_chrome_trace_and_chart(tmp_path):
    world = ColourWorld(
        [
            Thing("bark", (120, 80, 40), kind="background"),
            Thing("frog", (70, 140, 50)),
            Thing("snake", (150, 40, 150), confusions={"bark": 0.08}),
        ]
    )
    scene = compose(world, "bark", [("frog", ellipse(96, 128, 90, 30, 12, 9))], 96, 128, seed=0)
    Image.fromarray(scene.image).save(tmp_path / "x.png")
    engine = IntEngine(EngineConfig(iterations=3), models=scripted_models(world))
    table, trace = profile(engine, tmp_path / "x.png", tmp_path / "prof")
    lines = table.splitlines()
    assert lines[0].split()[0] == "iteration" and "propose" in lines[0] and "segment" in lines[0]
    assert [l.split()[0] for l in lines[2:]] == ["1", "2", "3", "all"]
    stages = json.loads((tmp_path / "prof/stages.json").read_text())
    assert len(stages["seconds"]) == 3
    total = sum(map(sum, stages["seconds"]))
    assert abs(float(lines[-1].split()[-1]) - total) < 2e-3
    events = json.loads((tmp_path / "prof/trace.json").read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    for call in ("propose:vlm.generate", "inpaint:inpaint.inpaint", "score:vlm.score", "segment:segmenter.segment"):
        assert any(n.startswith(call) for n in names), call
    with Image.open(tmp_path / "prof/stages.png") as chart:
        assert chart.size == (640, 400) and len(np.unique(np.asarray(chart).reshape(-1, 3), axis=0)) > 5


def test_throughput_script_reports_both_sides_and_the_same_masks(tiny_zoo, tmp_path, capsys):
    from int_engine.bench.throughput import main

    out = tmp_path / "t.json"
    code = main(
        [
            "--images",
            "2",
            "--in-flight",
            "2",
            "--iterations",
            "1",
            "--size",
            "48",
            "64",
            "--zoo",
            str(tiny_zoo),
            "--set",
            "max_new_tokens=8",
            "--set",
            "models.inpaint.options.steps=2",
            "--json",
            str(out),
        ]
    )
    figures = json.loads(out.read_text())
    assert code == 0 and figures["max_soft_mask_difference"] < 1e-4 and figures["max_8bit_level_difference"] <= 1
    for key in ("engine_images_per_s", "reference_images_per_s", "ratio", "peak_rss_mb", "calls_per_image_iteration"):
        assert key in figures
    assert figures["ratio"] == figures["engine_images_per_s"] / figures["reference_images_per_s"]
    # one repeat: the paired ratio is that repeat's reference time over its engine time
    assert figures["ratio_paired_median"] == figures["reference_seconds"][0] / figures["engine_seconds"][0]
    engine, reference = figures["calls_per_image_iteration"]["engine"], figures["calls_per_image_iteration"]["reference"]
    assert engine["vlm.generate"] == 0.5 and reference["vlm.generate"] == 18  # 2 images share 1 call; 2 x 9 views alone
    assert reference["segmenter.segment"] == 9 and engine["segmenter.segment"] == 0.5
    # the same algorithm on both sides: the same work (int_engine.work), however it is batched
    assert figures["inpaint_scope"] == EngineConfig().inpaint_scope
    other = "image_scope" if figures["inpaint_scope"] == "view" else "view_scope"
    work = figures["work_per_image_iteration"]
    assert set(work) == {"engine", "reference", other}

    def same_work(a: dict, b: dict, skip: tuple[str, ...]) -> bool:
        return {k: v for k, v in a.items() if not k.startswith(skip)} == {k: v for k, v in b.items() if not k.startswith(skip)}

    # (scoring may share prefixes in a batch: VLM tokens may differ there)
    assert same_work(work["reference"], work["engine"], ("vlm.prefill_tokens",))
    # the scopes differ in the inpainting only: one whole-image job per image-iteration with any
    # box against one job per view with a box
    assert same_work(work[other], work["engine"], ("vlm.prefill_tokens", "inpaint."))
    by_view = work["view_scope" if other == "view_scope" else "engine"]["inpaint.inpaint_jobs"]
    by_image = work["engine" if other == "view_scope" else "image_scope"]["inpaint.inpaint_jobs"]
    assert by_image <= by_view and (by_image == 0) == (by_view == 0) and by_image <= 1
    assert work["engine"]["detector.images"] == 9 and work["engine"]["clip.images"] == 18
    assert work["engine"]["segmenter.encoder_images"] == 9 and work["engine"]["vlm.prefill_tokens"] > 0
    printed = capsys.readouterr().out
    assert "ratio" in printed and "view scope: " in printed and "segmenter.encoder_images" in printed
