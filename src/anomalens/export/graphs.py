"""Export graphs: torch modules that reproduce a fitted detector's ``predict`` from uint8 pixels.

Each graph takes the images already resized to the model's square input (``uint8 [B, S, S, 3]``,
resized by :func:`anomalens.data.transforms.resize_square`, the function ``predict`` uses: the
OpenCV area filter has no ONNX operator) plus, when the detector weights by the foreground, the
masks ``predict`` computes with OpenCV (Otsu threshold, morphology, connected components: no
ONNX operators either). Inside the graph: normalisation, the backbone, pooling, the
nearest-neighbour search against the memory (a matrix product and a top-k shortlist, re-ranked
by the exact float32 distance, as :class:`~anomalens.neighbors.MemoryBank` does), upsampling,
blur, foreground weighting and the image score. The graphs call the detectors' own torch code
(backbone, ``pool_patches``, ``gaussian_blur``, ``upsample_smooth``, the AA-CLIP network) so
the math is the same code, not a copy.

What stays outside (in :mod:`anomalens.export.runtime`, with the same numpy/OpenCV functions
``predict`` uses): the square resize in, the OpenCV foreground masks, the bilinear resize of
each map to its image's own size (``resize_map``), PatchCore's image score (the maximum of that
resized map, which depends on the image size) and WinCLIP's median/MAD normalisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomalens.backbones.base import Features
from anomalens.methods.base import Detector
from anomalens.methods.common import pool_patches, top_fraction_mean, upsample_smooth
from anomalens.postprocess import FOREGROUND_SIZE, masked_blur

#: Candidates re-ranked by their exact float32 distance (as ``MemoryBank``'s default).
RERANK = 4


@dataclass
class GraphSpec:
    """A graph module with the names of its inputs and outputs and what the runtime must do.

    foreground: the extra input the runtime computes (``None``; ``soft``: PatchCore's soft
    object masks ``[B, 128, 128]``; ``patch``: AnomalyDINO's foreground patches ``[B, h, w]``;
    ``image``: WinCLIP's foreground masks ``[B, S, S]``); score: ``graph`` (an output) or
    ``map_max`` (``image_score`` of the map resized to the image: its maximum or the mean of
    its ``extra["top_fraction"]`` largest pixels); normalize: apply
    ``robust_normalize`` over the foreground to each map (WinCLIP).
    """

    module: nn.Module
    inputs: list[str]
    outputs: list[str]
    foreground: str | None = None
    score: str = "graph"
    normalize: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def fp32_backbone(detector: Detector) -> Iterator[None]:
    """Run the detector's backbone in float32 for the block (exported graphs are fp32)."""
    bb = detector.backbone
    saved = bb.precision
    bb.precision = "fp32"
    try:
        yield
    finally:
        bb.precision = saved


class Normalize(nn.Module):
    """uint8 ``[B, S, S, 3]`` -> normalised float ``[B, 3, S, S]`` (``Backbone.preprocess``)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float().permute(0, 3, 1, 2) / 255.0
        return (x - self.mean) / self.std


class NearestNeighbours(nn.Module):
    """Squared L2 distance of queries ``[N, D]`` to their nearest memory row.

    Shortlist: ``q.m - |m|^2 / 2`` (one matrix product with the memory as an initializer) and
    its top ``RERANK``; then the exact float32 distance of each candidate, as ``MemoryBank``
    computes it (centred by the memory mean), and the minimum.
    """

    def __init__(self, memory: torch.Tensor, rerank: int = RERANK) -> None:
        super().__init__()
        memory = memory.float()
        center = memory.mean(0)
        centred = memory - center
        self.register_buffer("center", center)
        self.register_buffer("centred", centred.contiguous())  # rows, for the re-rank
        self.register_buffer("centred_t", centred.T.contiguous())  # [D, M], for the product
        self.register_buffer("half_sq", centred.pow(2).sum(1) / 2)
        self.k = min(int(rerank), memory.shape[0])

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        q = queries.float() - self.center
        sim = torch.matmul(q, self.centred_t) - self.half_sq  # larger = nearer
        cand = sim.topk(self.k, dim=1).indices  # [N, k]
        exact = (self.centred[cand] - q[:, None, :]).pow(2).sum(2)
        return exact.min(1).values


def area_matrix(src: int, dst: int) -> torch.Tensor:
    """``[dst, src]`` weights of OpenCV's area resize (``INTER_AREA``) along one axis, read off
    OpenCV itself (the resize of a float image is linear and separable)."""
    cols = np.zeros((dst, src), dtype=np.float64)
    for i in range(src):
        e = np.zeros((src, 4), dtype=np.float32)
        e[i] = 1.0
        cols[:, i] = cv2.resize(e, (4, dst), interpolation=cv2.INTER_AREA)[:, 0]
    return torch.from_numpy(cols.astype(np.float32))


# --------------------------------------------------------------------------------------------
# PatchCore
# --------------------------------------------------------------------------------------------


class PatchCoreGraph(nn.Module):
    """PatchCore ``_score``: nearest-neighbour distance grid, blurred (over the ``content``
    cells only when the images are letterboxed or bordered); with foreground weighting the
    patches whose downscaled weight is at most ``MIN_WEIGHT`` get 0, the grid is upsampled to
    the mask (128 px) and multiplied by it. Output: ``maps`` (grid, or 128 px when weighted, in
    the input frame); the runtime cuts each image's content out, resizes it to the image and
    takes the maximum as the score (as ``_score``)."""

    def __init__(self, detector: Any) -> None:
        super().__init__()
        from anomalens.methods.patchcore import MIN_WEIGHT

        bb, c = detector.backbone, detector.config
        self.backbone = bb
        self.normalize = Normalize(bb.mean, bb.std)
        self.layers = list(c.layers or bb.default_layers)
        self.grid_index = self.layers.index(c.grid_layer) if c.grid_layer is not None else None
        self.neighbourhood = c.neighbourhood
        self.search = NearestNeighbours(detector.memory)
        h, w = detector.grid
        self.sigma = c.sigma * h / bb.image_size
        self.use_foreground = bool(detector.use_foreground)
        self.framed = c.resize != "square" or c.border > 0
        self.min_weight = MIN_WEIGHT
        if self.use_foreground:
            self.register_buffer("area_h", area_matrix(FOREGROUND_SIZE, h))
            self.register_buffer("area_w", area_matrix(FOREGROUND_SIZE, w))

    def forward(self, pixels: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.encode_image(
            self.normalize(pixels), self.layers, with_global=False, grad=True
        )
        pf = pool_patches(feats, self.neighbourhood, self.grid_index)
        _, h, w, dim = pf.shape
        dist = self.search(pf.reshape(-1, dim)).sqrt()
        if self.use_foreground:
            wt = extra[0]
            near = torch.matmul(torch.matmul(self.area_h, wt), self.area_w.T)  # [B, h, w]
            dist = torch.where(near.reshape(-1) > self.min_weight, dist, torch.zeros_like(dist))
        content = extra[-1] if self.framed else None
        grid = masked_blur(dist.view(-1, h, w), content, self.sigma)
        if not self.use_foreground:
            return grid
        up = F.interpolate(grid[:, None], size=wt.shape[-2:], mode="bilinear", align_corners=False)
        return up[:, 0] * wt


def patchcore_graph(detector: Any) -> GraphSpec:
    g = PatchCoreGraph(detector)
    inputs = ["pixels", "foreground"] if g.use_foreground else ["pixels"]
    if g.framed:
        inputs.append("content")
    fg = "soft" if g.use_foreground else None
    c = detector.config
    extra = {
        "foreground_size": FOREGROUND_SIZE,
        "margin": c.foreground_margin,
        "grid": list(detector.grid),
        "resize": c.resize,
        "border": round(c.border * detector.backbone.image_size),
        "top_fraction": c.top_fraction,
    }
    return GraphSpec(g, inputs, ["maps"], foreground=fg, score="map_max", extra=extra)


# --------------------------------------------------------------------------------------------
# AnomalyDINO
# --------------------------------------------------------------------------------------------


class AnomalyDINOGraph(nn.Module):
    """AnomalyDINO ``_encode`` + ``_score``: cosine distance to the nearest memory patch
    (zeroed outside the foreground patches when on), top-fraction mean, upsampled smooth map."""

    def __init__(self, detector: Any) -> None:
        super().__init__()
        bb, c = detector.backbone, detector.config
        self.backbone = bb
        self.normalize = Normalize(bb.mean, bb.std)
        self.layers = detector.layers
        self.final_norm = bool(c.final_norm and bb.architecture == "vit")
        self.norm = bb.output_norm() if self.final_norm else None
        self.neighbourhood = c.neighbourhood
        self.search = NearestNeighbours(detector.memory)
        self.top_fraction = c.top_fraction
        self.score_max = getattr(c, "image_score", "top_fraction") == "max"
        self.sigma = c.sigma
        self.size = bb.image_size
        self.use_foreground = bool(detector.use_foreground)

    def forward(self, pixels: torch.Tensor, *masks: torch.Tensor):
        feats = self.backbone.encode_image(
            self.normalize(pixels), self.layers, with_global=False, grad=True
        )
        if self.final_norm:
            feats = Features([self.norm(t).float() for t in feats.tokens], feats.grids)
        pf = pool_patches(feats, self.neighbourhood, normalize=True)
        _, h, w, dim = pf.shape
        dist = self.search(pf.reshape(-1, dim)).sqrt()
        dist = dist.square().mul(0.5).clamp(0.0, 2.0).view(-1, h * w)
        if self.use_foreground:
            dist = dist * masks[0].reshape(-1, h * w)
        maps = upsample_smooth(dist.view(-1, h, w), self.size, self.sigma)
        if self.score_max:
            return maps.amax((1, 2)), maps
        scores = top_fraction_mean(dist, self.top_fraction)
        return scores, maps


def anomalydino_graph(detector: Any) -> GraphSpec:
    g = AnomalyDINOGraph(detector)
    inputs = ["pixels", "foreground"] if g.use_foreground else ["pixels"]
    fg = "patch" if g.use_foreground else None
    extra = {"grid": list(detector.grid)}
    return GraphSpec(g, inputs, ["scores", "maps"], foreground=fg, extra=extra)


# --------------------------------------------------------------------------------------------
# WinCLIP (token scoring)
# --------------------------------------------------------------------------------------------


class WinCLIPGraph(nn.Module):
    """WinCLIP / WinCLIP+ with ``scoring="tokens"``: text anchors (precomputed at ``fit``, no
    text tower in the graph) against the global embedding and the projected tokens; the patch
    memory; both maps upsampled and smoothed, fused; background pixels set to the lowest
    foreground value (the runtime applies the median/MAD normalisation)."""

    def __init__(self, detector: Any) -> None:
        super().__init__()
        from anomalens.methods.winclip import anomaly_probability

        bb, c = detector.backbone, detector.config
        if c.scoring != "tokens":
            raise ValueError(
                "only WinCLIP with scoring='tokens' can be exported (the window variant runs "
                "the ViT once per window)"
            )
        self.prob = anomaly_probability
        self.backbone = bb
        self.normalize = Normalize(bb.mean, bb.std)
        self.use_text, self.use_memory = detector.use_text, detector.use_memory
        self.t_layers = detector._text_layers() if self.use_text else ()
        self.m_layers = detector._memory_layers() if self.use_memory else ()
        self.layers = tuple(dict.fromkeys(self.t_layers + self.m_layers))
        if self.use_text:
            self.register_buffer("anchors", detector.anchors.float().clone())
            self.scale = float(detector._scale())
        if self.use_memory:
            self.search = NearestNeighbours(detector.memory)
        self.neighbourhood = c.neighbourhood
        self.size, self.sigma = bb.image_size, c.sigma
        total = (c.text_weight if self.use_text else 0.0) + (
            c.memory_weight if self.use_memory else 0.0
        )
        self.w_text = c.text_weight / total
        self.w_memory = c.memory_weight / total
        self.use_foreground = detector._use_foreground(self.use_text)

    def forward(self, pixels: torch.Tensor, *fg: torch.Tensor):
        bb = self.backbone
        feats = bb.encode_image(
            self.normalize(pixels),
            self.layers or (bb.num_layers,),
            with_global=self.use_text,
            grad=True,
        )
        by_layer = dict(zip(self.layers, feats.tokens, strict=False))
        grids = dict(zip(self.layers, feats.grids, strict=False))
        score = fused = None
        if self.use_text:
            glob = F.normalize(feats.global_embedding, dim=-1)
            text_score = self.prob(glob, self.anchors, self.scale)
            proj = torch.stack([bb.project_tokens(by_layer[k]) for k in self.t_layers])
            tokens = F.normalize(proj.mean(0), dim=-1)
            h, w = grids[self.t_layers[0]]
            text_map = self.prob(tokens, self.anchors, self.scale).view(-1, h, w)
            text_s = upsample_smooth(text_map, self.size, self.sigma)
            score, fused = text_score * self.w_text, text_s * self.w_text
        if self.use_memory:
            mf = Features([by_layer[k] for k in self.m_layers], [grids[k] for k in self.m_layers])
            pf = pool_patches(mf, self.neighbourhood, normalize=True)
            _, h, w, dim = pf.shape
            dist = self.search(pf.reshape(-1, dim)).sqrt()
            dist = dist.square().mul(0.5).clamp(0.0, 2.0)
            mem_s = upsample_smooth(dist.view(-1, h, w) / 2, self.size, self.sigma)
            if self.use_foreground:
                peak = torch.where(fg[0] > 0.5, mem_s, torch.full_like(mem_s, -np.inf))
            else:
                peak = mem_s
            m_score = peak.flatten(1).amax(1)
            score = m_score * self.w_memory if score is None else score + m_score * self.w_memory
            fused = mem_s * self.w_memory if fused is None else fused + mem_s * self.w_memory
        if self.use_foreground:
            inside = fg[0] > 0.5
            low = torch.where(inside, fused, torch.full_like(fused, np.inf)).flatten(1).amin(1)
            fused = torch.where(inside, fused, low.view(-1, 1, 1).expand_as(fused))
        return score, fused


def winclip_graph(detector: Any) -> GraphSpec:
    g = WinCLIPGraph(detector)
    inputs = ["pixels", "foreground"] if g.use_foreground else ["pixels"]
    fg = "image" if g.use_foreground else None
    return GraphSpec(
        g, inputs, ["scores", "maps"], foreground=fg, normalize=bool(detector.config.normalize)
    )


# --------------------------------------------------------------------------------------------
# AA-CLIP
# --------------------------------------------------------------------------------------------


class AACLIPGraph(nn.Module):
    """AA-CLIP ``score_pixels`` with the fitted anchors as a constant (no text tower)."""

    def __init__(self, detector: Any) -> None:
        super().__init__()
        self.net = detector.network
        self.normalize = Normalize(detector.backbone.mean, detector.backbone.std)
        self.register_buffer("anchors", detector.anchors.float().clone())
        c = detector.config
        self.sigma, self.kind, self.size = c.sigma, c.image_score, detector.backbone.image_size

    def forward(self, pixels: torch.Tensor):
        from anomalens.methods.aaclip.model import image_scores

        feats = self.net.image_features(self.normalize(pixels), grad=True)
        maps, det = self.net.anomaly_maps(feats, self.anchors, self.sigma, self.size)
        return image_scores(self.kind, det, maps), maps


def aaclip_graph(detector: Any) -> GraphSpec:
    return GraphSpec(AACLIPGraph(detector), ["pixels"], ["scores", "maps"])


BUILDERS = {
    "patchcore": patchcore_graph,
    "anomalydino": anomalydino_graph,
    "winclip": winclip_graph,
    "aaclip": aaclip_graph,
}


def build_graph(detector: Detector) -> GraphSpec:
    """The export graph of a fitted detector (ValueError for methods without one)."""
    if detector.method not in BUILDERS:
        raise ValueError(
            f"method {detector.method!r} cannot be exported to ONNX yet; "
            f"exportable: {', '.join(sorted(BUILDERS))}"
        )
    detector._require_fitted()
    spec = BUILDERS[detector.method](detector)
    spec.module.eval()
    return spec
