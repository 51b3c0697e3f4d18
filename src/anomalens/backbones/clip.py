"""OpenAI CLIP (transformers ``CLIPModel``) as a frozen multi-layer backbone with text tower."""

from __future__ import annotations

from typing import Any

import torch

from anomalens.backbones.hf import CLIP_MEAN, CLIP_STD, l2_normalize
from anomalens.backbones.text import HFTextViT


class CLIPBackbone(HFTextViT):
    """CLIP ViT: patch tokens of chosen blocks, projected CLS embedding, text embeddings.

    ``global_embedding`` = ``visual_projection(post_layernorm(CLS))``, L2-normalised, which is
    exactly CLIP's image embedding. ``project_tokens`` applies the same two maps to patch tokens
    (as in WinCLIP / APRIL-GAN style methods). Text: EOS token and text projection, prompts
    padded to the longest of the batch with an attention mask.
    """

    kind = "clip"
    num_prefix_tokens = 1  # CLS
    family_mean = CLIP_MEAN
    family_std = CLIP_STD
    text_padding = True

    def _model_class(self) -> Any:
        from transformers import CLIPModel

        return CLIPModel

    def _configure(self) -> None:
        self.embed_dim = int(self.model.config.projection_dim)

    def _global_embedding(self, out: Any) -> torch.Tensor:
        return l2_normalize(self.model.visual_projection(out.pooler_output))

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.visual_projection(self.model.vision_model.post_layernorm(tokens))

    def _text_embedding(self, enc: Any) -> torch.Tensor:
        out = self.model.text_model(
            input_ids=enc["input_ids"], attention_mask=enc.get("attention_mask")
        )
        return self.model.text_projection(out.pooler_output)

    def _window_tokens(self, emb: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        emb = self.model.vision_model.pre_layrnorm(emb)
        return emb[:, :1], emb[:, 1:]

    def _window_pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.visual_projection(self.model.vision_model.post_layernorm(hidden[:, 0]))
