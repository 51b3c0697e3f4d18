"""AnomalyVFM v1.1's network: a LoRA-adapted frozen backbone and a per-patch anomaly head.

:class:`VFMNetwork` holds the backbone without registering it (as AA-CLIP's ``AdaptedModel``):
``state_dict()`` is only the trained tensors (the LoRA factors under ``lora.*`` and the head), and
``train()`` never switches the backbone out of eval mode.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomalens.backbones.base import Backbone
from anomalens.methods.base import DetectorConfig, check_at_least
from anomalens.methods.common import pool_patches
from anomalens.methods.vfm.data import STAGES, check_stages
from anomalens.methods.vfm.lora import inject_lora, lora_named_parameters

#: taps of CNN backbones when ``layers`` is None (stride 4, 8, 16 on the stride-8 grid)
CNN_LAYERS = (2, 3, 4)
CNN_GRID_LAYER = 3


@dataclass
class VFMConfig(DetectorConfig):
    """Parameters of :class:`~anomalens.methods.vfm.VFM` (stored in ``config.json``); the shared
    fields are described in :class:`~anomalens.methods.base.DetectorConfig` (``seed``: LoRA and
    head initialisation, data order, synthetic anomalies, validation split).

    Model: ``layers`` feature taps (None: the last block of a ViT, final-normed; stages 2-4 on
    the stride-8 grid of a CNN); ``lora_rank`` / ``lora_alpha`` (16 / 32, the seed's);
    ``lora_layers`` adapted layers 1..K (None: up to the deepest tap); ``head_hidden`` widths of
    the per-patch head (``D -> 512 -> 256 -> 1``).
    Training: ``epochs`` (5 to 10 in the seed), ``train_batch_size``, AdamW ``lr`` /
    ``weight_decay``, ``temperature`` of the confidence loss, ``stages`` of synthetic anomalies
    and the ``anomaly_probability`` of a training image getting one, ``val_fraction`` of the good
    images held out (fusion choice and thresholds), ``checkpoint_every`` optimizer steps.
    Scoring: ``position_dim`` random channels of the per-position Gaussians, their ``ridge``,
    ``sigma`` map smoothing in pixels at ``image_size``.
    """

    backbone: str = "dinov2:facebook/dinov2-base"
    layers: tuple[int, ...] | None = None
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_layers: int | None = None
    head_hidden: tuple[int, ...] = (512, 256)
    epochs: int = 5
    train_batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.01
    temperature: float = 0.5
    stages: tuple[str, ...] = STAGES
    anomaly_probability: float = 0.5
    val_fraction: float = 0.2
    checkpoint_every: int = 50
    position_dim: int | None = 100
    ridge: float = 0.01
    sigma: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layers = tuple(int(v) for v in self.layers) if self.layers is not None else None
        self.head_hidden = tuple(int(v) for v in self.head_hidden)
        self.stages = check_stages(self.stages)
        check_at_least(self, 1, "lora_rank", "lora_layers", "epochs", "train_batch_size")
        check_at_least(self, 1, "checkpoint_every", "position_dim")
        if any(h < 1 for h in self.head_hidden):
            raise ValueError(f"head_hidden widths must be >= 1, got {self.head_hidden}")
        if self.lora_alpha <= 0 or self.lr <= 0 or self.temperature <= 0 or self.ridge <= 0:
            raise ValueError("lora_alpha, lr, temperature and ridge must be > 0")
        if self.weight_decay < 0 or self.sigma < 0:
            raise ValueError("weight_decay and sigma must be >= 0")
        if not 0.0 < self.anomaly_probability <= 1.0:
            raise ValueError("anomaly_probability must be in (0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")


class AnomalyHead(nn.Module):
    """Per-patch MLP ``D -> hidden... -> 1`` (GELU between layers): anomaly logits."""

    def __init__(self, dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        widths = (dim, *hidden)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, feats: Tensor) -> Tensor:
        """``[..., D]`` -> logits ``[...]``."""
        return self.mlp(feats)[..., 0]


class VFMNetwork(nn.Module):
    """LoRA adapters inside a frozen backbone plus the anomaly head (see the module docstring)."""

    def __init__(self, backbone: Backbone, config: VFMConfig) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        c = config
        cnn = backbone.architecture == "cnn"
        default = CNN_LAYERS if cnn else (backbone.num_layers,)
        self.layers = backbone.resolve_layers(c.layers if c.layers is not None else default)
        self.grid_index = (
            self.layers.index(CNN_GRID_LAYER) if CNN_GRID_LAYER in self.layers and cnn else None
        )
        self.cnn = cnn
        depth = max(self.layers) if c.lora_layers is None else c.lora_layers
        if depth > backbone.num_layers:
            raise ValueError(f"lora_layers={depth} exceeds the {backbone.num_layers} layers")
        self.adapted_layers = tuple(range(1, depth + 1))
        with torch.no_grad():
            probe = self._embed(backbone.preprocess([_blank(backbone.image_size)]), grad=False)
        self.dim = int(probe.shape[-1])
        self.grid = (int(probe.shape[1]), int(probe.shape[2]))
        modules = inject_lora(backbone, self.adapted_layers, c.lora_rank, c.lora_alpha, c.seed)
        object.__setattr__(self, "adapted_modules", modules)
        with torch.random.fork_rng():
            torch.manual_seed(c.seed)
            self.head = AnomalyHead(self.dim, c.head_hidden)

    # -- parameters -----------------------------------------------------------------------
    def lora_tensors(self) -> dict[str, nn.Parameter]:
        """``{"<i>.<module>.lora_A.default.weight": parameter, ...}``."""
        return lora_named_parameters(self.adapted_modules)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The LoRA factors and the head: the only tensors training changes."""
        return [*self.lora_tensors().values(), *self.head.parameters()]

    def state_dict(self, *args, **kwargs):
        out = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        out |= {f"lora.{k}": v.detach() for k, v in self.lora_tensors().items()}
        return out

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        lora = self.lora_tensors()
        expected = {f"head.{k}" for k in self.head.state_dict()} | {f"lora.{k}" for k in lora}
        if set(state) != expected:
            missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
            raise RuntimeError(f"missing tensors {missing[:3]}, unexpected {unknown[:3]}")
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        with torch.no_grad():
            for k, p in lora.items():
                value = state[f"lora.{k}"]
                if value.shape != p.shape:
                    raise RuntimeError(f"lora.{k}: shape {tuple(value.shape)} != {tuple(p.shape)}")
                p.copy_(value)
        return None

    # -- features -------------------------------------------------------------------------
    def _embed(self, pixels: Tensor, grad: bool) -> Tensor:
        bb = self.backbone
        feats = bb.encode_image(pixels, self.layers, with_global=False, grad=grad)
        if self.cnn:
            return pool_patches(feats, 1, self.grid_index)
        norm = bb.output_norm()
        context = contextlib.nullcontext() if grad else torch.no_grad()
        with context, bb.autocast():
            tokens = torch.cat([norm(t) for t in feats.tokens], dim=-1).float()
        h, w = feats.grids[0]
        return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])

    def features(self, pixels: Tensor, grad: bool = False) -> Tensor:
        """Adapted patch features ``[B, h, w, D]`` (float32)."""
        return self._embed(pixels, grad)

    def logits(self, feats: Tensor) -> Tensor:
        """Head logits ``[B, h, w]`` (float32) of patch features."""
        with self.backbone.autocast():
            return self.head(feats).float()


