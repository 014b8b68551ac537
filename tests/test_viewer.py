"""The browser viewer in a real browser: Debian's Chromium driven by Playwright, against `headct serve`.

The server runs as the CLI does (a subprocess on a free loopback port) with a
tiny checkpoint; the page may reach nothing but that server (every other
request is blocked and recorded). A phantom study with a known bleed is
uploaded; the strip, slice navigation (strip click, keyboard, wheel, slider),
window presets and the Grad-CAM overlay are checked from the page's state and
from the pixels of its canvas.

Set ``HEADCT_VIEWER_SCREENSHOT=PATH`` to keep the screenshot (with
``HEADCT_VIEWER_CHECKPOINT=DIR``: of a trained model, as the README's is), and
``HEADCT_VIEWER_STUDY=SIZE,SLICES``, ``HEADCT_VIEWER_MODEL=NAME,INPUT_SIZE`` and
``HEADCT_VIEWER_LATENCY_OUT=FILE`` (``benchmarks/viewer_latency.py`` does) to time
a larger study with the onnx runtime.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
LABELS = ["intraparenchymal", "any"]
LESION = "intraparenchymal"

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium for the browser tests", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip playwright is missing")


def _study_shape() -> tuple[int, int]:
    size, slices = os.environ.get("HEADCT_VIEWER_STUDY", "64,10").split(",")
    return int(size), int(slices)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from headct.checkpoint import save_checkpoint
    from headct.models import build_model

    if os.environ.get("HEADCT_VIEWER_CHECKPOINT"):  # a trained model, for the README's screenshot
        return Path(os.environ["HEADCT_VIEWER_CHECKPOINT"])
    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("ckpt") / "model"
    # 64 px: the last stage is 2x2 cells, so Grad-CAM maps are not constant (1x1 at 32 px gives all-zero maps)
    name, size = os.environ.get("HEADCT_VIEWER_MODEL", "mobilenetv2,64").split(",")
    save_checkpoint(build_model(name, len(LABELS)), ckpt, size=int(size), task=",".join(LABELS),
                    labels=LABELS, label_kind="multilabel", thresholds={"any": 0.4}, temperature=1.0)
    return ckpt


@pytest.fixture(scope="module")
def bleed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], set[int]]:
    """A phantom study with an intraparenchymal bleed: its DICOM files and the slices the bleed is on."""
    from pydicom.uid import generate_uid

    from headct.phantom.generator import generate_study
    from headct.phantom.lesions import LESION_BITS
    from headct.phantom.writers import RESCALES, SeriesInfo, write_dicom_series

    size, slices = _study_shape()
    study = generate_study(3, size=size, slices=slices, lesions=[LESION], difficulty=0.0)
    n = study.num_slices
    info = SeriesInfo("PID-SECRET-42", generate_uid(), generate_uid(), generate_uid(),
                      [generate_uid() for _ in range(n)], study.pixel_spacing, study.slice_thickness,
                      list(study.z), RESCALES[1])
    paths = write_dicom_series(tmp_path_factory.mktemp("bleed"), study.hu, info)
    on = (study.masks & LESION_BITS[LESION]).reshape(n, -1).any(axis=1)
    assert on.any(), "the phantom placed no bleed"
    return paths, {int(k) for k in np.nonzero(on)[0]}


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int],
           stop_process: Callable[[subprocess.Popen, float], None]) -> Iterator[str]:
    """`headct serve` on a free loopback port, stopped after the module."""
    port = free_port()
    runtime = "onnx" if os.environ.get("HEADCT_VIEWER_LATENCY_OUT") else "torch"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", "from headct.cli import main; raise SystemExit(main())", "serve",
         "--model", str(checkpoint), "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
         "--runtime", runtime], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"headct serve exited: {Path(log.name).read_text()[-2000:]}"
            assert time.monotonic() < deadline, "headct serve did not answer /healthz within 180 s"
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield base
    finally:
        stop_process(process, 30)
        log.close()


@pytest.fixture()
def page(server: str, tmp_path: Path) -> Iterator[tuple[object, list[str]]]:
    """A fresh Chromium page that may reach only ``server``; yields it and the blocked URLs."""
    blocked: list[str] = []
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1500, "height": 1150})
        try:
            def route(r: object) -> None:
                url = r.request.url
                if url.startswith(server + "/") or url.startswith("data:"):
                    r.continue_()
                else:
                    blocked.append(url)
                    r.abort()

            context.route("**/*", route)
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(server + "/")
            yield page, blocked
        finally:
            context.close()


def _slice(page: object) -> int:
    return int(page.evaluate("document.body.dataset.slice"))


def _heat_pixels(page: object) -> int:
    """Overlay-coloured pixels in the image area of the canvas (warm map: red well above green and blue)."""
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#gl").screenshot())).convert("RGB")).astype(int)
    image = shot[: int(shot.shape[0] * 0.85)]  # the colour bar lies along the bottom
    r, b = image[..., 0], image[..., 2]
    return int(((r - b > 60) & (r > 80)).sum())


def _upload_and_wait(page: object, paths: list[Path]) -> None:
    page.set_input_files("#pick-files", [str(p) for p in paths])
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)", timeout=300_000)
    assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")


def test_viewer_shows_a_phantom_bleed_with_overlay_strip_and_keys(server: str, page: tuple, bleed: tuple,
                                                                 tmp_path: Path) -> None:
    page, blocked = page
    paths, lesion_slices = bleed
    assert page.evaluate("typeof niivue.Niivue") == "function"  # the vendored bundle loaded
    _upload_and_wait(page, paths)  # ready: the series drawn with the overlay of the slice in view
    timings = page.evaluate("headctViewer.timings")
    timings["requests_ms"] = page.evaluate(  # each request: sent, first byte, last byte (ms since the upload)
        "performance.getEntriesByType('resource').filter(e => e.name.includes('/v1/')).map(e => "
        "[e.name.replace(/.*\\/v1\\/results\\/[^/]*/, ''), ...[e.requestStart, e.responseStart, e.responseEnd]"
        ".map(t => Math.round(t - headctViewer.t0))])")
    if os.environ.get("HEADCT_VIEWER_LATENCY_OUT"):
        Path(os.environ["HEADCT_VIEWER_LATENCY_OUT"]).write_text(json.dumps(
            {"slices": len(paths), "size": _study_shape()[0], "timings_ms": timings}, indent=2) + "\n")
        return  # the benchmark's large study: timed; software WebGL makes the rest minutes long

    kept = httpx.get(f"{server}/v1/results").json()
    assert len(kept) == 1
    prediction = httpx.get(f"{server}/v1/results/{kept[0]['id']}/prediction.json").json()
    labels = prediction["model"]["labels"]
    per_slice = {label: [s["probabilities"][label] for s in prediction["slices"]] for label in labels}
    count = len(prediction["slices"])
    assert page.inner_text("#slice-number").startswith(f"slice {_slice(page) + 1} / {count}")

    # the strip marks each class's most probable slice; the viewer opens on the overlay class's peak
    for label in labels:
        peak = int(page.get_attribute(f"canvas[data-label='{label}']", "data-peak"))
        assert peak == int(np.argmax(per_slice[label]))
    shown = page.eval_on_selector("#cam-class", "e => e.value")
    assert shown == max(labels, key=lambda label: prediction["study_probabilities"][label])
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Grad-CAM of')",
                           timeout=300_000)  # then the maps of every slice
    # go to a slice of the bleed by clicking the strip there
    target = min(lesion_slices)
    strip = page.locator(f"canvas[data-label='{LESION}']")
    box = strip.bounding_box()
    strip.click(position={"x": (target + 0.5) / count * box["width"], "y": box["height"] / 2})
    assert _slice(page) == target

    # the overlay is drawn: heat pixels with the class chosen, none without it
    page.wait_for_timeout(300)
    with_overlay = _heat_pixels(page)
    page.select_option("#cam-class", "")
    page.wait_for_timeout(300)
    without_overlay = _heat_pixels(page)
    assert with_overlay > 50 and without_overlay < with_overlay / 20, (with_overlay, without_overlay)
    page.select_option("#cam-class", shown)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Grad-CAM of')")

    # keyboard, wheel and slider move the slice
    page.evaluate("document.activeElement.blur()")  # keys typed into the class menu are the menu's
    page.keyboard.press("ArrowUp")
    assert _slice(page) == min(target + 1, count - 1)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert _slice(page) == max(min(target + 1, count - 1) - 2, 0)
    before = _slice(page)
    page.locator("#gl").hover()
    page.mouse.wheel(0, -120 if before < count - 1 else 120)
    page.wait_for_function(f"document.body.dataset.slice !== '{before}'", timeout=10_000)
    page.fill("#slice", str(target))
    page.dispatch_event("#slice", "input")
    assert _slice(page) == target

    # window presets and the free window change the background's range
    page.click("button[data-window='bone']")
    assert page.evaluate("headctViewer.nv.volumes[0].cal_min") == -500
    assert page.evaluate("headctViewer.nv.volumes[0].cal_max") == 1500
    page.fill("#win-level", "60")
    page.fill("#win-width", "100")
    page.dispatch_event("#win-width", "change")
    assert page.evaluate("[headctViewer.nv.volumes[0].cal_min, headctViewer.nv.volumes[0].cal_max]") == [10, 110]
    page.click("button[data-window='brain']")

    # the summary: probabilities, thresholds, decisions, model card; no identifiers anywhere on the page
    summary = page.inner_text("#summary")
    for label in labels:
        assert label in summary and f"{prediction['study_probabilities'][label]:.3f}" in summary
    assert prediction["model"]["name"] in page.inner_text("#model-card")
    assert "PID-SECRET-42" not in page.content()
    assert f"{count} slices" in page.inner_text("#studies")

    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("HEADCT_VIEWER_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["HEADCT_VIEWER_SCREENSHOT"])
    assert blocked == [], f"the page tried to leave the server: {blocked}"


def test_a_study_predicted_earlier_can_be_picked(server: str, page: tuple, bleed: tuple) -> None:
    page, blocked = page
    if not httpx.get(f"{server}/v1/results").json():  # run alone: keep one study first
        files = [("files", (f"{n}.dcm", path.read_bytes(), "application/dicom")) for n, path in enumerate(bleed[0])]
        assert httpx.post(f"{server}/v1/predict", files=files, timeout=300).status_code == 200
        page.reload()
    page.wait_for_selector("#studies li")
    first = page.locator("#studies li").first
    result_id = first.get_attribute("data-id")
    first.click()
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=120_000)
    assert page.evaluate("headctViewer.id") == result_id
    assert page.evaluate("headctViewer.count") == len(bleed[0])
    assert blocked == []
