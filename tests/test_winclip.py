"""WinCLIP / WinCLIP+ on tiny random CLIP and SigLIP models."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from anomalens import testing as tm
from anomalens.backbones.clip import CLIPBackbone
from anomalens.backbones.siglip import SigLIPBackbone
from anomalens.errors import TextTowerMissingError
from anomalens.methods import WinCLIP, WinCLIPConfig, create_detector, load_detector
from anomalens.methods.base import select_shots
from anomalens.methods.winclip import (
    anomaly_probability,
    fuse,
    fuse_and_normalize,
    harmonic_aggregation,
    window_indices,
)
from anomalens.postprocess import gaussian_blur
from anomalens.prompts import build_prompts


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tm.make_clip(tmp_path_factory.mktemp("wclip"))


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return tm.make_siglip(tmp_path_factory.mktemp("wsiglip"))


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return tm.make_dinov2(tmp_path_factory.mktemp("wdino"))


def spec_of(kind, clip_dir, siglip_dir):
    return f"clip:{clip_dir}" if kind == "clip" else f"siglip:{siglip_dir}"


# ------------------------------------------------------------------------ building blocks


def test_window_indices():
    idx = window_indices((4, 4), 2)
    assert idx.shape == (9, 4)
    assert idx[0].tolist() == [0, 1, 4, 5]
    assert idx[-1].tolist() == [10, 11, 14, 15]
    idx = window_indices((3, 5), 3)
    assert idx.tolist() == [[s + o for o in (0, 1, 2, 5, 6, 7, 10, 11, 12)] for s in (0, 1, 2)]
    with pytest.raises(ValueError, match="does not fit"):
        window_indices((4, 4), 5)


def slow_harmonic(scores: np.ndarray, grid, size: int) -> np.ndarray:
    """Plain loops: each patch gets n / sum(1 / s) over the windows that contain it."""
    h, w = grid
    out = np.zeros((scores.shape[0], h, w))
    for b in range(scores.shape[0]):
        for y in range(h):
            for x in range(w):
                inv, n, k = 0.0, 0, 0
                for wy in range(h - size + 1):
                    for wx in range(w - size + 1):
                        if wy <= y < wy + size and wx <= x < wx + size:
                            inv += 1.0 / scores[b, k]
                            n += 1
                        k += 1
                out[b, y, x] = n / inv
    return out


@pytest.mark.parametrize(("grid", "size"), [((4, 4), 2), ((5, 6), 3), ((6, 5), 2), ((3, 3), 3)])
def test_harmonic_aggregation_matches_slow_reference(grid, size):
    rng = np.random.default_rng(sum(grid) + size)
    idx = window_indices(grid, size)
    scores = rng.uniform(0.05, 1.0, (2, idx.shape[0]))
    got = harmonic_aggregation(torch.from_numpy(scores), grid, idx)
    assert got.shape == (2, *grid)
    np.testing.assert_allclose(got.numpy(), slow_harmonic(scores, grid, size), rtol=1e-6)


def test_harmonic_aggregation_by_hand():
    # grid 2 x 3, windows of 2: w0 covers patches {0, 1, 3, 4}, w1 covers {1, 2, 4, 5}
    got = harmonic_aggregation(torch.tensor([[0.5, 0.25]]), (2, 3), window_indices((2, 3), 2))
    expected = [[0.5, 2 / (2 + 4), 0.25]] * 2
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-6)


def test_probability_and_fusion_by_hand():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    got = anomaly_probability(emb, anchors, 10.0)
    # softmax([10 * cos_n, 10 * cos_a])[1]
    expected = [1 / (1 + np.exp(10.0)), 1 / (1 + np.exp(10 * (0.6 - 0.8)))]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert fuse([0.5, 0.2], (0.3, 0.7)) == pytest.approx(0.29)
    assert fuse([None, 0.2], (0.3, 0.7)) == pytest.approx(0.2)
    assert fuse([0.5, None], (1.0, 3.0)) == pytest.approx(0.5)


def test_fuse_and_normalize_by_hand():
    text = np.array([[0.2, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.2]], dtype=np.float32)
    memory = np.array([[0.0, 0.1, 0.0], [0.1, 0.5, 0.1], [0.0, 0.1, 0.9]], dtype=np.float32)
    fg = np.ones((3, 3), dtype=bool)
    fg[2, 2] = False  # the 0.9 lies in the background
    score, fused = fuse_and_normalize(text, memory, 0.4, fg, (0.3, 0.7), normalize=False)
    assert score == pytest.approx(0.3 * 0.4 + 0.7 * 0.5)  # memory max over the foreground only
    raw = 0.3 * text + 0.7 * memory
    expected = raw.copy()
    expected[2, 2] = raw[fg].min()  # background -> lowest foreground value
    np.testing.assert_allclose(fused, expected, rtol=1e-6)
    # median / MAD over the 8 foreground values: 0.06 x3, 0.13 x4, 0.53 -> median 0.13;
    # |deviations| 0 x4, 0.07 x3, 0.40 -> MAD 0.035
    _, z = fuse_and_normalize(text, memory, 0.4, fg, (0.3, 0.7), normalize=True)
    median, mad = 0.13, 0.035
    np.testing.assert_allclose(z, (expected - median) / (1.4826 * mad), rtol=1e-4, atol=1e-4)
    # no foreground mask, memory only
    score, fused = fuse_and_normalize(None, memory, None, None, (0.3, 0.7), normalize=False)
    assert score == pytest.approx(0.9)
    assert np.array_equal(fused, memory)


# ------------------------------------------------------------------------ window embeddings


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_full_grid_window_is_the_image_embedding(kind, clip_dir, siglip_dir):
    bb = (CLIPBackbone if kind == "clip" else SigLIPBackbone)(
        str(clip_dir if kind == "clip" else siglip_dir)
    )
    pixels = bb.preprocess(tm.images(2))
    full = window_indices(bb.grid(), bb.grid()[0])
    (emb,) = bb.encode_windows(pixels, [full])
    glob = bb.encode_image(pixels).global_embedding
    assert emb.shape == (2, 1, glob.shape[1])
    torch.testing.assert_close(emb[:, 0], glob, atol=2e-5, rtol=0)


def test_clip_window_matches_attention_masked_forward(clip_dir):
    """A window's CLS embedding equals the full forward with attention restricted to the CLS
    and the window tokens (an independent way to compute it)."""
    bb = CLIPBackbone(str(clip_dir))
    pixels = bb.preprocess(tm.images(1, seed=4))
    idx = window_indices(bb.grid(), 3)
    (emb,) = bb.encode_windows(pixels, [idx])
    vision = bb.model.vision_model
    n = bb.grid()[0] * bb.grid()[1] + 1
    for k in (0, 3):
        keep = torch.zeros(n, dtype=torch.bool)
        keep[0] = True
        keep[idx[k] + 1] = True
        mask = torch.zeros(1, 1, n, n)
        mask[..., :, ~keep] = torch.finfo(torch.float32).min
        with torch.no_grad():
            x = vision.pre_layrnorm(vision.embeddings(pixels, interpolate_pos_encoding=True))
            h = vision.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state
            ref = bb.model.visual_projection(vision.post_layernorm(h[:, 0]))
        torch.testing.assert_close(emb[0, k], F.normalize(ref, dim=-1)[0], atol=2e-5, rtol=0)


# ------------------------------------------------------------------------ the detector


def reference_token_prediction(clip_dir, good, test, sigma):
    """WinCLIP+ token variant written out plainly (fp32, exact NN, no foreground mask)."""
    bb = CLIPBackbone(str(clip_dir))
    vision, model = bb.model.vision_model, bb.model
    normal, anomalous = build_prompts("screw")
    text = F.normalize(bb.encode_text(normal + anomalous), dim=-1)
    anchors = F.normalize(torch.stack([text[: len(normal)].mean(0), text[len(normal) :].mean(0)]))

    def features(images):
        with torch.no_grad():
            out = vision(pixel_values=bb.preprocess(images), output_hidden_states=True)
            hs = out.hidden_states  # hs[l]: output of block l
            glob = F.normalize(model.visual_projection(out.pooler_output), dim=-1)
            proj = [
                F.normalize(model.visual_projection(vision.post_layernorm(hs[k][:, 1:])), dim=-1)
                for k in (2, 3, 4)  # text_layers (-3, -2, -1) of 4 blocks
            ]
            tokens = F.normalize(torch.stack(proj).mean(0), dim=-1)
            mem = torch.cat([F.normalize(hs[k][:, 1:], dim=-1) for k in (1, 2, 3, 4)], -1) / 2
        return glob, tokens, mem

    def prob(e):
        return torch.softmax(torch.stack([e @ anchors[0], e @ anchors[1]], -1) / 0.07, -1)[..., 1]

    memory = features(good)[2].reshape(-1, 4 * 32)
    glob, tokens, queries = features(test)
    mem_map = (1 - (queries @ memory.T).amax(-1)) / 2  # [B, 16]
    scores, maps = [], []
    for i, img in enumerate(test):
        up = [
            gaussian_blur(
                F.interpolate(m[i].view(1, 1, 4, 4), size=(32, 32), mode="bilinear")[0, 0], sigma
            ).numpy()
            for m in (prob(tokens), mem_map)
        ]
        scores.append(0.3 * float(prob(glob[i])) + 0.7 * float(up[1].max()))
        fused = (0.3 * up[0] + 0.7 * up[1]).astype(np.float64)
        med = np.median(fused)
        z = (fused - med) / (1.4826 * np.median(np.abs(fused - med)))
        maps.append(cv2.resize(z.astype(np.float32), img.shape[1::-1]))
    return np.array(scores), maps


def test_token_variant_matches_plain_reference(clip_dir):
    good, test = tm.images(3, seed=1), tm.images(2, seed=2, shape=(37, 45))
    cfg = dict(precision="fp32", search_precision="fp32", foreground="off", sigma=1.5)
    det = WinCLIP(backbone=f"clip:{clip_dir}", class_name="screw", **cfg).fit(good, False)
    assert det.use_text
    assert det.use_memory
    assert det.memory.shape == (3 * 16, 4 * 32)
    pred = det.predict(test)
    ref_scores, ref_maps = reference_token_prediction(clip_dir, good, test, 1.5)
    np.testing.assert_allclose(pred.scores, ref_scores, rtol=1e-5, atol=1e-6)
    for got, ref in zip(pred.maps, ref_maps, strict=True):
        assert got.shape == (37, 45)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_windows_zero_shot_matches_reference(siglip_dir):
    det = WinCLIP(
        backbone=f"siglip:{siglip_dir}",
        scoring="windows",
        shots=0,
        precision="fp32",
        foreground="off",
        normalize=False,
        sigma=0.0,
        window_sizes=(2, 3),
    ).fit([], progress=False)
    imgs = tm.images(2, seed=7, shape=(32, 32))
    pred = det.predict(imgs)
    bb = SigLIPBackbone(str(siglip_dir))
    pixels = bb.preprocess(imgs)
    glob = bb.encode_image(pixels).global_embedding
    p_img = anomaly_probability(glob, det.anchors, 1 / 0.07).numpy()
    inv = 1 / p_img[:, None, None]
    for size in (2, 3):
        (emb,) = bb.encode_windows(pixels, [window_indices((4, 4), size)])
        probs = anomaly_probability(emb, det.anchors, 1 / 0.07).numpy()
        inv = inv + 1 / slow_harmonic(probs, (4, 4), size)
    zero_shot = 3 / inv  # harmonic mean over the image scale and the two window scales
    np.testing.assert_allclose(pred.scores, p_img, rtol=1e-5)
    for i in range(2):
        up = F.interpolate(
            torch.from_numpy(zero_shot[i]).float()[None, None], size=(32, 32), mode="bilinear"
        )[0, 0].numpy()
        np.testing.assert_allclose(pred.maps[i], up, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("scoring", ["tokens", "windows"])
def test_zero_shot_predict_runs_no_text_encoder(kind, scoring, clip_dir, siglip_dir, monkeypatch):
    det = WinCLIP(backbone=spec_of(kind, clip_dir, siglip_dir), scoring=scoring, shots=0)
    calls = []
    bb = det.backbone
    original = bb.encode_text
    monkeypatch.setattr(bb, "encode_text", lambda p: calls.append(len(p)) or original(p))
    det.fit(tm.images(4), progress=False)  # shots=0 ignores the images
    assert calls == [7 * 22 + 4 * 22]
    assert det.n_shots == 0
    assert not det.use_memory
    assert det.anchors.shape == (2, bb.embed_dim)
    torch.testing.assert_close(det.anchors.norm(dim=-1), torch.ones(2))
    monkeypatch.setattr(bb, "encode_text", lambda p: pytest.fail("predict encoded text"))
    imgs = tm.object_images(2, size=40) + tm.images(1, shape=(30, 50))
    pred = det.predict(imgs)
    assert pred.scores.shape == (3,)
    assert pred.threshold is None
    assert [m.shape for m in pred.maps] == [(40, 40), (40, 40), (30, 50)]
    assert all(np.isfinite(m).all() for m in pred.maps)
    # the image score is the text probability of the global embedding, in (0, 1)
    assert ((pred.scores > 0) & (pred.scores < 1)).all()
    # anchors are cached per class: a second fit does not encode again, a new class does
    monkeypatch.setattr(bb, "encode_text", lambda p: calls.append(len(p)) or original(p))
    det.fit([], progress=False)
    assert len(calls) == 1
    det.config.class_name = "widget"
    det.fit([], progress=False)
    assert len(calls) == 2
    assert "a photo of a widget." in det.prompts["normal"]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("scoring", ["tokens", "windows"])
def test_save_load_round_trip(kind, scoring, clip_dir, siglip_dir, tmp_path):
    det = WinCLIP(
        backbone=spec_of(kind, clip_dir, siglip_dir), scoring=scoring, class_name="screw"
    ).fit(tm.object_images(3, size=36), progress=False)
    assert det.threshold is not None
    if scoring == "windows":
        assert [m.shape[0] for m in det.window_memory] == [3 * 9, 3 * 4]
    test = tm.object_images(2, seed=9, size=44)
    before = det.predict(test)
    det.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["method"] == "winclip"
    assert meta["branches"] == {"text": True, "memory": True}
    assert meta["prompts"]["anomalous"][0] == "a cropped photo of the damaged screw."
    loaded = load_detector(tmp_path / "m")
    assert isinstance(loaded, WinCLIP)
    assert loaded.config == det.config
    assert torch.equal(loaded.anchors, det.anchors)
    assert torch.equal(loaded.memory, det.memory)
    for a, b in zip(loaded.window_memory or [], det.window_memory or [], strict=True):
        assert torch.equal(a, b)
    assert vars(loaded.calibration) == vars(det.calibration)
    after = loaded.predict(test)
    assert np.array_equal(after.scores, before.scores)
    assert all(np.array_equal(a, b) for a, b in zip(after.maps, before.maps, strict=True))
    assert after.threshold == before.threshold
    assert after.pixel_threshold == before.pixel_threshold


def test_same_seed_same_numbers(clip_dir):
    good = tm.object_images(6, seed=3, size=36)
    test = tm.object_images(2, seed=4, size=36)

    def run(seed, shots=2, images=good):
        det = WinCLIP(backbone=f"clip:{clip_dir}", shots=shots, seed=seed)
        det.fit(images, progress=False)
        return det, det.predict(test)

    (d1, p1), (d2, p2), (d3, _) = run(0), run(0), run(1)
    assert torch.equal(d1.memory, d2.memory)
    assert np.array_equal(p1.scores, p2.scores)
    assert all(np.array_equal(a, b) for a, b in zip(p1.maps, p2.maps, strict=True))
    assert d1.n_shots == 2
    assert d1.memory.shape[0] == 2 * 16
    # the shots are select_shots(6, 2, seed): [3, 4] for seed 0, [2, 3] for seed 1
    assert select_shots(6, 2, 0) == [3, 4]
    assert select_shots(6, 2, 1) == [2, 3]
    assert torch.equal(run(0, None, [good[3], good[4]])[0].memory, d1.memory)
    assert torch.equal(run(0, None, [good[2], good[3]])[0].memory, d3.memory)


def test_leave_one_out_thresholds_match_refits(clip_dir):
    """Each good image's calibration score equals its score by a detector fitted without it."""
    good = tm.object_images(3, seed=11, size=32)  # the model size: maps are not resized
    cfg = dict(backbone=f"clip:{clip_dir}", precision="fp32", search_precision="fp32")
    det = WinCLIP(calibration_quantile=0.5, **cfg).fit(good, progress=False)
    loo = []
    for i in range(3):
        others = [g for j, g in enumerate(good) if j != i]
        loo.append(WinCLIP(**cfg).fit(others, progress=False).predict([good[i]]))
    scores = [float(p.scores[0]) for p in loo]
    maxima = [float(p.maps[0].max()) for p in loo]
    np.testing.assert_allclose(det.calibration.good_scores, scores, rtol=1e-5)
    assert det.threshold == pytest.approx(float(np.median(scores)), rel=1e-5)
    assert det.calibration.pixel_threshold == pytest.approx(float(np.median(maxima)), rel=1e-4)
    with pytest.warns(UserWarning, match="leave-one-out"):
        one = WinCLIP(**cfg).fit(good[:1], progress=False)
    assert one.threshold is None
    assert one.predict(good[1:2]).threshold is None


