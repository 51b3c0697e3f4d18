"""Building blocks of AA-CLIP / AA-SigLIP (anomaly-aware residual adapters, two-stage training).

Ma et al., "AA-CLIP: Enhancing Zero-shot Anomaly Detection via Anomaly-Aware CLIP" (CVPR 2025,
reference code ``Mwxinnn/AA-CLIP``). This module holds only the pieces that do not depend on a
backbone: the residual adapter and the training losses. The formulas follow the reference
``forward_utils.py`` / ``train.py``; the code is our own.

* :class:`ResidualAdapter`: ``x <- alpha * adapter(x) + (1 - alpha) * x`` with a bottleneck
  ``Linear(dim, hidden) -> LeakyReLU(0.2) -> Linear(hidden, dim)`` (hidden = dim // 2 and
  alpha = 0.1 in the reference, for both the text and the image adapters).
* :func:`focal_loss`: focal loss on per-pixel class *probabilities* ``[B, 2, H, W]`` (the
  reference applies the softmax in ``calculate_similarity_map`` and the loss has no
  non-linearity), with the reference's label smoothing of the one-hot target and its ``+ smooth``
  on ``p_t``.
* :func:`dice_loss`: soft binary Dice with ``smooth = 1``, averaged over the batch.
* :func:`seg_loss_single`: focal + Dice(normal channel, 1 - mask) + Dice(anomalous channel, mask)
  (the reference ``calculate_seg_loss``).
* :func:`segmentation_loss`: the sum of :func:`seg_loss_single` over all feature levels. The
  reference stage-1 loop overwrites ``loss`` per level (only the last level trains); stage 2
  sums. We always sum.
* :func:`disentangle_loss`: ``(<T_N, T_A>)^2`` on L2-normalised text embeddings (the reference
  orthogonality term; weight 0.1 in stage 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Projection",
    "ResidualAdapter",
    "ResidualProjection",
    "dice_loss",
    "disentangle_loss",
    "focal_loss",
    "seg_loss_single",
    "segmentation_loss",
]


class ResidualAdapter(nn.Module):
    """Bottleneck adapter mixed into its input with a fixed weight.

    ``forward(x) = alpha * fc2(leaky_relu(fc1(x))) + (1 - alpha) * x``; works on any tensor whose
    last dimension is ``dim`` (tokens ``[B, L, dim]``, pooled ``[B, dim]`` ...).

    Args:
        dim: feature size (input and output).
        bottleneck: hidden size; ``None`` means ``dim // 2`` (768 -> 384, 1024 -> 512 in AA-CLIP).
        alpha: weight of the adapted branch (AA-CLIP ``text_adapt_weight`` /
            ``image_adapt_weight`` = 0.1). ``alpha = 0`` is the identity.
        negative_slope: LeakyReLU slope (0.2 in AA-CLIP).
    """

    def __init__(
        self,
        dim: int,
        bottleneck: int | None = None,
        alpha: float = 0.1,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if bottleneck is None:
            bottleneck = max(1, dim // 2)
        if bottleneck <= 0:
            raise ValueError(f"bottleneck must be positive, got {bottleneck}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.dim = dim
        self.bottleneck = bottleneck
        self.alpha = float(alpha)
        self.fc1 = nn.Linear(dim, bottleneck)
        self.act = nn.LeakyReLU(negative_slope)
        self.fc2 = nn.Linear(bottleneck, dim)

    def adapt(self, x: Tensor) -> Tensor:
        """The adapter branch alone (before mixing)."""
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected last dimension {self.dim}, got shape {tuple(x.shape)}")
        return self.alpha * self.adapt(x) + (1.0 - self.alpha) * x

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bottleneck={self.bottleneck}, alpha={self.alpha}"


class Projection(nn.Module):
    """``LeakyReLU(Linear(x))``: AA-CLIP's ``SimpleProj(relu=True)`` mapping a layer's tokens into
    the anchor space (one per feature level, one for the detection token)."""

    def __init__(self, dim_in: int, dim_out: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.fc = nn.Linear(dim_in, dim_out)
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.fc(x))


class ResidualProjection(Projection):
    """``alpha * LeakyReLU(Linear(x)) + (1 - alpha) * x``: the final text projection of AA-CLIP
    (a square :class:`Projection` mixed into its input like the adapters)."""

    def __init__(self, dim: int, alpha: float = 0.1, negative_slope: float = 0.2) -> None:
        super().__init__(dim, dim, negative_slope)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x: Tensor) -> Tensor:
        return self.alpha * super().forward(x) + (1.0 - self.alpha) * x


def _mask_bhw(mask: Tensor) -> Tensor:
    """``[B, H, W]`` or ``[B, 1, H, W]`` binary mask -> float ``[B, H, W]``."""
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"mask must be [B, H, W] or [B, 1, H, W], got {tuple(mask.shape)}")
        mask = mask[:, 0]
    if mask.dim() != 3:
        raise ValueError(f"mask must be [B, H, W] or [B, 1, H, W], got {tuple(mask.shape)}")
    return mask.float()


def focal_loss(
    prob: Tensor,
    mask: Tensor,
    gamma: float = 2.0,
    alpha: Sequence[float] | Tensor | None = None,
    smooth: float = 1e-5,
) -> Tensor:
    """Focal loss of per-pixel class probabilities, averaged over all pixels.

    Args:
        prob: ``[B, C, H, W]`` probabilities (softmax over ``C`` already applied; ``C = 2`` for
            normal / anomalous). Not logits.
        mask: ``[B, H, W]`` or ``[B, 1, H, W]`` integer class per pixel (0 normal, 1 anomalous);
            values are truncated to integers (threshold soft masks before calling).
        gamma: focusing exponent.
        alpha: per-class weights, or ``None`` for all ones (the AA-CLIP default). A sequence is
            normalised to sum 1, as in the reference.
        smooth: label smoothing; the one-hot target ``y`` is clamped to
            ``[smooth / (C - 1), 1 - smooth]``.

    Per pixel: ``p_t = sum_c y_c * p_c + smooth``, ``loss = -alpha[t] * (1 - p_t)^gamma *
    log(p_t)``; the result is the mean over all ``B * H * W`` pixels.
    """
    if prob.dim() != 4:
        raise ValueError(f"prob must be [B, C, H, W], got {tuple(prob.shape)}")
    num_class = prob.shape[1]
    target = _mask_bhw(mask).long()
    if target.shape != (prob.shape[0], *prob.shape[2:]):
        raise ValueError(f"mask {tuple(mask.shape)} does not match prob {tuple(prob.shape)}")
    p = prob.permute(0, 2, 3, 1).reshape(-1, num_class)
    t = target.reshape(-1)
    one_hot = F.one_hot(t, num_class).to(p.dtype)
    if smooth:
        one_hot = one_hot.clamp(smooth / max(num_class - 1, 1), 1.0 - smooth)
    pt = (one_hot * p).sum(1) + smooth
    if alpha is None:
        w = torch.ones(num_class, dtype=p.dtype, device=p.device)
    else:
        w = torch.as_tensor(alpha, dtype=p.dtype, device=p.device).reshape(-1)
        if w.numel() != num_class:
            raise ValueError(f"alpha needs {num_class} entries, got {w.numel()}")
        w = w / w.sum()
    loss = -w[t] * (1.0 - pt).pow(gamma) * pt.log()
    return loss.mean()


def dice_loss(prob: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft binary Dice loss, ``1 - mean_b (2 sum(p*y) + s) / (sum(p) + sum(y) + s)``.

    ``prob`` and ``target`` are flattened per sample (any shapes with the same number of elements
    per sample, e.g. ``[B, H, W]`` and ``[B, 1, H, W]``); ``smooth`` is 1 as in AA-CLIP.
    """
    n = prob.shape[0]
    p = prob.reshape(n, -1)
    y = target.reshape(n, -1).to(p.dtype)
    if p.shape != y.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and target {tuple(target.shape)} differ")
    dice = (2.0 * (p * y).sum(1) + smooth) / (p.sum(1) + y.sum(1) + smooth)
    return 1.0 - dice.mean()


