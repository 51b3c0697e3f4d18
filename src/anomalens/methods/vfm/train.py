"""Training of AnomalyVFM v1.1's LoRA adapters and head on synthetic anomalies, with resume.

Per epoch every training image (good, resized to the backbone's input) is used once in a seeded
order; with probability ``anomaly_probability`` it gets one synthetic anomaly of a stage drawn
from ``stages`` (:mod:`anomalens.methods.vfm.data`). The head predicts per patch the share of
the patch the anomaly covers; the loss is :func:`~anomalens.methods.vfm.model.confidence_loss`.
AdamW updates only the LoRA factors and the head; the forward pass runs in the backbone's
precision (bf16 autocast on CPU with ``precision="bf16"``; ``auto`` picks fp32 on CPUs without
native bf16).

With an ``output`` folder, ``OUT/last/`` holds the resume state (``state.json``,
``weights.safetensors``, ``optimizer.safetensors``), each file written to a temporary name and
moved into place with ``os.replace``; it is rewritten every ``checkpoint_every`` optimizer steps
and after every epoch. A new run with the same ``OUT`` and settings continues from it; the data
of every step is reproducible from the seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from anomalens.atomic import atomic_write_json
from anomalens.errors import ResumeError
from anomalens.methods.vfm.data import SyntheticAnomalies
from anomalens.methods.vfm.model import VFMNetwork, confidence_loss, patch_targets
from anomalens.training_state import load_optimizer_tensors, optimizer_tensors, save_tensors

LAST_DIR = "last"
STATE_FILE = "state.json"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
#: config fields that must match for a run to resume another
RESUME_FIELDS = (
    "backbone",
    "image_size",
    "layers",
    "lora_rank",
    "lora_alpha",
    "lora_layers",
    "head_hidden",
    "epochs",
    "train_batch_size",
    "lr",
    "weight_decay",
    "temperature",
    "stages",
    "anomaly_probability",
    "seed",
)

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Per-epoch history (mean loss, seconds), total seconds, where a resumed run started."""

    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: dict[str, int] | None = None


class VFMTrainer:
    """Trains a :class:`VFMNetwork` on good images (``S x S`` uint8, ``S`` the backbone size)."""

    def __init__(
        self,
        network: VFMNetwork,
        config: Any,
        images: list[np.ndarray],
        output: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.net = network
        self.cfg = config
        self.data = SyntheticAnomalies(
            images, config.stages, config.anomaly_probability, config.seed
        )
        self.out = Path(output) if output is not None else None
        self.progress = progress
        self.result = TrainResult()

    def _fingerprint(self) -> dict[str, Any]:
        c = dataclasses.asdict(self.cfg)
        return {
            **{k: c[k] for k in RESUME_FIELDS},
            "input_size": self.net.backbone.image_size,
            "n_train": len(self.data.images),
        }

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.net.trainable_parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )

    # -- resume state -----------------------------------------------------------------------
    def _save_state(self, epoch: int, batch: int, opt: torch.optim.Optimizer) -> None:
        if self.out is None:
            return
        folder = self.out / LAST_DIR
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(self.net.state_dict(), folder / WEIGHTS_FILE)
        save_tensors(optimizer_tensors(opt), folder / OPTIMIZER_FILE)
        state = {
            "position": {"epoch": epoch, "batch": batch},
            "history": self.result.history,
            "fingerprint": self._fingerprint(),
        }
        atomic_write_json(folder / STATE_FILE, state)

    def _load_state(self, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
        if self.out is None or not (self.out / LAST_DIR / STATE_FILE).is_file():
            return None
        folder = self.out / LAST_DIR
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if json.loads(json.dumps(self._fingerprint())) != state.get("fingerprint"):
            raise ResumeError(
                f"{folder}: resume state of a different run (backbone, data size or training "
                "settings differ); use another --output or pass --no-resume to start over"
            )
        self.net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        optimizer = load_file(str(folder / OPTIMIZER_FILE))
        if optimizer:
            load_optimizer_tensors(opt, optimizer)
        return state

    # -- loop -------------------------------------------------------------------------------
    def run(self, resume: bool = True) -> TrainResult:
        """Train ``epochs`` epochs (continuing a saved run when ``resume``)."""
        start = time.perf_counter()
        if self.out is not None and not resume and (self.out / LAST_DIR).exists():
            shutil.rmtree(self.out / LAST_DIR)
        self.net.requires_grad_(False)
        for p in self.net.trainable_parameters():
            p.requires_grad_(True)
        opt = self._optimizer()
        state = self._load_state(opt) if resume else None
        first_epoch, skip = 0, 0
        if state is not None:
            self.result.history = list(state.get("history", []))
            first_epoch, skip = state["position"]["epoch"], state["position"]["batch"]
            self.result.resumed_from = dict(state["position"])
            logger.info("resuming at epoch %d, batch %d", first_epoch + 1, skip)
        try:
            for epoch in range(first_epoch, self.cfg.epochs):
                self._epoch(epoch, opt, skip)
                skip = 0
        finally:
            for p in self.net.trainable_parameters():
                p.requires_grad_(False)
            self.net.eval()
        self.result.seconds = time.perf_counter() - start
        return self.result

    def _batches(self, epoch: int) -> list[list[int]]:
        n, bs = len(self.data.images), self.cfg.train_batch_size
        return [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]

    def step_loss(self, epoch: int, positions: list[int]) -> torch.Tensor:
        """The loss of one batch of positions of ``epoch`` (autograd on)."""
        order = self.data.order(epoch)
        items = [self.data.item(epoch, p, order) for p in positions]
        bb = self.net.backbone
        pixels = bb.preprocess([img for img, _ in items])
        masks = torch.from_numpy(np.stack([m for _, m in items]))
        feats = self.net.features(pixels, grad=True)
        logits = self.net.logits(feats)
        target = patch_targets(masks, tuple(logits.shape[-2:]))
        return confidence_loss(logits, target, self.cfg.temperature)

    def _epoch(self, epoch: int, opt: torch.optim.Optimizer, skip: int) -> None:
        cfg = self.cfg
        self.net.train()
        t0 = time.perf_counter()
        batches = self._batches(epoch)
        bar = tqdm(
            total=len(batches),
            initial=skip,
            desc=f"vfm train epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not self.progress,
        )
        total, seen = 0.0, 0
        for index, positions in enumerate(batches):
            if index < skip:
                continue
            loss = self.step_loss(epoch, positions)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss at epoch {epoch + 1}, batch {index}; lower the "
                    "learning rate or use --precision fp32"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            seen += 1
            bar.update(1)
            bar.set_postfix(loss=f"{total / seen:.4f}")
            last = index + 1 == len(batches)
            if (index + 1) % cfg.checkpoint_every == 0 and not last:
                self._save_state(epoch, index + 1, opt)
        bar.close()
        record = {
            "epoch": epoch + 1,
            "loss": total / max(seen, 1),
            "seconds": time.perf_counter() - t0,
        }
        self.result.history.append(record)
        logger.info("vfm epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, record["loss"])
        self._save_state(epoch + 1, 0, opt)


__all__ = ["TrainResult", "VFMTrainer"]
