"""Command line: ``anomalens {benchmark,fit,predict,report,train,mvtec-ad2,demo,diagnose}``.

The CLI only parses arguments, calls the Python API (:mod:`anomalens.evaluate`,
:mod:`anomalens.inference`, :mod:`anomalens.demo`) and prints results.

Output: result tables and ``wrote ...`` / ``saved ...`` lines go to stdout; progress lines (the
library's ``logging`` records of the ``anomalens`` loggers), progress bars, warnings and errors
go to stderr. Every sub-command takes ``-q/--quiet`` (warnings and errors only, no progress
bars) and ``-v/--verbose`` (also DEBUG lines, prefixed ``anomalens: debug:``).

Errors: bad input (missing or empty folders, unreadable images, unknown models or options) and
numerical failures (:class:`FloatingPointError`) end with a one-line ``anomalens: error: ...``
message naming the file or folder, and exit code 2; Ctrl-C ends with ``anomalens: interrupted``
and exit code 130; warnings are printed as ``anomalens: warning: ...``. With
``ANOMALENS_DEBUG=1`` in the environment every caught exception (Ctrl-C included) is re-raised
with its traceback, for bug reports. Other exceptions (bugs) always show their traceback.

Modules: :mod:`.options` (argument types, shared option groups), :mod:`.commands` (benchmark,
fit, predict, train, demo), :mod:`.tools` (explanation options, report, diagnose, export,
serve, mvtec-ad2); this module builds the parser and runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from anomalens import __version__
from anomalens.backbones.base import PRECISIONS
from anomalens.cli.commands import _cmd_benchmark, _cmd_demo, _cmd_fit, _cmd_predict, _cmd_train
from anomalens.cli.options import (
    DEBUG_ENV,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    USER_ERRORS,
    _add_dataset_options,
    _add_method_options,
    _float_in,
    _image_size,
    _int_at_least,
    _learning_rate,
    _name_list,
)
from anomalens.cli.tools import (
    _add_deploy_commands,
    _add_diagnose_parser,
    _add_explain_options,
    _cmd_mvtec_ad2,
    _cmd_report,
)
from anomalens.data.synthetic import DEFECT_KINDS
from anomalens.errors import AnomalensError, ImageLoadError
from anomalens.methods.aaclip import ANCHOR_SOURCES, TRAINING_MODES
from anomalens.training import TRAINABLE_METHODS

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``anomalens`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    loud = common.add_mutually_exclusive_group()
    loud.add_argument(
        "-v", "--verbose", action="store_true", help="also print debug lines (to stderr)"
    )
    loud.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only warnings, errors and results (no progress lines or bars)",
    )

    parser = argparse.ArgumentParser(
        prog="anomalens",
        description="Find and localize defects in industrial images on a CPU.",
    )
    parser.add_argument("--version", action="version", version=f"anomalens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "benchmark",
        parents=[common],
        help="fit and evaluate per category; write results.json and predictions.csv",
        description="Fit a detector on the train split of each category, evaluate it on the "
        "test split and write OUT/results.json, OUT/predictions.csv and OUT/<category>/ plots.",
    )
    _add_dataset_options(p, many=True)
    _add_method_options(p)
    p.add_argument("--output", required=True, type=Path, help="output folder")
    p.add_argument(
        "--save-maps",
        type=_int_at_least(0),
        default=0,
        metavar="N",
        help="write prediction figures of the first N test images per category",
    )
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="evaluate a --checkpoint even on images it was trained on (results are marked "
        '"overlap": true; they do not measure generalisation)',
    )
    _add_explain_options(p, "benchmark")
    p.set_defaults(handler=_cmd_benchmark)

    p = sub.add_parser(
        "fit",
        parents=[common],
        help="train on good images and save the model folder",
        description="Fit a detector on the train split (good images) of one category and save "
        "it as MODEL_DIR/config.json + MODEL_DIR/model.safetensors.",
    )
    _add_dataset_options(p, many=False)
    _add_method_options(p)
    p.add_argument("--output", required=True, type=Path, metavar="MODEL_DIR")
    p.set_defaults(handler=_cmd_fit)

    p = sub.add_parser(
        "predict",
        parents=[common],
        help="score images with a saved model; write scores and overlay figures",
        description="Score image files or folders of images with a saved model. Writes "
        "OUT/scores.csv, OUT/scores.json (with hotspot boxes), OUT/summary.json and "
        "OUT/overlays/<name>.png.",
    )
    p.add_argument("--model", required=True, type=Path, metavar="MODEL_DIR")
    p.add_argument("--input", required=True, nargs="+", metavar="PATH")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--recursive", action="store_true", help="also search subfolders")
    p.add_argument("--no-figures", action="store_true", help="skip the overlay figures")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    g = p.add_argument_group(
        "batch engines (Parquet shards + summary.json, resumable; folders are searched "
        "recursively, no figures, unreadable files recorded; docs/scale_out.md)"
    )
    g.add_argument("--engine", choices=("local", "process", "ray"), help="run as a batch job")
    g.add_argument("--workers", type=_int_at_least(1), help="processes or Ray actors")
    g.add_argument("--cpus-per-worker", type=_int_at_least(1), default=1, help="%(default)s")
    g.add_argument("--address", help="Ray cluster: auto or ray://HOST:10001 (default: local)")
    g.add_argument("--hash", action="store_true", help="resume by content hash, not size/mtime")
    _add_explain_options(p, "predict")
    p.set_defaults(handler=_cmd_predict)

    p = sub.add_parser(
        "report",
        parents=[common],
        help="write report.html for an existing predict run folder",
        description="Rebuild RUN_DIR/report.html (one offline file plus report_files/) from "
        "RUN_DIR/scores.json and summary.json of `anomalens predict`.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.set_defaults(handler=_cmd_report)

    p = sub.add_parser(
        "train",
        parents=[common],
        help="train AA-CLIP adapters (two stages) and save the checkpoint",
        description="Train the adapters of a trainable method (AA-CLIP / AA-SigLIP) on a "
        "dataset and write OUTPUT/config.json + OUTPUT/model.safetensors (the checkpoint chosen "
        "on a validation split) and OUTPUT/last/ (resume state: rerun the same command to "
        "continue after an interruption). Modes: synthetic (the default: cut-paste / Perlin "
        "defects on the good train images; no masks needed), masks (defective images with "
        "masks, from the TEST split: train on one dataset, benchmark on another), kshot (K "
        "images per category from the test split, half good, half defective).",
    )
    _add_dataset_options(p, many=True)
    g = p.add_argument_group("model")
    g.add_argument(
        "--method", default=TRAINABLE_METHODS[0], choices=TRAINABLE_METHODS, help="%(default)s"
    )
    g.add_argument("--backbone", help="backbone spec (default: the method's)")
    g.add_argument("--anchors", choices=ANCHOR_SOURCES, default="text", help="%(default)s")
    g.add_argument("--image-size", type=_image_size, help="square input side in pixels")
    g.add_argument("--precision", choices=PRECISIONS, help="backbone precision")
    g = p.add_argument_group("data")
    g.add_argument(
        "--mode",
        choices=TRAINING_MODES,
        default="synthetic",
        help="%(default)s (masks and kshot train on the test split)",
    )
    g.add_argument("--shots", type=_int_at_least(2), help="images per category (kshot mode)")
    g.add_argument(
        "--val-fraction",
        type=_float_in(0.0, 1.0, low_open=False, high_open=True),
        default=0.1,
        help="validation share (0.1)",
    )
    g.add_argument(
        "--defect-kinds",
        type=_name_list,
        default=("cutpaste", "perlin"),
        metavar="A,B",
        help=f"synthetic defect kinds, from {','.join(DEFECT_KINDS)} (cutpaste,perlin)",
    )
    g = p.add_argument_group("schedule (AA-CLIP defaults)")
    g.add_argument("--text-epochs", type=_int_at_least(0), help="stage 1 epochs (5)")
    g.add_argument("--image-epochs", type=_int_at_least(1), help="stage 2 epochs (20)")
    g.add_argument("--text-batch-size", type=_int_at_least(1), help="stage 1 batch (16)")
    g.add_argument("--batch-size", type=_int_at_least(1), help="stage 2 batch (8)")
    g.add_argument("--accumulate", type=_int_at_least(1), help="micro-batches per step (1)")
    g.add_argument("--text-lr", type=_learning_rate, help="stage 1 learning rate (1e-5)")
    g.add_argument("--lr", type=_learning_rate, help="stage 2 learning rate (5e-4)")
    g.add_argument(
        "--seed", type=_int_at_least(0), help="data order, augmentation and initialisation (0)"
    )
    g = p.add_argument_group("vfm (AnomalyVFM v1.1, seed design; trains on train/good)")
    g.add_argument("--epochs", type=_int_at_least(1), help="training epochs (5)")
    g.add_argument("--lora-rank", type=_int_at_least(1), help="LoRA rank (16)")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha (32)")
    p.add_argument("--output", required=True, type=Path, metavar="CKPT")
    p.add_argument("--no-resume", action="store_true", help="ignore CKPT/last and start over")
    p.add_argument(
        "--nproc",
        type=_int_at_least(1),
        default=1,
        help="train on N processes of this machine (torch.distributed, gloo; the same result "
        "as 1 process with the same global batch; or run under torchrun)",
    )
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser(
        "mvtec-ad2",
        parents=[common],
        help="MVTec AD 2 protocol: test_public metrics, validation thresholds, submission files",
        description="Fit on train/good of one MVTec AD 2 category, take the thresholds from "
        "validation/good, compute image AUROC, pixel AUROC, AU-PRO (FPR 0.05, 0.3) and SegF1 on "
        "test_public, and write the evaluation server's files for test_private and "
        "test_private_mixed (OUT/anomaly_images/*.tiff, OUT/anomaly_images_thresholded/*.png) "
        "plus OUT/ad2_results.json.",
    )
    p.add_argument("--root", required=True, type=Path, help="MVTec AD 2 root folder")
    p.add_argument("--category", required=True, help="category, e.g. can, fabric, vial")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    _add_method_options(p)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--threshold-rule", choices=("mean_std", "quantile"), default="mean_std")
    p.add_argument("--threshold-k", type=float, default=3.0, help="mean + K * std (3)")
    p.add_argument("--threshold-quantile", type=float, default=0.999, help="quantile (0.999)")
    p.add_argument("--no-submission", action="store_true", help="skip the private-split files")
    p.set_defaults(handler=_cmd_mvtec_ad2)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="offline demo on synthetic defects (or on your MVTec-layout data)",
        description="Build a synthetic dataset (scikit-image textures with synthetic defects) "
        "in OUTPUT/data, fit PatchCore, evaluate and write a report to OUTPUT/report. With "
        "--root the demo runs on your own MVTec-AD-layout data instead.",
    )
    p.add_argument("--output", type=Path, default=None, help="default: ./anomalens_demo")
    p.add_argument("--root", type=Path, help="your MVTec-AD-layout dataset root")
    p.add_argument("--category", nargs="+", action="extend", metavar="C")
    g = p.add_argument_group("detector options (unset = the default)")
    g.add_argument("--backbone", help="backbone spec (default efficientnet-lite0)")
    g.add_argument("--image-size", type=_image_size, help="square input side in pixels")
    g.add_argument("--memory-size", type=_int_at_least(1), help="memory bank rows")
    g.add_argument(
        "--shots",
        type=_int_at_least(0),
        help="use only K good training images (0: zero-shot, for methods that support it)",
    )
    p.set_defaults(handler=_cmd_demo)
    _add_diagnose_parser(sub, common)
    _add_deploy_commands(sub, common)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """One line per warning, without source locations."""
    stream = file if file is not None else sys.stderr
    with contextlib.suppress(OSError, ValueError):  # closed stream
        stream.write(f"anomalens: warning: {message}\n")


class _LineFormatter(logging.Formatter):
    """INFO records as they are; others prefixed ``anomalens: debug|warning|error: ``."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            return f"anomalens: error: {text}"
        if record.levelno >= logging.WARNING:
            return f"anomalens: warning: {text}"
        if record.levelno < logging.INFO:
            return f"anomalens: debug: {text}"
        return text


