"""Grounded explanations on synthetic images and maps of known geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomalens.explain import Explanation, build_explainer, parse_explainer_spec
from anomalens.explain.geometry import find_part, location_contains
from anomalens.methods.base import Prediction

H, W = 120, 240


def bar_image(value: int = 200) -> np.ndarray:
    """A horizontal bar (x 20..220) on a dark background; its right end (x > 170) is twice as
    tall (a 'head'), like a screw lying horizontally."""
    img = np.full((H, W, 3), 20, np.uint8)
    img[50:70, 20:220] = value
    img[40:80, 170:220] = value
    return img


def predict_one(image, anomaly_map, score, threshold=1.0, pixel_threshold=1.0):
    pred = Prediction(np.array([score], np.float32), [anomaly_map], threshold, pixel_threshold)
    return build_explainer("grounded").explain([image], pred)[0]


def blob_map(shape, y0, y1, x0, x1, value=2.0):
    m = np.zeros(shape, np.float32)
    m[y0:y1, x0:x1] = value
    return m


def test_part_axis_points_to_the_wider_end():
    part, gray = find_part(bar_image())
    assert part.elongated
    assert part.ends_differ
    assert part.u[0] > 0.9  # towards the taller right end
    assert gray.shape == (H, W)


def test_elongated_part_location_shape_size_and_strength():
    img = bar_image()
    m = blob_map((H, W), 42, 48, 180, 215, 3.0)  # thin line along the top edge of the head
    e = predict_one(img, m, 3.0, threshold=1.0, pixel_threshold=1.5)
    assert e.verdict == "defective"
    (f,) = e.findings
    assert f.location == "near the wider end (right in the image), along the edge"
    assert f.shape == "elongated"
    assert f.orientation == "along the part's axis"
    assert f.box == [180, 42, 215, 48]
    assert f.area_px == 6 * 35
    part_pixels = 20 * 200 + 20 * 50  # bar plus the extra height of the head
    assert f.area_pct == pytest.approx(100 * 210 / part_pixels, rel=0.15)  # mask is dilated
    assert f.strength == pytest.approx(2.0)
    assert f.appearance == "brighter than the surrounding surface"  # the ring reaches the dark
    assert e.summary.startswith("Defective: score 3 >= threshold 1; 1 region. Strongest: ")


def test_narrow_end_and_middle_and_across():
    img = bar_image()
    e = predict_one(img, blob_map((H, W), 55, 65, 25, 35), 2.0)
    assert e.findings[0].location.startswith("near the narrower end (left in the image)")
    e = predict_one(img, blob_map((H, W), 50, 70, 118, 122), 2.0)  # vertical line, mid bar
    f = e.findings[0]
    assert f.location.startswith("in the middle of the part")
    assert f.shape == "elongated"
    assert f.orientation == "across the part"


def test_compact_part_cells_and_appearance():
    yy, xx = np.mgrid[:160, :160]
    img = np.full((160, 160, 3), 15, np.uint8)
    img[(yy - 80) ** 2 + (xx - 80) ** 2 < 60**2] = 180
    img[45:55, 45:55] = 60  # a dark spot in the upper left of the disc
    e = predict_one(img, blob_map((160, 160), 45, 55, 45, 55), 2.0)
    f = e.findings[0]
    assert f.location.startswith("upper left of the part")
    assert f.shape == "compact"
    assert f.orientation is None
    assert f.appearance == "darker than the surrounding surface"
    img[45:55, 45:55] = 250
    assert predict_one(img, blob_map((160, 160), 45, 55, 45, 55), 2.0).findings[0].appearance == (
        "brighter than the surrounding surface"
    )


def test_texture_location_is_on_the_surface():
    rng = np.random.default_rng(0)
    img = rng.integers(90, 140, (96, 96, 3), dtype=np.uint8)
    e = predict_one(img, blob_map((96, 96), 70, 80, 70, 80), 2.0)
    assert e.findings[0].location == "lower right of the surface"
    assert e.findings[0].appearance == "similar to the surrounding surface (a subtle change)"
    assert e.findings[0].where == {"frame": "image", "cell": [2, 2]}


def test_location_contains_matches_the_stated_cell():
    part, _ = find_part(bar_image())
    assert location_contains(part, {"frame": "axis", "third": 2}, 200, 60)
    assert not location_contains(part, {"frame": "axis", "third": 2}, 30, 60)
    assert location_contains(part, {"frame": "axis", "third": 1}, 120, 60)


def test_good_image_is_never_called_defective():
    img = bar_image()
    m = blob_map((H, W), 55, 65, 100, 110, 0.41)
    pred = Prediction(np.array([0.41], np.float32), [m], 0.52, 0.3)
    e = build_explainer("grounded").explain([img], pred)[0]
    assert e.verdict == "good"
    assert e.summary == "No anomaly found: highest score 0.41, threshold 0.52."
    assert e.findings == []
    e = build_explainer("grounded", explain_all=True).explain([img], pred)[0]
    assert e.findings == []
    assert e.verdict == "good"


def test_defective_without_region_above_pixel_threshold_uses_the_strongest_area():
    img = bar_image()
    m = blob_map((H, W), 55, 65, 100, 110, 0.9)
    e = predict_one(img, m, 0.9, threshold=0.5, pixel_threshold=1.0)
    assert len(e.findings) == 1
    assert "none above the pixel threshold" in e.summary
    assert e.findings[0].strength == pytest.approx(0.9)


def test_top_k_strongest_first_and_json_round_trip():
    img = bar_image()
    m = blob_map((H, W), 55, 65, 30, 40, 2.0) + blob_map((H, W), 55, 65, 120, 130, 3.0)
    m += blob_map((H, W), 45, 50, 190, 200, 4.0)
    e = build_explainer("grounded", top_k=2).explain(
        [img], Prediction(np.array([4.0], np.float32), [m], 1.0, 1.0)
    )[0]
    assert [f.peak for f in e.findings] == [4.0, 3.0]
    d = e.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert Explanation.from_dict(json.loads(text)).to_dict() == d
    assert d["explainer"] == "grounded"
    assert d["model"] is None
    assert d["seconds"] > 0


def test_no_threshold_gives_unknown_verdict_and_nan_strength_is_null():
    img = bar_image()
    m = blob_map((H, W), 55, 65, 30, 40, 2.0)
    pred = Prediction(np.array([2.0], np.float32), [m], None, None)
    e = build_explainer("grounded").explain([img], pred)[0]
    assert e.verdict == "unknown"
    assert e.summary.startswith("Score 2 (no calibrated threshold)")
    assert e.to_dict()["findings"][0]["strength"] is None


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("grounded", ("grounded", None, None)),
        ("hf:/models/llava", ("hf", "/models/llava", None)),
        ("hf:", ("hf", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", None)),
        (
            "openai:http://127.0.0.1:11434/v1#moondream",
            ("openai", "http://127.0.0.1:11434/v1", "moondream"),
        ),
    ],
)
def test_spec_parsing(spec, parsed):
    assert parse_explainer_spec(spec) == parsed


def test_bad_specs_and_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown explainer spec 'llava'; use grounded, hf:"):
        build_explainer("llava")
    with pytest.raises(ValueError, match=r"expected openai:http\(s\)://HOST\[:PORT\]/v1#MODEL"):
        build_explainer("openai:http://localhost:1/v1")
    with pytest.raises(ValueError, match="the grounded explainer has no option"):
        build_explainer("grounded", timeout=3)


def test_principal_axis_is_the_top_eigenvector():
    """The closed-form axis of the part equals numpy's eigenvector of the larger eigenvalue
    (up to sign), diagonal matrices included."""
    from anomalens.explain.geometry import _principal_axis

    rng = np.random.default_rng(0)
    cases = [np.diag([3.0, 1.0]), np.diag([1.0, 3.0]), np.array([[2.0, -1.5], [-1.5, 2.0]])]
    for _ in range(200):
        m = rng.normal(size=(2, 2)) * rng.uniform(0.01, 1e4)
        cases.append(m @ m.T)
    for cov in cases:
        ref = np.linalg.eigh(cov)[1][:, 1]
        got = _principal_axis(cov)
        assert abs(float(got @ ref)) == pytest.approx(1.0, abs=1e-9)
