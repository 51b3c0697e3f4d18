"""Shared code for transformers ViT backbones: offline-first loading and multi-layer extraction.

Loading policy (``load_pretrained``, ``load_tokenizer``):

1. a local folder (``kind:/path/to/folder``) is loaded from disk, never touching the network;
2. a hub id is first loaded with ``local_files_only=True`` (weights already in the HF cache);
3. only if that fails, and ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are not set, the hub is
   probed with one ``HEAD`` request (``HUB_PROBE_TIMEOUT`` seconds, no retries); if it answers,
   the model is downloaded, otherwise ``ModelNotAvailableError`` is raised at once. Without the
   probe, huggingface_hub retries an unreachable host for tens of seconds before failing; with
   it an unreachable hub fails as soon as name resolution fails, and after at most
   ``HUB_PROBE_TIMEOUT`` seconds when packets are dropped (timings: docs/benchmarks.md).

Every failure raises ``ModelNotAvailableError`` naming the model and saying how to provide it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomalens.backbones.base import Backbone, Features, resolve_precision
from anomalens.errors import ModelNotAvailableError

HUB_PROBE_TIMEOUT = 3.0

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# config.model_type values each backbone kind accepts
MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "clip": ("clip",),
    "siglip": ("siglip",),
    "dinov2": ("dinov2", "dinov2_with_registers"),
}

TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
    "vocab.txt",
)

_TRUE = {"1", "on", "yes", "true"}


class _NotAvailableError(Exception):
    """Internal: loading failed because files are missing or unreachable."""


def hub_offline() -> bool:
    """True when the user forbids hub access (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def is_local_spec(model_id_or_path: str) -> bool:
    """A spec names a local folder if it exists or looks like a path rather than ``org/name``."""
    s = str(model_id_or_path)
    return (
        Path(s).expanduser().exists()
        or s.startswith(("/", ".", "~"))
        or (os.sep != "/" and os.sep in s)
        or s.count("/") > 1
    )


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    try:
        from huggingface_hub import constants, get_session

        response = get_session().head(constants.ENDPOINT, timeout=timeout)
        return response.status_code < 400
    except Exception:  # any failure means "not reachable"
        return False


def _is_unavailable_error(exc: BaseException) -> bool:
    """Errors meaning "files missing / unreachable / unknown id" (not programming errors)."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    try:
        from huggingface_hub.errors import HfHubHTTPError, HFValidationError

        if isinstance(exc, HfHubHTTPError | HFValidationError):
            return True
    except ImportError:  # pragma: no cover - very old huggingface_hub
        pass
    root = type(exc).__module__.split(".")[0]
    return root in {"httpx", "httpx2", "httpcore", "requests", "urllib3"}


EXAMPLE_IDS = {
    "clip": "openai/clip-vit-base-patch16",
    "siglip": "google/siglip-base-patch16-224",
    "dinov2": "facebook/dinov2-base",
}


def how_to_provide(model_id: str, kind: str, folder: str | None = None) -> str:
    """Instructions for saving ``model_id`` to ``folder`` and using it offline."""
    folder = folder or model_id.rstrip("/").split("/")[-1] or "model"
    name = Path(folder).name or folder
    return (
        "To use it without internet, on a machine with internet run\n"
        f"  python -c \"from transformers import AutoModel, AutoProcessor; m='{model_id}'; "
        f"AutoModel.from_pretrained(m).save_pretrained('{folder}'); "
        f"AutoProcessor.from_pretrained(m).save_pretrained('{folder}')\"\n"
        f"or\n  hf download {model_id} --local-dir {folder}"
        "   (older huggingface_hub: huggingface-cli download ...)\n"
        f"then copy the folder {name!r} to this machine and use the spec "
        f"'{kind}:/path/to/{name}'. If the model is already in the HF cache, check HF_HOME."
    )


def _unavailable(
    model_id_or_path: str, kind: str, what: str, reason: str
) -> ModelNotAvailableError:
    if is_local_spec(model_id_or_path):
        example = EXAMPLE_IDS.get(kind, "<hub id>")
        return ModelNotAvailableError(
            f"cannot load the {kind} {what} from folder {model_id_or_path!r}: {reason}. "
            "The folder must hold what `save_pretrained` writes (config.json, model.safetensors, "
            "tokenizer and processor files).\n"
            + how_to_provide(example, kind, folder=str(model_id_or_path))
        )
    return ModelNotAvailableError(
        f"the {kind} {what} {model_id_or_path!r} is not available on this machine: {reason}.\n"
        + how_to_provide(model_id_or_path, kind)
    )


def _fetch(load, model_id_or_path: str, kind: str, what: str) -> Any:
    """Run ``load(source, local_files_only)`` with the offline-first policy of this module."""
    local = is_local_spec(model_id_or_path)
    source = str(Path(model_id_or_path).expanduser()) if local else model_id_or_path
    if local and not Path(source).is_dir():
        raise _unavailable(model_id_or_path, kind, what, "no such folder")
    try:
        return load(source, True)
    except Exception as exc:
        if not _is_unavailable_error(exc):
            raise
        first_error = exc
    if local:
        raise _unavailable(model_id_or_path, kind, what, _short(first_error)) from first_error
    if hub_offline():
        reason = "not in the local HF cache and HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set"
        raise _unavailable(model_id_or_path, kind, what, reason) from first_error
    if not _hub_reachable():
        reason = "not in the local HF cache and the Hugging Face hub is unreachable"
        raise _unavailable(model_id_or_path, kind, what, reason) from first_error
    try:
        return load(source, False)
    except Exception as exc:
        if not _is_unavailable_error(exc):
            raise
        raise _unavailable(model_id_or_path, kind, what, _short(exc)) from exc


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def load_pretrained(model_cls: Any, model_id_or_path: str, kind: str) -> nn.Module:
    """Load ``model_cls`` from a local folder or hub id, frozen, fp32, in eval mode.

    Checks that the checkpoint's ``model_type`` fits ``kind`` and that no weight is missing
    (a missing tensor would silently stay random).
    """
    from transformers import AutoConfig

    def load(source: str, local_files_only: bool) -> nn.Module:
        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
        allowed = MODEL_TYPES.get(kind)
        if allowed is not None and config.model_type not in allowed:
            raise ModelNotAvailableError(
                f"{model_id_or_path!r} holds a {config.model_type!r} model, not a {kind} model "
                f"({', '.join(allowed)}); use the matching backbone spec"
            )
        model, info = model_cls.from_pretrained(
            source, config=config, local_files_only=local_files_only, output_loading_info=True
        )
        missing = list(info.get("missing_keys") or [])
        if missing:
            raise ModelNotAvailableError(
                f"the {kind} weights in {model_id_or_path!r} are incomplete: {len(missing)} "
                f"tensors missing (e.g. {', '.join(missing[:3])}); save the full model with "
                "AutoModel.from_pretrained(...).save_pretrained(...)"
            )
        return model

    model = _fetch(load, model_id_or_path, kind, "model")
    model = model.float().eval()
    model.requires_grad_(False)
    return model


def load_tokenizer(model_id_or_path: str, kind: str) -> Any:
    """``AutoTokenizer`` from the same folder or hub id as the model (same offline policy)."""
    from transformers import AutoTokenizer

    def load(source: str, local_files_only: bool) -> Any:
        if Path(source).is_dir() and not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
            raise FileNotFoundError(f"no tokenizer file ({', '.join(TOKENIZER_FILES)})")
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        # transformers 5 may build a tokenizer with an empty vocabulary instead of failing
        if len(tok.get_vocab()) <= len(set(tok.all_special_ids)):
            raise FileNotFoundError("the tokenizer has no vocabulary (tokenizer files missing)")
        return tok

    try:
        return _fetch(load, model_id_or_path, kind, "tokenizer")
    except ModelNotAvailableError as exc:
        raise ModelNotAvailableError(
            f"{exc}\n(encode_text needs the tokenizer files, e.g. tokenizer.json or "
            "vocab.json/merges.txt or spiece.model, next to the weights)"
        ) from exc.__cause__


@dataclass(frozen=True)
class ImageConfig:
    """Preprocessing read from ``preprocessor_config.json``; fields are None when absent."""

    size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


def _side(value: Any) -> int | None:
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, dict):
        for key in ("height", "shortest_edge", "width"):
            if key in value:
                return int(value[key])
    return None


def parse_image_config(cfg: dict) -> ImageConfig:
    """Square input size, mean and std from an image processor dict."""
    cfg = cfg.get("image_processor", cfg)  # processor_config.json nests it (transformers 5)
    size = None
    if cfg.get("do_center_crop", True) and cfg.get("crop_size") is not None:
        size = _side(cfg["crop_size"])
    if size is None and cfg.get("size") is not None:
        size = _side(cfg["size"])
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    return ImageConfig(
        size=size,
        mean=tuple(float(v) for v in mean) if mean and len(mean) == 3 else None,
        std=tuple(float(v) for v in std) if std and len(std) == 3 else None,
    )


def read_image_config(model_id_or_path: str) -> ImageConfig:
    """Preprocessing of a local folder or an already-cached hub id; empty if not found.

    Never touches the network: a hub id whose processor files were not downloaded falls back
    to the family defaults.
    """
    names = ("preprocessor_config.json", "processor_config.json")
    for name in names:
        path = _find_file(model_id_or_path, name)
        if path is None:
            continue
        try:
            cfg = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict) and (name == names[0] or "image_processor" in cfg):
            return parse_image_config(cfg)
    return ImageConfig()


def _find_file(model_id_or_path: str, name: str) -> str | None:
    if is_local_spec(model_id_or_path):
        path = Path(model_id_or_path).expanduser() / name
        return str(path) if path.is_file() else None
    try:
        from transformers.utils import cached_file

        return cached_file(
            model_id_or_path,
            name,
            local_files_only=True,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except Exception:  # a missing processor file is not an error
        return None


def quarter_layers(num_layers: int) -> tuple[int, ...]:
    """Blocks at 1/4, 1/2, 3/4 and the full depth (1-based), e.g. 12 -> (3, 6, 9, 12)."""
    return tuple(sorted({max(1, round(num_layers * k / 4)) for k in (1, 2, 3, 4)}))


class _StopForwardError(Exception):
    """Raised by a hook once the deepest requested block has run."""


class HFViTBackbone(Backbone):
    """Base for transformers ViTs: loading, layer capture with forward hooks and early stop.

    Subclasses set ``kind``, ``family_mean`` / ``family_std`` (used when the checkpoint has no
    processor config) and implement the hooks ``_model_class``, ``_vision_config``,
    ``_vision_forward``, ``_blocks``, ``_global_embedding`` (and ``_default_size`` /
    ``_configure`` where the defaults do not fit). ``self.model`` is the full transformers model.

    Layer ``l`` is the output of transformer block ``l`` (1-based, ``hidden_states[l]`` with
    ``output_hidden_states=True``); ``-1`` is the last block. Blocks after the deepest requested
    layer are skipped unless the global embedding (which needs the full depth) is requested.
    The default layers are the quarters of the depth (also the ``feature_levels``), so the
    default call runs every block anyway and the global embedding costs only the final norm /
    projection / pooling head.
    Hooks are added per call: do not call ``encode_image`` on one instance from several threads.
    Image preprocessing comes from ``preprocessor_config.json`` (or the ``image_processor`` entry
    of ``processor_config.json``) when present, else the family defaults.
    """

    kind: str = "hf"
    architecture = "vit"
    layer_unit = "blocks"
    patch_size: int = 16
    num_prefix_tokens: int = 0
    family_mean: tuple[float, float, float] = IMAGENET_MEAN
    family_std: tuple[float, float, float] = IMAGENET_STD

    def __init__(
        self,
        model_id: str,
        image_size: int | None = None,
        precision: str = "fp32",
        layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.precision = resolve_precision(precision)
        self.model_id = str(model_id)
        self.name = f"{self.kind}:{model_id}"
        self.model = load_pretrained(self._model_class(), self.model_id, self.kind)
        vision_config = self._vision_config()
        self.patch_size = int(vision_config.patch_size)
        self.num_layers = int(vision_config.num_hidden_layers)
        prep = read_image_config(self.model_id)
        size = image_size if image_size is not None else (prep.size or self._default_size())
        if int(size) < self.patch_size:
            raise ValueError(f"image_size {size} is smaller than the patch size {self.patch_size}")
        self.image_size = int(size)
        self.mean = prep.mean or self.family_mean
        self.std = prep.std or self.family_std
        self.feature_levels = quarter_layers(self.num_layers)
        self.default_layers = (
            self.resolve_layers(layers) if layers is not None else self.feature_levels
        )
        self._configure()

    # -- hooks for subclasses -------------------------------------------------------------
    def _model_class(self) -> Any:
        """The transformers class ``from_pretrained`` loads (imported on call)."""
        raise NotImplementedError

    def _vision_config(self) -> Any:
        """The config of the vision tower (``patch_size``, ``num_hidden_layers``, ...)."""
        raise NotImplementedError

    def _default_size(self) -> int:
        """Input side when neither the caller nor the processor config gives one."""
        return int(self._vision_config().image_size)

    def _configure(self) -> None:
        """Set what depends on the loaded model (``embed_dim``, ``num_prefix_tokens``)."""

    def _vision_forward(self, pixels: torch.Tensor) -> Any:
        """Run the vision tower (embeddings, blocks, final norm/head); returns its output."""
        raise NotImplementedError

    def _blocks(self) -> nn.ModuleList:
        """The vision transformer blocks, in order."""
        raise NotImplementedError

    def _global_embedding(self, out: Any) -> torch.Tensor:
        """``[B, D]`` global embedding from the vision tower output."""
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------------
    def grid(self, layer: int | None = None, image_size: int | None = None) -> tuple[int, int]:
        """Token grid ``(h, w)`` at ``image_size``: the same for every block (``layer`` is only
        checked)."""
        if layer is not None:
            self.resolve_layers(layer)
        side = int(image_size if image_size is not None else self.image_size) // self.patch_size
        return side, side

    def _encode(
        self, pixels: torch.Tensor, layers: tuple[int, ...], *, with_global: bool, grad: bool
    ) -> Features:
        """Patch tokens (prefix tokens dropped) at ``layers`` plus the global embedding.

        Without the global embedding every block after the deepest requested layer is skipped.
        """
        stop_at = None if with_global else max(layers)
        captured: dict[int, torch.Tensor] = {}

        def make_hook(i: int):
            def hook(_module: nn.Module, _args: Any, output: Any) -> None:
                captured[i] = output[0] if isinstance(output, tuple | list) else output
                if i == stop_at:
                    raise _StopForwardError

            return hook

        blocks = self._blocks()
        handles = [blocks[i - 1].register_forward_hook(make_hook(i)) for i in set(layers)]
        out = None
        try:
            with self.run_context(grad), self.autocast():
                with contextlib.suppress(_StopForwardError):
                    out = self._vision_forward(pixels.float())
                glob = self._global_embedding(out) if with_global else None
        finally:
            for handle in handles:
                handle.remove()
        grid = (pixels.shape[2] // self.patch_size, pixels.shape[3] // self.patch_size)
        tokens = [_plain(captured[i][:, self.num_prefix_tokens :]) for i in layers]
        for t in tokens:
            if t.shape[1] != grid[0] * grid[1]:
                raise RuntimeError(f"{self.name}: got {t.shape[1]} patch tokens for grid {grid}")
        return Features(
            tokens=tokens,
            grids=[grid] * len(layers),
            global_embedding=None if glob is None else _plain(glob),
        )

    def layer_module(self, layer: int) -> nn.Module:
        """Vision transformer block ``layer`` (1-based; negative counts from the end)."""
        return self._blocks()[self.resolve_layers(layer)[0] - 1]

    def describe(self) -> dict:
        """Base description plus layers and patch size."""
        info = super().describe()
        info.update(
            model_id=self.model_id,
            patch_size=self.patch_size,
            num_layers=self.num_layers,
            default_layers=list(self.default_layers),
        )
        return info


def _plain(t: torch.Tensor) -> torch.Tensor:
    """Contiguous float32 copy that is a normal tensor (not an inference tensor)."""
    return t.float().clone(memory_format=torch.contiguous_format)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension in float32."""
    return torch.nn.functional.normalize(x.float(), dim=-1)


def as_prompt_list(prompts: Sequence[str] | str) -> list[str]:
    """Validate prompts; a single string becomes a one-element list."""
    if isinstance(prompts, str):
        return [prompts]
    out = list(prompts)
    if not all(isinstance(p, str) for p in out):
        raise TypeError("prompts must be strings")
    return out
