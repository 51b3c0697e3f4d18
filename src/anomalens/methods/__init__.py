"""Detectors. ``METHODS`` maps a method name to its class (used by ``load_detector``).

Every detector class has a ``config_class`` dataclass; :func:`create_detector` builds one from
a method name and option overrides (the CLI passes ``backbone``, ``image_size``, ``shots`` ...;
options a method's config does not have are rejected with a clear error).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from anomalens.methods.aaclip import AACLIP, AACLIPConfig
from anomalens.methods.anomalydino import AnomalyDINO, AnomalyDINOConfig
from anomalens.methods.base import Detector, Prediction, load_detector
from anomalens.methods.gaussian import GaussianAD, GaussianADConfig
from anomalens.methods.padim import PaDiM, PaDiMConfig
from anomalens.methods.patchcore import PatchCore, PatchCoreConfig
from anomalens.methods.vfm import VFM, VFMConfig
from anomalens.methods.winclip import WinCLIP, WinCLIPConfig

METHODS: dict[str, type[Detector]] = {
    "patchcore": PatchCore,
    "anomalydino": AnomalyDINO,
    "winclip": WinCLIP,
    "aaclip": AACLIP,
    "padim": PaDiM,
    "gaussian": GaussianAD,
    "vfm": VFM,
}


def create_detector(method: str, **options: Any) -> Detector:
    """A new, unfitted detector of ``method``; ``None`` options keep the config default."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(sorted(METHODS))}")
    cls = METHODS[method]
    config_cls = cls.config_class
    names = {f.name for f in dataclasses.fields(config_cls)}
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(
            f"method {method!r} has no option(s) {unknown}; its options: {', '.join(sorted(names))}"
        )
    return cls(config_cls(**given))


__all__ = [
    "AACLIP",
    "METHODS",
    "VFM",
    "AACLIPConfig",
    "AnomalyDINO",
    "AnomalyDINOConfig",
    "Detector",
    "GaussianAD",
    "GaussianADConfig",
    "PaDiM",
    "PaDiMConfig",
    "PatchCore",
    "PatchCoreConfig",
    "Prediction",
    "VFMConfig",
    "WinCLIP",
    "WinCLIPConfig",
    "create_detector",
    "load_detector",
]
