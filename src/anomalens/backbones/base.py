"""The backbone contract: frozen feature extractors behind one interface.

A backbone turns RGB images (``uint8`` arrays ``H x W x 3``) into multi-layer patch tokens.
It owns its preprocessing (size, mean, std) and its precision (fp32 or bf16 autocast on CPU).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from anomalens.data.transforms import resize_square
from anomalens.errors import TextTowerMissingError, check_choice

#: Precisions: ``auto`` (bf16 where the CPU computes it natively, AVX512-BF16 or AMX; else
#: fp32, since emulated bf16 is many times slower), float32, or bfloat16 autocast on CPU.
PRECISIONS = ("auto", "fp32", "bf16")
#: Environment variable that fixes what ``auto`` means (``fp32`` or ``bf16``) on every machine,
#: e.g. for numbers that must not depend on the CPU (the test suite sets ``fp32``).
AUTO_PRECISION_ENV = "ANOMALENS_AUTO_PRECISION"


def check_precision(precision: str, name: str = "precision") -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise ValueError."""
    return check_choice(precision, PRECISIONS, name)


def resolve_precision(precision: str, name: str = "precision") -> str:
    """``fp32`` or ``bf16`` for a :data:`PRECISIONS` value (``auto``: decided by the CPU, or
    by the :data:`AUTO_PRECISION_ENV` environment variable when it is set)."""
    from anomalens.runtime import native_bf16

    if check_precision(precision, name) != "auto":
        return precision
    forced = os.environ.get(AUTO_PRECISION_ENV, "").strip()
    if forced:
        return check_choice(forced, PRECISIONS[1:], AUTO_PRECISION_ENV)
    return "bf16" if native_bf16() else "fp32"


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
    """Base class of every backbone: the whole contract methods may rely on.

    Methods use only what is declared here (never the wrapped model's internals, never
    ``hasattr`` probes). Subclasses set the attributes and implement ``encode_image``,
    ``resolve_layers``/``grid`` where the defaults do not fit, and the text / window parts when
    they have a text tower. ``encode_image`` checks its input and resolves the taps, then
    calls the subclass's ``_encode``.

    Attributes:
        kind: the family (``efficientnet``, ``clip``, ``siglip``, ``dinov2``).
        architecture: ``cnn`` (stages of decreasing resolution) or ``vit`` (one token grid).
        name: the spec the backbone was built from.
        image_size, mean, std: preprocessing (square input side, normalisation).
        num_layers: taps ``1..num_layers`` (CNN stages, ViT blocks).
        default_layers: taps used when a method passes none.
        feature_levels: shallow-to-deep taps for multi-level methods (AA-CLIP).
        has_text: a text tower exists (``encode_text``, ``project_tokens``, ``logit_scale``,
            ``text_dims``, ``text_layer_module``).
        embed_dim: size of the joint image-text space (None without a text tower).
        supports_windows: ``encode_windows`` is implemented (CLIP, SigLIP).
        precision: ``fp32`` or ``bf16`` (autocast on CPU).
    """

    kind: str = "backbone"
    architecture: str = "cnn"
    name: str = "backbone"
    image_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    default_layers: tuple[int, ...] = ()
    feature_levels: tuple[int, ...] = ()
    num_layers: int = 0
    has_text: bool = False
    embed_dim: int | None = None
    supports_windows: bool = False
    precision: str = "fp32"
    #: what a tap is, in error messages ("stages", "blocks")
    layer_unit: str = "layers"

    # -- images ---------------------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Resize RGB uint8 images to ``image_size`` (square, no crop) and normalise.

        Returns ``[B, 3, S, S]`` float32.
        """
        s = self.image_size
        batch = np.empty((len(images), s, s, 3), dtype=np.float32)
        for k, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(
                    f"expected an RGB uint8 image H x W x 3, got shape {img.shape} {img.dtype}"
                )
            batch[k] = resize_square(img, s)
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def autocast(self):
        """Context manager applying this backbone's precision on CPU."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def run_context(self, grad: bool = False):
        """Inference mode, or autograd on when ``grad`` (see :meth:`encode_image`)."""
        return contextlib.nullcontext() if grad else torch.inference_mode()

    def resolve_layers(self, layers: Sequence[int] | int) -> tuple[int, ...]:
        """1-based taps; negative ones count from the end (``-1`` = the last layer).

        Raises ValueError for taps out of range or an empty list.
        """
        if isinstance(layers, int):
            layers = (layers,)
        out = []
        for layer in layers:
            idx = int(layer)
            idx = self.num_layers + 1 + idx if idx < 0 else idx
            if not 1 <= idx <= self.num_layers:
                raise ValueError(
                    f"layer {layer} out of range for {self.name} with {self.num_layers} "
                    f"{self.layer_unit} (use 1..{self.num_layers} or -{self.num_layers}..-1)"
                )
            out.append(idx)
        if not out:
            raise ValueError("at least one layer is required")
        return tuple(out)

    def grid(self, layer: int | None = None, image_size: int | None = None) -> tuple[int, int]:
        """Token grid ``(h, w)`` of tap ``layer`` (None: the last default tap) for a square
        input of ``image_size`` (None: ``self.image_size``)."""
        raise NotImplementedError

    def encode_image(
        self,
        pixels: torch.Tensor,
        layers: Sequence[int] | None = None,
        *,
        with_global: bool = True,
        grad: bool = False,
    ) -> Features:
        """Patch tokens of ``pixels`` (output of ``preprocess``) at ``layers``.

        ``layers`` go through :meth:`resolve_layers` (None: ``default_layers``).
        ``with_global=False`` may skip work only the global embedding needs (ViTs skip the
        blocks after the deepest requested layer). ``grad=True`` runs with autograd on (the
        weights stay frozen) so that trainable modules hooked into the network (see
        :meth:`layer_module`) receive gradients; the default runs in inference mode.
        """
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels [B, 3, H, W], got {tuple(pixels.shape)}")
        taps = self.resolve_layers(layers) if layers is not None else self.default_layers
        return self._encode(pixels, taps, with_global=with_global, grad=grad)

    def _encode(
        self, pixels: torch.Tensor, layers: tuple[int, ...], *, with_global: bool, grad: bool
    ) -> Features:
        """``encode_image`` once the input is checked and ``layers`` resolved (subclasses)."""
        raise NotImplementedError

    def layer_module(self, layer: int) -> nn.Module:
        """The module whose output is layer ``layer`` (1-based); forward hooks on it can read or
        replace that layer's output (tokens ``[B, L, C]`` or maps ``[B, C, h, w]``)."""
        raise NotImplementedError(f"backbone {self.name!r} does not expose its layers")

    def output_norm(self) -> nn.Module:
        """The frozen map the model applies to its last hidden state before any projection
        (a ViT's final LayerNorm); identity for CNNs."""
        return nn.Identity()

    # -- text (has_text) ------------------------------------------------------------------
    def _no_text(self) -> TextTowerMissingError:
        return TextTowerMissingError(
            f"backbone {self.name!r} has no text tower (vision-only); use a clip: or siglip: "
            "backbone for text prompts"
        )

    def encode_text(self, prompts: Sequence[str], *, grad: bool = False) -> torch.Tensor:
        """Normalised text embeddings ``[P, D]`` in the joint space (``grad`` as in
        :meth:`encode_image`)."""
        raise self._no_text()

    def project_tokens(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Map patch tokens ``[..., C]`` of any layer into the joint space ``[..., D]`` with the
        map the model applies to its pooled image token (L2-normalised by default)."""
        raise self._no_text()

    def logit_scale(self) -> float:
        """The model's learned image-text logit scale (``exp(logit_scale)``)."""
        raise self._no_text()

    def logit_bias(self) -> float | None:
        """The learned bias of a sigmoid image-text loss (SigLIP: ``sigmoid(scale * cos + bias)``
        is the probability that an image and a text match); None for softmax-trained models
        (CLIP), whose logits are only read against each other."""
        if not self.has_text:
            raise self._no_text()
        return None

    def text_dims(self) -> tuple[int, int]:
        """``(hidden width, number of blocks)`` of the text tower."""
        raise self._no_text()

    def text_layer_module(self, layer: int) -> nn.Module:
        """Text transformer block ``layer`` (1-based); hooks as in :meth:`layer_module`."""
        raise self._no_text()

    def encode_windows(
        self, pixels: torch.Tensor, indices: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Unit-norm joint-space embeddings ``[B, n_windows, D]`` of patch windows, per scale.

        ``indices[s]`` is ``[n_windows, k]`` row-major patch indices of each window of scale
        ``s``; the window's tokens run through the transformer alone and are pooled as the
        whole image is (a window covering the whole grid gives the image embedding).
        """
        raise NotImplementedError(
            f"window embeddings need a CLIP or SigLIP backbone, got {self.name!r}"
        )

    def describe(self) -> dict:
        """JSON-serialisable description used in configs and reports."""
        return {
            "name": self.name,
            "kind": self.kind,
            "image_size": self.image_size,
            "precision": self.precision,
            "has_text": self.has_text,
        }
