"""Defect types named from labelled examples (synthetic classes on a plain texture)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anomalens.errors import DatasetError
from anomalens.explain import build_explainer
from anomalens.explain.defect_types import (
    UNKNOWN_TYPE,
    fit_defect_folder,
    fit_defect_types,
    load_examples,
)
from anomalens.methods.base import Prediction

S = 96


def sample(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisy gray surface with a dark round spot or a bright horizontal scratch."""
    img = rng.integers(110, 140, (S, S, 1), dtype=np.uint8).repeat(3, axis=2)
    mask = np.zeros((S, S), np.uint8)
    y, x = rng.integers(20, S - 30, 2)
    if kind == "spot":
        yy, xx = np.mgrid[:S, :S]
        mask[(yy - y) ** 2 + (xx - x) ** 2 < 36] = 1
        img[mask > 0] = 30
    else:
        mask[y : y + 3, x - 15 : x + 15] = 1
        img[mask > 0] = 250
    return img, mask


@pytest.fixture(scope="module")
def examples():
    rng = np.random.default_rng(0)
    kinds = ["spot", "scratch"] * 4
    pairs = [sample(k, rng) for k in kinds]
    return [p[0] for p in pairs], [p[1] for p in pairs], kinds


@pytest.fixture(scope="module")
def types(examples):
    return fit_defect_types(*examples)


def test_names_each_synthetic_class(types):
    rng = np.random.default_rng(1)
    explainer = build_explainer("grounded", defect_types=types)
    for kind in ["spot", "scratch", "scratch", "spot"]:
        img, mask = sample(kind, rng)
        pred = Prediction(np.array([2.0], np.float32), [mask.astype(np.float32) * 2], 1.0, 1.0)
        f = explainer.explain([img], pred)[0].findings[0]
        assert f.defect_type == kind
        assert 0.5 < f.type_confidence <= 1.0
        assert kind in explainer.explain([img], pred)[0].summary


def test_far_from_every_example_is_unknown_and_only_given_types(types):
    assert set(types.types) == {"spot", "scratch"}
    far = types.classify(types.deep[:1] * 0 + 1.0, types.hand[:1] + 100.0)
    assert far == [(UNKNOWN_TYPE, None)]
    assert np.isfinite(types.unknown_distance)


def test_good_images_get_no_type(types):
    img, mask = sample("spot", np.random.default_rng(2))
    pred = Prediction(np.array([0.5], np.float32), [mask.astype(np.float32) * 0.5], 1.0, 1.0)
    e = build_explainer("grounded", defect_types=types).explain([img], pred)[0]
    assert e.verdict == "good"
    assert e.findings == []


def test_folder_of_examples(tmp_path, examples):
    images, masks, kinds = examples
    for i, (img, mask, kind) in enumerate(zip(images, masks, kinds, strict=True)):
        (tmp_path / kind / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / kind / f"{i}.png")
        if i < 4:  # masks are optional
            Image.fromarray(mask * 255).save(tmp_path / kind / "masks" / f"{i}.png")
    _imgs, found_masks, found_types = load_examples(tmp_path)
    assert sorted(found_types) == sorted(kinds)
    assert sum(m is not None for m in found_masks) == 4
    fitted = fit_defect_folder(tmp_path)
    assert fitted.types == ("scratch", "spot")
    assert len(fitted.labels) == 8
    with pytest.raises(DatasetError, match="defect-type folder not found"):
        load_examples(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no labelled images found"):
        load_examples(tmp_path / "empty")


def test_finding_most_like_a_labelled_defect_leads(types):
    """A weaker hotspot on a real spot leads a stronger one on plain surface: its type is the
    image's, and the summary says why it leads."""
    img, mask = sample("spot", np.random.default_rng(5))
    ys, xs = np.nonzero(mask)
    m = mask.astype(np.float32) * 2.0
    far_y = 10 if ys.mean() > S / 2 else S - 14  # plain surface, away from the spot
    far_x = 10 if xs.mean() > S / 2 else S - 14
    m[far_y : far_y + 5, far_x : far_x + 5] = 3.0
    pred = Prediction(np.array([3.0], np.float32), [m], 1.0, 1.0)
    plain = build_explainer("grounded").explain([img], pred)[0]
    assert [f.peak for f in plain.findings] == [3.0, 2.0]  # without types: strongest first
    assert "Strongest: " in plain.summary
    e = build_explainer("grounded", defect_types=types).explain([img], pred)[0]
    assert [f.peak for f in e.findings] == [2.0, 3.0]
    assert e.findings[0].defect_type == "spot"
    assert "Closest to a labelled defect: spot (" in e.summary
    matches = types.match(*_descriptors(types, img, m))
    assert matches[1][2] < matches[0][2]  # the spot region is nearer to an example


def _descriptors(types, img, m):
    from anomalens.explain.defect_types import hand_vector, region_embeddings
    from anomalens.explain.grounded import analyse, describe_region

    a = analyse(img, m, 1.0)
    hand = np.stack([hand_vector(describe_region(r, a.part, a.gray, 1.0)[1]) for r in a.regions])
    return region_embeddings(img, [r.mask for r in a.regions]), hand
