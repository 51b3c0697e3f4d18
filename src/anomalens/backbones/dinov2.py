"""Meta DINOv2 (with or without registers) as a frozen multi-layer vision-only backbone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from anomalens.backbones.hf import IMAGENET_MEAN, IMAGENET_STD, HFViTBackbone, load_pretrained

DEFAULT_SIZE = 224  # DINOv2 processors centre-crop 224 (position embeddings are for 518)


class DINOv2Backbone(HFViTBackbone):
    """DINOv2 ViT: patch tokens (CLS and register tokens dropped) and the layernormed CLS.

    ``global_embedding`` is the final-layernormed CLS token (``pooler_output``), not normalised.
    Position embeddings are always interpolated to the input size by transformers.
    """

    kind = "dinov2"
    has_text = False

    def __init__(
        self,
        model_id: str,
        image_size: int | None = None,
        precision: str = "fp32",
        layers: tuple[int, ...] | None = None,
    ) -> None:
        from transformers import AutoModel

        model = load_pretrained(AutoModel, model_id, self.kind)
        cfg = model.config
        super().__init__(
            model_id,
            model,
            cfg,
            image_size=image_size,
            precision=precision,
            layers=layers,
            family_mean=IMAGENET_MEAN,
            family_std=IMAGENET_STD,
            family_size=min(DEFAULT_SIZE, int(cfg.image_size)),
        )
        self.num_prefix_tokens = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)  # CLS+regs

    def output_norm(self) -> nn.Module:
        return self.model.layernorm

    def _blocks(self) -> nn.ModuleList:
        return self.model.encoder.layer

    def _vision_forward(self, pixels: torch.Tensor) -> Any:
        return self.model(pixel_values=pixels)

    def _global_embedding(self, out: Any) -> torch.Tensor:
        return out.pooler_output.float()

    def encode_text(self, prompts: Sequence[str], *, grad: bool = False) -> torch.Tensor:
        """DINOv2 has no text tower."""
        raise NotImplementedError(
            f"{self.name} is a vision-only model (DINOv2 has no text tower); use a clip: or "
            "siglip: backbone for text prompts"
        )
