"""predict --explain --report, `anomalens report RUN_DIR`, and report.html in Chromium."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, read_csv

from anomalens.cli import main
from anomalens.report_html import PAGE_SIZE, write_html_report


@pytest.fixture(scope="module")
def run(demo_root: Path, tmp_path_factory) -> Path:
    """A PatchCore model of the demo texture and a predict run with grounded explanations."""
    tmp = tmp_path_factory.mktemp("report")
    root = ["--dataset", "mvtec", "--root", str(demo_root), "--no-progress"]
    assert main(["fit", *root, "--output", str(tmp / "model"), *TINY_FLAGS]) == 0
    test = demo_root / "brick" / "test"
    argv = ["predict", "--model", str(tmp / "model"), "--input", str(test), "--recursive"]
    argv += ["--output", str(tmp / "run"), "--explain", "grounded", "--report", "--no-progress"]
    assert main(argv) == 0
    return tmp / "run"


def test_scores_gain_explanation_fields(run: Path):
    data = json.loads((run / "scores.json").read_text())
    records = data["images"]
    assert len(records) == 8
    for r in records:  # existing keys stay
        assert {"path", "score", "threshold", "is_defective", "boxes", "figure"} <= set(r)
        e = r["explanation"]
        assert r["verdict"] == e["verdict"] == ("defective" if r["is_defective"] else "good")
        assert r["summary"] == e["summary"]
        assert e["explainer"] == "grounded"
        if r["is_defective"]:
            assert e["findings"]
            assert e["summary"].startswith("Defective: score")
        else:
            assert e["findings"] == []
            assert e["summary"].startswith("No anomaly found: highest")
        assert (run / r["assets"]["image"]).is_file()
        assert (run / r["assets"]["overlay"]).is_file()
        assert len(r["assets"]["crops"]) == len(e["findings"])
    columns, rows = read_csv(run / "scores.csv")
    assert columns == [
        "path",
        "score",
        "threshold",
        "is_defective",
        "verdict",
        "summary",
        "defect_type",
        "agreement",
    ]
    assert [row["summary"] for row in rows] == [r["summary"] for r in records]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["files"]["report_html"] == "report.html"
    assert summary["explainer"] == "grounded"


def test_report_is_one_offline_file(run: Path):
    page = (run / "report.html").read_text()
    assert "http://" not in page
    assert "https://" not in page
    assert "<link" not in page
    assert page.count("<script") == 2  # the data block and the inline code, nothing fetched
    assert "anomalens inspection report" in page


def test_report_command_rebuilds_an_existing_run(run: Path, tmp_path: Path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "report_files")
    (copy / "report.html").unlink()
    assert main(["report", str(copy), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {copy / 'report.html'}"
    records = json.loads((run / "scores.json").read_text())["images"]
    assert all((copy / r["assets"]["image"]).is_file() for r in records)
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "scores.json: not found; is" in capsys.readouterr().err


def test_explain_options_need_explain(demo_root, tmp_path, capsys):
    argv = [
        "predict",
        "--model",
        str(tmp_path),
        "--input",
        str(demo_root),
        "--output",
        str(tmp_path / "o"),
        "--explain-all",
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "anomalens: error: --defect-types, --explain-all and --trust-remote-code need --explain"
    )


def test_report_in_chromium(run: Path, browser, tmp_path: Path):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto((run / "report.html").as_uri())
    rows = page.locator("#rows tr")
    assert rows.count() == 8
    assert page.locator("#shown").inner_text() == "8 of 8 images"
    page.select_option("#verdict", "defective")
    n_bad = sum(r["is_defective"] for r in json.loads((run / "scores.json").read_text())["images"])
    assert rows.count() == n_bad > 0
    card = page.locator(".card").first
    text = card.inner_text()
    assert "defective" in text
    assert "Defective: score" in text
    assert "where on the part" in text
    assert card.locator("img").count() >= 3  # image, overlay, crops
    page.fill("#filter", "no such image")
    assert rows.count() == 0
    page.fill("#filter", "")
    page.select_option("#verdict", "")
    page.locator("th[data-key=score]").click()  # highest score first
    scores = [float(t) for t in page.locator("#rows tr td:nth-child(3)").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


def test_two_thousand_images_open_fast(tmp_path: Path, browser):
    records = [
        {
            "path": f"/data/img_{i:04d}.png",
            "score": float(i % 97),
            "threshold": 50.0,
            "is_defective": i % 97 >= 50,
            "name": f"img_{i:04d}",
            "explanation": {
                "verdict": "defective" if i % 97 >= 50 else "good",
                "summary": f"summary {i}",
                "findings": [],
                "explainer": "grounded",
            },
        }
        for i in range(2000)
    ]
    path = write_html_report(tmp_path, records, {"threshold": 50.0})
    page = browser.new_page()
    start = time.perf_counter()
    page.goto(path.as_uri())
    page.wait_for_selector("#rows tr")
    seconds = time.perf_counter() - start
    assert page.locator("#rows tr").count() == PAGE_SIZE
    assert page.locator("#shown").inner_text() == "2000 of 2000 images"
    page.fill("#filter", "img_1999")
    assert page.locator("#rows tr").count() == 1
    page.close()
    assert seconds < 3.0


def test_benchmark_explain_writes_a_report_with_metrics(demo_root, tmp_path, fake_method):
    argv = ["benchmark", "--dataset", "mvtec", "--root", str(demo_root), "--method", fake_method]
    assert main([*argv, "--output", str(tmp_path), "--explain", "grounded", "--no-progress"]) == 0
    page = (tmp_path / "brick" / "report.html").read_text()
    data = json.loads(page.split('type="application/json">', 1)[1].split("</script>", 1)[0])
    header = data["header"]
    assert header["metrics"]["image_auroc"] is not None
    assert header["roc"].startswith("data:image/png;base64,")
    assert header["histogram"].startswith("data:image/png;base64,")
    assert len(data["rows"]) == 8
    assert {r["label"] for r in data["rows"]} == {0, 1}


def test_missing_vlm_fails_before_any_image(run: Path, tmp_path: Path, capsys):
    model = run.parent / "model"
    argv = ["predict", "--model", str(model), "--input", str(run / "report_files"), "--recursive"]
    argv += ["--output", str(tmp_path / "o"), "--explain", f"hf:{tmp_path / 'none'}", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"anomalens: error: cannot load the hf VLM from folder '{tmp_path / 'none'}'"
    )
    assert not (tmp_path / "o" / "scores.json").exists()
