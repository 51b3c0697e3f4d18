"""WinCLIP (zero-shot) and WinCLIP+ (few-shot) on CLIP or SigLIP backbones.

Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation" (CVPR 2023),
with the post-processing of the compact WinCLIP seed (foreground mask, robust normalisation).

Text branch (zero-shot). Normal / anomalous anchors are the normalised means of the encoded
prompt ensemble (:mod:`anomalens.prompts`), computed once at ``fit`` and stored with the model.
An embedding ``e`` gets the anomaly probability
``softmax([cos(e, normal), cos(e, anomalous)] / temperature)[1]``.

* image score: the probability of the global image embedding;
* ``scoring="tokens"`` (fast): patch tokens of ``text_layers`` are mapped into the joint space
  (``Backbone.project_tokens``), averaged over the layers and scored per patch;
* ``scoring="windows"`` (the paper): for every ``k x k`` window of patches (``window_sizes``,
  stride 1) the ViT runs again on only that window's tokens (with their position embeddings)
  to give a window embedding; window probabilities are spread onto the patches they cover by
  harmonic averaging, ``M(p) = n_p / sum_{w covers p} 1 / s_w``; the scale maps and the image
  probability (the "full image" scale) are combined by the harmonic mean.

Memory branch (few-shot, WinCLIP+). The patch features of ``memory_layers`` (per-layer
L2-normalised, concatenated) of k good images form a memory; a test patch scores
``(1 - cos) / 2`` to its nearest memory patch. With ``scoring="windows"`` the window
embeddings of the good images form one more memory per window size and the patch map is the
mean of the patch-level map and the harmonically aggregated window maps (as in the paper).

Fusion and post-processing. ``map = text_weight * text_map + memory_weight * memory_map``
(weights renormalised over the branches in use; 0.3 / 0.7 is the seed's default), upsampled
to ``image_size`` and Gaussian-smoothed. The image score is fused the same way from the text
image score and the maximum of the smoothed memory map. With ``foreground`` the OpenCV
foreground mask of each image restricts the memory score to the object and sets background
pixels to the lowest foreground value; with ``normalize`` each map becomes
``(map - median) / (1.4826 * MAD)`` over its foreground pixels. Thresholds come from the good
images only (leave-one-out, >= 2 shots), as in PatchCore.

A backbone without a text tower (EfficientNet-Lite, DINOv2) runs the memory branch alone; zero
shots on such a backbone raise :class:`TextTowerMissingError`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from anomalens.backbones.base import Features, check_precision
from anomalens.data.transforms import resize_square
from anomalens.errors import CheckpointError, TextTowerMissingError
from anomalens.methods.base import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Calibration,
    Detector,
    DetectorConfig,
    FitReport,
    Prediction,
    batches,
    check_at_least,
    checkpoint_field,
    checkpoint_grid,
    checkpoint_tensor,
    select_shots,
)
from anomalens.methods.common import build_memory, calibrate, pool_patches, upsample_smooth
from anomalens.neighbors import MemoryBank
from anomalens.postprocess import check_foreground, foreground_mask, robust_normalize
from anomalens.prompts import build_prompts, check_ensembles, text_anchors

SCORINGS = ("tokens", "windows")


# ------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------


def anomaly_probability(embeddings: torch.Tensor, anchors: torch.Tensor, scale: float):
    """``softmax(scale * [cos(e, normal), cos(e, anomalous)])[1]`` for unit-norm ``[..., D]``.

    Equal to ``sigmoid(scale * (cos_a - cos_n))``.
    """
    sims = embeddings.float() @ anchors.float().T
    return torch.sigmoid(scale * (sims[..., 1] - sims[..., 0]))


def window_indices(grid: tuple[int, int], size: int, stride: int = 1) -> torch.Tensor:
    """``[n_windows, size * size]`` row-major patch indices of every ``size x size`` window."""
    h, w = grid
    if size < 1 or size > min(h, w):
        raise ValueError(f"window size {size} does not fit the {h}x{w} patch grid")
    rows = torch.arange(0, h - size + 1, stride)
    cols = torch.arange(0, w - size + 1, stride)
    offs = (torch.arange(size)[:, None] * w + torch.arange(size)[None, :]).reshape(-1)
    starts = (rows[:, None] * w + cols[None, :]).reshape(-1)
    return starts[:, None] + offs[None, :]


def harmonic_aggregation(
    scores: torch.Tensor, grid: tuple[int, int], indices: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Window scores ``[B, n_windows]`` -> patch map ``[B, h, w]``: the harmonic mean of the
    scores of all windows covering each patch."""
    n = grid[0] * grid[1]
    cover = torch.zeros(indices.shape[0], n, dtype=torch.float64)
    cover.scatter_(1, indices, 1.0)
    counts = cover.sum(0)
    if bool((counts == 0).any()):
        raise ValueError("some patches are covered by no window")
    inv = 1.0 / scores.double().clamp_min(eps)
    return (counts / (inv @ cover)).float().view(-1, *grid)


