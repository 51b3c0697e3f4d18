"""AA-CLIP / AA-SigLIP: anomaly-aware residual adapters on a frozen backbone.

Ma et al., "AA-CLIP: Enhancing Zero-shot Anomaly Detection via Anomaly-Aware CLIP" (CVPR 2025;
reference code ``Mwxinnn/AA-CLIP``), generalised to SigLIP and to vision-only backbones
(DINOv2, EfficientNet-Lite) as in the AA-SigLIP design notes. The backbone stays frozen; only
small modules are trained (:mod:`anomalens.methods.aaclip.train`):

* image adapters: a :class:`~anomalens.methods.aaclip.parts.ResidualAdapter` after each of the
  first ``adapt_layers`` layers (a quarter of the depth: 6 for ViT-L/24, 7 for SO400M/27, 3 for
  B/12; 2 of the 7 EfficientNet stages), ``x <- 0.1 * adapter(x) + 0.9 * x``;
* projections: one :class:`~anomalens.methods.aaclip.parts.Projection` per feature level (the
  quarters of the depth for ViTs) from the final-normed tokens into the anchor space, and one for
  the detection token (mean of the normalised projected tokens of the deepest level);
* anchors (``anchors``): ``text``: prompt-ensemble embeddings of the text tower with residual
  adapters after its first 3 layers and a residual projection after its output (CLIP, SigLIP);
  ``learned``: two trainable vectors; ``centroid``: the normal anchor is the mean projected
  feature of good images (kept as a buffer, recomputed from the good images at ``fit``), the
  anomalous anchor is trainable. ``learned`` and ``centroid`` need no text tower.

Inference. Per level ``l``: ``p_l = softmax(logit_scale * cos(token, [T_N, T_A]))[anomalous]`` on
the patch grid; the levels are averaged (coarser grids upsampled to the finest), blurred with a
Gaussian of ``sigma`` patches (1 for industrial images in AA-CLIP, 1.5 for medical) and upsampled
to the input. The image score is the detection probability
``softmax(logit_scale * cos(det, [T_N, T_A]))[anomalous]``, the map maximum, or their mean
(``image_score`` = ``det`` / ``max`` / ``fused``). Deviation from the reference: its detection
logits are unscaled cosines (probabilities stuck in [0.27, 0.73]); ours use the same scale as
the maps so the two can be fused.

A detector needs trained adapters: ``anomalens train --method aaclip ...`` writes them (only the
trained tensors, as safetensors + config.json); ``fit`` on good images of the target category
then computes the anchors (and centroid) and calibrates the thresholds.
"""

from anomalens.errors import UntrainedError
from anomalens.methods.aaclip.data import MODES as TRAINING_MODES
from anomalens.methods.aaclip.detector import AACLIP, UNTRAINED_MESSAGE
from anomalens.methods.aaclip.model import (
    ANCHOR_SOURCES,
    IMAGE_SCORES,
    AACLIPConfig,
    AdaptedModel,
    ImageFeatures,
)
from anomalens.methods.aaclip.train import TrainConfig, TrainResult, train_aaclip

__all__ = [
    "AACLIP",
    "ANCHOR_SOURCES",
    "IMAGE_SCORES",
    "TRAINING_MODES",
    "UNTRAINED_MESSAGE",
    "AACLIPConfig",
    "AdaptedModel",
    "ImageFeatures",
    "TrainConfig",
    "TrainResult",
    "UntrainedError",
    "train_aaclip",
]
