"""OpenAI CLIP (transformers ``CLIPModel``) as a frozen multi-layer backbone with text tower."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from anomalens.backbones.hf import (
    CLIP_MEAN,
    CLIP_STD,
    HFViTBackbone,
    as_prompt_list,
    l2_normalize,
    load_pretrained,
)

TEXT_BATCH = 256


class CLIPBackbone(HFViTBackbone):
    """CLIP ViT: patch tokens of chosen blocks, projected CLS embedding, text embeddings.

    ``global_embedding`` = ``visual_projection(post_layernorm(CLS))``, L2-normalised, which is
    exactly CLIP's image embedding. ``project_tokens`` applies the same two maps to patch tokens.
    """

    kind = "clip"
    has_text = True
    num_prefix_tokens = 1  # CLS

    def __init__(
        self,
        model_id: str,
        image_size: int | None = None,
        precision: str = "fp32",
        layers: tuple[int, ...] | None = None,
    ) -> None:
        from transformers import CLIPModel

        model = load_pretrained(CLIPModel, model_id, self.kind)
        vcfg = model.config.vision_config
        super().__init__(
            model_id,
            model,
            vcfg,
            image_size=image_size,
            precision=precision,
            layers=layers,
            family_mean=CLIP_MEAN,
            family_std=CLIP_STD,
            family_size=int(vcfg.image_size),
        )
        self.embed_dim = int(model.config.projection_dim)

    def output_norm(self) -> nn.Module:
        return self.model.vision_model.post_layernorm

    def _blocks(self) -> nn.ModuleList:
        return self.model.vision_model.encoder.layers

    def _vision_forward(self, pixels: torch.Tensor) -> Any:
        # interpolate_pos_encoding is a no-op at the pretrained size
        return self.model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)

    def _global_embedding(self, out: Any) -> torch.Tensor:
        return l2_normalize(self.model.visual_projection(out.pooler_output))

    def project_tokens(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Map patch tokens ``[..., C]`` of any layer into the joint space ``[..., D]``.

        ``visual_projection(post_layernorm(tokens))``: the map CLIP applies to the CLS token,
        applied per patch (as in WinCLIP / APRIL-GAN style methods). L2-normalised by default.
        """
        vision = self.model.vision_model
        with torch.inference_mode(), self.autocast():
            out = self.model.visual_projection(vision.post_layernorm(tokens.float()))
        out = out.float().clone()
        return l2_normalize(out) if normalize else out

    def encode_text(self, prompts: Sequence[str], *, grad: bool = False) -> torch.Tensor:
        """L2-normalised text embeddings ``[P, D]`` (EOS token, text projection)."""
        texts = as_prompt_list(prompts)
        if not texts:
            return torch.empty(0, self.embed_dim)
        tok = self.tokenizer()
        max_len = int(self.model.config.text_config.max_position_embeddings)
        chunks = []
        for start in range(0, len(texts), TEXT_BATCH):
            enc = tok(
                texts[start : start + TEXT_BATCH],
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            with self.run_context(grad), self.autocast():
                out = self.model.text_model(
                    input_ids=enc["input_ids"], attention_mask=enc.get("attention_mask")
                )
                chunks.append(self.model.text_projection(out.pooler_output).float())
        out = l2_normalize(torch.cat(chunks))
        return out if grad else out.clone()