def fuse(values: Sequence[torch.Tensor | None], weights: Sequence[float]) -> torch.Tensor:
    """Weighted sum of the present values with the weights renormalised to sum to 1."""
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None]
    total = sum(w for _, w in pairs)
    out = pairs[0][0] * (pairs[0][1] / total)
    for v, w in pairs[1:]:
        out = out + v * (w / total)
    return out


def fuse_and_normalize(
    text_map: np.ndarray | None,
    memory_map: np.ndarray | None,
    text_score: float | None,
    fg: np.ndarray | None,
    weights: tuple[float, float],
    normalize: bool,
) -> tuple[float, np.ndarray]:
    """Image score and final map of one image from its smoothed branch maps ``[S, S]``.

    score = ``w_t * text_score + w_m * max(memory_map over fg)``; map = ``w_t * text_map +
    w_m * memory_map`` (weights renormalised over the present branches), background pixels
    (``~fg``) set to the lowest foreground value, then, with ``normalize``,
    ``(map - median) / (1.4826 * MAD)`` with median and MAD over the foreground.
    """
    m_score = None
    if memory_map is not None:
        m_score = float(memory_map[fg].max()) if fg is not None else float(memory_map.max())
    score = float(fuse([text_score, m_score], weights))
    fused = np.asarray(fuse([text_map, memory_map], weights), dtype=np.float32)
    if fg is not None:
        fused = fused.copy()
        fused[~fg] = fused[fg].min()
    if normalize:
        fused = robust_normalize(fused, fg)
    return score, fused


# ------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------


@dataclass
class WinCLIPConfig(DetectorConfig):
    """Parameters of :class:`WinCLIP` (stored in ``config.json``); the shared fields are
    described in :class:`~anomalens.methods.base.DetectorConfig`.

    backbone: ``clip:...`` or ``siglip:...`` for the text branch; any backbone for the memory
    branch alone; shots: 0 = zero-shot; class_name: the object word in the prompts
    (``metal_nut`` becomes "metal nut"); prompts: ensembles from
    :data:`anomalens.prompts.ENSEMBLES`; extra_normal / extra_anomalous: user state words
    ("scratched" or "{} with a bent tip"); scoring: ``tokens`` or ``windows`` (see the module
    doc); text_layers: blocks whose projected tokens give the token text map (negative = from
    the end); memory_layers: backbone taps of the memory (None: the backbone default);
    window_sizes: window sides in patches; temperature: softmax temperature (None: the model's
    learned logit scale); text_weight / memory_weight: fusion weights; memory_size: coreset size
    of the patch memory (None: keep all); neighbourhood: local averaging of memory features;
    foreground: OpenCV foreground masking, ``auto`` (on when the text branch is used, whose maps
    light up the background; off for the memory branch alone, which learns the background from
    the good images), ``on`` or ``off`` (for textures); normalize: per-image median/MAD
    normalisation over the foreground; sigma: map smoothing in pixels at ``image_size``;
    search_precision: nearest-neighbour precision; calibration_images: good images scored leave-
    one-out for the thresholds.
    """

    min_shots = 0

    backbone: str = "clip:openai/clip-vit-base-patch16"
    class_name: str = "object"
    prompts: tuple[str, ...] = ("winclip",)
    extra_normal: tuple[str, ...] = ()
    extra_anomalous: tuple[str, ...] = ()
    scoring: str = "tokens"
    text_layers: tuple[int, ...] = (-3, -2, -1)
    memory_layers: tuple[int, ...] | None = None
    window_sizes: tuple[int, ...] = (2, 3)
    temperature: float | None = 0.07
    text_weight: float = 0.3
    memory_weight: float = 0.7
    memory_size: int | None = 16384
    neighbourhood: int = 1
    foreground: str = "auto"
    normalize: bool = True
    sigma: float = 4.0
    search_precision: str = "auto"
    calibration_images: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("prompts", "extra_normal", "extra_anomalous", "text_layers", "window_sizes"):
            value = getattr(self, name)
            setattr(self, name, (value,) if isinstance(value, str | int) else tuple(value))
        if self.memory_layers is not None:
            self.memory_layers = tuple(self.memory_layers)
        self.prompts = check_ensembles(self.prompts)
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        check_precision(self.search_precision, "search_precision")
        check_foreground(self.foreground)
        check_at_least(self, 1, "memory_size", "neighbourhood", "calibration_images")
        if self.text_weight < 0 or self.memory_weight < 0:
            raise ValueError("text_weight and memory_weight must be >= 0")
        if self.text_weight == 0 and self.memory_weight == 0:
            raise ValueError("text_weight and memory_weight cannot both be 0")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError("temperature must be > 0 or None")
        if not self.text_layers or not self.window_sizes or min(self.window_sizes) < 1:
            raise ValueError("text_layers and window_sizes must be non-empty, sizes >= 1")


