"""VLM explainers: prompt assembly and answer parsing per family, tiny random VLMs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomalens import testing as tm
from anomalens.errors import ModelNotAvailableError
from anomalens.explain import Finding, build_explainer
from anomalens.explain.base import Explanation
from anomalens.explain.prompts import (
    build_prompt,
    names_defect,
    parse_answer,
    parse_bboxes,
    says_no_defect,
)
from anomalens.explain.vlm import VLMRequest, apply_answer
from anomalens.methods.base import Prediction

pytest.importorskip("transformers")


def finding(location="near the wider end (right in the image)") -> Finding:
    return Finding(
        [10, 20, 30, 40],
        120,
        1.5,
        location,
        "compact",
        None,
        "darker than the surrounding surface",
        1.3,
        2.6,
    )


def test_prompt_carries_findings_and_images_in_order():
    text = build_prompt([finding(), finding("in the middle of the part")], 2, True, "screw")
    assert text.startswith("You are inspecting a screw for manufacturing defects.")
    assert "images 2 to 3 are close-ups of regions 1 to 2; image 4 is a good part" in text
    assert "Region 1: anomaly near the wider end (right in the image): compact" in text
    assert "Region 2: anomaly in the middle of the part" in text
    assert "Overall: defective' or 'Overall: good'" in text
    assert "bbox_2d" not in text
    assert "bbox_2d" in build_prompt([finding()], 1, False, family="qwen2_5_vl")
    good = build_prompt([], 0, False, defective=False)
    assert "The detector found no defect." in good
    assert "Region" not in good


def test_parse_answer_regions_and_overall():
    a = parse_answer(
        "Region 1: a deep scratch\nregion 2 - no defect\nRegion 7: x\nOverall: defective", 2
    )
    assert a.regions == {1: "a deep scratch", 2: "no defect"}
    assert a.overall is True
    assert parse_answer("Overall: good", 1).overall is False
    assert parse_answer("I see a crack", 1).overall is None
    assert says_no_defect("The part appears normal.")
    assert not says_no_defect("A dent.")
    assert names_defect("There is a small dent")
    assert not names_defect("No defect visible, no dent")


def test_parse_bboxes_to_image_pixels():
    text = 'Here: [{"bbox_2d": [100, 200, 300, 400], "label": "scratch"}] done'
    # Qwen2-VL: 0-1000 grid
    assert parse_bboxes(text, "qwen2_vl", (500, 1000)) == [
        {"box": [100, 100, 300, 200], "label": "scratch"}
    ]
    # Qwen2.5-VL: pixels of the resized input (here 280 x 560 for a 500 x 1000 image)
    text25 = '[{"bbox_2d": [100, 200, 300, 250], "label": "scratch"}]'
    boxes = parse_bboxes(text25, "qwen2_5_vl", (500, 1000), input_size=(280, 560))
    assert boxes == [{"box": [179, 357, 536, 446], "label": "scratch"}]
    assert parse_bboxes('[{"bbox_2d": [1, 2, 3]}] [{oops}]', "qwen2_vl", (10, 10)) == []
    clipped = parse_bboxes('[{"bbox_2d": [-5, 0, 2000, 900]}]', "qwen2_vl", (100, 100))
    assert clipped[0]["box"] == [0, 0, 100, 90]


def explanation(verdict="defective", n=2) -> Explanation:
    return Explanation(verdict, 2.0, 1.0, "s", [finding() for _ in range(n)])


def request(n=2, defective=True) -> VLMRequest:
    return VLMRequest([], "p", n, defective)


def test_agreement_flags():
    e = explanation()
    apply_answer(
        e, parse_answer("Region 1: scratch\nRegion 2: no defect\nOverall: defective", 2), request()
    )
    assert e.agreement == "agrees"
    assert [f.agrees for f in e.findings] == [True, False]
    assert e.findings[1].vlm_text == "no defect"
    e = explanation()
    apply_answer(e, parse_answer("Region 1: no defect\nRegion 2: looks normal", 2), request())
    assert e.agreement == "disagrees"
    e = explanation()
    apply_answer(e, parse_answer("A long scratch on the head.", 2), request())
    assert e.agreement == "agrees"
    assert e.findings[0].vlm_text == "A long scratch on the head."
    e = explanation("good", 0)
    apply_answer(e, parse_answer("I can see a crack here.", 0), request(0, defective=False))
    assert e.agreement == "disagrees"
    assert e.vlm_text == "I can see a crack here."
    e = explanation("good", 0)
    apply_answer(e, parse_answer("Overall: good", 0), request(0, defective=False))
    assert e.agreement == "agrees"


@pytest.fixture(scope="module")
def vlm_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    return {f: tm.make_vlm(f, root / f) for f in tm.VLM_FAMILIES}


@pytest.fixture
def one_defect():
    img = tm.object_images(1, size=64)[0]
    m = np.zeros((64, 64), np.float32)
    m[20:28, 30:36] = 2.0
    return img, Prediction(np.array([2.0, 0.2], np.float32), [m, m * 0.1], 1.0, 1.0)


@pytest.mark.parametrize("family", tm.VLM_FAMILIES)
def test_tiny_vlm_end_to_end(vlm_folders, one_defect, family):
    img, pred = one_defect
    folder = vlm_folders[family]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == family
    ex = build_explainer(f"hf:{folder}", max_new_tokens=6)
    out = ex.explain([img, img], pred)
    assert ex.family == family
    assert ex.name == "hf"
    assert ex.model == str(folder)
    defective, good = out
    assert defective.vlm_text
    assert defective.findings[0].vlm_text
    assert defective.agreement in ("agrees", "disagrees")
    assert defective.explainer == "hf"
    assert defective.model == str(folder)
    assert good.vlm_text is None
    assert good.agreement is None
    # same weights, greedy decoding: the same answer again
    assert ex.explain([img], pred)[0].vlm_text == defective.vlm_text
    text, _ = ex.generate([img], "is there a scratch")
    assert isinstance(text, str)
    assert json.loads(json.dumps(defective.to_dict()))["vlm_text"] == defective.vlm_text


def test_explain_all_sends_good_images(vlm_folders, one_defect):
    img, pred = one_defect
    ex = build_explainer(f"hf:{vlm_folders['llava_onevision']}", max_new_tokens=4, explain_all=True)
    good = ex.explain([img, img], pred)[1]
    assert good.verdict == "good"
    assert good.findings == []
    assert good.vlm_text is not None
    assert good.agreement in ("agrees", "disagrees")


def test_unavailable_models_are_clear_errors(tmp_path, one_defect):
    img, pred = one_defect
    with pytest.raises(ModelNotAvailableError, match="no such folder"):
        build_explainer(f"hf:{tmp_path / 'nothing'}").explain([img], pred)
    with pytest.raises(ModelNotAvailableError, match="needs --trust-remote-code") as info:
        build_explainer("hf:vikhyatk/moondream2").explain([img], pred)
    assert "openai:http://127.0.0.1:11434/v1#moondream" in str(info.value)
    with pytest.raises(ValueError, match="precision must be one of"):
        build_explainer("hf:x/y", precision="fp8")


def test_download_learns_vlms(vlm_folders, tmp_path, monkeypatch, capsys):
    import shutil

    import huggingface_hub

    from anomalens import download

    calls = []

    def fake_snapshot(model_id, revision=None, local_dir=None, allow_patterns=None):
        calls.append((model_id, allow_patterns))
        shutil.copytree(vlm_folders["idefics3"], local_dir, dirs_exist_ok=True)

    monkeypatch.setattr(download, "_hub_reachable", lambda: True)
    monkeypatch.setattr(download, "_repo_files", lambda m, r: ["model.safetensors"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    assert download.main(["hf:HuggingFaceTB/SmolVLM-256M-Instruct", str(tmp_path / "smol")]) == 0
    out = capsys.readouterr().out
    assert f"use it offline with: --explain hf:{tmp_path / 'smol'}" in out
    assert calls[0][0] == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert "*.jinja" in calls[0][1]
    with pytest.raises(ValueError, match="already names a local folder"):
        download.download("hf:/some/folder", tmp_path / "x")


def test_qwen_boxes_reach_the_explanation(vlm_folders, one_defect, monkeypatch):
    img, pred = one_defect  # 64 x 64 image
    ex = build_explainer(f"hf:{vlm_folders['qwen2_5_vl']}", max_new_tokens=4).load()
    assert ex.family == "qwen2_5_vl"
    # the model's resized input was 32 x 32: its pixels scale by 2 to the image
    reply = 'Region 1: scratch\n[{"bbox_2d": [15, 10, 18, 14], "label": "scratch"}]'
    monkeypatch.setattr(ex, "generate", lambda images, prompt: (reply, (32, 32)))
    e = ex.explain([img], pred)[0]
    assert e.vlm_boxes == [{"box": [30, 20, 36, 28], "label": "scratch"}]
    assert e.findings[0].vlm_text == "scratch"
    assert e.agreement == "agrees"


def test_florence_task_prompt_per_crop(one_defect):
    """Florence-2 has no chat template: the task prompt goes with each crop and the processor's
    post-processing gives the caption (fake processor and model record the calls)."""
    import torch

    from anomalens.explain.prompts import FLORENCE_TASK
    from anomalens.explain.vlm_hf import HFExplainer

    calls = []

    class Processor:
        def __call__(self, text, images, return_tensors):
            calls.append(("encode", text, images.size))
            return {"input_ids": torch.zeros(1, 3, dtype=torch.long)}

        def batch_decode(self, ids, skip_special_tokens):
            return ["</s>a dark scratch on metal</s>"]

        def post_process_generation(self, raw, task, image_size):
            calls.append(("parse", task, image_size))
            return {task: raw.replace("</s>", "")}

    class Model:
        def generate(self, **kwargs):
            return torch.zeros(1, 5, dtype=torch.long)

    img, pred = one_defect
    ex = HFExplainer("florence-community/Florence-2-base")
    ex._loaded, ex.family = (Model(), Processor(), "florence2"), "florence2"
    e = ex.explain([img], pred)[0]
    assert e.findings[0].vlm_text == "a dark scratch on metal"
    assert e.vlm_text == "Region 1: a dark scratch on metal"
    assert e.agreement == "agrees"
    (encode, parse) = calls
    assert encode[1] == parse[1] == FLORENCE_TASK == "<MORE_DETAILED_CAPTION>"
    assert encode[2] == parse[2]  # the crop's (width, height)
