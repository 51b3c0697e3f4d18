"""AA-CLIP / AA-SigLIP's trainable modules around a frozen backbone, and their config.

See :mod:`anomalens.methods.aaclip` for the method. :class:`AdaptedModel` holds the image and text
adapters, the per-level projections and the anchors; it computes adapted features, anchors and
anomaly maps. Training is in :mod:`anomalens.methods.aaclip.train`, the detector in
:mod:`anomalens.methods.aaclip.detector`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomalens import distributed
from anomalens.backbones.base import Backbone
from anomalens.methods.aaclip.parts import Projection, ResidualAdapter, ResidualProjection
from anomalens.methods.base import DetectorConfig, check_at_least
from anomalens.postprocess import gaussian_blur
from anomalens.prompts import build_prompts, check_ensembles

ANCHOR_SOURCES = ("text", "learned", "centroid")
IMAGE_SCORES = ("det", "max", "fused")
#: anchor-space size for ``learned`` / ``centroid`` anchors when ``embed_dim`` is None
DEFAULT_EMBED_DIM = 256
#: text layers with adapters when ``text_adapt_layers`` is None (K_T of AA-CLIP)
TEXT_ADAPT_LAYERS = 3
#: momentum of the running centroid during training
CENTROID_MOMENTUM = 0.9


@dataclass
class AACLIPConfig(DetectorConfig):
    """Parameters of :class:`~anomalens.methods.aaclip.AACLIP` (stored in ``config.json``);
    the shared fields are described in :class:`~anomalens.methods.base.DetectorConfig` (``shots``:
    good images used by ``fit``; ``seed``: initialisation of the trained modules).

    anchors: ``text``, ``learned`` or ``centroid``; class_name: object word of the prompts
    (``text`` anchors); prompts: prompt ensembles of :mod:`anomalens.prompts`; levels: backbone
    layers whose tokens are scored (None: the backbone's ``feature_levels``, the quarters of a
    ViT's depth, EfficientNet stages 2-5); adapt_layers: image adapters after layers 1..K (None:
    a quarter of the depth); text_adapt_layers: text adapters after text layers 1..K (None: 3,
    or all of a shallower text tower); adapter_weight / text_adapter_weight: weight of the
    adapted branch (0.1); embed_dim: anchor space size (None: the joint space for ``text``, 256
    otherwise); logit_scale: cosine scale before the softmax (100 as CLIP); sigma: map blur in
    patches; image_score: ``det``, ``max`` or ``fused``; refit_centroid: recompute the normal
    centroid from the good images given to ``fit``.
    """

    backbone: str = "clip:openai/clip-vit-large-patch14-336"
    anchors: str = "text"
    class_name: str = "object"
    prompts: tuple[str, ...] = ("aaclip",)
    levels: tuple[int, ...] | None = None
    adapt_layers: int | None = None
    text_adapt_layers: int | None = None
    adapter_weight: float = 0.1
    text_adapter_weight: float = 0.1
    embed_dim: int | None = None
    logit_scale: float = 100.0
    sigma: float = 1.0
    image_score: str = "fused"
    refit_centroid: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.prompts = check_ensembles(self.prompts)
        if self.levels is not None:
            self.levels = tuple(int(v) for v in self.levels)
        if self.anchors not in ANCHOR_SOURCES:
            raise ValueError(f"anchors must be one of {ANCHOR_SOURCES}, got {self.anchors!r}")
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {IMAGE_SCORES}, got {self.image_score!r}")
        check_at_least(self, 1, "adapt_layers", "embed_dim", "text_adapt_layers")
        if self.logit_scale <= 0 or self.sigma < 0:
            raise ValueError("logit_scale must be > 0 and sigma >= 0")


@dataclass
class ImageFeatures:
    """Adapted image features of a batch: per level L2-normalised tokens ``[B, N_l, D]`` with
    their grids, and the detection embedding ``[B, D]``."""

    levels: list[Tensor]
    grids: list[tuple[int, int]]
    det: Tensor


def _replace_output(adapter: nn.Module):
    """Forward hook replacing a layer's output by ``adapter(output)`` (channels-last for maps)."""

    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        x = output[0] if isinstance(output, tuple | list) else output
        channels_last = x.dim() == 4  # CNN map [B, C, h, w]
        y = adapter(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if channels_last else adapter(x)
        return (y, *output[1:]) if isinstance(output, tuple | list) else y

    return hook


@contextlib.contextmanager
def hooked(pairs: Iterable[tuple[nn.Module, nn.Module]]) -> Iterator[None]:
    """Install ``(layer, adapter)`` output-replacing hooks for the duration of the block."""
    handles = [layer.register_forward_hook(_replace_output(a)) for layer, a in pairs]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def similarity_logits(tokens: Tensor, anchors: Tensor, scale: float) -> Tensor:
    """``scale * cos`` of tokens ``[B, N, D]`` to anchors ``[2, D]`` or ``[B, 2, D]`` ->
    ``[B, 2, N]`` (tokens and anchors already L2-normalised)."""
    if anchors.dim() == 2:
        return scale * torch.einsum("bnd,kd->bkn", tokens, anchors)
    return scale * torch.einsum("bnd,bkd->bkn", tokens, anchors)


def grid_maps(logits: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, 2, N]`` -> ``[B, 2, h, w]``."""
    return logits.reshape(logits.shape[0], logits.shape[1], grid[0], grid[1])


class AdaptedModel(nn.Module):
    """The trainable modules of AA-CLIP around a frozen backbone.

    The backbone is held but not registered as a sub-module: ``state_dict()`` holds only the
    trained tensors (adapters, projections, learned anchors, centroid), and ``train()`` never
    switches the backbone out of eval mode.
    """

    def __init__(self, backbone: Backbone, config: AACLIPConfig) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        c = config
        self.anchor_source = c.anchors
        self.logit_scale = float(c.logit_scale)
        if c.anchors == "text" and not backbone.has_text:
            raise ValueError(
                f"anchors='text' needs a backbone with a text tower (clip: or siglip:); "
                f"{backbone.name} has none: use anchors='learned' or 'centroid'"
            )
        depth = int(backbone.num_layers)
        self.levels = backbone.resolve_layers(
            c.levels if c.levels is not None else backbone.feature_levels
        )
        k = c.adapt_layers if c.adapt_layers is not None else max(1, round(depth / 4))
        if k > depth:
            raise ValueError(f"adapt_layers={k} exceeds the {depth} layers of {backbone.name}")
        self.adapt_layers = tuple(range(1, k + 1))
        dims = self._layer_dims(backbone, sorted(set(self.levels) | set(self.adapt_layers)))
        if c.anchors == "text":
            dim = int(backbone.embed_dim)
            if c.embed_dim is not None and c.embed_dim != dim:
                raise ValueError(
                    f"text anchors live in the {dim}-d joint space; embed_dim={c.embed_dim}"
                )
        else:
            dim = c.embed_dim or DEFAULT_EMBED_DIM
        self.embed_dim = dim
        with torch.random.fork_rng():
            torch.manual_seed(c.seed)
            self.image_adapters = nn.ModuleList(
                ResidualAdapter(dims[layer], alpha=c.adapter_weight) for layer in self.adapt_layers
            )
            self.seg_proj = nn.ModuleList(Projection(dims[layer], dim) for layer in self.levels)
            self.det_proj = Projection(dims[self.levels[-1]], dim)
            if c.anchors == "text":
                width, n_text = backbone.text_dims()
                k_text = c.text_adapt_layers or min(TEXT_ADAPT_LAYERS, n_text)
                if k_text > n_text:
                    raise ValueError(f"text_adapt_layers={k_text} exceeds the {n_text} text layers")
                self.text_adapters = nn.ModuleList(
                    ResidualAdapter(width, alpha=c.text_adapter_weight) for _ in range(k_text)
                )
                self.text_proj = ResidualProjection(dim, alpha=c.text_adapter_weight)
            elif c.anchors == "learned":
                self.anchor_vectors = nn.Parameter(F.normalize(torch.randn(2, dim), dim=-1))
            else:
                self.anomalous_anchor = nn.Parameter(F.normalize(torch.randn(dim), dim=0))
                self.register_buffer("normal_centroid", torch.zeros(dim))

    # -- structure --------------------------------------------------------------------------
    @staticmethod
    def _layer_dims(backbone: Backbone, layers: Sequence[int]) -> dict[int, int]:
        """Channel count of each layer, read from one forward pass on a blank image."""
        blank = np.zeros((backbone.image_size, backbone.image_size, 3), dtype=np.uint8)
        feats = backbone.encode_image(backbone.preprocess([blank]), list(layers), with_global=False)
        return {layer: int(t.shape[-1]) for layer, t in zip(layers, feats.tokens, strict=True)}

    def text_parameters(self) -> list[nn.Parameter]:
        """Parameters trained in stage 1 (text adapters and projection)."""
        if self.anchor_source != "text":
            return []
        return [*self.text_adapters.parameters(), *self.text_proj.parameters()]

    def image_parameters(self) -> list[nn.Parameter]:
        """Parameters trained in stage 2 (image adapters, projections, learned anchors)."""
        params = [
            *self.image_adapters.parameters(),
            *self.seg_proj.parameters(),
            *self.det_proj.parameters(),
        ]
        if self.anchor_source == "learned":
            params.append(self.anchor_vectors)
        elif self.anchor_source == "centroid":
            params.append(self.anomalous_anchor)
        return params

    def _image_hooks(self):
        bb = self.backbone
        return hooked(
            (bb.layer_module(layer), a)
            for layer, a in zip(self.adapt_layers, self.image_adapters, strict=True)
        )

    def _text_hooks(self):
        bb = self.backbone
        return hooked((bb.text_layer_module(i + 1), a) for i, a in enumerate(self.text_adapters))

    # -- features ---------------------------------------------------------------------------
    def image_features(self, pixels: Tensor, grad: bool = False) -> ImageFeatures:
        """Adapted, projected, L2-normalised tokens of every level and the detection token."""
        bb = self.backbone
        with self._image_hooks():
            feats = bb.encode_image(pixels, self.levels, with_global=False, grad=grad)
        norm = bb.output_norm()
        context = contextlib.nullcontext() if grad else torch.no_grad()
        with context, bb.autocast():
            levels = [
                F.normalize(proj(norm(t)).float(), dim=-1)
                for proj, t in zip(self.seg_proj, feats.tokens, strict=True)
            ]
            det = F.normalize(self.det_proj(norm(feats.tokens[-1])).float(), dim=-1).mean(1)
        return ImageFeatures(levels=levels, grids=list(feats.grids), det=det)

    def frozen_features(self, pixels: Tensor) -> list[Tensor]:
        """Stage-1 image side (no adapters): per level the tokens mapped into the joint space
        plus the normalised image embedding, L2-normalised (as AA-CLIP's stage 1)."""
        bb = self.backbone
        feats = bb.encode_image(pixels, self.levels, with_global=True)
        glob = F.normalize(feats.global_embedding.float(), dim=-1)[:, None]
        return [F.normalize(bb.project_tokens(t) + glob, dim=-1) for t in feats.tokens]

    def text_anchor_pair(
        self,
        class_name: str,
        ensembles: Sequence[str],
        grad: bool = False,
        sample: int | None = None,
        generator: np.random.Generator | None = None,
    ) -> Tensor:
        """``[2, D]`` anchors from the adapted text tower: the normalised means of the normalised
        normal / anomalous prompt embeddings. ``sample`` draws that many prompts per side (a
        cheaper stochastic estimate for training steps)."""
        normal, anomalous = build_prompts(class_name, ensembles)
        if sample is not None:
            rng = generator if generator is not None else np.random.default_rng(0)
            normal = _draw(normal, sample, rng)
            anomalous = _draw(anomalous, sample, rng)
        bb = self.backbone
        with self._text_hooks():
            emb = bb.encode_text(normal + anomalous, grad=grad)
        context = contextlib.nullcontext() if grad else torch.no_grad()
        with context:
            emb = F.normalize(self.text_proj(emb.float()), dim=-1)
            pair = torch.stack([emb[: len(normal)].mean(0), emb[len(normal) :].mean(0)])
            return F.normalize(pair, dim=-1)

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """Unit-norm embeddings ``[P, D]`` of prompts through the adapted text tower and the
        text projection (``text`` anchors; used by the diagnostics' per-word table)."""
        if self.anchor_source != "text":
            raise ValueError("only text anchors encode prompts")
        with self._text_hooks():
            emb = self.backbone.encode_text(list(prompts))
        with torch.no_grad():
            return F.normalize(self.text_proj(emb.float()), dim=-1)

    def fixed_anchor_pair(self) -> Tensor:
        """``[2, D]`` anchors of ``learned`` / ``centroid`` sources (differentiable)."""
        if self.anchor_source == "learned":
            return F.normalize(self.anchor_vectors, dim=-1)
        if self.anchor_source == "centroid":
            normal = F.normalize(self.normal_centroid, dim=0)
            return torch.stack([normal, F.normalize(self.anomalous_anchor, dim=0)])
        raise ValueError("text anchors depend on the class name: use text_anchor_pair")

    # -- centroid ---------------------------------------------------------------------------
    @torch.no_grad()
    def update_centroid(self, feats: ImageFeatures, masks: Tensor | None) -> None:
        """Running mean (momentum 0.9) of the normal tokens of a training batch; ``masks``
        ``[B, H, W]`` mark defects (tokens a defect touches are left out)."""
        total, count = self._normal_sum(feats, masks)
        if distributed.context().distributed:  # the mean over the global batch
            both = torch.cat([total.double(), torch.tensor([float(count)], dtype=torch.float64)])
            distributed.context().sum_tensor(both)
            total, count = both[:-1].to(total.dtype), int(both[-1])
        if count == 0:
            return
        mean = total / count
        if float(self.normal_centroid.norm()) == 0.0:
            self.normal_centroid.copy_(mean)
        else:
            self.normal_centroid.mul_(CENTROID_MOMENTUM).add_((1 - CENTROID_MOMENTUM) * mean)

    @staticmethod
    def _normal_sum(feats: ImageFeatures, masks: Tensor | None) -> tuple[Tensor, int]:
        total = torch.zeros(feats.levels[0].shape[-1])
        count = 0
        for tokens, grid in zip(feats.levels, feats.grids, strict=True):
            t = tokens.detach().reshape(-1, tokens.shape[-1])
            if masks is not None:
                pooled = F.adaptive_max_pool2d(masks[:, None].float(), grid)
                t = t[pooled.reshape(-1) == 0]
            total += t.sum(0)
            count += t.shape[0]
        return total, count

    @torch.no_grad()
    def compute_centroid(self, pixel_batches: Iterable[Tensor]) -> None:
        """Set the normal centroid to the mean adapted token of good images."""
        total = torch.zeros(self.embed_dim)
        count = 0
        for pixels in pixel_batches:
            s, n = self._normal_sum(self.image_features(pixels), None)
            total += s
            count += n
        if count == 0:
            raise ValueError("no good images to compute the normal centroid from")
        self.normal_centroid.copy_(total / count)

    # -- scoring ----------------------------------------------------------------------------
    def level_logits(self, feats: ImageFeatures, anchors: Tensor) -> list[Tensor]:
        """Per level ``[B, 2, h, w]`` scaled cosine logits."""
        return [
            grid_maps(similarity_logits(t, anchors, self.logit_scale), g)
            for t, g in zip(feats.levels, feats.grids, strict=True)
        ]

    def det_logits(self, feats: ImageFeatures, anchors: Tensor) -> Tensor:
        """``[B, 2]`` scaled cosine logits of the detection token."""
        return similarity_logits(feats.det[:, None], anchors, self.logit_scale)[..., 0]

    @torch.no_grad()
    def anomaly_maps(
        self, feats: ImageFeatures, anchors: Tensor, sigma: float, out_size: int
    ) -> tuple[Tensor, Tensor]:
        """``(maps [B, S, S], det probabilities [B])``: level probabilities averaged on the
        finest grid, blurred by ``sigma`` patches, upsampled to ``out_size``."""
        logits = self.level_logits(feats, anchors)
        finest = max((g for g in feats.grids), key=lambda g: g[0] * g[1])
        probs = []
        for lg in logits:
            p = lg.float().softmax(dim=1)[:, 1:2]
            if p.shape[-2:] != finest:
                p = F.interpolate(p, size=finest, mode="bilinear", align_corners=True)
            probs.append(p)
        m = gaussian_blur(torch.stack(probs).mean(0), sigma)
        m = F.interpolate(m, size=(out_size, out_size), mode="bilinear", align_corners=True)
        det = self.det_logits(feats, anchors).float().softmax(dim=-1)[:, 1]
        return m[:, 0], det


def image_scores(kind: str, det: Tensor, maps: Tensor) -> Tensor:
    """Image scores ``[B]`` of ``image_score`` ``kind`` from detection probabilities ``[B]`` and
    maps ``[B, H, W]``: ``det``, the map maximum (``max``) or their mean (``fused``)."""
    peak = maps.flatten(1).amax(1)
    return det if kind == "det" else peak if kind == "max" else 0.5 * (det + peak)


def _draw(items: list[str], k: int, rng: np.random.Generator) -> list[str]:
    if k >= len(items):
        return items
    return [items[int(i)] for i in sorted(rng.choice(len(items), size=k, replace=False))]