# ------------------------------------------------------------------------------------------
# detector
# ------------------------------------------------------------------------------------------


@dataclass
class BranchInputs:
    """What ``predict`` needs of a batch of images, computed once (also kept for calibration)."""

    text_map: torch.Tensor | None = None  # [B, h, w] anomaly probabilities
    text_score: torch.Tensor | None = None  # [B]
    feats: torch.Tensor | None = None  # [B, h, w, C] unit-norm memory features
    windows: list[torch.Tensor] | None = None  # per scale [B, n_w, D]
    fg: list[np.ndarray] | None = None  # [S, S] bool foreground masks

    def item(self, i: int) -> BranchInputs:
        def part(t):
            return None if t is None else t[i : i + 1]

        return BranchInputs(
            part(self.text_map),
            part(self.text_score),
            part(self.feats),
            None if self.windows is None else [w[i : i + 1] for w in self.windows],
            None if self.fg is None else self.fg[i : i + 1],
        )

    @staticmethod
    def cat(parts: Sequence[BranchInputs]) -> BranchInputs:
        def join(name):
            vals = [getattr(p, name) for p in parts]
            return None if vals[0] is None else torch.cat(vals)

        wins = None
        if parts[0].windows is not None:
            wins = [torch.cat(ws) for ws in zip(*(p.windows for p in parts), strict=True)]
        fg = None if parts[0].fg is None else [m for p in parts for m in p.fg]
        return BranchInputs(join("text_map"), join("text_score"), join("feats"), wins, fg)


