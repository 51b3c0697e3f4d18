"""AnomalyVFM v1.1 (seed design): LoRA-adapted vision foundation model features, a per-patch
anomaly head trained on three-stage synthetic anomalies, and Mahalanobis scoring.

The design follows the "AnomalyVFM v1.1" notes this project was seeded with (DINOv2-base,
LoRA rank 16 / alpha 32, synthetic anomalies in three stages, a confidence loss with
temperature, a head 768 -> 512 -> 256 -> 1, AdamW for 5-10 epochs, Mahalanobis scoring). It is
NOT the published AnomalyVFM (CVPR 2026, github MaticFuc/AnomalyVFM), a zero-shot method; see
``docs/vfm.md`` for the differences.

* :mod:`~anomalens.methods.vfm.lora`: peft LoRA in the frozen backbone (DINOv2 attention q / v
  and output projection; EfficientNet-Lite 1x1 convolutions, so it runs on real weights here);
* :mod:`~anomalens.methods.vfm.data`: the three stages of synthetic anomalies (texture noise
  patches, geometric shapes, patches cut from other images) with exact masks;
* :mod:`~anomalens.methods.vfm.model`: config, head ``D -> 512 -> 256 -> 1`` (``D`` from the
  backbone), confidence loss;
* :mod:`~anomalens.methods.vfm.train`: AdamW training with resume state;
* :mod:`~anomalens.methods.vfm.detector`: after training, Gaussian statistics of the adapted
  features of good images (one Ledoit-Wolf Gaussian of the pooled features, one Gaussian per
  grid position); image score = ``w * z(head) + (1 - w) * z(Mahalanobis)`` (z: standardised by
  the good training images), likewise for maps, ``w`` chosen on synthetic defects of held-out
  good images, never on a test set; thresholds from the held-out good images.
"""

from anomalens.methods.vfm.data import STAGES
from anomalens.methods.vfm.detector import FUSION_GRID, VFM, split_validation
from anomalens.methods.vfm.model import VFMConfig, VFMNetwork, confidence_loss
from anomalens.methods.vfm.train import TrainResult, VFMTrainer

__all__ = [
    "FUSION_GRID",
    "STAGES",
    "VFM",
    "TrainResult",
    "VFMConfig",
    "VFMNetwork",
    "VFMTrainer",
    "confidence_loss",
    "split_validation",
]
