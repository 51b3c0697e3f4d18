"""Encoder tests: do a backbone's features separate defects from normal surface at all?

Features come from a :class:`FeatureSource`: a backbone with one or more *layer sets* (taps
pooled onto the coarsest grid of the set, as PatchCore does), or an AA-CLIP checkpoint (adapted
features of its levels, in the anchor space). :func:`collect` encodes the test images (patches
labelled from the masks: defect when at least ``defect_fraction`` of the patch is masked, normal
when none of it is, left out in between; at most ``patches_per_image`` of each kind per image,
drawn with the seed) and a few good training images (the "good memory").

Per layer set, at patch level (:func:`separation`):

* silhouette score of defect vs normal patches (Euclidean, balanced subsample);
* linear-probe AUROC: logistic regression scored out of fold, folds by image (no image on both
  sides);
* kNN AUROC: distance of each patch to its nearest good-memory patch;

and the same at image level on global embeddings (the spatial mean of the set's patch features;
the model's own image embedding for CLIP / SigLIP / AA-CLIP), good vs defective images.

Text space (:func:`text_tests`, sources with a text tower or AA-CLIP text anchors): cosine of
the normal and anomalous anchors, zero-shot patch and image AUROC of ``cos(e, A) - cos(e, N)``
(monotonic in WinCLIP's probability), AA-CLIP's "anomaly awareness score" (share of defective
images closer to the anomalous anchor) and gap, a per-state-word table and, for SigLIP, its
sigmoid probabilities ``sigmoid(scale * cos + bias)`` (what the model was trained to output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from anomalens.backbones.base import Backbone, Features
from anomalens.diagnose.stats import (
    balanced_subsample,
    knn_distance,
    pca_2d,
    probe_auroc,
    silhouette,
)
from anomalens.methods.common import pool_patches
from anomalens.metrics import image_auroc
from anomalens.postprocess import foreground_mask
from anomalens.prompts import ENSEMBLES, object_name, state_pattern

__all__ = [
    "JOINT",
    "AACLIPSource",
    "BackboneSource",
    "Collected",
    "EncoderConfig",
    "LayerSet",
    "collect",
    "default_layer_sets",
    "encoder_tests",
    "parse_layer_sets",
    "separation",
    "text_tests",
]

#: Name of the joint image-text feature set (text models and AA-CLIP).
JOINT = "joint space"
#: Where normal patches may come from.
NORMAL_PATCHES = ("all", "foreground")


@dataclass(frozen=True)
class LayerSet:
    """Backbone taps pooled together (``neighbourhood`` x ``neighbourhood`` local averaging)
    onto the coarsest grid of the set."""

    name: str
    taps: tuple[int, ...]
    neighbourhood: int = 1


def default_layer_sets(backbone: Backbone) -> list[LayerSet]:
    """CNNs: PatchCore's setting (stages 2+3, 3 x 3 neighbourhood) and stages 2 to 5 alone;
    ViTs: each default tap alone."""
    if backbone.architecture == "cnn":
        sets = [LayerSet("stages 2+3 (PatchCore)", (2, 3), 3)]
        return sets + [
            LayerSet(f"stage {s}", (s,)) for s in range(2, min(5, backbone.num_layers) + 1)
        ]
    return [LayerSet(f"{backbone.layer_unit[:-1]} {t}", (t,)) for t in backbone.default_layers]


def parse_layer_sets(text: str, backbone: Backbone) -> list[LayerSet]:
    """``"2+3,5"`` -> sets (2, 3) and (5,) (neighbourhood 1); ``patchcore`` is PatchCore's."""
    out = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        if item.lower() == "patchcore":
            out.append(LayerSet("stages 2+3 (PatchCore)", (2, 3), 3))
            continue
        try:
            taps = tuple(int(t) for t in item.split("+"))
        except ValueError:
            raise ValueError(
                f"--layers: expected taps like 2+3,5 or patchcore, got {item!r}"
            ) from None
        taps = backbone.resolve_layers(taps)
        unit = backbone.layer_unit[:-1] if len(taps) == 1 else backbone.layer_unit
        out.append(LayerSet(f"{unit} {'+'.join(map(str, taps))}", taps))
    if not out:
        raise ValueError("--layers: no layer set given")
    return out


