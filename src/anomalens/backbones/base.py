"""The backbone contract: frozen feature extractors behind one interface.

A backbone turns RGB images (``uint8`` arrays ``H x W x 3``) into multi-layer patch tokens.
It owns its preprocessing (size, mean, std) and its precision (fp32 or bf16 autocast on CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Features:
    """Patch tokens of one batch.

    tokens: one tensor ``[B, N_l, C_l]`` per requested layer, float32, row-major over the grid.
    grids: ``(h, w)`` of each layer, ``h * w == N_l`` (ViTs share one grid; CNN stages differ).
    global_embedding: ``[B, D]`` image embedding (in the joint image-text space when the model
        has a text tower), or None.
    """

    tokens: list[torch.Tensor]
    grids: list[tuple[int, int]]
    global_embedding: torch.Tensor | None = None

    def as_map(self, i: int) -> torch.Tensor:
        """Layer ``i`` as a feature map ``[B, C, h, w]``."""
        t = self.tokens[i]
        h, w = self.grids[i]
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


class Backbone(nn.Module):
    """Base class: subclasses set the attributes below and implement ``encode_image``."""

    name: str = "backbone"
    image_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    default_layers: tuple[int, ...] = ()
    num_layers: int = 0
    has_text: bool = False
    precision: str = "fp32"  # "fp32" or "bf16"

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Resize RGB uint8 images to ``image_size`` (square, no crop) and normalise.

        Returns ``[B, 3, S, S]`` float32.
        """
        import cv2

        s = self.image_size
        batch = np.empty((len(images), s, s, 3), dtype=np.float32)
        for k, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(
                    f"expected an RGB uint8 image H x W x 3, got shape {img.shape} {img.dtype}"
                )
            interp = cv2.INTER_AREA if min(img.shape[:2]) > s else cv2.INTER_LINEAR
            batch[k] = cv2.resize(img, (s, s), interpolation=interp)
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def autocast(self):
        """Context manager applying this backbone's precision on CPU."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def encode_image(
        self,
        pixels: torch.Tensor,
        layers: Sequence[int] | None = None,
        *,
        with_global: bool = True,
        grad: bool = False,
    ) -> Features:
        """Patch tokens of ``pixels`` (output of ``preprocess``) at ``layers``.

        ``with_global=False`` may skip work only the global embedding needs. ``grad=True`` runs
        with autograd on (the weights stay frozen) so that trainable modules hooked into the
        network (see :meth:`layer_module`) receive gradients; the default runs in inference mode.
        """
        raise NotImplementedError

    def encode_text(self, prompts: Sequence[str], *, grad: bool = False) -> torch.Tensor:
        """Normalised text embeddings ``[P, D]`` in the joint space (``grad`` as in
        :meth:`encode_image`)."""
        raise NotImplementedError(f"backbone {self.name!r} has no text tower")

    def layer_module(self, layer: int) -> nn.Module:
        """The module whose output is layer ``layer`` (1-based); forward hooks on it can read or
        replace that layer's output (tokens ``[B, L, C]`` or maps ``[B, C, h, w]``)."""
        raise NotImplementedError(f"backbone {self.name!r} does not expose its layers")

    def output_norm(self) -> nn.Module:
        """The frozen map the model applies to its last hidden state before any projection
        (a ViT's final LayerNorm); identity for CNNs."""
        return nn.Identity()

    def run_context(self, grad: bool = False):
        """Inference mode, or autograd on when ``grad`` (see :meth:`encode_image`)."""
        return contextlib.nullcontext() if grad else torch.inference_mode()

    def describe(self) -> dict:
        """JSON-serialisable description used in configs and reports."""
        return {
            "name": self.name,
            "image_size": self.image_size,
            "precision": self.precision,
            "has_text": self.has_text,
        }
