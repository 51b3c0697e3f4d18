"""The offline backbone: the real pretrained network (it names ImageNet photos correctly) and
its Backbone contract; the registry's errors, which need no transformers."""

from __future__ import annotations

import json
import math
import sys

import pytest
import skimage.data
import torch
from conftest import assert_no_text_tower

from anomalens.backbones.efficientnet import EfficientNetLite
from anomalens.backbones.registry import load_backbone
from anomalens.errors import ModelNotAvailableError

# ImageNet class ids (top-1 of the pretrained classifier must be one of them)
PHOTOS = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {504, 967, 968},  # coffee mug, espresso, cup
}


@pytest.mark.parametrize("spec", ["efficientnet-lite0", "efficientnet-lite2"])
def test_pretrained_classifier_names_photos(spec: str) -> None:
    bb = load_backbone(spec, image_size=224, precision="fp32")
    # ReLU6, not Swish: the Lite weights were trained with it (Swish called the coffee a
    # toilet seat)
    assert all(isinstance(b._swish, torch.nn.ReLU6) for b in bb.net._blocks)
    images = [getattr(skimage.data, name)() for name in PHOTOS]
    with torch.inference_mode():
        top1 = bb.net(bb.preprocess(images)).argmax(1).tolist()
    for (name, classes), got in zip(PHOTOS.items(), top1, strict=True):
        assert got in classes, f"{spec} calls {name} class {got}"


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite:
    return load_backbone("efficientnet-lite0")


def _same_side(side: int, strides) -> int:
    """TF "same" padding: every strided convolution gives ceil(side / stride)."""
    for s in strides:
        side = math.ceil(side / s)
    return side


# strides of the stem and of stages 1..7
STRIDES = (2, 1, 2, 2, 2, 1, 2, 1)


@pytest.mark.parametrize("built", [320, 129])
def test_grid_equals_feature_grids(built: int) -> None:
    bb = EfficientNetLite("lite0", image_size=built)
    assert (bb.kind, bb.architecture, bb.feature_levels) == ("efficientnet", "cnn", (2, 3, 4, 5))
    assert bb.grid() == bb.grid(5)  # the last default tap
    taps = tuple(range(1, 8))
    for size in (100, 129, 320, built):
        feats = bb.encode_image(torch.zeros(1, 3, size, size), layers=taps, with_global=False)
        assert feats.grids == [bb.grid(layer, size) for layer in taps]
    # at the size the padding was built for, the maps are the TF "same" sizes
    for layer in taps:
        side = _same_side(built, STRIDES[: layer + 1])
        assert bb.grid(layer) == (side, side)


def test_resolve_layers_and_errors(lite0: EfficientNetLite) -> None:
    assert lite0.resolve_layers((-1, 2, -7)) == (7, 2, 1)
    assert lite0.resolve_layers(-2) == (6,)
    pixels = torch.zeros(1, 3, 64, 64)
    deepest = lite0.encode_image(pixels, layers=(-1,), with_global=False)
    assert torch.equal(deepest.tokens[0], lite0.encode_image(pixels, layers=(7,)).tokens[0])
    for bad in ((8,), (0,), (-8,)):
        with pytest.raises(ValueError, match=r"out of range .* with 7 stages \(use 1..7 or -7..-1"):
            lite0.encode_image(pixels, layers=bad)
    with pytest.raises(ValueError, match="at least one layer"):
        lite0.resolve_layers(())
    with pytest.raises(ValueError, match="out of range"):
        lite0.layer_module(8)
    assert lite0.layer_module(-1) is lite0.net._blocks[-1]
    with pytest.raises(ValueError, match="pixels"):
        lite0.encode_image(torch.zeros(3, 64, 64))
    info = lite0.describe()
    assert json.loads(json.dumps(info)) == info
    assert info["kind"] == "efficientnet"


def test_no_text_tower(lite0: EfficientNetLite) -> None:
    assert_no_text_tower(lite0, 40)
    assert "efficientnet-lite0" in lite0.name
    with pytest.raises(NotImplementedError, match="CLIP or SigLIP"):
        lite0.encode_windows(torch.zeros(1, 3, 64, 64), [torch.zeros(1, 4, dtype=torch.long)])


def test_precision_checked() -> None:
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        load_backbone("efficientnet-lite0", precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        EfficientNetLite("lite0", precision="half")


@pytest.mark.parametrize("spec", ["clip:openai/clip-vit-base-patch16", "dinov2:/some/folder"])
def test_missing_transformers(spec: str, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    with pytest.raises(ModelNotAvailableError) as info:
        load_backbone(spec)
    msg = str(info.value)
    assert spec in msg
    assert "pip install 'anomalens[hf]'" in msg
    assert "\n" not in msg
    # the offline backbone does not need transformers
    assert load_backbone("efficientnet-lite0", image_size=64).kind == "efficientnet"
