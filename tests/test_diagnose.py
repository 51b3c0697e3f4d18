"""anomalens.diagnose: MMAD parsing and scoring, scripted answerers with hand-computed results,
question generation, statistics against scikit-learn, encoder and text-space tests, the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from conftest import N_TEST_BAD, N_TEST_GOOD
from PIL import Image

from anomalens.cli import main
from anomalens.diagnose import answer_all, load_mmad, parse_answer, questions_from_mmad, scripted
from anomalens.diagnose.answerers import DetectorAnswerer, VLMAnswerer
from anomalens.diagnose.questions import CELLS, DESCRIPTION, generate_questions, type_keywords
from anomalens.diagnose.scoring import decision
from anomalens.diagnose.stats import group_folds, knn_distance, pca_2d, probe_auroc, silhouette
from anomalens.errors import DatasetError
from anomalens.methods.base import Prediction

YES_NO = {"A": "Yes", "B": "No"}


class Run(NamedTuple):
    code: int
    out: str
    err: str


def run_cli(capsys: pytest.CaptureFixture, argv: list[str]) -> Run:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return Run(code, out, err)


def _qa(question, answer, options, kind):
    return {"Question": question, "Answer": answer, "Options": options, "type": kind}


def _ad(answer):
    return _qa("Is there any defect in the object?", answer, YES_NO, "Anomaly Detection")


def write_mmad(folder: Path) -> Path:
    """A small mmad.json over two datasets (every image a 16 x 16 PNG) and a template."""
    entries = {
        "DS1/bottle/test/good/0.png": [_ad("B")],
        "DS1/bottle/test/good/1.png": [_ad("B")],
        "DS1/bottle/test/crack/0.png": [
            _ad("A"),
            _qa("Type?", "B", {"A": "scratch", "B": "crack", "C": "hole"}, "Defect Classification"),
            _qa("Shape?", "A", {"A": "round", "B": "square"}, "Object Structure"),
        ],
        "DS1/bottle/test/scratch/1.png": [
            _ad("A"),
            _qa("Type?", "A", {"A": "scratch", "B": "crack"}, "Defect Classification"),
            _qa("Detail?", "C", {"A": "x", "B": "y", "C": "z"}, "Object Details"),
        ],
        "DS2/cable/test/good/0.png": [_ad("B")],
        "DS2/cable/test/bent/0.png": [
            _ad("A"),
            _qa("Where?", "D", {"A": "top", "B": "left", "C": "right", "D": "bottom"},
                "Defect Localization"),
        ],
    }  # fmt: skip
    template = "DS1/bottle/train/good/t.png"
    data = {}
    for key, conv in entries.items():
        data[key] = {"conversation": conv, "random_templates": [template]}
    for rel in [*entries, template]:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(path)
    out = folder / "mmad.json"
    out.write_text(json.dumps(data))
    return out


@pytest.fixture
def mmad_questions(tmp_path):
    path = write_mmad(tmp_path)
    return questions_from_mmad(load_mmad(path), tmp_path)


# ---------------------------------------------------------------------------- parsing


def test_parse_answer_regex_then_fuzzy():
    opts = {"A": "Yes", "B": "No"}
    assert parse_answer("B.", opts) == "B"
    assert parse_answer("The answer is C, not D", {"C": "x", "D": "y"}) == "C"
    assert parse_answer("yes", opts) == "A"  # no letter: the closest option text
    assert parse_answer("no", opts) == "B"
    assert parse_answer("Answer: scratch", {"A": "crack", "B": "scratch"}) == "B"
    # MMAD's regex takes a lone capital A as a letter (its known quirk, kept)
    assert parse_answer("A scratch on the head", {"A": "crack", "B": "scratch"}) == "A"
    assert parse_answer("", {}) is None


def test_load_mmad_errors(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"a.png": {"conversation": [{"Question": "q", "Options": {}}]}}))
    with pytest.raises(DatasetError) as e:
        load_mmad(bad)
    assert str(e.value) == f"{bad}: entry 'a.png' question 1 lacks Answer, type"
    bad.write_text(json.dumps({"a.png": {"conversation": [_qa("q", "C", YES_NO, "x")]}}))
    with pytest.raises(DatasetError) as e:
        load_mmad(bad)
    assert str(e.value) == f"{bad}: entry 'a.png' question 1: Answer 'C' is not one of its Options"
    bad.write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_mmad(bad)


def test_questions_from_mmad_fields(mmad_questions, tmp_path):
    qs = mmad_questions
    # 11 conversation items + one free description per defective image (3)
    assert len(qs) == 14
    assert sum(q.type == DESCRIPTION for q in qs) == 3
    crack = [q for q in qs if q.image == "DS1/bottle/test/crack/0.png"]
    assert {q.dataset for q in crack} == {"DS1"}
    assert all(q.label == 1 and q.defect_type == "crack" for q in crack)
    assert crack[0].templates == [tmp_path / "DS1/bottle/train/good/t.png"]
    assert [len(im.shape) for im in crack[0].load_images()] == [3, 3]
    desc = next(q for q in crack if q.type == DESCRIPTION)
    assert desc.keywords == type_keywords("crack") == ("crack", "cracked", "broken", "fracture")
    assert desc.answer is None
    assert "Describe the defect on this bottle" in desc.prompt()


# ---------------------------------------------------------------------------- scoring


def test_always_yes_hand_computed(mmad_questions):
    res = answer_all(scripted("always-yes"), mmad_questions)
    rows = res["mmad"]["rows"]
    # DS1: AD normal 0/2, anomalous 2/2 -> 50; DC answers A: 1/2; Object Analysis
    # (Structure A right + Details A wrong) 1/2; DS2: AD 50, DL A vs D: 0
    assert rows["DS1"] == {
        "Anomaly Detection": 50.0,
        "Defect Classification": 50.0,
        "Object Analysis": 50.0,
        "Average": 50.0,
        "Overkill": 100.0,
        "Miss": 0.0,
    }
    assert rows["DS2"]["Defect Localization"] == 0.0
    assert rows["DS2"]["Average"] == 25.0
    avg = res["mmad"]["average"]
    assert avg["Average"] == 37.5
    assert avg["Defect Classification"] == 50.0  # only DS1 has it
    t = res["tests"]
    assert t["hallucination_rate"]["value"] == 1.0
    assert t["miss_rate"]["value"] == 0.0
    assert t["binary_discrimination"]["value"] == 0.5
    assert t["defect_type"]["value"] == 0.5
    assert t["description_consistency"]["value"] == 0.0
    assert [k for k, v in t.items() if v["passed"]] == ["miss_rate"]
    assert res["decision"]["passed"] == 1
    assert res["decision"]["recommendation"].startswith("detect with AA-CLIP")


def test_always_no_and_oracle(mmad_questions):
    no = answer_all(scripted("always-no"), mmad_questions)
    assert no["tests"]["hallucination_rate"]["value"] == 0.0
    assert no["tests"]["miss_rate"]["value"] == 1.0
    assert no["mmad"]["rows"]["DS1"]["Overkill"] == 0.0
    assert no["mmad"]["rows"]["DS1"]["Miss"] == 100.0
    oracle = answer_all(scripted("oracle"), mmad_questions)
    assert all(v == 100.0 for v in oracle["mmad"]["average"].values() if v > 1) is True
    assert oracle["mmad"]["average"]["Overkill"] == 0.0
    assert all(t["passed"] for t in oracle["tests"].values())
    assert oracle["decision"] == {
        "passed": 5,
        "total": 5,
        "recommendation": "fine-tuning the VLM is viable",
    }
    assert oracle["localization"]["value"] == 1.0


def test_random_answerer_matches_a_recount(mmad_questions):
    res = answer_all(scripted("random-7"), mmad_questions)
    rng = random.Random(7)
    expected, hits = [], []
    for q in mmad_questions:
        if not q.options:
            continue
        expected.append(rng.choice(sorted(q.options)))
        if q.type == "Defect Classification":
            hits.append(expected[-1] == q.answer)
    assert [r["answer"] for r in res["records"] if r["options"]] == expected
    assert res["tests"]["defect_type"]["value"] == sum(hits) / len(hits)
    assert scripted("random-7").answer(mmad_questions[0]) == random.Random(7).choice(["A", "B"])


def test_decision_thresholds():
    def tests(n):
        return {f"t{i}": {"passed": i < n} for i in range(5)}

    assert decision(tests(4))["recommendation"] == "fine-tuning the VLM is viable"
    assert "intensive" in decision(tests(2))["recommendation"]
    assert decision(tests(1))["recommendation"].startswith("detect with AA-CLIP")
    with pytest.raises(ValueError, match="unknown scripted answerer 'maybe'"):
        scripted("maybe")


# ---------------------------------------------------------------------------- generation


def test_generate_questions_ground_truth(demo_root):
    from anomalens.data.io import load_image, load_mask

    data = generate_questions("mvtec", demo_root, "brick", seed=3)
    assert data == generate_questions("mvtec", demo_root, "brick", seed=3)
    assert len(data) == N_TEST_GOOD + N_TEST_BAD
    folders = sorted(p.name for p in (demo_root / "brick/test").iterdir() if p.name != "good")
    for key, item in data.items():
        assert (demo_root / key).is_file()
        assert item["random_templates"][0].startswith("brick/train/good/")
        conv = {c["type"]: c for c in item["conversation"]}
        defective = "/good/" not in key
        assert conv["Anomaly Detection"]["Answer"] == ("A" if defective else "B")
        if not defective:
            assert len(conv) == 1
            continue
        defect = key.split("/")[-2]
        dc = conv["Defect Classification"]
        assert dc["Options"][dc["Answer"]] == defect
        assert sorted(dc["Options"].values()) == folders
        mask = load_mask(demo_root / item["mask_path"], load_image(demo_root / key).shape[:2])
        ys, xs = np.nonzero(mask)
        h, w = mask.shape
        cell = 3 * int(3 * (ys.mean() + 0.5) / h) + int(3 * (xs.mean() + 0.5) / w)
        dl = conv["Defect Localization"]
        assert dl["Options"][dl["Answer"]] == CELLS[cell]
        assert len(set(dl["Options"].values())) == 4


# ---------------------------------------------------------------------------- statistics


def test_stats_match_scikit_learn():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score, silhouette_score

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    y = (rng.random(300) < 0.3).astype(int)
    x[y == 1, :2] += 1.0
    groups = rng.integers(0, 25, 300)
    assert silhouette(x, y) == pytest.approx(silhouette_score(x, y), abs=1e-9)
    folds = group_folds(groups, 5, seed=1)
    assert np.array_equal(np.sum(folds, 0), np.ones(300))  # every row in exactly one fold
    for f in folds:
        assert not set(groups[f]) & set(groups[~f])  # no group on both sides
    oof = np.zeros(300)
    for f in folds:
        m, s = x[~f].mean(0), x[~f].std(0) + 1e-8
        clf = LogisticRegression(C=1.0, tol=1e-10, max_iter=1000).fit((x[~f] - m) / s, y[~f])
        oof[f] = clf.decision_function((x[f] - m) / s)
    assert probe_auroc(x, y, groups, 5, seed=1) == pytest.approx(roc_auc_score(y, oof), abs=1e-6)
    mem = rng.normal(size=(50, 6))
    brute = np.sqrt(((x[:, None] - mem[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(knn_distance(x, mem), brute, rtol=1e-5)
    np.testing.assert_allclose(np.abs(pca_2d(x)), np.abs(PCA(2).fit_transform(x)), atol=1e-8)


# ---------------------------------------------------------------------------- answerers


class StubDetector:
    method = "stub"
    threshold = 0.5

    def __init__(self, score, peak_xy):
        self.score, self.peak = score, peak_xy

    def predict(self, images):
        m = np.zeros(images[0].shape[:2], np.float32)
        m[self.peak[1], self.peak[0]] = 1.0
        return Prediction(np.array([self.score]), [m], 0.5, 0.5)


class StubNamer:
    def __init__(self, name):
        self.name, self.excluded = name, []

    def name_type(self, image, prediction, exclude):
        self.excluded.append(exclude)
        return self.name


def test_detector_answerer(mmad_questions):
    qs = [q for q in mmad_questions if q.image.startswith("DS1/bottle/test/crack")]
    namer = StubNamer("crack")
    # 16 x 16 image, peak at x=15, y=0: top right cell
    ans = DetectorAnswerer(StubDetector(0.9, (15, 0)), namer)
    by_type = {q.type: ans.answer(q) for q in qs}
    assert by_type["Anomaly Detection"] == "A"
    assert by_type["Defect Classification"] == "B"
    assert by_type[DESCRIPTION] == "a crack at the top right of the bottle"
    assert namer.excluded[0] == str(qs[0].path)
    low = DetectorAnswerer(StubDetector(0.1, (0, 0)), None)
    assert low.answer(qs[0]) == "B"
    assert low.answer(next(q for q in qs if q.type == DESCRIPTION)) == "no defect"
    loc = next(q for q in mmad_questions if q.type == "Defect Localization")
    assert DetectorAnswerer(StubDetector(0.9, (8, 15)), None).answer(loc) == "D"  # bottom


class FakeVLM:
    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def generate(self, images, prompt, max_new_tokens):
        self.calls.append((len(images), prompt, max_new_tokens))
        return self.reply


def test_vlm_answerer_sends_template_query_and_mmad_prompt(mmad_questions):
    fake = FakeVLM("B.")
    res = answer_all(VLMAnswerer(fake, "fake"), mmad_questions)
    n_images, prompt, tokens = fake.calls[0]
    assert n_images == 2  # the normal template, then the query image
    assert "The first 1 image is the normal sample" in prompt
    assert "Question: Is there any defect in the object?\nA. Yes\nB. No\n" in prompt
    assert prompt.endswith("Answer with the option's letter from the given choices directly.")
    assert tokens == 16
    assert fake.calls[5][2] == 64  # the 6th question is a free description
    assert res["tests"]["hallucination_rate"]["value"] == 0.0  # "B" = No on good images
    assert res["tests"]["miss_rate"]["value"] == 1.0


# ---------------------------------------------------------------------------- encoder / text


@pytest.fixture(scope="module")
def tiny_text_models(tmp_path_factory):
    from anomalens import testing as tm

    folder = tmp_path_factory.mktemp("diag_models")
    return tm.make_clip(folder / "clip"), tm.make_siglip(folder / "siglip")


def test_run_diagnose_text_models(demo_root, tiny_text_models, tmp_path):
    import torch

    from anomalens.backbones.registry import load_backbone
    from anomalens.data.datasets import build_dataset
    from anomalens.metrics import image_auroc
    from anomalens.prompts import build_prompts, text_anchors

    clip, siglip = tiny_text_models
    specs = [f"clip:{clip}", f"siglip:{siglip}"]
    out = tmp_path / "diag"
    from anomalens.diagnose import run_diagnose

    run_diagnose(
        out, backbones=specs, dataset="mvtec", root=demo_root, image_size=64, progress=False
    )
    doc = json.loads((out / "diagnostic_results.json").read_text())
    assert doc["random_weights"] == specs
    assert "**Random weights:**" in (out / "diagnostics.md").read_text()
    test = build_dataset("mvtec", demo_root, "brick", "test").load_all(progress=False)
    labels = np.array([s.label for s in test])
    for spec in specs:
        bb = load_backbone(spec, image_size=64, precision="fp32")
        normal, anomalous = build_prompts("brick", ("winclip",))
        anchors = text_anchors(bb.encode_text, normal, anomalous).numpy()
        with torch.inference_mode():
            feats = bb.encode_image(bb.preprocess([s.image for s in test]), with_global=True)
        glob = torch.nn.functional.normalize(feats.global_embedding, dim=-1).numpy()
        text = doc["encoders"][spec]["text"]
        assert text["anchor_cosine"] == pytest.approx(float(anchors[0] @ anchors[1]), abs=1e-5)
        score = glob @ anchors[1] - glob @ anchors[0]
        assert text["zero_shot_image_auroc"] == pytest.approx(image_auroc(labels, score))
        assert len(text["words"]) == 7 + 4  # WinCLIP's state words
        sets = doc["encoders"][spec]["sets"]
        assert set(sets) == {f"block {t}" for t in bb.default_layers} | {"joint space"}
        if spec.startswith("siglip"):
            cos = glob @ anchors[1]
            p = 1 / (1 + np.exp(-(bb.logit_scale() * cos + bb.logit_bias())))
            got = text["sigmoid"]["p_anomalous_on_defective"]
            assert got == pytest.approx(p[labels == 1].mean(), abs=1e-5)
        else:
            assert text["sigmoid"] is None
    png = out / doc["figures"][specs[0]]
    assert Image.open(png).size == (550, 450)


def test_patch_labels_defect_normal_and_foreground():
    from anomalens.diagnose.encoder import patch_labels

    mask = np.zeros((40, 40), np.uint8)
    mask[0:10, 0:5] = 1  # half of patch (0, 0) of a 4 x 4 grid
    mask[30:40, 30:40] = 1  # all of patch (3, 3)
    lab = patch_labels(mask, (4, 4), 0.25)
    assert lab[0, 0] == 1
    assert lab[3, 3] == 1
    assert (lab == 0).sum() == 14
    lab = patch_labels(mask, (4, 4), 0.75)
    assert lab[0, 0] == -1  # partly covered: left out
    fg = np.zeros((40, 40), bool)
    fg[:, 20:] = True  # the object is the right half
    lab = patch_labels(mask, (4, 4), 0.25, fg)
    assert lab[3, 3] == 1  # defects count wherever they are
    assert np.array_equal(np.argwhere(lab == 0)[:, 1] >= 2, np.ones((lab == 0).sum(), bool))
    assert (lab == 0).sum() == 7


def test_logit_bias_contract(tiny_text_models):
    from anomalens.backbones.registry import load_backbone

    clip, siglip = tiny_text_models
    assert load_backbone(f"clip:{clip}").logit_bias() is None  # softmax-trained
    sig = load_backbone(f"siglip:{siglip}")
    assert sig.logit_bias() == float(sig.model.logit_bias)


def test_encoder_tests_lite0_demo(demo_root, tmp_path):
    from anomalens.diagnose import run_diagnose

    res = run_diagnose(
        tmp_path / "d",
        backbones=["efficientnet-lite0"],
        layers="patchcore,4",
        dataset="mvtec",
        root=demo_root,
        image_size=96,
        progress=False,
        figures=False,
    )
    sets = res["encoders"]["efficientnet-lite0"]["sets"]
    assert list(sets) == ["stages 2+3 (PatchCore)", "stage 4"]
    patch = sets["stages 2+3 (PatchCore)"]["patch"]
    assert patch["n_groups"] == N_TEST_GOOD + N_TEST_BAD
    assert patch["n_defect"] > 0
    image = sets["stage 4"]["image"]
    assert image["n_defect"] == N_TEST_BAD
    assert image["n_normal"] == N_TEST_GOOD
    assert not (tmp_path / "d/figures").exists()
    assert res["encoders"]["efficientnet-lite0"]["text"] is None


# ---------------------------------------------------------------------------- CLI


def test_cli_mmad_and_errors(tmp_path, capsys):
    path = write_mmad(tmp_path / "mmad")
    out = tmp_path / "out"
    r = run_cli(
        capsys, ["diagnose", "--mmad", str(path), "--answerer", "oracle", "--output", str(out)]
    )
    assert r.code == 0, r.err
    assert r.out.splitlines()[0] == "oracle: 5/5 tests passed: fine-tuning the VLM is viable"
    doc = json.loads((out / "diagnostic_results.json").read_text())
    assert doc["questions"]["oracle"]["mmad"]["average"]["Object Analysis"] == 100.0
    assert doc["reference"]["models"]["GPT-4o"]["Average"] == 74.3
    md = (out / "diagnostics.md").read_text()
    assert "| GPT-4o (MMAD paper, all of MMAD) | 67.5 |" in md
    r = run_cli(capsys, ["diagnose", "--output", str(out)])
    assert r.code == 2
    assert r.err.strip() == (
        "anomalens: error: nothing to diagnose: give --backbone, --checkpoint, --vlm, "
        "--answerer or --detector"
    )
    r = run_cli(capsys, ["diagnose", "--backbone", "efficientnet-lite0", "--output", str(out)])
    assert r.code == 2
    assert r.err.strip() == (
        "anomalens: error: encoder tests and --detector need --dataset/--root (images with masks)"
    )
    missing = tmp_path / "none.json"
    r = run_cli(
        capsys, ["diagnose", "--mmad", str(missing), "--answerer", "oracle", "--output", str(out)]
    )
    assert r.code == 2
    assert r.err.startswith(f"anomalens: error: {missing}: cannot read the MMAD file")


def test_cli_generated_questions(demo_root, tmp_path, capsys):
    out = tmp_path / "q"
    args = ["diagnose", "--dataset", "mvtec", "--root", str(demo_root), "--output", str(out)]
    r = run_cli(capsys, [*args, "--answerer", "always-yes", "--answerer", "always-no"])
    assert r.code == 0, r.err
    paper = "GPT-4o 74.3, Qwen2-VL-72B 78.6, LLaVA-OneVision-7B 63.3"
    assert r.out.splitlines()[:4] == [
        "always-yes: 1/5 tests passed: detect with AA-CLIP / the detectors and use the VLM only "
        "to describe",
        f"  MMAD average 25.0 (MMAD paper, all of MMAD, not measured here: {paper})",
        "always-no: 1/5 tests passed: detect with AA-CLIP / the detectors and use the VLM only "
        "to describe",
        f"  MMAD average 25.0 (MMAD paper, all of MMAD, not measured here: {paper})",
    ]
    doc = json.loads((out / "diagnostic_results.json").read_text())
    yes = doc["questions"]["always-yes"]
    assert yes["mmad"]["average"]["Anomaly Detection"] == 50.0
    assert yes["mmad"]["average"]["Overkill"] == 100.0
    assert doc["data"]["n_questions"] == N_TEST_GOOD + 4 * N_TEST_BAD
    assert (out / "figures/question_tests.png").is_file()
    md = (out / "diagnostics.md").read_text().splitlines()
    page = (out / "diagnostics.html").read_text()
    table_lines = [x for x in md if x.startswith("|") and not x.startswith("| ---")]
    assert page.count("<tr>") == len(table_lines)
    assert '<img src="figures/question_tests.png"' in page
    assert "<td>always-yes</td>" in page


def test_checkpoint_before_and_after_aaclip(demo_root, tiny_text_models, tmp_path, capsys):
    import torch

    from anomalens.methods.base import load_detector

    clip, _ = tiny_text_models
    ckpt = tmp_path / "ckpt"
    argv = ["train", "--method", "aaclip", "--backbone", f"clip:{clip}", "--anchors", "text"]
    argv += ["--dataset", "mvtec", "--root", str(demo_root), "--mode", "synthetic"]
    argv += ["--text-epochs", "1", "--image-epochs", "1", "--batch-size", "4"]
    assert main([*argv, "--output", str(ckpt), "--no-progress"]) == 0
    out = tmp_path / "diag"
    r = run_cli(capsys, ["diagnose", "--checkpoint", ckpt, "--dataset", "mvtec", "--root",
                         demo_root, "--output", out, "--no-figures"])  # fmt: skip
    assert r.code == 0, r.err
    doc = json.loads((out / "diagnostic_results.json").read_text())
    names = list(doc["encoders"])
    assert len(names) == 2
    assert names[0].endswith("(before AA-CLIP)")
    assert names[1].endswith("(after AA-CLIP, ckpt)")
    after = doc["encoders"][names[1]]
    assert set(after["sets"]) == {"adapted levels", "joint space"}
    det = load_detector(ckpt)
    with torch.no_grad():
        pair = det.anchor_pair("brick").numpy()
    assert after["text"]["anchor_cosine"] == pytest.approx(float(pair[0] @ pair[1]), abs=1e-5)
    assert doc["encoders"][names[0]]["text"]["anchor_cosine"] != after["text"]["anchor_cosine"]


MVTEC = Path(__file__).resolve().parents[2] / "shared/data/mvtec_ad"


@pytest.mark.slow
@pytest.mark.skipif(not (MVTEC / "screw").is_dir(), reason="MVTec AD screw (../shared) not present")
def test_screw_patchcore_features_separate_defects(tmp_path):
    """On 24 real screws (seed 0) PatchCore's Lite0 features put defect patches far from the
    good memory (its pixel AUROC on screw is 0.99), and the probe sees them too."""
    from anomalens.diagnose import run_diagnose

    res = run_diagnose(
        tmp_path,
        backbones=["efficientnet-lite0"],
        layers="patchcore",
        dataset="mvtec",
        root=MVTEC,
        category="screw",
        max_images=24,
        normal_patches="all",
        progress=False,
        figures=False,
    )
    assert res["data"]["n_test"] == 24
    assert res["data"]["subsampled"] is True
    patch = res["encoders"]["efficientnet-lite0"]["sets"]["stages 2+3 (PatchCore)"]["patch"]
    assert patch["n_groups"] == 24
    assert patch["knn_auroc"] > 0.85
    assert patch["probe_auroc"] > 0.7


def test_vlm_without_explain_package_is_a_clear_error(demo_root, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "anomalens.explain", None)  # import fails
    argv = ["diagnose", "--dataset", "mvtec", "--root", demo_root, "--vlm", "hf:some/model"]
    r = run_cli(capsys, [*argv, "--output", tmp_path / "o"])
    assert r.code == 2
    assert r.err.strip() == (
        "anomalens: error: --vlm hf:some/model needs anomalens.explain (the explainers: grounded "
        "defect types and VLM backends), which this installation lacks"
    )