def test_missing_text_tower_is_a_clear_error(dino_dir):
    for spec in (f"dinov2:{dino_dir}", "efficientnet-lite0"):
        det = create_detector("winclip", backbone=spec, image_size=64, shots=0)
        with pytest.raises(TextTowerMissingError, match="text tower") as info:
            det.fit(tm.images(2), progress=False)
        assert spec in str(info.value)
        assert isinstance(info.value, ValueError)
        with pytest.raises(TextTowerMissingError, match=spec):
            create_detector("winclip", backbone=spec, image_size=64).fit([], progress=False)


def test_memory_only_on_a_vision_backbone(dino_dir):
    with pytest.warns(UserWarning, match="no text tower"):
        det = WinCLIP(backbone=f"dinov2:{dino_dir}").fit(tm.images(3), progress=False)
    assert not det.use_text
    assert det.use_memory
    assert det.anchors is None
    test = tm.images(2, seed=8)
    pred = det.predict(test)
    assert pred.scores.shape == (2,)
    assert pred.threshold is not None
    # memory only: the score is the largest smoothed memory distance, (1 - cos) / 2. The good
    # images' own patches are in the memory: distance 0 everywhere
    np.testing.assert_allclose(det.predict(tm.images(3)).scores, 0.0, atol=1e-6)
    # recomputed: a detector fitted on one test image holds its unit-norm patch features
    for img, score in zip(test, pred.scores, strict=True):
        with pytest.warns(UserWarning, match="no text tower"):
            own = WinCLIP(backbone=f"dinov2:{dino_dir}").fit([img], progress=False).memory
        assert own.shape == (16, det.memory.shape[1])  # the 4 x 4 patch grid, all kept
        torch.testing.assert_close(own.norm(dim=1), torch.ones(16))
        raw = (1 - (own @ det.memory.T).max(1).values) / 2  # per patch, to its nearest
        # the smoothed map lies between the mean and the maximum of the raw patch distances
        assert 0.9 * float(raw.mean()) <= score <= float(raw.max()) + 1e-6, (score, raw)
    with pytest.raises(ValueError, match="CLIP or SigLIP"):
        WinCLIP(backbone=f"dinov2:{dino_dir}", scoring="windows").fit(tm.images(2), False)


