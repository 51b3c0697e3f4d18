"""peft LoRA adapters injected into a frozen backbone's layers (DINOv2 attention, EfficientNet
pointwise convolutions).

The adapters are added in place with :func:`peft.inject_adapter_in_model` to the modules the
backbone contract exposes (:meth:`~anomalens.backbones.base.Backbone.layer_module`): DINOv2's
attention query / value and output projections (``q_proj``, ``v_proj``, ``o_proj`` in
transformers 5; ``query``, ``value``, ``output.dense`` before), EfficientNet-Lite's 1x1 expand
and project convolutions of the last block of each stage. The frozen weights are never changed:
a LoRA layer adds ``scale * B(A(x))`` (``scale = alpha / rank``; ``B`` starts at zero, so the
adapted backbone starts as the original one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from anomalens.backbones.base import Backbone

#: LoRA target module names per backbone kind (peft matches the end of a module's name)
TARGETS: dict[str, tuple[str, ...]] = {
    "dinov2": ("q_proj", "v_proj", "o_proj", "query", "value", "output.dense"),
    "efficientnet": ("_expand_conv", "_project_conv"),
}
ADAPTER = "default"


def _static_padding_lora():
    """peft's LoRA ``Conv2d`` for EfficientNet's ``Conv2dStaticSamePadding`` 1x1 convolutions.

    peft builds the low-rank factors with the base layer's class, whose constructor needs an
    image size; for 1x1 convolutions (no padding) plain ``nn.Conv2d`` factors are equivalent.
    """
    from peft.tuners.lora.layer import Conv2d as LoraConv2d

    class StaticPaddingLoraConv2d(LoraConv2d):
        def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs) -> None:
            base = self.get_base_layer()
            if tuple(base.kernel_size) != (1, 1):
                raise ValueError("LoRA on EfficientNet convolutions supports 1x1 kernels only")
            cls = base.__class__
            base.__class__ = nn.Conv2d  # the factors are built with type(base_layer)
            try:
                super().update_layer(adapter_name, r, lora_alpha, config, **kwargs)
            finally:
                base.__class__ = cls

    return StaticPaddingLoraConv2d


def inject_lora(
    backbone: Backbone, layers: Sequence[int], rank: int, alpha: float, seed: int
) -> list[nn.Module]:
    """Add LoRA adapters (``rank``, ``alpha``) to backbone layers ``layers`` (1-based taps),
    initialised from ``seed``; returns the adapted layer modules. Raises ValueError for a
    backbone kind without LoRA targets."""
    from peft import LoraConfig, inject_adapter_in_model

    if backbone.kind not in TARGETS:
        raise ValueError(
            f"LoRA adaptation supports {', '.join(TARGETS)} backbones, not {backbone.name!r}"
        )
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        lora_dropout=0.0,
        target_modules=list(TARGETS[backbone.kind]),
    )
    if backbone.kind == "efficientnet":
        from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

        config._register_custom_module({Conv2dStaticSamePadding: _static_padding_lora()})
    modules = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for layer in layers:
            module = backbone.layer_module(layer)
            inject_adapter_in_model(config, module, adapter_name=ADAPTER)
            modules.append(module)
    for p in lora_parameters(modules):
        p.requires_grad_(True)
    return modules


def lora_named_parameters(modules: Sequence[nn.Module]) -> dict[str, nn.Parameter]:
    """``{"<i>.<name>": parameter}`` of the LoRA factors of adapted layer ``i``."""
    return {
        f"{i}.{name}": p
        for i, module in enumerate(modules)
        for name, p in module.named_parameters()
        if "lora_" in name
    }


def lora_parameters(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    """The LoRA factors of the adapted layers (the only backbone tensors that train)."""
    return list(lora_named_parameters(modules).values())


def frozen_parameters(modules: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """The original (non-LoRA) parameters of the adapted layers."""
    return {
        f"{i}.{name}": p
        for i, module in enumerate(modules)
        for name, p in module.named_parameters()
        if "lora_" not in name
    }


__all__ = [
    "TARGETS",
    "frozen_parameters",
    "inject_lora",
    "lora_named_parameters",
    "lora_parameters",
]
