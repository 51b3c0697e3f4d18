"""The offline backbone is the real pretrained network: it names ImageNet photos correctly."""

from __future__ import annotations

import pytest
import skimage.data
import torch

from anomalens.backbones.registry import load_backbone

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
