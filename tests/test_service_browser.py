"""The inspection page in a real browser (Debian chromium via Playwright): token prompt, upload,
verdict, boxes, threshold slider, history filter and CSV; serves an ONNX-exported PatchCore."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_service import running

from anomalens import testing as tm
from anomalens.export import export_model
from anomalens.methods import PatchCore
from anomalens.service import create_app

TOKEN = "page-token-123"


def defect_image(size: int = 256) -> np.ndarray:
    img = tm.object_images(1, seed=9, size=size)[0].copy()
    img[size // 2 - 14 : size // 2 + 6, size // 2 - 20 : size // 2] = 0  # a dark hole
    return img


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny PatchCore on synthetic objects, exported to ONNX."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = PatchCore(image_size=128, memory_size=400, foreground="on")
        det.fit(tm.object_images(8, size=256), progress=False)
        folder = tmp_path_factory.mktemp("page_model") / "onnx"
        export_model(det, folder)
    return folder


def test_page_upload_verdict_boxes_slider_history(browser, exported, tmp_path):
    Image.fromarray(defect_image()).save(tmp_path / "part_017.png")
    Image.fromarray(tm.object_images(1, seed=3, size=256)[0]).save(tmp_path / "part_018.png")
    app = create_app(exported, token=TOKEN)
    with running(app) as (url, _):
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        try:
            page.goto(url + "/")
            page.wait_for_selector("#auth:not([hidden])")  # auth on: the page asks for the token
            page.fill("#token", TOKEN)
            page.click("#token-save")
            page.wait_for_function(
                "document.querySelector('#model-info').textContent.includes('patchcore')"
            )
            assert "onnxruntime" in page.text_content("#model-info")
            page.set_input_files("#files", [str(tmp_path / "part_017.png")])
            card = page.wait_for_selector(".card[data-name='part_017.png']", timeout=30_000)
            assert card.query_selector(".verdict").text_content() == "DEFECTIVE"
            boxes = card.query_selector_all(".box")
            assert boxes, "no box drawn over the defect"
            # the box covers the hole (image 256 px, hole at x 108..128, y 114..134)
            fig = card.query_selector(".figure").bounding_box()
            box = boxes[0].bounding_box()
            cx = (box["x"] + box["width"] / 2 - fig["x"]) / fig["width"] * 256
            cy = (box["y"] + box["height"] / 2 - fig["y"]) / fig["height"] * 256
            assert 90 < cx < 146, cx
            assert 96 < cy < 152, cy
            page.set_input_files("#files", [str(tmp_path / "part_018.png")])
            page.wait_for_selector(".card[data-name='part_018.png']", timeout=30_000)
            verdicts = page.eval_on_selector_all(
                "#history tbody td:nth-child(5)", "cells => cells.map(c => c.textContent)"
            )
            assert verdicts == ["OK", "DEFECTIVE"]
            page.screenshot(path=str(tmp_path / "before.png"), full_page=True)
            # slider to the top: every image falls under the threshold
            top = page.eval_on_selector("#slider", "s => s.max")
            page.fill("#slider", top)
            assert card.query_selector(".verdict").text_content() == "OK"
            page.fill("#filter", "017")
            rows = page.eval_on_selector_all("#history tbody tr", "rows => rows.length")
            assert rows == 1
            with page.expect_download() as download:
                page.click("#csv")
            csv = Path(download.value.path()).read_text()
            assert csv.splitlines()[0] == '"time","image","score","threshold","verdict","regions"'
            assert '"part_017.png"' in csv
            assert '"OK"' in csv
            page.fill("#filter", "")
            page.click("#threshold-reset")
            assert card.query_selector(".verdict").text_content() == "DEFECTIVE"
            shot = Path(os.environ.get("ANOMALENS_SCREENSHOT", tmp_path / "page.png"))
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            page.close()


MVTEC_SCREW = Path(__file__).resolve().parents[2] / "shared/data/mvtec_ad/screw"


@pytest.mark.slow
@pytest.mark.skipif(not MVTEC_SCREW.is_dir(), reason="MVTec AD screw not found in ../shared/data")
def test_page_on_a_real_screw(browser, tmp_path):
    """fit on good screws -> export -> serve -> upload a defective screw in the page: the page
    shows the verdict and the boxes the exported model's own predict gives for that image."""
    from anomalens.data.io import load_image, load_mask
    from anomalens.methods import load_detector
    from anomalens.postprocess import hotspots

    good = sorted((MVTEC_SCREW / "train/good").glob("*.png"))
    det = PatchCore(image_size=256, memory_size=2000)
    det.fit([load_image(p) for p in good], progress=False)
    export_model(det, tmp_path / "onnx")
    onnx = load_detector(tmp_path / "onnx")
    bad = sorted((MVTEC_SCREW / "test/scratch_head").glob("*.png"))[:8]
    pred = onnx.predict([load_image(p) for p in bad])
    i = int(np.argmax(pred.scores))  # the clearest defect of these: the page must show it
    assert pred.scores[i] >= pred.threshold
    boxes = hotspots(pred.maps[i], pred.pixel_threshold)
    mask = load_mask(MVTEC_SCREW / "ground_truth/scratch_head" / f"{bad[i].stem}_mask.png")
    assert any(mask[b.y0 : b.y1, b.x0 : b.x1].any() for b in boxes), "no box on the scratch"
    with running(create_app(tmp_path / "onnx")) as (url, _):
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        try:
            page.goto(url + "/")
            page.set_input_files("#files", [str(bad[i])])
            card = page.wait_for_selector(f".card[data-name='{bad[i].name}']", timeout=60_000)
            assert card.query_selector(".verdict").text_content() == "DEFECTIVE"
            assert len(card.query_selector_all(".box")) >= 1
            page.screenshot(path=str(tmp_path / "screw.png"), full_page=True)
        finally:
            page.close()