@dataclass
class EncoderConfig:
    """Sampling and test settings (validated here).

    defect_fraction: share of a patch the mask must cover for a defect patch; normal_patches:
    ``foreground`` (the default: normal patches only on the object, by the OpenCV
    foreground mask: otherwise an object's defect patches are also told from the background,
    which inflates every score; textures are all foreground) or ``all``; patches_per_image:
    at most this many defect and this many normal patches per test image; memory_images: good
    training images of the kNN memory; memory_rows: cap on memory patches; silhouette_per_class:
    patches per class in the silhouette subsample; folds: probe folds; batch_size; seed.
    """

    defect_fraction: float = 0.25
    normal_patches: str = "foreground"
    patches_per_image: int = 48
    memory_images: int = 16
    memory_rows: int = 20000
    silhouette_per_class: int = 1000
    folds: int = 5
    batch_size: int = 8
    seed: int = 0
    scatter_points: int = 1500

    def __post_init__(self) -> None:
        if not 0 < self.defect_fraction <= 1:
            raise ValueError("defect_fraction must be in (0, 1]")
        for name in ("patches_per_image", "memory_images", "memory_rows", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.normal_patches not in NORMAL_PATCHES:
            raise ValueError(f"normal_patches must be one of {NORMAL_PATCHES}")
        if self.folds < 2 or self.silhouette_per_class < 2:
            raise ValueError("folds and silhouette_per_class must be >= 2")


# ----------------------------------------------------------------------------- sources


@dataclass
class Encoded:
    """Features of a batch: per set ``[B, h, w, C]``; ``joint`` ``[B, h, w, D]`` unit-norm
    joint-space patches and ``glob`` ``[B, D]`` unit image embeddings (None without)."""

    sets: dict[str, torch.Tensor]
    joint: torch.Tensor | None = None
    glob: torch.Tensor | None = None


class BackboneSource:
    """A frozen backbone and its layer sets; with a text tower also the joint space (patch
    tokens of the last three blocks projected and averaged, as WinCLIP's token scoring)."""

    def __init__(self, backbone: Backbone, layer_sets: Sequence[LayerSet], name: str) -> None:
        self.backbone = backbone
        self.layer_sets = list(layer_sets)
        self.name = name
        self.has_text = backbone.has_text
        self.kind = backbone.kind
        self.prompts: tuple[str, ...] | None = None  # None: the run's prompt ensembles

    def encode(self, images: Sequence[np.ndarray]) -> Encoded:
        bb = self.backbone
        taps = sorted({t for s in self.layer_sets for t in s.taps})
        text_taps = bb.resolve_layers((-3, -2, -1)) if self.has_text else ()
        all_taps = tuple(dict.fromkeys([*taps, *text_taps]))
        feats = bb.encode_image(bb.preprocess(images), all_taps, with_global=self.has_text)
        by_tap = dict(zip(all_taps, zip(feats.tokens, feats.grids, strict=True), strict=True))
        sets = {}
        for s in self.layer_sets:
            f = Features([by_tap[t][0] for t in s.taps], [by_tap[t][1] for t in s.taps])
            coarsest = min(range(len(s.taps)), key=lambda i: f.grids[i][0])
            sets[s.name] = pool_patches(f, s.neighbourhood, coarsest)
        out = Encoded(sets)
        if self.has_text:
            proj = torch.stack([bb.project_tokens(by_tap[t][0]) for t in text_taps]).mean(0)
            h, w = by_tap[text_taps[0]][1]
            out.joint = F.normalize(proj, dim=-1).reshape(-1, h, w, proj.shape[-1])
            out.glob = F.normalize(feats.global_embedding.float(), dim=-1)
        return out

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        return F.normalize(self.backbone.encode_text(list(prompts)).float(), dim=-1)

    def fixed_anchors(self) -> torch.Tensor | None:
        return None

    def scale_bias(self) -> tuple[float, float | None]:
        return self.backbone.logit_scale(), self.backbone.logit_bias()


class AACLIPSource:
    """The adapted features of a trained AA-CLIP checkpoint: the mean of its levels' projected
    tokens on the finest grid (the anchor space) and its detection token."""

    def __init__(self, detector: Any, name: str) -> None:
        self.detector = detector
        self.net = detector.network
        self.name = name
        self.layer_sets = [LayerSet("adapted levels", tuple(self.net.levels))]
        self.has_text = True
        self.kind = "aaclip"
        self.prompts = tuple(detector.config.prompts)  # the ensembles it was trained with

    def encode(self, images: Sequence[np.ndarray]) -> Encoded:
        bb = self.detector.backbone
        feats = self.net.image_features(bb.preprocess(images))
        finest = max(feats.grids, key=lambda g: g[0] * g[1])
        maps = []
        for tokens, grid in zip(feats.levels, feats.grids, strict=True):
            m = tokens.reshape(-1, *grid, tokens.shape[-1]).permute(0, 3, 1, 2)
            if tuple(grid) != tuple(finest):
                m = F.interpolate(m, size=finest, mode="bilinear", align_corners=True)
            maps.append(m)
        joint = F.normalize(torch.stack(maps).mean(0), dim=1).permute(0, 2, 3, 1).contiguous()
        return Encoded({"adapted levels": joint}, joint=joint, glob=feats.det)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.net.encode_prompts(prompts)

    def fixed_anchors(self) -> torch.Tensor | None:
        if self.net.anchor_source == "text":
            return None
        return self.net.fixed_anchor_pair().detach()

    def scale_bias(self) -> tuple[float, float | None]:
        return float(self.net.logit_scale), None


# ----------------------------------------------------------------------------- collection


@dataclass
class Rows:
    """Sampled patch rows of one feature set: features, 1 = defect, source image, type."""

    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    group: list[np.ndarray] = field(default_factory=list)
    kind: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self.x:
            z = np.zeros(0)
            return z.reshape(0, 1), z, z, z.astype(str)
        return (
            np.concatenate(self.x),
            np.concatenate(self.y),
            np.concatenate(self.group),
            np.concatenate(self.kind),
        )


@dataclass
class Collected:
    """Everything the tests need of one source on one category."""

    source: str
    patches: dict[str, tuple[np.ndarray, ...]]  # set -> (x, y, group, type)
    images: dict[str, np.ndarray]  # set -> [N, C] image embeddings
    memory: dict[str, np.ndarray]  # set -> memory patch rows
    memory_images: dict[str, np.ndarray]  # set -> [M, C] memory image embeddings
    labels: np.ndarray  # [N] image labels
    types: np.ndarray  # [N] defect types ("good")
    glob: np.ndarray | None = None  # [N, D] unit joint-space image embeddings
    memory_glob: np.ndarray | None = None


def patch_labels(
    mask: np.ndarray,
    grid: tuple[int, int],
    fraction: float,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """Per patch: 1 (defect, covered >= ``fraction``), 0 (untouched, and at least half on the
    ``foreground`` when given), -1 (left out)."""
    h, w = grid
    cover = cv2.resize(
        (np.asarray(mask) > 0).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA
    )
    out = np.full((h, w), -1, dtype=np.int8)
    normal = cover <= 0
    if foreground is not None:
        fg = cv2.resize(np.asarray(foreground, np.float32), (w, h), interpolation=cv2.INTER_AREA)
        normal &= fg >= 0.5
    out[cover >= fraction] = 1
    out[normal] = 0
    return out


def _sample(labels: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    idx = []
    for value in (0, 1):
        where = np.flatnonzero(labels == value)
        if len(where) > cap:
            where = rng.choice(where, cap, replace=False)
        idx.append(where)
    return np.sort(np.concatenate(idx))


def collect(
    source: Any,
    test: Sequence[Any],
    memory: Sequence[np.ndarray],
    config: EncoderConfig,
    progress: bool = True,
) -> Collected:
    """Encode test samples (image, mask, label, defect_type) and good memory images."""
    rng = np.random.default_rng(config.seed)
    names = [s.name for s in source.layer_sets]
    rows = {n: Rows() for n in names}
    if source.has_text and JOINT not in rows:
        rows[JOINT] = Rows()
    images: dict[str, list[np.ndarray]] = {n: [] for n in rows}
    globs: list[np.ndarray] = []
    chunks = [test[i : i + config.batch_size] for i in range(0, len(test), config.batch_size)]
    done = 0
    for chunk in tqdm(chunks, desc=f"diagnose {source.name}", unit="batch", disable=not progress):
        with torch.inference_mode():
            enc = source.encode([s.image for s in chunk])
        maps = dict(enc.sets)
        if enc.joint is not None:
            maps[JOINT] = enc.joint
        fgs = [
            foreground_mask(s.image) if config.normal_patches == "foreground" else None
            for s in chunk
        ]
        for name, m in maps.items():
            if name not in rows:
                continue
            arr = m.float().numpy()
            images[name].append(arr.mean((1, 2)))
            for k, s in enumerate(chunk):
                lab = patch_labels(s.mask, arr.shape[1:3], config.defect_fraction, fgs[k])
                lab = lab.reshape(-1)
                pick = _sample(lab, config.patches_per_image, rng)
                r = rows[name]
                r.x.append(arr[k].reshape(-1, arr.shape[-1])[pick])
                r.y.append(lab[pick].astype(np.int64))
                r.group.append(np.full(len(pick), done + k))
                r.kind.append(np.where(lab[pick] == 1, s.defect_type, "good"))
        if enc.glob is not None:
            globs.append(enc.glob.float().numpy())
        done += len(chunk)
    mem_rows: dict[str, list[np.ndarray]] = {n: [] for n in rows}
    mem_images: dict[str, list[np.ndarray]] = {n: [] for n in rows}
    mem_glob: list[np.ndarray] = []
    for i in range(0, len(memory), config.batch_size):
        with torch.inference_mode():
            enc = source.encode(list(memory[i : i + config.batch_size]))
        maps = dict(enc.sets)
        if enc.joint is not None:
            maps[JOINT] = enc.joint
        for name, m in maps.items():
            if name in rows:
                arr = m.float().numpy()
                mem_rows[name].append(arr.reshape(-1, arr.shape[-1]))
                mem_images[name].append(arr.mean((1, 2)))
        if enc.glob is not None:
            mem_glob.append(enc.glob.float().numpy())
    memory_out = {}
    for name, parts in mem_rows.items():
        m = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
        if len(m) > config.memory_rows:
            m = m[np.sort(rng.choice(len(m), config.memory_rows, replace=False))]
        memory_out[name] = m
    return Collected(
        source=source.name,
        patches={n: r.arrays() for n, r in rows.items()},
        images={n: np.concatenate(v) for n, v in images.items() if v},
        memory=memory_out,
        memory_images={n: np.concatenate(v) for n, v in mem_images.items() if v},
        labels=np.array([s.label for s in test]),
        types=np.array([s.defect_type for s in test]),
        glob=np.concatenate(globs) if globs else None,
        memory_glob=np.concatenate(mem_glob) if mem_glob else None,
    )


# ----------------------------------------------------------------------------- tests


def _safe_auroc(y: np.ndarray, s: np.ndarray) -> float | None:
    return image_auroc(y, s) if len(np.unique(y)) == 2 else None


def separation(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    memory: np.ndarray,
    config: EncoderConfig,
) -> dict[str, Any]:
    """Silhouette, linear-probe AUROC (folds by group) and kNN-to-memory AUROC of rows ``x``
    labelled ``y`` (1 = defect)."""
    keep = balanced_subsample(y, config.silhouette_per_class, config.seed)
    sil = silhouette(x[keep], y[keep]) if len(keep) else None
    probe = probe_auroc(x, y, groups, config.folds, config.seed)
    knn = _safe_auroc(y, knn_distance(x, memory)) if len(memory) else None
    return {
        "silhouette": sil,
        "probe_auroc": probe,
        "knn_auroc": knn,
        "n_defect": int((y == 1).sum()),
        "n_normal": int((y == 0).sum()),
        "n_groups": len(np.unique(groups)),
    }


def encoder_tests(data: Collected, config: EncoderConfig) -> dict[str, dict[str, Any]]:
    """Patch- and image-level separation of every feature set of ``data``."""
    out: dict[str, dict[str, Any]] = {}
    for name, (x, y, groups, _) in data.patches.items():
        patch = separation(x, y, groups, data.memory.get(name, np.zeros((0, 1))), config)
        emb = data.images.get(name)
        image = None
        if emb is not None:
            mem = data.memory_images.get(name, np.zeros((0, emb.shape[1])))
            image = separation(emb, data.labels, np.arange(len(emb)), mem, config)
        out[name] = {"patch": patch, "image": image}
    if data.glob is not None:
        mem = data.memory_glob if data.memory_glob is not None else np.zeros((0, 1))
        out.setdefault(JOINT, {"patch": None})["image"] = separation(
            data.glob, data.labels, np.arange(len(data.glob)), mem, config
        )
    return out


def scatter_points(data: Collected, name: str, config: EncoderConfig) -> dict[str, Any]:
    """2-D PCA coordinates of a subsample of a set's patches with their defect types."""
    x, y, _, kinds = data.patches[name]
    keep = balanced_subsample(y, config.scatter_points // 2, config.seed)
    return {"xy": pca_2d(x[keep]) if len(keep) > 2 else np.zeros((0, 2)), "types": kinds[keep]}


def _word_prompts(obj: str, ensembles: Sequence[str], extra: Sequence[str]):
    templates = list(dict.fromkeys(t for e in ensembles for t in ENSEMBLES[e].templates))
    normal = list(dict.fromkeys(s for e in ensembles for s in ENSEMBLES[e].normal_states))
    anomalous = list(dict.fromkeys(s for e in ensembles for s in ENSEMBLES[e].anomalous_states))
    anomalous += [state_pattern(w) for w in extra if state_pattern(w) not in anomalous]
    prompts = {s: [t.format(s.format(obj)) for t in templates] for s in normal + anomalous}
    return normal, anomalous, prompts


def text_tests(
    source: Any,
    data: Collected,
    class_name: str,
    ensembles: Sequence[str] = ("winclip",),
    extra_words: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Text-space tests (module doc). Scores are ``cos(e, A) - cos(e, N)``; None without a
    text tower or joint features."""
    if not source.has_text or data.glob is None or JOINT not in data.patches:
        return None
    obj = object_name(class_name)
    ensembles = getattr(source, "prompts", None) or ensembles
    px, py, _, _ = data.patches[JOINT]
    glob, labels = data.glob, data.labels
    fixed = source.fixed_anchors()
    table: list[dict[str, Any]] = []
    if fixed is not None:
        anchors = fixed.float()
    else:
        normal, anomalous, prompts = _word_prompts(obj, ensembles, extra_words)
        unique = list(dict.fromkeys(p for ps in prompts.values() for p in ps))
        with torch.inference_mode():
            emb = source.encode_text(unique).float()
        row_of = {p: i for i, p in enumerate(unique)}

        def mean_anchor(states: Sequence[str]) -> torch.Tensor:
            idx = [row_of[p] for s in states for p in prompts[s]]
            return F.normalize(emb[idx].mean(0), dim=0)

        anchors = torch.stack([mean_anchor(normal), mean_anchor(anomalous)])
        for side, states in (("normal", normal), ("anomalous", anomalous)):
            for s in states:
                a = mean_anchor([s])
                pair = (
                    torch.stack([a, anchors[1]])
                    if side == "normal"
                    else torch.stack([anchors[0], a])
                )
                d = (pair[1] - pair[0]).numpy()
                table.append(
                    {
                        "state": s.format(obj),
                        "side": side,
                        "image_auroc": _safe_auroc(labels, glob @ d),
                        "patch_auroc": _safe_auroc(py, px @ d),
                        "cosine_to_other_anchor": float(pair[0] @ pair[1]),
                    }
                )
    n, a = anchors[0].numpy(), anchors[1].numpy()
    cos_n, cos_a = glob @ n, glob @ a
    bad = labels == 1
    out: dict[str, Any] = {
        "anchor_cosine": float(n @ a),
        "zero_shot_image_auroc": _safe_auroc(labels, cos_a - cos_n),
        "zero_shot_patch_auroc": _safe_auroc(py, px @ (a - n)),
        "anomaly_awareness_score": float((cos_a[bad] > cos_n[bad]).mean()) if bad.any() else None,
        "anomaly_gap": float((cos_n[bad] - cos_a[bad]).mean()) if bad.any() else None,
        "words": table,
        "sigmoid": None,
    }
    scale, bias = source.scale_bias()
    if bias is not None:
        p_n = 1 / (1 + np.exp(-(scale * cos_n + bias)))
        p_a = 1 / (1 + np.exp(-(scale * cos_a + bias)))
        good = labels == 0
        out["sigmoid"] = {
            "logit_scale": scale,
            "logit_bias": bias,
            "p_anomalous_on_defective": float(p_a[bad].mean()) if bad.any() else None,
            "p_anomalous_on_good": float(p_a[good].mean()) if good.any() else None,
            "p_normal_on_good": float(p_n[good].mean()) if good.any() else None,
            "p_normal_on_defective": float(p_n[bad].mean()) if bad.any() else None,
            "defective_called_anomalous": float((p_a[bad] > 0.5).mean()) if bad.any() else None,
            "good_called_anomalous": float((p_a[good] > 0.5).mean()) if good.any() else None,
            "auroc": _safe_auroc(labels, p_a),
        }
    return out