class _StderrHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` through ``tqdm.write`` (keeps progress bars intact)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def _log_to_stderr(level: int):
    """Show the records of the ``anomalens`` loggers at ``level`` and above on stderr."""
    root = logging.getLogger("anomalens")
    handler = _StderrHandler()
    handler.setFormatter(_LineFormatter())
    before = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


def _log_level(args: argparse.Namespace) -> int:
    if getattr(args, "verbose", False):
        return logging.DEBUG
    if getattr(args, "quiet", False):
        return logging.WARNING
    return logging.INFO


def _debug() -> bool:
    """True when :data:`DEBUG_ENV` is set to anything but empty or ``0``."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, AnomalensError):
        where = exc.filename if exc.filename is not None else ""
        what = exc.strerror or str(exc)
        return f"{where}: {what}" if where else what
    text = str(exc).strip() or type(exc).__name__
    if "\n" in text and not isinstance(exc, AnomalensError):  # ours are written to be read whole
        text = text.splitlines()[0]
    if isinstance(exc, FloatingPointError):
        return f"numerical error: {text}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 bad input, 130 interrupted)."""
    for stream in (sys.stdout, sys.stderr):  # file names that are not valid UTF-8, LC_ALL=C
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings(), _log_to_stderr(_log_level(args)):
        warnings.showwarning = _show_warning
        try:
            return int(args.handler(args))
        except USER_ERRORS as exc:
            if _debug():
                raise
            message = _error_message(exc)
            if isinstance(exc, ImageLoadError) and getattr(args, "skip_bad", True) is False:
                message += " (use --skip-bad to skip unreadable images)"
            print(f"anomalens: error: {message}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            if _debug():
                raise
            print("anomalens: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
