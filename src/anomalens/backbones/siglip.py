"""Google SigLIP (transformers ``SiglipModel``) as a frozen multi-layer backbone with text tower."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anomalens.backbones.hf import SIGLIP_MEAN, SIGLIP_STD, l2_normalize
from anomalens.backbones.text import HFTextViT


class SigLIPBackbone(HFTextViT):
    """SigLIP ViT (no CLS token): patch tokens, attention-pooled embedding, text embeddings.

    ``global_embedding`` = the attention-pooling head output (``pooler_output``), L2-normalised
    (mean of the post-layernormed tokens for checkpoints without a head). Text prompts are
    padded to ``max_position_embeddings`` with no attention mask, as SigLIP was trained (and as
    its tokenizer returns by default).
    """

    kind = "siglip"
    num_prefix_tokens = 0
    family_mean = SIGLIP_MEAN
    family_std = SIGLIP_STD
    text_padding = "max_length"

    def _model_class(self) -> Any:
        from transformers import SiglipModel

        return SiglipModel

    def _configure(self) -> None:
        self.embed_dim = int(self.model.config.text_config.projection_size)

    def logit_scale(self) -> float:
        """``exp(model.logit_scale)``. SigLIP also learned a ``logit_bias`` (its sigmoid loss
        needs it); it is not included: it shifts every logit alike, so it cancels when the
        normal and anomalous logits are compared (softmax over the two, or their difference)."""
        return super().logit_scale()

    def logit_bias(self) -> float | None:
        """``model.logit_bias``: with it, ``sigmoid(logit_scale * cos + logit_bias)`` is the
        model's probability that an image and a prompt match (its training objective)."""
        return float(self.model.logit_bias.detach())

    def _global_embedding(self, out: Any) -> torch.Tensor:
        pooled = out.pooler_output
        if pooled is None:  # vision_use_head=False
            pooled = out.last_hidden_state.mean(dim=1)
        return l2_normalize(pooled)

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``post_layernorm`` then the attention-pooling head applied to each token on its own.

        With a single key the head's softmax weight is 1, so this is the head's value path
        (``out_proj(v_proj(x))``) plus its residual MLP: exactly the map that produces the image
        embedding, per patch. ``post_layernorm`` alone would stay in the vision hidden space,
        which the text embeddings are not aligned with.
        """
        vision = self.model.vision_model
        x = vision.post_layernorm(tokens)
        return _head_per_token(vision.head, x) if vision.use_head else x

    def _text_embedding(self, enc: Any) -> torch.Tensor:
        return self.model.text_model(input_ids=enc["input_ids"]).pooler_output

    def _window_tokens(self, emb: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        return None, emb

    def _window_pool(self, hidden: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        h = vision.post_layernorm(hidden)
        return vision.head(h) if vision.use_head else h.mean(1)


def _head_per_token(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SigLIP attention-pooling head applied to every token as a length-1 sequence."""
    attn: nn.MultiheadAttention = head.attention
    dim = x.shape[-1]
    w_v = attn.in_proj_weight[2 * dim :]
    b_v = attn.in_proj_bias[2 * dim :] if attn.in_proj_bias is not None else None
    v = nn.functional.linear(x, w_v, b_v)
    h = attn.out_proj(v)
    return h + head.mlp(head.layernorm(h))
