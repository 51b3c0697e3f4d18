"""AA-CLIP building blocks: residual adapter and losses checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from anomalens.methods.aaclip.parts import (
    ResidualAdapter,
    dice_loss,
    disentangle_loss,
    focal_loss,
    seg_loss_single,
    segmentation_loss,
)

# ----------------------------------------------------------------------------- reference loops
# Plain-python / numpy versions of the AA-CLIP formulas, written independently of the module.


def ref_focal(prob: np.ndarray, mask: np.ndarray, gamma=2.0, alpha=None, smooth=1e-5) -> float:
    b, c, h, w = prob.shape
    weights = [1.0] * c if alpha is None else [a / sum(alpha) for a in alpha]
    total, count = 0.0, 0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                t = int(mask[i, y, x])
                pt = smooth
                for k in range(c):
                    target = (1.0 - smooth) if k == t else smooth / (c - 1)
                    pt += target * float(prob[i, k, y, x])
                total += -weights[t] * (1.0 - pt) ** gamma * math.log(pt)
                count += 1
    return total / count


def ref_dice(prob: np.ndarray, target: np.ndarray, smooth=1.0) -> float:
    n = prob.shape[0]
    acc = 0.0
    for i in range(n):
        p = prob[i].ravel().tolist()
        y = target[i].ravel().tolist()
        inter = sum(a * b for a, b in zip(p, y, strict=True))
        acc += (2 * inter + smooth) / (sum(p) + sum(y) + smooth)
    return 1.0 - acc / n


def ref_seg(prob: np.ndarray, mask: np.ndarray) -> float:
    return ref_focal(prob, mask) + ref_dice(prob[:, 0], 1.0 - mask) + ref_dice(prob[:, 1], mask)


def random_probs(seed: int, shape=(2, 2, 3, 4)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 2, dim=1)


MASK = torch.tensor(
    [
        [[0, 0, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]],
        [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]],
    ],
    dtype=torch.float64,
)


# ----------------------------------------------------------------------------- focal


def test_focal_single_pixel_literal():
    # p = (0.5, 0.5), target 1, no smoothing: (1 - 0.5)^2 * -log(0.5) = 0.25 * ln 2
    prob = torch.full((1, 2, 1, 1), 0.5, dtype=torch.float64)
    mask = torch.ones(1, 1, 1)
    assert focal_loss(prob, mask, smooth=0.0).item() == pytest.approx(0.25 * math.log(2))
    # p_anomalous = 0.9 on an anomalous pixel: 0.01 * -ln 0.9; on a normal pixel: 0.81 * -ln 0.1
    prob = torch.tensor([0.1, 0.9], dtype=torch.float64).view(1, 2, 1, 1)
    assert focal_loss(prob, torch.ones(1, 1, 1), smooth=0.0).item() == pytest.approx(
        0.01 * -math.log(0.9)
    )
    assert focal_loss(prob, torch.zeros(1, 1, 1), smooth=0.0).item() == pytest.approx(
        0.81 * -math.log(0.1)
    )


def test_focal_matches_loop_with_smoothing_and_alpha():
    prob = random_probs(0)
    got = focal_loss(prob, MASK).item()
    assert got == pytest.approx(ref_focal(prob.numpy(), MASK.numpy()), rel=1e-10)
    got = focal_loss(prob, MASK.unsqueeze(1), gamma=1.5, alpha=[1.0, 3.0]).item()
    want = ref_focal(prob.numpy(), MASK.numpy(), gamma=1.5, alpha=[1.0, 3.0])
    assert got == pytest.approx(want, rel=1e-10)


def test_focal_gamma0_is_cross_entropy():
    prob = random_probs(1)
    got = focal_loss(prob, MASK, gamma=0.0, smooth=0.0).item()
    picked = torch.where(MASK.bool(), prob[:, 1], prob[:, 0])
    assert got == pytest.approx((-picked.log()).mean().item(), rel=1e-12)


# ----------------------------------------------------------------------------- dice


def test_dice_literal():
    # intersection 0.9 + 0.6 = 1.5, sum p = 1.8, sum y = 2 -> 1 - (3 + 1) / (3.8 + 1)
    prob = torch.tensor([[[0.9, 0.2], [0.1, 0.6]]])
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert dice_loss(prob, mask).item() == pytest.approx(1 - 4 / 4.8, rel=1e-6)
    # perfect prediction of an empty mask: (0 + 1) / (0 + 0 + 1) = 1 -> loss 0
    assert dice_loss(torch.zeros(1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 0.0


def test_dice_matches_loop_batch_mean():
    prob = random_probs(2)
    got = dice_loss(prob[:, 1], MASK).item()
    assert got == pytest.approx(ref_dice(prob[:, 1].numpy(), MASK.numpy()), rel=1e-12)


# ----------------------------------------------------------------------------- segmentation


def test_seg_loss_single_is_focal_plus_dice_on_both_channels():
    prob = random_probs(3)
    got = seg_loss_single(prob, MASK.unsqueeze(1)).item()
    assert got == pytest.approx(ref_seg(prob.numpy(), MASK.numpy()), rel=1e-10)


def test_segmentation_loss_sums_all_levels():
    levels = [random_probs(s) for s in (4, 5, 6)]
    per_level = [ref_seg(p.numpy(), MASK.numpy()) for p in levels]
    got = segmentation_loss(levels, MASK).item()
    assert got == pytest.approx(sum(per_level), rel=1e-10)
    # not the reference stage-1 bug (last level only)
    assert abs(got - per_level[-1]) > 1e-3
    with pytest.raises(ValueError, match="is empty"):
        segmentation_loss([], MASK)


def test_segmentation_loss_gives_every_level_a_gradient():
    logits = [torch.randn(1, 2, 3, 4, requires_grad=True) for _ in range(3)]
    segmentation_loss([torch.softmax(x, 1) for x in logits], MASK[:1]).backward()
    for x in logits:
        assert x.grad is not None
        assert x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- disentangle


def test_disentangle_literal():
    # normalised: (3, 4)/5 and (1, 0) -> cos = 0.6 -> 0.36
    tn = torch.tensor([3.0, 4.0])
    ta = torch.tensor([2.0, 0.0])
    assert disentangle_loss(tn, ta).item() == pytest.approx(0.36)
    # without normalisation: <(3,4),(2,0)> = 6 -> 36
    assert disentangle_loss(tn, ta, normalize=False).item() == pytest.approx(36.0)
    assert disentangle_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 5.0])).item() == 0.0


def test_disentangle_batch_means_before_squaring():
    g = torch.Generator().manual_seed(7)
    tn = torch.randn(3, 5, generator=g, dtype=torch.float64)
    ta = torch.randn(3, 5, generator=g, dtype=torch.float64)
    cos = []
    for i in range(3):
        a, b = tn[i].tolist(), ta[i].tolist()
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        cos.append(dot / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b)))
    assert disentangle_loss(tn, ta).item() == pytest.approx((sum(cos) / 3) ** 2, rel=1e-12)


# ----------------------------------------------------------------------------- adapter


def test_adapter_shape_and_attributes():
    ad = ResidualAdapter(32)
    assert (ad.dim, ad.bottleneck, ad.alpha) == (32, 16, 0.1)
    assert ad.fc1.weight.shape == (16, 32)
    assert ad.fc2.weight.shape == (32, 16)
    assert isinstance(ad.act, nn.LeakyReLU)
    assert ad.act.negative_slope == 0.2
    for shape in [(2, 5, 32), (3, 32), (32,)]:
        assert ResidualAdapter(32, 8)(torch.randn(shape)).shape == shape
    with pytest.raises(ValueError, match="expected last dimension 32"):
        ad(torch.randn(2, 31))


def test_adapter_alpha0_identity_and_mixing():
    x = torch.randn(2, 7, 12)
    ad = ResidualAdapter(12, 4, alpha=0.0)
    assert torch.equal(ad(x), x)
    ad = ResidualAdapter(12, 4, alpha=0.1)
    with torch.no_grad():
        h = x @ ad.fc1.weight.T + ad.fc1.bias
        h = torch.where(h > 0, h, 0.2 * h)
        branch = h @ ad.fc2.weight.T + ad.fc2.bias
    torch.testing.assert_close(ad(x), 0.1 * branch + 0.9 * x)


def test_gradients_reach_only_the_adapter_of_a_frozen_tiny_clip():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from anomalens.testing import TINY_VISION

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION)).eval()
    model.requires_grad_(False)
    adapter = ResidualAdapter(TINY_VISION["hidden_size"])

    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    layers = dict(model.named_modules())
    block = next(m for n, m in layers.items() if n.endswith("encoder.layers"))[0]
    handle = block.register_forward_hook(hook)
    try:
        pixels = torch.randn(2, 3, TINY_VISION["image_size"], TINY_VISION["image_size"])
        out = model(pixel_values=pixels).last_hidden_state
        out.pow(2).mean().backward()
    finally:
        handle.remove()
    assert all(p.grad is None for p in model.parameters())
    grads = [p.grad for p in adapter.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    # the hook changed the output (the adapter is in the graph), removing it restores the model
    with torch.no_grad():
        plain = model(pixel_values=pixels).last_hidden_state
    assert not torch.allclose(plain, out.detach())
