"""Google SigLIP (transformers ``SiglipModel``) as a frozen multi-layer backbone with text tower."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from anomalens.backbones.hf import (
    SIGLIP_MEAN,
    SIGLIP_STD,
    HFViTBackbone,
    as_prompt_list,
    l2_normalize,
    load_pretrained,
)

TEXT_BATCH = 256


class SigLIPBackbone(HFViTBackbone):
    """SigLIP ViT (no CLS token): patch tokens, attention-pooled embedding, text embeddings.

    ``global_embedding`` = the attention-pooling head output (``pooler_output``), L2-normalised
    (mean of the post-layernormed tokens for checkpoints without a head).
    """

    kind = "siglip"
    has_text = True
    num_prefix_tokens = 0

    def __init__(
        self,
        model_id: str,
        image_size: int | None = None,
        precision: str = "fp32",
        layers: tuple[int, ...] | None = None,
    ) -> None:
        from transformers import SiglipModel

        model = load_pretrained(SiglipModel, model_id, self.kind)
        vcfg = model.config.vision_config
        super().__init__(
            model_id,
            model,
            vcfg,
            image_size=image_size,
            precision=precision,
            layers=layers,
            family_mean=SIGLIP_MEAN,
            family_std=SIGLIP_STD,
            family_size=int(vcfg.image_size),
        )
        self.embed_dim = int(model.config.text_config.projection_size)

    def output_norm(self) -> nn.Module:
        return self.model.vision_model.post_layernorm

    def _blocks(self) -> nn.ModuleList:
        return self.model.vision_model.encoder.layers

    def _vision_forward(self, pixels: torch.Tensor) -> Any:
        return self.model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)

    def _global_embedding(self, out: Any) -> torch.Tensor:
        pooled = out.pooler_output
        if pooled is None:  # vision_use_head=False
            pooled = out.last_hidden_state.mean(dim=1)
        return l2_normalize(pooled)

    def project_tokens(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Map patch tokens ``[..., C]`` of any layer into the joint space ``[..., D]``.

        ``post_layernorm`` then the attention-pooling head applied to each token on its own.
        With a single key the head's softmax weight is 1, so this is the head's value path
        (``out_proj(v_proj(x))``) plus its residual MLP: exactly the map that produces the image
        embedding, per patch. ``post_layernorm`` alone would stay in the vision hidden space,
        which the text embeddings are not aligned with. L2-normalised by default.
        """
        vision = self.model.vision_model
        with torch.inference_mode(), self.autocast():
            x = vision.post_layernorm(tokens.float())
            if getattr(vision, "use_head", False):
                x = _head_per_token(vision.head, x)
        out = x.float().clone()
        return l2_normalize(out) if normalize else out

    def encode_text(self, prompts: Sequence[str], *, grad: bool = False) -> torch.Tensor:
        """L2-normalised text embeddings ``[P, D]``.

        Padded to ``max_position_embeddings`` with no attention mask, as SigLIP was trained
        (and as its tokenizer returns by default).
        """
        texts = as_prompt_list(prompts)
        if not texts:
            return torch.empty(0, self.embed_dim)
        tok = self.tokenizer()
        max_len = int(self.model.config.text_config.max_position_embeddings)
        chunks = []
        for start in range(0, len(texts), TEXT_BATCH):
            enc = tok(
                texts[start : start + TEXT_BATCH],
                padding="max_length",
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            with self.run_context(grad), self.autocast():
                out = self.model.text_model(input_ids=enc["input_ids"])
                chunks.append(out.pooler_output.float())
        out = l2_normalize(torch.cat(chunks))
        return out if grad else out.clone()


def _head_per_token(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SigLIP attention-pooling head applied to every token as a length-1 sequence."""
    attn: nn.MultiheadAttention = head.attention
    dim = x.shape[-1]
    w_v = attn.in_proj_weight[2 * dim :]
    b_v = attn.in_proj_bias[2 * dim :] if attn.in_proj_bias is not None else None
    v = nn.functional.linear(x, w_v, b_v)
    h = attn.out_proj(v)
    return h + head.mlp(head.layernorm(h))
