"""`alexnet serve`'s page in a real browser: headless Chromium (Debian's) driven by Playwright.

The server runs on a loopback port (tests/serve_support.py); the browser chooses a real
test image with the page's file input, drops a second one on the drop zone, and the test
reads the top-5 off the page. The reference is ``alexnet.eval.predict.predict`` on the
same files. Playwright drives the system's Chromium (``/usr/bin/chromium``, from the Debian
package ``chromium`` that scripts/setup.sh installs where it can): nothing is downloaded;
without either, the test skips with the reason. :func:`test_screenshot_for_the_docs` made
docs/figures/serve.png (it runs only when asked to, by its environment variables).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.checkpoint import load_model
from alexnet.data import open_cache
from alexnet.eval.predict import predict
from alexnet.models.kernels import kernel_grid

from serve_support import running_server

CHROMIUM = Path(os.environ.get("ALEXNET_CHROMIUM", "/usr/bin/chromium"))
# No network, no first-run or background services: the browser talks to the test's server only.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} "
                                 f"(Debian: apt-get install chromium; scripts/setup.sh does it where it can)")]


@pytest.fixture
def uploads(fmnist_cache, tmp_path):
    split = open_cache(fmnist_cache).split("test")
    paths = []
    for i in (0, 1):
        path = tmp_path / f"fashion-{i}.png"
        Image.fromarray(np.asarray(split.images[i])[:, :, 0]).resize((112, 112), Image.NEAREST).save(path)
        paths.append(path)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    return paths, text


def shown_top5(page) -> list[dict]:
    page.wait_for_function("document.querySelectorAll('#top5 li').length === 5")
    return page.eval_on_selector_all("#top5 li", """items => items.map(li => ({
        class: li.dataset.class, probability: Number(li.dataset.probability),
        name: li.querySelector('.name').firstChild.textContent, text: li.querySelector('.prob').textContent,
        bar: li.querySelector('.bar div').style.width}))""")


def assert_matches_predict(rows: list[dict], run: Path, image: Path) -> None:
    reference = predict(run, [image], topk=5)[0]["top"]
    assert [r["class"] for r in rows] == [t["class"] for t in reference]
    assert [r["name"] for r in rows] == [t["name"] for t in reference]
    assert [r["probability"] for r in rows] == pytest.approx([t["prob"] for t in reference], abs=1e-6)
    assert [r["text"] for r in rows] == [f"{100 * t['prob']:.2f}%" for t in reference]
    # The bars are as long as the numbers say (the browser writes 10.40% as 10.4%).
    assert [float(r["bar"].rstrip("%")) for r in rows] == pytest.approx([100 * t["prob"] for t in reference], abs=0.006)


def test_the_page_in_chromium_shows_the_top5_predict_gives(trained_run, uploads, tmp_path):
    images, text = uploads
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with running_server(run) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 820})
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('alexnet_small')")

            # Choose a file with the page's file input.
            page.set_input_files("#file", str(images[0]))
            page.wait_for_function(f"document.getElementById('status').textContent === '{images[0].name}'")
            assert_matches_predict(shown_top5(page), run, images[0])

            # Drop another on the drop zone, as a user drags one from their desktop.
            data = base64.b64encode(images[1].read_bytes()).decode()
            transfer = page.evaluate_handle("""([data, name]) => {
                const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], name, {type: 'image/png'}));
                return dt; }""", [data, images[1].name])
            page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
            page.wait_for_function(f"document.getElementById('status').textContent === '{images[1].name}'")
            assert_matches_predict(shown_top5(page), run, images[1])

            # The model's kernels and the run's status and curves.
            model, _ = load_model(run / "last.safetensors")
            grid = kernel_grid(model)
            page.wait_for_function("document.getElementById('kernel-image').naturalWidth > 0")
            assert page.evaluate("document.getElementById('kernel-image').naturalWidth") == grid.shape[1]
            page.wait_for_function("document.getElementById('curves').naturalWidth > 0")
            assert page.inner_text("#run-status") == "finished"
            assert page.inner_text("#run-epochs") == "1/1"
            screenshot = page.screenshot(full_page=True)

            # Something that is not an image: the page says why, and the next image works again.
            page.set_input_files("#file", str(text))
            page.wait_for_selector("#error", state="visible")
            assert "not an image" in page.inner_text("#error")
            assert page.eval_on_selector_all("#top5 li", "items => items.length") == 0
            page.set_input_files("#file", str(images[0]))
            page.wait_for_function(f"document.getElementById('status').textContent === '{images[0].name}'")
            assert_matches_predict(shown_top5(page), run, images[0])
        finally:
            browser.close()
    (tmp_path / "serve.png").write_bytes(screenshot)
    with Image.open(tmp_path / "serve.png") as shot:
        assert shot.format == "PNG" and shot.width == 1000


@pytest.mark.skipif(not (os.environ.get("ALEXNET_SCREENSHOT") and os.environ.get("ALEXNET_SCREENSHOT_RUN")),
                    reason="remakes docs/figures/serve.png: set ALEXNET_SCREENSHOT=OUT.png, "
                           "ALEXNET_SCREENSHOT_RUN=RUN_DIR and ALEXNET_SCREENSHOT_IMAGE=PHOTO")
def test_screenshot_for_the_docs():
    """The page serving a trained run, with a photo chosen: the screenshot docs/viewer.md shows."""
    image = Path(os.environ["ALEXNET_SCREENSHOT_IMAGE"])
    with running_server(os.environ["ALEXNET_SCREENSHOT_RUN"]) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 820})
            page.goto(server.url + "/")
            page.set_input_files("#file", str(image))
            page.wait_for_function(f"document.getElementById('status').textContent === '{image.name}'")
            shown_top5(page)
            page.wait_for_function("document.getElementById('kernel-image').naturalWidth > 0")
            page.wait_for_function("document.getElementById('curves').naturalWidth > 0")
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    # 256 colours: a third of the browser's bytes, for a figure that lives in the repository.
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        os.environ["ALEXNET_SCREENSHOT"], optimize=True)
