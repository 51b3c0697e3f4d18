"""Two-stage training of AA-CLIP adapters, with validation-based checkpoint choice and resume.

Stage 1 (``text`` anchors only): the text adapters learn anchors that segment the frozen image
features: segmentation loss (focal + Dice on both channels) summed over ALL levels (the
reference overwrote it per level) + ``disentangle_weight`` * cos(T_N, T_A)^2.
Stage 2: the image adapters, projections and (``learned`` / ``centroid``) anchors learn with the
text anchors frozen: cross-entropy of the detection logits + the segmentation loss of every
level (+ the disentangle term on trainable anchors). ``learned`` / ``centroid`` anchors have no
stage 1. Both stages use Adam (betas 0.5, 0.999), MultiStepLR over optimizer steps, gradient
accumulation, and the backbone's precision (bf16 autocast on CPU) for the forward pass.

Output folder ``OUT``:

* ``OUT/config.json`` + ``OUT/model.safetensors``: the best model so far (an :class:`AACLIP`
  checkpoint with only the trained tensors), chosen after every epoch on the validation split
  (mean of image and pixel AUROC), never on a test set; the last epoch when there is no
  validation split;
* ``OUT/last/``: resume state (``state.json``, ``weights.safetensors``,
  ``optimizer.safetensors``), rewritten every ``checkpoint_every`` optimizer steps and at the end
  of every epoch. A new run with the same ``OUT`` continues from it (``resume=True``); batches are
  reproducible from the seed, so the continued run sees the same data it would have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from anomalens import distributed
from anomalens.atomic import atomic_write_json
from anomalens.errors import ResumeError
from anomalens.methods.aaclip.data import TrainingData, TrainItem
from anomalens.methods.aaclip.detector import AACLIP
from anomalens.methods.aaclip.model import ImageFeatures, image_scores
from anomalens.methods.aaclip.parts import disentangle_loss, segmentation_loss
from anomalens.metrics import image_auroc, pixel_auroc
from anomalens.training_state import load_optimizer_tensors, optimizer_tensors, save_tensors

LAST_DIR = "last"
STATE_FILE = "state.json"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
BEST_TEXT_FILE = "best_text.safetensors"

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training schedule (AA-CLIP defaults; stored in the checkpoint's config.json).

    text_epochs / image_epochs: epochs of stage 1 / 2; *_batch_size: images per micro-batch;
    accumulate: micro-batches per optimizer step; *_lr: Adam learning rates; betas: Adam betas;
    milestones / gamma: MultiStepLR over optimizer steps; disentangle_weight: weight of
    cos(T_N, T_A)^2; prompts_per_step: prompts drawn per side for each stage-1 step (None: all);
    checkpoint_every: optimizer steps between resume checkpoints; seed: data order and
    augmentation.
    """

    text_epochs: int = 5
    image_epochs: int = 20
    text_batch_size: int = 16
    image_batch_size: int = 8
    accumulate: int = 1
    text_lr: float = 1e-5
    image_lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    milestones: tuple[int, ...] = (16000, 32000)
    gamma: float = 0.5
    disentangle_weight: float = 0.1
    prompts_per_step: int | None = 32
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.milestones = tuple(int(m) for m in self.milestones)
        for name in ("text_epochs", "image_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("text_batch_size", "image_batch_size", "accumulate", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.image_epochs < 1:
            raise ValueError("image_epochs must be >= 1 (stage 2 trains the image side)")
        if self.text_lr <= 0 or self.image_lr <= 0:
            raise ValueError("learning rates must be > 0")


@dataclass
class TrainResult:
    """What training did: per-epoch history, the chosen epoch and the wall time."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    seconds: float = 0.0
    resumed_from: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _masks(items: Sequence[TrainItem]) -> torch.Tensor:
    return torch.from_numpy(np.stack([it.mask for it in items])).float()


def _labels(items: Sequence[TrainItem]) -> torch.Tensor:
    return torch.tensor([int(it.label) for it in items], dtype=torch.long)


def seg_probs(logits: Sequence[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    """Per level: logits ``[B, 2, h, w]`` upsampled to ``size`` (bilinear, corners aligned as
    the reference), then softmax over the two channels."""
    return [
        F.interpolate(lg.float(), size=size, mode="bilinear", align_corners=True).softmax(dim=1)
        for lg in logits
    ]


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------


class Trainer:
    """Runs both stages on a :class:`TrainingData` for an :class:`AACLIP` detector."""

    def __init__(
        self,
        detector: AACLIP,
        data: TrainingData,
        config: TrainConfig,
        output: str | Path,
        progress: bool = True,
    ) -> None:
        self.detector = detector
        self.data = data
        self.cfg = config
        self.out = Path(output)
        self.progress = progress
        self.net = detector.network
        self.bb = detector.backbone
        self.result = TrainResult()
        self.best_metric = -math.inf
        self._text_cache: dict[str, torch.Tensor] = {}
        self._val = data.validation()
        self._start = time.perf_counter()
        # N processes (anomalens.distributed): each takes its share of every global batch,
        # rank 0 validates and writes the checkpoints
        self.dist = distributed.context()
        self._step = self.loss

    def check_shards(self) -> None:
        """Refuse a schedule whose global batches leave a process without images."""
        world = self.dist.world
        for stage, _, bs, _, _ in self.stages():
            n = len(self.data)
            sizes = {min(bs, n - start) for start in range(0, n, bs)}
            if min(sizes) < world:
                raise ValueError(
                    f"stage {stage}: a batch of {min(sizes)} images cannot be shared by {world} "
                    f"processes ({n} training images, batch size {bs}); change the batch size "
                    "or --nproc"
                )

    # -- stages -----------------------------------------------------------------------------
    def stages(self) -> list[tuple[int, int, int, float, list[torch.nn.Parameter]]]:
        """``(stage, epochs, batch size, lr, params)`` of the stages that run."""
        c = self.cfg
        out = []
        if self.net.anchor_source == "text" and c.text_epochs > 0:
            out.append((1, c.text_epochs, c.text_batch_size, c.text_lr, self.net.text_parameters()))
        if c.image_epochs > 0:
            out.append(
                (2, c.image_epochs, c.image_batch_size, c.image_lr, self.net.image_parameters())
            )
        return out

    def _anchors_for(self, categories: Sequence[str], stage: int, rng: np.random.Generator):
        """``[B, 2, D]`` anchors per item (stage 1: with gradients, sampled prompts)."""
        net = self.net
        if net.anchor_source != "text":
            pair = net.fixed_anchor_pair()
            return pair.unsqueeze(0).expand(len(categories), -1, -1)
        if stage == 1:
            pairs = {
                cat: net.text_anchor_pair(
                    cat,
                    self.detector.config.prompts,
                    grad=True,
                    sample=self.cfg.prompts_per_step,
                    generator=rng,
                )
                for cat in dict.fromkeys(categories)
            }
        else:
            pairs = {cat: self._text_anchor(cat) for cat in dict.fromkeys(categories)}
        return torch.stack([pairs[cat] for cat in categories])

    def _text_anchor(self, category: str) -> torch.Tensor:
        if category not in self._text_cache:
            self._text_cache[category] = self.net.text_anchor_pair(
                category, self.detector.config.prompts
            ).detach()
        return self._text_cache[category]

    def loss(self, items: Sequence[TrainItem], stage: int, rng: np.random.Generator):
        """``(loss, parts)`` of one micro-batch."""
        net, bb = self.net, self.bb
        pixels = bb.preprocess([it.image for it in items])
        masks = _masks(items)
        size = tuple(masks.shape[-2:])
        cats = [it.category for it in items]
        parts: dict[str, float] = {}
        if stage == 1:
            with torch.no_grad():
                levels = net.frozen_features(pixels)
            grids = [self.bb.grid()] * len(levels)
            anchors = self._anchors_for(cats, 1, rng)
            feats = ImageFeatures(levels=levels, grids=grids, det=levels[-1].mean(1))
            seg = segmentation_loss(seg_probs(net.level_logits(feats, anchors), size), masks)
            dis = disentangle_loss(anchors[:, 0], anchors[:, 1])
            loss = seg + self.cfg.disentangle_weight * dis
            parts.update(seg=seg.item(), dis=dis.item())
        else:
            feats = net.image_features(pixels, grad=True)
            if net.anchor_source == "centroid":
                net.update_centroid(feats, masks)
            anchors = self._anchors_for(cats, 2, rng)
            seg = segmentation_loss(seg_probs(net.level_logits(feats, anchors), size), masks)
            cls = F.cross_entropy(net.det_logits(feats, anchors).float(), _labels(items))
            loss = seg + cls
            parts.update(seg=seg.item(), cls=cls.item())
            if net.anchor_source != "text":
                dis = disentangle_loss(anchors[:1, 0], anchors[:1, 1])
                loss = loss + self.cfg.disentangle_weight * dis
                parts["dis"] = dis.item()
        return loss, parts

    # -- validation -------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, stage: int) -> dict[str, float]:
        """Image and pixel AUROC on the validation split (NaN when undefined)."""
        if not self._val:
            return {}
        net, bb = self.net, self.bb
        self._stage1_anchors: dict[str, torch.Tensor] = {}
        if net.anchor_source == "centroid":
            self._refresh_centroid()
        scores: list[float] = []
        maps: list[np.ndarray] = []
        bs = self.detector.config.batch_size
        for start in range(0, len(self._val), bs):
            chunk = self._val[start : start + bs]
            pixels = bb.preprocess([it.image for it in chunk])
            if stage == 1:
                levels = net.frozen_features(pixels)
                feats = ImageFeatures(levels, [bb.grid()] * len(levels), levels[-1].mean(1))
            else:
                feats = net.image_features(pixels)
            for k, it in enumerate(chunk):
                anchors = self._anchor_eval(it.category, stage)
                one = ImageFeatures(
                    [t[k : k + 1] for t in feats.levels], feats.grids, feats.det[k : k + 1]
                )
                m, det = net.anomaly_maps(
                    one, anchors, self.detector.config.sigma, it.mask.shape[0]
                )
                maps.append(m[0].numpy())
                scores.append(float(image_scores(self.detector.config.image_score, det, m)[0]))
        labels = [it.label for it in self._val]
        masks = [it.mask for it in self._val]
        out = {"val_image_auroc": _safe(image_auroc, labels, scores)}
        out["val_pixel_auroc"] = _safe(pixel_auroc, masks, maps)
        return out

    def _anchor_eval(self, category: str, stage: int) -> torch.Tensor:
        """Anchors for validation: text anchors are computed once per category (stage 1: once
        per validation, as the text adapters change between epochs; stage 2: frozen, cached)."""
        if self.net.anchor_source != "text":
            return self.net.fixed_anchor_pair()
        if stage == 2:
            return self._text_anchor(category)
        if category not in self._stage1_anchors:
            self._stage1_anchors[category] = self.net.text_anchor_pair(
                category, self.detector.config.prompts
            )
        return self._stage1_anchors[category]

    def _refresh_centroid(self) -> None:
        """Exact centroid over the good training images (their un-augmented views)."""
        good = [s.image for s in self.data.train_samples if s.label == 0]
        bs = self.detector.config.batch_size
        self.net.compute_centroid(
            self.bb.preprocess(good[i : i + bs]) for i in range(0, len(good), bs)
        )

    # -- checkpoints ------------------------------------------------------------------------
    def _save_best(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.detector.trained = True
        self.detector.training_summary = {
            "train": dataclasses.asdict(self.cfg),
            "data": {
                "mode": self.data.mode,
                "n_train": len(self.data),
                "n_val": len(self._val),
                "categories": list(self.data.categories),
            },
            "seconds": time.perf_counter() - self._start,
            "chosen": record,
            "history": self.result.history,
        }
        self.detector.save(self.out)

    def _save_state(self, position: dict[str, Any], opt, sched) -> None:
        """Resume state; ``opt`` / ``sched`` None at a stage boundary (fresh optimizer next)."""
        if not self.dist.is_main:
            return
        folder = self.out / LAST_DIR
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(dict(self.net.state_dict()), folder / WEIGHTS_FILE)
        save_tensors({} if opt is None else optimizer_tensors(opt), folder / OPTIMIZER_FILE)
        state = {
            "position": position,
            "scheduler_last_epoch": 0 if sched is None else sched.last_epoch,
            "best_metric": None if self.best_metric == -math.inf else self.best_metric,
            "history": self.result.history,
            "fingerprint": self._fingerprint(),
        }
        atomic_write_json(folder / STATE_FILE, state, allow_nan=True)

    def _fingerprint(self) -> dict[str, Any]:
        c = self.detector.config
        return {
            "backbone": c.backbone,
            "anchors": c.anchors,
            "image_size": self.bb.image_size,
            "n_train": len(self.data),
            "train": dataclasses.asdict(self.cfg),
        }

    def _load_state(self) -> dict[str, Any] | None:
        folder = self.out / LAST_DIR
        if not (folder / STATE_FILE).is_file():
            return None
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if json.loads(json.dumps(self._fingerprint())) != state.get("fingerprint"):
            raise ResumeError(
                f"{folder}: resume state of a different run (backbone, anchors, data size or "
                "schedule differ); use another --output or pass --no-resume to start over"
            )
        self.net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
        state["optimizer"] = load_file(str(folder / OPTIMIZER_FILE))
        return state

    # -- main loop --------------------------------------------------------------------------
    def run(self, resume: bool = True) -> TrainResult:
        """Train both stages; returns the history and the chosen epoch."""
        start_time = time.perf_counter()
        if not resume and (self.out / LAST_DIR).exists() and self.dist.is_main:
            shutil.rmtree(self.out / LAST_DIR)
        self.dist.barrier()
        state = self._load_state() if resume else None
        position = state["position"] if state else {"stage": 0, "epoch": 0, "batch": 0}
        if state:
            self.result.history = list(state.get("history", []))
            best = state.get("best_metric")
            self.best_metric = -math.inf if best is None else float(best)
            self.result.resumed_from = dict(position)
            logger.info(
                f"resuming at stage {position['stage']}, epoch {position['epoch'] + 1}, "
                f"batch {position['batch']}"
            )
        self.net.requires_grad_(False)
        for stage, epochs, bs, lr, params in self.stages():
            if stage < position["stage"]:
                continue
            for param in params:
                param.requires_grad_(True)
            self._step = self.dist.wrap(self.net, self.loss)
            opt = torch.optim.Adam(params, lr=lr, betas=self.cfg.betas)
            sched = torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=list(self.cfg.milestones), gamma=self.cfg.gamma
            )
            first_epoch, skip = 0, 0
            if state and stage == position["stage"]:
                if state["optimizer"]:
                    load_optimizer_tensors(opt, state["optimizer"])
                with warnings.catch_warnings():  # replaying the schedule, no optimizer step
                    warnings.simplefilter("ignore", UserWarning)
                    for _ in range(int(state["scheduler_last_epoch"])):
                        sched.step()
                first_epoch, skip = position["epoch"], position["batch"]
            for epoch in range(first_epoch, epochs):
                self._epoch(stage, epoch, bs, opt, sched, skip)
                skip = 0
            for param in params:
                param.requires_grad_(False)
            if stage == 1:
                self._restore_best_text()
                self._save_state({"stage": 2, "epoch": 0, "batch": 0}, None, None)
            state = None
        self.result.seconds = time.perf_counter() - start_time
        self.net.eval()
        return self.result

    def _epoch(self, stage: int, epoch: int, bs: int, opt, sched, skip: int) -> None:
        cfg = self.cfg
        self.net.train()
        t0 = time.perf_counter()
        n_batches = self.data.num_batches(bs)
        bar = tqdm(
            total=n_batches,
            initial=skip,
            desc=f"stage {stage} epoch {epoch + 1}",
            unit="batch",
            disable=not (self.progress and self.dist.is_main),
        )
        running: dict[str, float] = {}
        seen = 0
        opt.zero_grad(set_to_none=True)
        ctx = self.dist
        for index, batch in enumerate(self.data.epoch(epoch, bs, stage)):
            if index < skip:
                continue
            items = ctx.shard(batch)  # the whole batch on one process
            rng = np.random.default_rng([cfg.seed, stage, epoch, index])
            last = index + 1 == n_batches
            sync = (index + 1) % cfg.accumulate == 0 or last
            with ctx.no_sync(self._step, sync):
                loss, parts = self._step(items, stage, rng)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite training loss at stage {stage}, epoch {epoch + 1}, batch "
                        f"{index}: {parts}; lower the learning rate or use --precision fp32"
                    )
                share = ctx.loss_scale(len(items), len(batch))
                (loss * share / cfg.accumulate).backward()
            seen += 1
            for k, v in {"loss": loss.item(), **parts}.items():
                # summed over ranks at the end: the mean over each global batch
                running[k] = running.get(k, 0.0) + v * share / ctx.world
            if sync:
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
                if sched.last_epoch % cfg.checkpoint_every == 0 and not last:
                    where = {"stage": stage, "epoch": epoch, "batch": index + 1}
                    self._save_state(where, opt, sched)
            bar.update(1)
            bar.set_postfix(loss=f"{running['loss'] / seen:.4f}")
        bar.close()
        running = ctx.sum(running)
        self.net.eval()
        record: dict[str, Any] = {
            "stage": stage,
            "epoch": epoch + 1,
            **{k: v / max(seen, 1) for k, v in running.items()},
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        if ctx.is_main:
            record.update(self.validate(stage))
        metric = _selection_metric(record)
        record["selection_metric"] = metric
        self.result.history.append(record)
        shown = "".join(
            f", {k} {record[k]:.3f}" for k in ("val_image_auroc", "val_pixel_auroc") if k in record
        )
        logger.info(
            f"stage {stage} epoch {epoch + 1}: loss {record.get('loss', math.nan):.4f}{shown}"
        )
        if stage == 1:
            self._keep_best_text(record, metric)
        elif metric is None or metric >= self.best_metric:
            # stage 2 decides the saved model; without validation the last epoch wins
            self.best_metric = metric if metric is not None else self.best_metric
            self.result.best = record
            record["kept"] = True
            self._save_best(record)
        self._save_state({"stage": stage, "epoch": epoch + 1, "batch": 0}, opt, sched)
        ctx.barrier()  # the other ranks read what rank 0 wrote (best text adapters, resume)

    def _keep_best_text(self, record: dict[str, Any], metric: float | None) -> None:
        """Stage 1: remember the text adapters of the best epoch (restored before stage 2)."""
        best = self._best_text_metric()
        if (metric is None or best is None or metric >= best) and self.dist.is_main:
            record["kept"] = True
            folder = self.out / LAST_DIR
            folder.mkdir(parents=True, exist_ok=True)
            text = {k: v for k, v in self.net.state_dict().items() if k.startswith("text_")}
            save_tensors(text, folder / BEST_TEXT_FILE)

    def _best_text_metric(self) -> float | None:
        kept = [
            r.get("selection_metric")
            for r in self.result.history[:-1]
            if r["stage"] == 1 and r.get("kept")
        ]
        return kept[-1] if kept else None

    def _restore_best_text(self) -> None:
        path = self.out / LAST_DIR / BEST_TEXT_FILE
        if path.is_file():
            self.net.load_state_dict(load_file(str(path)), strict=False)


def _safe(fn, a, b) -> float:
    try:
        value = float(fn(a, b))
    except ValueError:
        return float("nan")
    return value


def _selection_metric(record: dict[str, Any]) -> float | None:
    values = [
        record[k]
        for k in ("val_image_auroc", "val_pixel_auroc")
        if k in record and not math.isnan(record[k])
    ]
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------


def train_aaclip(
    detector: AACLIP,
    samples: Sequence,
    output: str | Path,
    config: TrainConfig | None = None,
    *,
    mode: str = "masks",
    shots: int | None = None,
    val_fraction: float = 0.1,
    defect_kinds: Sequence[str] = ("cutpaste", "perlin"),
    defect_probability: float = 0.5,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train ``detector``'s adapters on ``samples`` and write the chosen model to ``output``.

    ``mode``: ``masks`` (defective samples with masks), ``kshot`` (``shots`` per category, half
    good, half defective) or ``synthetic`` (good samples get cut-paste / Perlin defects). After
    training ``detector`` holds the chosen (best validation) weights.
    """
    config = config or TrainConfig()
    data = TrainingData(
        samples,
        detector.backbone.image_size,
        mode,
        shots=shots,
        val_fraction=val_fraction,
        seed=config.seed,
        defect_kinds=tuple(defect_kinds),
        defect_probability=defect_probability,
    )
    trainer = Trainer(detector, data, config, output, progress=progress)
    trainer.check_shards()
    result = trainer.run(resume=resume)
    trainer.dist.barrier()  # rank 0 has written the chosen checkpoint
    chosen = AACLIP.load(output)
    detector.network.load_state_dict(chosen.network.state_dict())
    detector.trained = True
    detector.training_summary = chosen.training_summary
    return result
