"""Meta DINOv2 (with or without registers) as a frozen multi-layer vision-only backbone."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anomalens.backbones.hf import IMAGENET_MEAN, IMAGENET_STD, HFViTBackbone

DEFAULT_SIZE = 224  # DINOv2 processors centre-crop 224 (position embeddings are for 518)


class DINOv2Backbone(HFViTBackbone):
    """DINOv2 ViT: patch tokens (CLS and register tokens dropped) and the layernormed CLS.

    ``global_embedding`` is the final-layernormed CLS token (``pooler_output``), not normalised.
    Position embeddings are always interpolated to the input size by transformers. No text
    tower: the text methods raise ``TextTowerMissingError``.
    """

    kind = "dinov2"
    has_text = False
    family_mean = IMAGENET_MEAN
    family_std = IMAGENET_STD

    def _model_class(self) -> Any:
        from transformers import AutoModel

        return AutoModel

    def _vision_config(self) -> Any:
        return self.model.config

    def _default_size(self) -> int:
        return min(DEFAULT_SIZE, int(self.model.config.image_size))

    def _configure(self) -> None:
        cfg = self.model.config
        self.num_prefix_tokens = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)  # CLS+regs

    def output_norm(self) -> nn.Module:
        return self.model.layernorm

    def _blocks(self) -> nn.ModuleList:
        return self.model.encoder.layer

    def _vision_forward(self, pixels: torch.Tensor) -> Any:
        return self.model(pixel_values=pixels)

    def _global_embedding(self, out: Any) -> torch.Tensor:
        return out.pooler_output.float()
