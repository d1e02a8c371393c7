"""``python -m int_engine.bench.serve_load`` end to end on the tiny zoo, kept small: a real server
on loopback, levels 1 and 2, three requests each, and segment_many beside them."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from int_engine.bench.serve_load import batch_totals, main  # noqa: E402


def test_batch_totals_reads_the_segmenter_histogram_only():
    text = "\n".join(
        [
            "# TYPE int_engine_batch_images histogram",
            'int_engine_batch_images_count{call="vlm.generate"} 9.0',
            'int_engine_batch_images_sum{call="vlm.generate"} 30.0',
            'int_engine_batch_images_count{call="segmenter.segment"} 4.0',
            'int_engine_batch_images_sum{call="segmenter.segment"} 11.0',
        ]
    )
    assert batch_totals(text) == (4.0, 11.0)
    assert batch_totals("") == (0.0, 0.0)


def test_serve_load_sweeps_levels_and_compares_with_segment_many(tmp_path, capsys):
    out = tmp_path / "load.json"
    code = main(
        ["--levels", "1", "2", "--requests", "3", "--images", "2", "--warmup", "1", "--size", "48", "64", "--json", str(out)]
    )
    assert code == 0
    figures = json.loads(out.read_text())
    assert figures["server_exit_code"] == 0
    # every answered request carried the library's mask for the same image
    assert figures["masks_compared"] == 6 and figures["masks_equal"] == 6
    levels = figures["levels"]
    assert [f["concurrency"] for f in levels] == [1, 2]
    for f in levels:
        assert f["requests"] == 3 and f["non_200"] == 0 and f["statuses"] == {"200": 3}
        assert f["images_per_s"] > 0 and f["segment_many_images_per_s"] > 0
        assert f["ratio"] == pytest.approx(f["images_per_s"] / f["segment_many_images_per_s"])
        lat = f["latency_s"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
        assert f["server_cpu_ms_per_image"] > 0 and f["segment_many_cpu_ms_per_image"] > 0
    # one client keeps one image in flight: every segmenter batch carries exactly one image;
    # two clients can share a batch, never more than two
    assert levels[0]["server_images_per_segmenter_batch"] == 1.0
    assert 1.0 <= levels[1]["server_images_per_segmenter_batch"] <= 2.0
    # segment_many holds all three images in flight at once (max_in_flight 8)
    assert levels[0]["segment_many_images_per_segmenter_batch"] == 3.0
    printed = capsys.readouterr().out
    assert "segment_many img/s" in printed and "masks equal to the library's: 6 of 6" in printed