class WinCLIP(Detector):
    """WinCLIP / WinCLIP+; see the module docstring. ``WinCLIP(**config_fields)``."""

    method = "winclip"
    config_class = WinCLIPConfig

    def __init__(self, config: WinCLIPConfig | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.anchors: torch.Tensor | None = None  # [2, D] normal, anomalous
        self.memory: torch.Tensor | None = None  # [M, C]
        self.window_memory: list[torch.Tensor] | None = None  # per window size [K * n_w, D]
        self.prompts: dict[str, list[str]] = {}
        self.grid: tuple[int, int] | None = None
        self.n_shots = 0
        self._fitted = False
        self._bank: MemoryBank | None = None
        self._window_banks: list[MemoryBank] | None = None
        self._sources: torch.Tensor | None = None  # memory row -> good image, during fit
        self._window_sources: list[torch.Tensor] | None = None
        self._anchor_cache: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ plumbing
    @property
    def use_text(self) -> bool:
        """True when the text branch is part of the score (after ``fit``)."""
        return self.anchors is not None

    @property
    def use_memory(self) -> bool:
        """True when the memory branch is part of the score (after ``fit``)."""
        return self.memory is not None

    def is_fitted(self) -> bool:
        return self._fitted

    def _text_layers(self) -> tuple[int, ...]:
        return tuple(self.backbone.resolve_layers(self.config.text_layers))

    def _memory_layers(self) -> tuple[int, ...]:
        c, bb = self.config, self.backbone
        layers = c.memory_layers if c.memory_layers is not None else bb.default_layers
        return tuple(bb.resolve_layers(layers))

    def _use_foreground(self, text: bool) -> bool:
        fg = self.config.foreground
        return text if fg == "auto" else fg == "on"

    def _scale(self) -> float:
        if self.config.temperature is not None:
            return 1.0 / self.config.temperature
        return self.backbone.logit_scale()

    def _windows(self) -> list[torch.Tensor]:
        assert self.grid is not None
        return [window_indices(self.grid, k) for k in self.config.window_sizes]

    def _compute_anchors(self) -> torch.Tensor:
        c, bb = self.config, self.backbone
        normal, anomalous = build_prompts(
            c.class_name, c.prompts, c.extra_normal, c.extra_anomalous
        )
        self.prompts = {"normal": normal, "anomalous": anomalous}
        key = (bb.name, bb.precision, tuple(normal), tuple(anomalous))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = text_anchors(bb.encode_text, normal, anomalous)
        return self._anchor_cache[key].clone()

    # ------------------------------------------------------------------ encoding
    def _encode(self, images: Sequence[np.ndarray], text: bool, memory: bool) -> BranchInputs:
        c, bb = self.config, self.backbone
        pixels = bb.preprocess(images)
        token_text = text and c.scoring == "tokens"
        t_layers = self._text_layers() if token_text else ()
        m_layers = self._memory_layers() if memory else ()
        layers = tuple(dict.fromkeys(t_layers + m_layers))
        enc = BranchInputs()
        if layers or text:
            feats = bb.encode_image(pixels, layers or (bb.num_layers,), with_global=text)
            by_layer = dict(zip(layers, feats.tokens, strict=False))
            grids = dict(zip(layers, feats.grids, strict=False))
            if memory:
                mf = Features([by_layer[k] for k in m_layers], [grids[k] for k in m_layers])
                enc.feats = pool_patches(mf, c.neighbourhood, normalize=True)
            if text:
                assert self.anchors is not None
                assert feats.global_embedding is not None
                scale = self._scale()
                glob = F.normalize(feats.global_embedding, dim=-1)
                enc.text_score = anomaly_probability(glob, self.anchors, scale)
                if token_text:
                    proj = torch.stack([bb.project_tokens(by_layer[k]) for k in t_layers])
                    tokens = F.normalize(proj.mean(0), dim=-1)
                    h, w = grids[t_layers[0]]
                    probs = anomaly_probability(tokens, self.anchors, scale)
                    enc.text_map = probs.view(-1, h, w)
        if c.scoring == "windows":
            wins = bb.encode_windows(pixels, self._windows())
            if memory:
                enc.windows = wins
            if text:
                assert self.anchors is not None
                assert enc.text_score is not None
                scale = self._scale()
                scales = [enc.text_score.view(-1, 1, 1).expand(-1, *self.grid)]
                for emb, idx in zip(wins, self._windows(), strict=True):
                    probs = anomaly_probability(emb, self.anchors, scale)
                    scales.append(harmonic_aggregation(probs, self.grid, idx))
                stack = torch.stack(scales).double()
                enc.text_map = (len(scales) / (1.0 / stack.clamp_min(1e-12)).sum(0)).float()
        if self._use_foreground(text):
            enc.fg = [foreground_mask(resize_square(img, bb.image_size)) for img in images]
        return enc

    def _encode_all(
        self, images: Sequence[np.ndarray], text: bool, memory: bool, progress: bool, desc: str
    ) -> BranchInputs:
        parts = []
        for batch in tqdm(
            list(batches(images, self.config.batch_size)),
            desc=desc,
            unit="batch",
            disable=not progress,
        ):
            parts.append(self._encode(batch, text, memory))
        return BranchInputs.cat(parts)

    # ------------------------------------------------------------------ scoring
    def _memory_map(self, enc: BranchInputs, leave_out: int | None) -> torch.Tensor:
        """WinCLIP+ visual association map ``[B, h, w]`` (``(1 - cos) / 2`` to the memory)."""
        assert enc.feats is not None
        bank, window_banks = self._banks()

        def hidden(sources: torch.Tensor | None) -> torch.Tensor | None:
            if leave_out is None:
                return None
            assert sources is not None, "leave-one-out needs the fit-time source ids"
            return sources == leave_out

        b, h, w, dim = enc.feats.shape
        dist = bank.cosine_distance(enc.feats.reshape(-1, dim), hidden(self._sources))
        maps = [dist.view(b, h, w) / 2]
        if self.config.scoring == "windows":
            assert enc.windows is not None
            assert window_banks is not None
            sources = self._window_sources or [None] * len(window_banks)
            for emb, wbank, src, idx in zip(
                enc.windows, window_banks, sources, self._windows(), strict=True
            ):
                n_w = emb.shape[1]
                wd = wbank.cosine_distance(emb.reshape(b * n_w, -1), hidden(src))
                maps.append(harmonic_aggregation(wd.view(b, n_w) / 2, (h, w), idx))
        return torch.stack(maps).mean(0)

    def _score(self, enc: BranchInputs, leave_out: int | None = None):
        """Image scores ``[B]`` (numpy) and final maps ``[B, S, S]`` (list of numpy)."""
        c = self.config
        size = self.backbone.image_size
        maps, kinds = [], []
        if self.use_text:
            maps.append(enc.text_map)
            kinds.append("text")
        if self.use_memory:
            maps.append(self._memory_map(enc, leave_out))
            kinds.append("memory")
        b = maps[0].shape[0]
        smooth = upsample_smooth(torch.cat(maps), size, c.sigma).view(len(maps), b, size, size)
        text_s = smooth[kinds.index("text")].numpy() if self.use_text else None
        mem_s = smooth[kinds.index("memory")].numpy() if self.use_memory else None
        scores, out = [], []
        for i in range(b):
            score, fused = fuse_and_normalize(
                None if text_s is None else text_s[i],
                None if mem_s is None else mem_s[i],
                None if enc.text_score is None else float(enc.text_score[i]),
                None if enc.fg is None else enc.fg[i],
                (c.text_weight, c.memory_weight),
                c.normalize,
            )
            scores.append(score)
            out.append(fused)
        return np.asarray(scores, dtype=np.float32), out

    # ------------------------------------------------------------------ fit
    def fit(self, images: Iterable[np.ndarray], progress: bool = True) -> WinCLIP:
        """Compute the text anchors and, given good images, the normal memory.

        ``images`` may be empty for zero-shot use (or ``shots=0``). Raises
        :class:`TextTowerMissingError` for zero-shot on a backbone without a text tower.
        """
        c = self.config
        t0 = time.perf_counter()
        images = [] if c.shots == 0 else list(images)
        images = [images[i] for i in select_shots(len(images), c.shots, c.seed)]
        bb = self.backbone
        has_text = bb.has_text
        use_memory = bool(images) and c.memory_weight > 0
        use_text = has_text and c.text_weight > 0
        if not images and not has_text:
            raise TextTowerMissingError(
                f"zero-shot WinCLIP needs a text tower, but backbone {c.backbone!r} has none "
                "(vision-only). Use a CLIP or SigLIP backbone (e.g. "
                "clip:openai/clip-vit-base-patch16 or siglip:google/siglip-base-patch16-224), "
                "or give good images (shots >= 1) for the memory-only WinCLIP+ variant."
            )
        if not images and not use_text:
            raise ValueError("zero-shot WinCLIP needs text_weight > 0")
        if images and not use_text and not use_memory:
            raise ValueError("memory_weight is 0 and the backbone has no text tower")
        if c.scoring == "windows" and not bb.supports_windows:
            raise ValueError(
                f"scoring='windows' needs a CLIP or SigLIP backbone, got {c.backbone!r}; "
                "use scoring='tokens'"
            )
        if images and not has_text and c.text_weight > 0:
            warnings.warn(
                f"backbone {c.backbone!r} has no text tower: WinCLIP+ runs its memory branch "
                "only (set text_weight=0 to silence this)",
                stacklevel=2,
            )
        self.anchors = self._compute_anchors() if use_text else None
        t1 = time.perf_counter()
        self.memory, self.window_memory = None, None
        self._bank, self._window_banks = None, None
        self.n_shots = len(images)
        self.grid = tuple(bb.grid()) if bb.architecture == "vit" else None
        enc = None
        if use_memory:
            enc = self._encode_all(images, use_text, True, progress, "winclip fit: features")
            assert enc.feats is not None
            self.grid = tuple(enc.feats.shape[1:3])
            memory, sources = build_memory(enc.feats, 1, c.memory_size, c.seed, progress)
            self.memory, self._sources = memory, sources
            if c.scoring == "windows":
                assert enc.windows is not None
                self.window_memory, self._window_sources = [], []
                for emb in enc.windows:
                    self.window_memory.append(emb.reshape(-1, emb.shape[-1]).clone())
                    src = torch.arange(emb.shape[0]).repeat_interleave(emb.shape[1])
                    self._window_sources.append(src)
        elif self.grid is None:
            raise ValueError(f"cannot tell the patch grid of {bb.name!r}")
        self._fitted = True
        t2 = time.perf_counter()
        if enc is not None:
            encoded = enc

            def score_one(i: int) -> tuple[float, float]:
                scores, maps = self._score(encoded.item(i), leave_out=i)
                return float(scores[0]), float(maps[0].max())

            self.calibration = calibrate(score_one, len(images), c, progress, self.method)
        else:
            self.calibration = Calibration(quantile=c.calibration_quantile)
        self._sources, self._window_sources = None, None
        t3 = time.perf_counter()
        n_patches = 0 if enc is None or enc.feats is None else enc.feats[..., 0].numel()
        memory_size = 0 if self.memory is None else self.memory.shape[0]
        self.fit_report = FitReport.timed(
            len(images), n_patches, memory_size, t0, text=t1, memory=t2, calibration=t3
        )
        return self

    def _banks(self) -> tuple[MemoryBank, list[MemoryBank] | None]:
        """Search indexes of the patch memory and the window memories (built on first use)."""
        c = self.config
        if self._bank is None:
            assert self.memory is not None
            self._bank = MemoryBank(self.memory, c.search_precision)
            if self.window_memory is not None:
                self._window_banks = [MemoryBank(m, c.search_precision) for m in self.window_memory]
        return self._bank, self._window_banks

    # ------------------------------------------------------------------ predict
    def predict(self, images: Sequence[np.ndarray], progress: bool = False) -> Prediction:
        """Image scores and anomaly maps (at each input's resolution) for RGB uint8 images.

        Runs no text encoder: the anchors come from ``fit``.
        """
        return self._predict_batches(
            images,
            lambda batch: self._score(self._encode(batch, self.use_text, self.use_memory)),
            progress,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (anchors, memories; float32)."""
        self._require_fitted()
        tensors: dict[str, torch.Tensor] = {}
        if self.anchors is not None:
            tensors["anchors"] = self.anchors
        if self.memory is not None:
            tensors["memory"] = self.memory
        for size, mem in zip(self.config.window_sizes, self.window_memory or [], strict=False):
            tensors[f"window_memory_{size}"] = mem
        extra = {
            "grid": None if self.grid is None else list(self.grid),
            "n_shots": self.n_shots,
            "branches": {"text": self.use_text, "memory": self.use_memory},
            "prompts": self.prompts,
        }
        return self._write(folder, tensors, **extra)

    @classmethod
    def load(cls, folder: str | Path) -> WinCLIP:
        """Restore a detector written by :meth:`save` (bit-identical anchors and memories)."""
        model, meta, tensors = cls._read(folder)
        cfg_path, weights = Path(folder) / CONFIG_FILE, Path(folder) / WEIGHTS_FILE
        model.anchors = checkpoint_tensor(tensors, "anchors", weights, optional=True)
        if model.anchors is not None and model.anchors.shape[0] != 2:
            raise CheckpointError(
                f"{weights}: tensor 'anchors' must be [2, D], got {tuple(model.anchors.shape)}"
            )
        model.memory = checkpoint_tensor(tensors, "memory", weights, optional=True)
        if model.anchors is None and model.memory is None:
            raise CheckpointError(f"{weights}: neither 'anchors' nor 'memory' found")
        if model.memory is not None and model.config.scoring == "windows":
            model.window_memory = [
                checkpoint_tensor(tensors, f"window_memory_{k}", weights)
                for k in model.config.window_sizes
            ]
        model.grid = checkpoint_grid(meta, cfg_path, optional=True)
        model.n_shots = checkpoint_field(meta, "n_shots", int, cfg_path) if "n_shots" in meta else 0
        prompts = meta.get("prompts", {})
        if not isinstance(prompts, dict):
            raise CheckpointError(f"{cfg_path}: 'prompts' must be a JSON object")
        model.prompts = prompts
        model._fitted = True
        return model
