"""benchmarks/results_table.py: the README / docs tables match the committed JSON results, and
the rendering of a small synthetic results.json is exactly the expected text."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "results_table.py"


def _module():
    spec = importlib.util.spec_from_file_location("results_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["results_table"] = module
    spec.loader.exec_module(module)
    return module


rt = _module()

ENV = {
    "cpu": "Test CPU",
    "cores": 2,
    "torch": "2.13.0+cpu",
    "torch_threads": 2,
    "date": "2026-11-25T10:00:00+00:00",
}


def _result(shots=None, auroc=0.9291, fit=6.72, ms=9.04) -> dict:
    options = {} if shots is None else {"shots": shots}
    return {
        "method": "patchcore",
        "dataset": "mvtec",
        "options": options,
        "environment": ENV,
        "categories": {
            "screw": {
                "image_auroc": auroc,
                "pixel_auroc": 0.98912,
                "pixel_ap": 0.5334,
                "aupro": None,
                "f1_max": 0.9222,
                "fit_seconds": fit,
                "ms_per_image": ms,
                "n_train": 320 if shots is None else shots,
                "n_test": 160,
            }
        },
    }


def _write_results(root: Path) -> Path:
    folder = root / "benchmarks" / "results" / "patchcore-screw"
    folder.mkdir(parents=True)
    (folder / "full.json").write_text(json.dumps(_result()))
    (folder / "shot8.json").write_text(json.dumps(_result(8, 0.519, 0.9, 8.66)))
    return root / "benchmarks" / "results"


EXPECTED = """\
MVTec AD screw, 320 train / 160 test images, seed 0; 2026-11-25, Test CPU (2 cores), torch \
2.13.0, 2 threads.

| setting | I-AUROC | P-AUROC | P-AP | AUPRO | F1-max | fit s | ms/image |
| --- | --- | --- | --- | --- | --- | --- | --- |
| full-shot (320 images), defaults | 0.929 | 0.989 | 0.533 | - | 0.922 | 6.7 | 9.0 |
| `--shots 8` | 0.519 | 0.989 | 0.533 | - | 0.922 | 0.9 | 8.7 |"""


def test_render_patchcore_table_exact(tmp_path):
    assert rt.render("patchcore-screw", _write_results(tmp_path)) == EXPECTED


def _speed(cpu: str, isa: str, fit: float) -> dict:
    rows = [{"setting": "defaults", "pose_on": True, "fit_seconds": fit, "ms_per_image": 18.46}]
    env = {**ENV, "cpu": cpu, "cpu_isa": isa}
    return {"category": "screw", "n_train": 320, "n_test": 160, "repeats": 5, "rows": rows,
            "environment": env}  # fmt: skip


def test_speed_table_names_the_cpu_only_when_there_are_several(tmp_path):
    folder = tmp_path / "defaults-speed"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(_speed("Xeon", "AMX", 14.24)))
    one = rt.render("defaults-speed", tmp_path)
    assert one.splitlines()[2] == "| data | setting | pose | fit s | ms/image |"
    assert one.splitlines()[-1] == "| screw | defaults | on | 14.2 | 18.5 |"
    (folder / "b.json").write_text(json.dumps(_speed("EPYC", "AVX2", 22.3)))
    two = rt.render("defaults-speed", tmp_path).splitlines()
    assert two[2] == "| CPU | data | setting | pose | fit s | ms/image |"
    assert two[4:] == [
        "| Xeon (AMX) | screw | defaults | on | 14.2 | 18.5 |",
        "| EPYC (AVX2) | screw | defaults | on | 22.3 | 18.5 |",
    ]


def test_methods_by_type_table_has_a_column_per_type(tmp_path):
    folder = tmp_path / "methods-by-type"
    folder.mkdir()
    row = {"image_auroc": 0.9396, "pixel_auroc": 0.7536, "aupro": 0.7576}
    doc = {
        "category": "magnetic_tile",
        "n_train": 761,
        "n_test": 579,
        "rows": [{"name": "padim", **row, "by_type": {"blowhole": 0.9714, "uneven": 0.9238}}],
        "environment": ENV,
    }
    (folder / "magnetic_tile.json").write_text(json.dumps(doc))
    lines = rt.render("methods-by-type", tmp_path).splitlines()
    assert "**magnetic tile** (761 train / 579 test images):" in lines
    assert lines[-3] == "|  | I-AUROC | P-AUROC | AUPRO | blowhole | uneven |"
    assert lines[-1] == "| PaDiM | 0.940 | 0.754 | 0.758 | 0.971 | 0.924 |"


def test_write_then_check(tmp_path):
    _write_results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n<!-- results:patchcore-screw -->\nold table\n<!-- /results:patchcore-screw -->\n"
        "after\n"
    )
    assert rt.main(["--check", "--repo", str(tmp_path)]) == 1
    assert rt.main(["--write", "--repo", str(tmp_path)]) == 0
    assert readme.read_text() == (
        "# x\n\n<!-- results:patchcore-screw -->\n"
        + EXPECTED
        + "\n<!-- /results:patchcore-screw -->\nafter\n"
    )
    assert rt.main(["--check", "--repo", str(tmp_path)]) == 0


def test_check_message_is_one_line(tmp_path):
    _write_results(tmp_path)
    (tmp_path / "README.md").write_text(
        "<!-- results:patchcore-screw -->\nstale\n<!-- /results:patchcore-screw -->\n"
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--repo", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "README.md: block results:patchcore-screw differs from benchmarks/results; "
        "run python benchmarks/results_table.py --write"
    ]


@pytest.mark.parametrize(
    "text",
    [
        "<!-- results:patchcore-screw -->\nno end\n",
        "<!-- results:nonexistent -->\nx\n<!-- /results:nonexistent -->\n",
    ],
)
def test_broken_blocks_are_errors(tmp_path, text):
    _write_results(tmp_path)
    (tmp_path / "README.md").write_text(text)
    assert rt.main(["--check", "--repo", str(tmp_path)]) == 1


def test_collect_adds_fields(tmp_path):
    src = tmp_path / "results.json"
    src.write_text(json.dumps(_result()))
    dest = tmp_path / "out" / "learned.json"
    assert rt.main(["collect", str(src), str(dest), "--set", "training_seconds=197"]) == 0
    doc = json.loads(dest.read_text())
    assert doc["training_seconds"] == 197
    assert doc["categories"] == _result()["categories"]


def test_repository_tables_match_the_json():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_keeps_the_setup_commands():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme
    assert "make test" in readme


def test_docs_do_not_speak_of_one_session():
    words = re.compile(r"this session|final commit|measured here|this machine", re.IGNORECASE)
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        assert not words.search(path.read_text()), path.name
