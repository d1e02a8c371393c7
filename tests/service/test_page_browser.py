"""The page at ``/`` in headless Chromium against the real server (tiny zoo): a person's upload
shows each iteration's overlay as its event arrives, then the final one. Needs Chromium (Debian's
``chromium``; CI installs it) and Playwright (the [dev] extra); else the in-process and socket
tests of the same stream (test_stream.py, test_stream_server.py) stand in."""

from __future__ import annotations

import shutil

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the [dev] extra installs it)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (CI installs Debian's chromium)")

import httpx  # noqa: E402
from pycocotools import mask as coco_mask  # noqa: E402

from int_engine.bench.serve_load import ServerProcess, png_bytes  # noqa: E402
from int_engine.bench.synthetic import make_scene  # noqa: E402
from int_engine.models.cache import ensure_tiny_zoo  # noqa: E402


def test_the_page_draws_each_iteration_as_it_lands(tmp_path):
    ensure_tiny_zoo()
    image = tmp_path / "scene.png"
    data = png_bytes(make_scene(2, 48, 64)[0])
    image.write_bytes(data)
    server = ServerProcess(["--iterations", "2"])
    try:
        server.wait_ready()
        plain = httpx.post(
            server.url + "/v1/segment", files={"image": ("x.png", data, "image/png")}, data={"iterations": "3"}, timeout=300
        ).json()
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server.url + "/")
            page.set_input_files("#file", str(image))
            page.fill("#iters", "3")
            page.click("button[type=submit]")
            page.wait_for_function("document.querySelectorAll('#iterations figure').length === 4", timeout=240_000)
            captions = page.eval_on_selector_all("#iterations figcaption", "els => els.map(e => e.textContent)")
            status = page.inner_text("#status")
            # the overlay tints the mask's pixels: count the final canvas's pixels that differ from
            # the uploaded image drawn alone
            tinted = page.evaluate(
                """async () => {
                    const shown = document.querySelectorAll('#iterations canvas')[3];
                    const plain = document.createElement('canvas');
                    plain.width = shown.width; plain.height = shown.height;
                    const bitmap = await createImageBitmap(document.getElementById('file').files[0]);
                    plain.getContext('2d').drawImage(bitmap, 0, 0, shown.width, shown.height);
                    const a = shown.getContext('2d').getImageData(0, 0, shown.width, shown.height).data;
                    const b = plain.getContext('2d').getImageData(0, 0, shown.width, shown.height).data;
                    let changed = 0;
                    for (let i = 0; i < a.length; i += 4) if (a[i] !== b[i] || a[i + 1] !== b[i + 1]) changed++;
                    return changed;
                }"""
            )
            browser.close()
    finally:
        assert server.stop() == 0, server.output()
        server.close()
    assert errors == []
    assert captions[:3] == [f"iteration {k + 1}: {pick}" for k, pick in enumerate(plain["picks"])]
    assert captions[3] == f"final (iteration {plain['final_iteration'] + 1})"
    assert status == "done: " + ", ".join(plain["picks"])
    mask = coco_mask.decode({"size": plain["binary_rle"]["size"], "counts": plain["binary_rle"]["counts"].encode()})
    assert abs(tinted - int(mask.sum())) <= max(2, 0.01 * mask.sum()), (tinted, int(mask.sum()))