def _blank(size: int):
    import numpy as np

    return np.zeros((size, size, 3), dtype=np.uint8)


def confidence_loss(
    logits: Tensor, target: Tensor, temperature: float, gamma: float = 2.0
) -> Tensor:
    """Confidence loss of patch logits ``[B, h, w]`` against soft targets in [0, 1] (the share
    of each patch a synthetic anomaly covers).

    ``p = sigmoid(logits / temperature)``; per patch the binary cross-entropy times
    ``(1 - p_t) ** gamma`` with ``p_t = y p + (1 - y)(1 - p)`` the confidence in the target (a
    focal weight: confidently right patches count little); anomalous (``y > 0``) and normal
    patches each weigh half of the loss when both occur.
    """
    z = logits.float() / temperature
    y = target.float()
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    p = torch.sigmoid(z)
    p_t = y * p + (1 - y) * (1 - p)
    per_patch = (1 - p_t).pow(gamma) * bce
    pos = y > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return per_patch.mean()
    return 0.5 * per_patch[pos].mean() + 0.5 * per_patch[~pos].mean()


def patch_targets(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Share of each patch covered by the masks: ``[B, H, W]`` {0, 1} -> ``[B, h, w]``."""
    return F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0]


__all__ = [
    "AnomalyHead",
    "VFMConfig",
    "VFMNetwork",
    "confidence_loss",
    "patch_targets",
]
