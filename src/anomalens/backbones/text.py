"""Shared base of the transformers ViTs with a text tower (CLIP, SigLIP).

What differs between the families is left to small hooks: the tokenizer padding
(``text_padding``), the pooled text output -> embedding (``_text_embedding``), how window tokens
are built and pooled (``_window_tokens``, ``_window_pool``) and how a patch token is projected
into the joint space (``_project``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomalens.backbones.hf import HFViTBackbone, as_prompt_list, l2_normalize, load_tokenizer

TEXT_BATCH = 256  # prompts per text-tower call
WINDOW_CHUNK = 4096  # window sequences per transformer call


class HFTextViT(HFViTBackbone):
    """A transformers ``*Model`` with ``vision_model``, ``text_model`` and ``logit_scale``.

    ``self.model.vision_model`` must have ``embeddings``, ``encoder`` (with ``layers``) and
    ``post_layernorm``, as CLIP and SigLIP do.
    """

    has_text = True
    supports_windows = True
    #: ``padding`` passed to the tokenizer (True: to the longest prompt of the batch)
    text_padding: bool | str = True
    _tokenizer: Any = None  # loaded on first use

    # -- hooks for subclasses -------------------------------------------------------------
    def _text_embedding(self, enc: Any) -> torch.Tensor:
        """Joint-space text embeddings ``[P, D]`` (not normalised) of tokenized prompts."""
        raise NotImplementedError

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Joint-space map of float32 tokens ``[..., C]`` (not normalised)."""
        raise NotImplementedError

    def _window_tokens(self, emb: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(prefix [B, 1, C] or None, patch tokens [B, N, C])`` from the vision embeddings,
        as the encoder receives them."""
        raise NotImplementedError

    def _window_pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, D]`` pooled embeddings of encoder outputs ``[n, L, C]``, as for the image."""
        raise NotImplementedError

    # -- vision tower ---------------------------------------------------------------------
    def _vision_config(self) -> Any:
        return self.model.config.vision_config

    def output_norm(self) -> nn.Module:
        return self.model.vision_model.post_layernorm

    def _blocks(self) -> nn.ModuleList:
        return self.model.vision_model.encoder.layers

    def _vision_forward(self, pixels: torch.Tensor) -> Any:
        # interpolate_pos_encoding is a no-op at the pretrained size
        return self.model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)

    def project_tokens(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Map patch tokens ``[..., C]`` of any layer into the joint space ``[..., D]`` with the
        map the model applies to its pooled image token (L2-normalised by default)."""
        with torch.inference_mode(), self.autocast():
            out = self._project(tokens.float())
        out = out.float().clone()
        return l2_normalize(out) if normalize else out

    def encode_windows(
        self, pixels: torch.Tensor, indices: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Unit-norm joint-space embeddings ``[B, n_windows, D]`` of patch windows, per scale.

        The tokens of a window (after patch and position embedding) run through the transformer
        alone, ``WINDOW_CHUNK`` sequences per call, and are pooled like the full image (see
        ``_window_tokens`` / ``_window_pool``): a window covering the whole grid gives the image
        embedding. Inference mode, in this backbone's precision.
        """
        vision = self.model.vision_model
        out = []
        with torch.inference_mode(), self.autocast():
            emb = vision.embeddings(pixels.float(), interpolate_pos_encoding=True)
            prefix, patches = self._window_tokens(emb)
            b, _, c = patches.shape
            for idx in indices:
                if idx.ndim != 2:
                    shape = tuple(idx.shape)
                    raise ValueError(f"window indices must be [n_windows, k], got {shape}")
                n_w, k = idx.shape
                seq = patches[:, idx.reshape(-1)].reshape(b * n_w, k, c)
                if prefix is not None:
                    seq = torch.cat([prefix.expand(b, n_w, c).reshape(b * n_w, 1, c), seq], 1)
                pooled = []
                for start in range(0, seq.shape[0], WINDOW_CHUNK):
                    h = vision.encoder(inputs_embeds=seq[start : start + WINDOW_CHUNK])
                    pooled.append(self._window_pool(h.last_hidden_state).float())
                out.append(F.normalize(torch.cat(pooled), dim=-1).reshape(b, n_w, -1).clone())
        return out

    # -- text tower -----------------------------------------------------------------------
    def tokenizer(self) -> Any:
        """The tokenizer saved with the model (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_id, self.kind)
        return self._tokenizer

    def encode_text(self, prompts: Sequence[str], *, grad: bool = False) -> torch.Tensor:
        """L2-normalised text embeddings ``[P, D]``, ``TEXT_BATCH`` prompts per call.

        Prompts are truncated to the text tower's ``max_position_embeddings`` and padded as
        ``text_padding`` says.
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
                padding=self.text_padding,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            with self.run_context(grad), self.autocast():
                chunks.append(self._text_embedding(enc).float())
        out = l2_normalize(torch.cat(chunks))
        return out if grad else out.clone()

    def logit_scale(self) -> float:
        """``exp(model.logit_scale)``, the learned image-text logit scale."""
        return float(self.model.logit_scale.detach().exp())

    def text_dims(self) -> tuple[int, int]:
        """``(hidden_size, num_hidden_layers)`` of the text tower's config."""
        cfg = self.model.config.text_config
        return int(cfg.hidden_size), int(cfg.num_hidden_layers)

    def text_layer_module(self, layer: int) -> nn.Module:
        """Text transformer block ``layer`` (1-based); hooks as in :meth:`layer_module`."""
        blocks = self.model.text_model.encoder.layers
        if not 1 <= layer <= len(blocks):
            raise ValueError(f"text layer {layer} out of range 1..{len(blocks)} for {self.name}")
        return blocks[layer - 1]