def test_config_validation_and_cli_options(clip_dir):
    det = create_detector(
        "winclip", backbone=f"clip:{clip_dir}", class_name="metal nut", shots=0, seed=3
    )
    assert isinstance(det.config, WinCLIPConfig)
    assert det.config.shots == 0
    det.fit([], progress=False)
    assert "a photo of a flawless metal nut." in det.prompts["normal"]
    for bad, message in (
        (dict(scoring="sliding"), "scoring must be one of"),
        (dict(prompts=("nope",)), "unknown prompt ensembles"),
        (dict(text_weight=0, memory_weight=0), "cannot both be 0"),
        (dict(shots=-1), "shots must be >= 0"),
        (dict(precision="fp16"), "precision must be one of"),
        (dict(temperature=0), "temperature must be > 0"),
    ):
        with pytest.raises(ValueError, match=message):
            WinCLIPConfig(**bad)
    assert WinCLIPConfig(prompts="aaclip").prompts == ("aaclip",)


def test_download_once_then_zero_shot_offline(clip_dir, tmp_path, monkeypatch, capsys):
    """``python -m anomalens.download`` with the hub faked by the tiny model folder."""
    import fnmatch
    import shutil

    import huggingface_hub

    from anomalens import download as dl

    requested = {}

    def fake_snapshot(repo_id, revision=None, local_dir=None, allow_patterns=None):
        requested.update(repo=repo_id, patterns=list(allow_patterns))
        for f in clip_dir.iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, local_dir)
        return local_dir

    hub_files = [f.name for f in clip_dir.iterdir()] + ["tf_model.h5", "flax_model.msgpack"]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(dl, "_hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda *a, **k: hub_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    target = tmp_path / "models" / "clip"
    target.mkdir(parents=True)
    assert dl.main(["clip:org/tiny-clip", str(target)]) == 0
    out = capsys.readouterr().out
    assert f"--backbone clip:{target}" in out
    assert requested["repo"] == "org/tiny-clip"
    assert "pytorch_model.bin" not in requested["patterns"]  # safetensors exist
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in clip_dir.iterdir())
    # from now on the folder works offline: zero-shot fit + predict
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    det = WinCLIP(backbone=f"clip:{target}", shots=0, class_name="screw").fit([], False)
    ref = WinCLIP(backbone=f"clip:{clip_dir}", shots=0, class_name="screw").fit([], False)
    assert torch.equal(det.anchors, ref.anchors)
    # an unreachable hub fails at once with a clear message
    monkeypatch.setattr(dl, "_hub_reachable", lambda: False)
    assert dl.main(["clip:org/tiny-clip", str(tmp_path / "other")]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert dl.main(["efficientnet-lite0", str(tmp_path / "e")]) == 0
    assert "nothing to download" in capsys.readouterr().out


def test_learned_logit_scale(tmp_path):
    folder = tm.make_clip(tmp_path / "clip50", seed=3, logit_scale=50.0)
    imgs = tm.images(2, seed=6, shape=(32, 32))
    learned = WinCLIP(backbone=f"clip:{folder}", shots=0, temperature=None).fit([], False)
    fixed = WinCLIP(backbone=f"clip:{folder}", shots=0, temperature=0.02).fit([], False)
    glob = learned.backbone.encode_image(learned.backbone.preprocess(imgs)).global_embedding
    expected = anomaly_probability(glob, learned.anchors, 50.0).numpy()
    np.testing.assert_allclose(learned.predict(imgs).scores, expected, rtol=1e-4)
    np.testing.assert_allclose(fixed.predict(imgs).scores, expected, rtol=1e-4)  # 1 / 0.02
    other = WinCLIP(backbone=f"clip:{folder}", shots=0).fit([], False).predict(imgs).scores
    assert not np.allclose(other, expected, rtol=1e-3)  # the default 0.07 is another scale
