"""``bench.early_stop``: each setting's masks against the fixed run on the same images, and
``bench.throughput --early-stop``'s two sides (scripted world: fast, and it converges)."""

from __future__ import annotations

import json

from int_engine.bench.early_stop import compare, scripted_images, table, throughput_with_and_without
from int_engine.config import EngineConfig


def test_each_setting_against_the_fixed_run():
    make_models, images = scripted_images(4, size=(64, 80))
    rows = compare(make_models(), EngineConfig(iterations=3, max_in_flight=4), images, [(0.95, 1), (0.95, 2)])
    assert [r["setting"] for r in rows] == ["fixed", "stop_iou 0.95, min_iterations 1", "stop_iou 0.95, min_iterations 2"]
    fixed, one, two = rows
    assert fixed["iterations_histogram"] == {3: 4} and fixed["fewer_iterations"] == 0.0 and fixed["iou_worst"] == 1.0
    assert one["iterations_mean"] == 2.0 and two["iterations_mean"] == 3.0  # the scripted world agrees at once
    assert one["requests_per_image"] < fixed["requests_per_image"] and one["iou_worst"] >= 0.99
    text = table(rows)
    assert text.count("\n") == 4 and "| stop_iou 0.95, min_iterations 1 | 1.0000 | 1.0000 | 2.00 | 2:4 | 33% |" in text


def test_throughput_with_and_without(tmp_path, capsys):
    make_models, images = scripted_images(3, size=(64, 80))
    out = tmp_path / "t.json"
    assert throughput_with_and_without(make_models(), EngineConfig(iterations=3), images, 1, str(out)) == 0
    figures = json.loads(out.read_text())
    assert figures["off"]["iterations_per_image"] == 3.0 and figures["on"]["iterations_per_image"] == 2.0
    assert figures["on"]["requests_per_image"] < figures["off"]["requests_per_image"]
    assert min(figures["iou_on_vs_off"]) >= 0.99
    printed = capsys.readouterr().out
    assert "early stop off" in printed and "early stop on" in printed and "images/s" in printed