def seg_loss_single(prob: Tensor, mask: Tensor, gamma: float = 2.0) -> Tensor:
    """AA-CLIP segmentation loss of one level: focal on both channels + Dice on each channel.

    ``focal(prob, mask) + dice(prob[:, 0], 1 - mask) + dice(prob[:, 1], mask)`` with
    ``prob`` ``[B, 2, H, W]`` (channel 0 normal, 1 anomalous; probabilities).
    """
    if prob.dim() != 4 or prob.shape[1] != 2:
        raise ValueError(f"prob must be [B, 2, H, W], got {tuple(prob.shape)}")
    m = _mask_bhw(mask)
    return (
        focal_loss(prob, m, gamma=gamma) + dice_loss(prob[:, 0], 1.0 - m) + dice_loss(prob[:, 1], m)
    )


def segmentation_loss(
    per_level_probs: Sequence[Tensor], mask: Tensor, gamma: float = 2.0
) -> Tensor:
    """Sum of :func:`seg_loss_single` over all levels (all levels get gradients).

    This is the fix of the AA-CLIP stage-1 loop, which overwrote the loss per level so that only
    the last level contributed; stage 2 of the reference already sums.
    """
    if len(per_level_probs) == 0:
        raise ValueError("per_level_probs is empty")
    total = seg_loss_single(per_level_probs[0], mask, gamma=gamma)
    for prob in per_level_probs[1:]:
        total = total + seg_loss_single(prob, mask, gamma=gamma)
    return total


def disentangle_loss(t_normal: Tensor, t_anomalous: Tensor, normalize: bool = True) -> Tensor:
    """Orthogonality loss ``(<T_N, T_A>)^2`` between normal and anomalous text embeddings.

    Args:
        t_normal, t_anomalous: ``[D]`` or ``[B, D]`` (one pair per class / sample).
        normalize: L2-normalise each embedding first (default). In AA-CLIP each class embedding
            is the mean of L2-normalised prompt embeddings, re-normalised after the mean
            (``get_adapted_single_class_text_embedding``); normalising here makes the loss the
            squared cosine similarity whatever the caller passes.

    For ``[B, D]`` inputs the dot products are averaged over ``B`` *before* squaring, exactly as
    the reference ``((T[:, :, 0] * T[:, :, 1]).sum(1).mean()) ** 2``.
    """
    if t_normal.shape != t_anomalous.shape:
        raise ValueError(f"shapes differ: {tuple(t_normal.shape)} vs {tuple(t_anomalous.shape)}")
    if t_normal.dim() not in (1, 2):
        raise ValueError(f"expected [D] or [B, D], got {tuple(t_normal.shape)}")
    if normalize:
        t_normal = F.normalize(t_normal, dim=-1)
        t_anomalous = F.normalize(t_anomalous, dim=-1)
    dots = (t_normal * t_anomalous).sum(-1)
    return dots.mean() ** 2
