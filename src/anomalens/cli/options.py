"""Argument types, shared option groups and the helpers commands use to read them."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from anomalens.backbones.base import PRECISIONS
from anomalens.data.datasets import DATASET_NAMES
from anomalens.data.transforms import AUGMENTATIONS
from anomalens.errors import AnomalensError
from anomalens.methods import METHODS
from anomalens.methods.aaclip import ANCHOR_SOURCES
from anomalens.methods.base import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from anomalens.pose import POSE_MODES

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
#: Environment variable: when set (and not "0"), caught exceptions show their traceback.
DEBUG_ENV = "ANOMALENS_DEBUG"
#: Exceptions ``main`` turns into one ``anomalens: error: ...`` line and exit code 2.
USER_ERRORS = (AnomalensError, ValueError, OSError, FloatingPointError)

#: Detector options the CLI understands: (flag, config field).
METHOD_OPTIONS = (
    ("backbone", "backbone"),
    ("image_size", "image_size"),
    ("shots", "shots"),
    ("seed", "seed"),
    ("memory_size", "memory_size"),
    ("precision", "precision"),
    ("augment", "augment"),
    ("anchors", "anchors"),
    ("pose", "pose"),
)


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _int_in_range(minimum: int, maximum: int):
    def parse(text: str) -> int:
        value = _int_at_least(minimum)(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value

    return parse


def _float_in(low: float, high: float, low_open: bool = True, high_open: bool = False):
    """A finite float in the interval (``low``, ``high``]; the ends open or closed."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            left, right = "(["[not low_open], ")]"[not high_open]
            raise argparse.ArgumentTypeError(
                f"must be in {left}{low:g}, {high:g}{right}, got {text}"
            )
        return value

    return parse


#: ``--image-size`` bounds (the detector configs enforce the same).
_image_size = _int_in_range(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
#: Learning rates: finite, positive, at most 1 (larger ones only diverge).
_learning_rate = _float_in(0.0, 1.0)


def _add_method_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("detector options (unset = the method's default)")
    g.add_argument("--method", default="patchcore", choices=sorted(METHODS), help="%(default)s")
    g.add_argument(
        "--backbone",
        help="backbone spec, e.g. efficientnet-lite0, efficientnet-lite2, "
        "dinov2:facebook/dinov2-base, clip:/path/to/local/folder",
    )
    g.add_argument("--image-size", type=_image_size, help="square input side in pixels")
    g.add_argument(
        "--shots",
        type=_int_at_least(0),
        help="use only K good training images (0: zero-shot, for methods that support it)",
    )
    g.add_argument("--seed", type=_int_at_least(0), help="random seed (shots, coreset)")
    g.add_argument("--memory-size", type=_int_at_least(1), help="memory bank rows (PatchCore)")
    g.add_argument("--precision", choices=PRECISIONS, help="backbone precision")
    g.add_argument(
        "--augment",
        type=_name_list,
        metavar="A,B",
        help=f"extra views of each good image in the memory, from {','.join(AUGMENTATIONS)} "
        "(PatchCore, AnomalyDINO; helps few-shot)",
    )
    g.add_argument(
        "--pose",
        choices=POSE_MODES,
        help="pose normalisation (PatchCore, AnomalyDINO): rotate each part so its principal "
        "axis is horizontal before matching; auto = on for one elongated object on a plain "
        "background (fit logs the decision); helps few-shot on parts lying at any angle",
    )
    g.add_argument(
        "--anchors",
        choices=ANCHOR_SOURCES,
        help="AA-CLIP anchor source: text (CLIP/SigLIP text tower), learned, or centroid "
        "(normal anchor = mean feature of good images); learned/centroid need no text tower",
    )
    g.add_argument(
        "--checkpoint",
        type=Path,
        metavar="DIR",
        help="start from a saved model folder (AA-CLIP: the trained adapters written by "
        "`anomalens train`); the backbone and its options come from the checkpoint",
    )


def _add_dataset_options(p: argparse.ArgumentParser, many: bool) -> None:
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES, help="dataset layout")
    p.add_argument("--root", required=True, type=Path, help="dataset root folder")
    if many:
        p.add_argument(
            "--category",
            nargs="+",
            action="extend",
            metavar="C",
            help="categories to run (default: all found under --root)",
        )
    else:
        p.add_argument("--category", help="category (optional when --root holds only one)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")


def _name_list(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The detector options the user gave (unset ones are left out)."""
    options = {
        field: getattr(args, flag)
        for flag, field in METHOD_OPTIONS
        if getattr(args, flag, None) is not None
    }
    if getattr(args, "checkpoint", None) is not None:
        options["checkpoint"] = args.checkpoint
    return options


def _progress(args: argparse.Namespace) -> bool:
    return not (args.no_progress or getattr(args, "quiet", False))
