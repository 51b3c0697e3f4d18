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
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalens import __version__
from anomalens.backbones.base import PRECISIONS
from anomalens.data.datasets import DATASET_NAMES
from anomalens.data.synthetic import DEFECT_KINDS
from anomalens.data.transforms import AUGMENTATIONS
from anomalens.errors import AnomalensError, ImageLoadError, display_path
from anomalens.methods import METHODS
from anomalens.methods.aaclip import ANCHOR_SOURCES, TRAINING_MODES
from anomalens.methods.base import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from anomalens.training import TRAINABLE_METHODS

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
)


# --------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------


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
    _add_explain_options(p, predict=False)
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
    _add_explain_options(p, predict=True)
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


def _add_explain_options(p: argparse.ArgumentParser, predict: bool) -> None:
    """``--explain SPEC`` (and, for predict, its options and ``--report``)."""
    g = p.add_argument_group("explanations (anomalens.explain)")
    g.add_argument(
        "--explain",
        metavar="SPEC",
        help="explain each image: grounded (offline), hf:HUB_ID_OR_FOLDER (a transformers VLM, "
        "e.g. hf:llava-hf/llava-onevision-qwen2-0.5b-ov-hf) or openai:URL#MODEL (an "
        "OpenAI-compatible server, API key from $OPENAI_API_KEY)"
        + ("" if predict else "; writes report.html per category"),
    )
    if not predict:
        return
    g.add_argument("--report", action="store_true", help="also write OUT/report.html")
    g.add_argument(
        "--defect-types",
        type=Path,
        metavar="DIR",
        help="labelled examples DIR/<type>/*.png (masks optional) to name defects",
    )
    g.add_argument(
        "--explain-all", action="store_true", help="VLMs: also send images the detector calls good"
    )
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="hf: allow the model's own code (Moondream2)",
    )


def _explain_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.defect_types is not None:
        options["defect_types"] = args.defect_types
    if args.explain_all:
        options["explain_all"] = True
    if args.trust_remote_code:
        options["trust_remote_code"] = True
    if options and not args.explain:
        raise ValueError("--defect-types, --explain-all and --trust-remote-code need --explain")
    return options


def _cmd_report(args: argparse.Namespace) -> int:
    from anomalens.report_html import report_from_run

    print(f"wrote {report_from_run(args.run_dir, progress=_progress(args))}")
    return EXIT_OK


# -- diagnose (issue 12): encoder and MMAD-style question tests; logic in anomalens.diagnose --
def _add_diagnose_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "diagnose",
        parents=[common],
        help="how anomaly-aware is a model? encoder tests and MMAD-style VLM question tests",
        description="Encoder tests (--backbone, --checkpoint) on a dataset with masks and "
        "question tests (--vlm, --answerer, --detector) on questions generated from it or on "
        "MMAD's mmad.json; writes OUT/diagnostic_results.json, OUT/diagnostics.md (.html), "
        "OUT/figures/.",
    )
    p.add_argument("--backbone", action="append", default=[], metavar="SPEC", help="repeatable")
    p.add_argument("--checkpoint", type=Path, metavar="DIR", help="AA-CLIP: before vs after")
    p.add_argument(
        "--vlm", action="append", default=[], metavar="SPEC", help="hf:... or openai:URL#MODEL"
    )
    p.add_argument(
        "--answerer",
        action="append",
        default=[],
        metavar="NAME",
        help="scripted: always-yes, always-no, oracle, random-SEED (repeatable)",
    )
    p.add_argument(
        "--detector", metavar="METHOD", help="a method fitted on the train split answers"
    )
    p.add_argument("--dataset", choices=DATASET_NAMES, help="dataset layout (with masks)")
    p.add_argument("--root", type=Path, help="dataset root folder")
    p.add_argument("--category", help="category (optional when --root holds only one)")
    p.add_argument("--mmad", type=Path, metavar="JSON", help="MMAD's mmad.json")
    p.add_argument(
        "--mmad-root", type=Path, metavar="DIR", help="MMAD image root (default: its folder)"
    )
    p.add_argument("--layers", metavar="2+3,5", help="feature sets (taps joined by +; patchcore)")
    p.add_argument("--image-size", type=_int_at_least(32), help="backbone input side")
    p.add_argument(
        "--max-images", type=_int_at_least(2), metavar="N", help="subsample the test split"
    )
    p.add_argument(
        "--state-words", type=_name_list, default=(), metavar="A,B", help="extra anomalous words"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--normal-patches",
        choices=("foreground", "all"),
        default="foreground",
        help="normal patches anywhere, or only on the object (%(default)s)",
    )
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    p.add_argument("--output", required=True, type=Path)
    p.set_defaults(handler=_cmd_diagnose)


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from anomalens.diagnose import run_diagnose
    from anomalens.diagnose.write import RESULTS_JSON, SUMMARY_MD, summary_lines

    if (args.dataset is None) != (args.root is None):
        raise ValueError("--dataset and --root go together")
    results = run_diagnose(
        args.output,
        backbones=args.backbone,
        checkpoint=args.checkpoint,
        vlms=args.vlm,
        answerers=args.answerer,
        detector=args.detector,
        dataset=args.dataset,
        root=args.root,
        category=args.category,
        mmad=args.mmad,
        mmad_root=args.mmad_root,
        layers=args.layers,
        image_size=args.image_size,
        max_images=args.max_images,
        state_words=args.state_words,
        seed=args.seed,
        normal_patches=args.normal_patches,
        skip_bad=args.skip_bad,
        figures=not args.no_figures,
        progress=_progress(args),
    )
    print("\n".join(summary_lines(results)))
    print(f"wrote {args.output / RESULTS_JSON} and {args.output / SUMMARY_MD}")
    return EXIT_OK


# -- deployment (issue 13): export and serve; the logic is in anomalens.export / .service --
def _add_deploy_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a saved model to ONNX (optionally INT8) for the torch-free runtime",
        description="Write OUT/model.onnx and OUT/config.json: the whole predict path from uint8 "
        "pixels in one graph, run by onnxruntime alone (anomalens predict/serve accept OUT).",
    )
    p.add_argument("--model", required=True, type=Path, metavar="MODEL_DIR")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--output", required=True, type=Path, metavar="OUT")
    p.add_argument("--int8", action="store_true", help="static INT8 QDQ, per-channel weights")
    p.add_argument("--calibration", type=Path, metavar="DIR", help="good images for --int8")
    p.add_argument(
        "--calibration-images", type=_int_at_least(1), default=32, metavar="N", help="(32)"
    )
    p.set_defaults(handler=_cmd_export)
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="REST service and inspection page for a saved or exported model",
        description="Serve MODEL_DIR over HTTP: POST /v1/predict, GET /v1/model, /healthz, "
        "/readyz, the inspection page at / and the API docs at /docs. A token (--token-file "
        "or $ANOMALENS_TOKEN) is required on any address but loopback.",
    )
    p.add_argument("--model", required=True, type=Path, metavar="MODEL_DIR")
    p.add_argument("--explain", metavar="SPEC", help="explainer spec (anomalens.explain)")
    p.add_argument("--host", default="127.0.0.1", help="%(default)s")
    p.add_argument("--port", type=_int_at_least(1), default=8000, help="%(default)s")
    p.add_argument("--token-file", type=Path, metavar="F")
    p.set_defaults(handler=_cmd_serve)


def _cmd_export(args: argparse.Namespace) -> int:
    from anomalens.export.onnx_export import export_model, read_calibration_images

    if args.int8 and args.calibration is None:
        raise ValueError("--int8 needs --calibration DIR (a folder of good images)")
    images = None
    if args.int8:
        images = read_calibration_images(args.calibration, args.calibration_images)
    out = export_model(args.model, args.output, int8=args.int8, calibration=images)
    print(f"wrote {out / 'model.onnx'} and {out / 'config.json'}")
    if args.int8:
        from anomalens.export.quantize import describe_int8_support

        print(f"{describe_int8_support()} (measure with benchmarks/bench_export.py)")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from anomalens.service import serve

    serve(
        args.model,
        host=args.host,
        port=args.port,
        token_file=args.token_file,
        explain=args.explain,
    )
    return EXIT_OK


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


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


def _progress(args: argparse.Namespace) -> bool:
    return not (args.no_progress or getattr(args, "quiet", False))


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from anomalens.evaluate import format_table, run_benchmark

    result = run_benchmark(
        args.dataset,
        args.root,
        args.category,
        args.method,
        _method_options(args),
        output=args.output,
        skip_bad=args.skip_bad,
        save_maps=args.save_maps,
        progress=_progress(args),
        allow_overlap=args.allow_overlap,
        explain=args.explain,
    )
    print()
    print(format_table(result.rows(), overlap=result.overlap_categories()))
    print()
    print(f"wrote {args.output / 'results.json'} and {args.output / 'predictions.csv'}")
    return EXIT_OK


def _resolve_one_category(dataset: str, root: Path, category: str | None) -> str:
    from anomalens.data.datasets import list_categories
    from anomalens.errors import DatasetError

    if category:
        return category
    found = list_categories(dataset, root)
    if len(found) == 1:
        return found[0]
    raise DatasetError(
        f"{root}: holds {len(found)} categories ({', '.join(found)}); choose one with --category"
    )


def _cmd_fit(args: argparse.Namespace) -> int:
    from anomalens.evaluate import build_detector, load_split
    from anomalens.methods.base import check_model_folder
    from anomalens.overlap import training_record

    check_model_folder(args.output)  # before minutes of fitting
    category = _resolve_one_category(args.dataset, args.root, args.category)
    detector = build_detector(args.method, category, **_method_options(args))
    split = load_split(args.dataset, args.root, category, "train", args.skip_bad, _progress(args))
    train, skipped = split.samples, split.skipped
    detector.fit([s.image for s in train], progress=_progress(args))
    detector.fit_report.n_skipped, detector.fit_report.n_ignored = len(skipped), len(split.ignored)
    detector.training_data = training_record(
        args.dataset, args.root, [category], "train", [s.path for s in train]
    )
    folder = detector.save(args.output)
    threshold = detector.threshold
    shown = "none (too few images to calibrate)" if threshold is None else f"{threshold:.4g}"
    shots = detector.config.shots
    used = len(train) if shots is None else f"{min(shots, len(train))} of {len(train)}"
    print(
        f"fitted {args.method} on {used} good images of {category!r}"
        + (f" ({len(skipped)} unreadable skipped)" if skipped else "")
        + (f" ({len(split.ignored)} non-image entries ignored)" if split.ignored else "")
        + f"; image threshold {shown}"
    )
    print(f"saved model to {folder} (config.json, model.safetensors)")
    return EXIT_OK


def _cmd_predict(args: argparse.Namespace) -> int:
    from anomalens.inference import predict_paths

    if args.engine or args.address or args.workers:
        return _cmd_batch(args)

    result = predict_paths(
        args.model,
        args.input,
        args.output,
        recursive=args.recursive,
        skip_bad=args.skip_bad,
        figures=not args.no_figures,
        progress=_progress(args),
        explain=args.explain or ("grounded" if args.report else None),
        explain_options=_explain_options(args),
        report=args.report,
    )
    _print_predictions(result.records, result.summary, args.output, len(result.skipped))
    if args.report:
        print(f"wrote {args.output / 'report.html'}")
    return EXIT_OK


def _print_predictions(
    records: list[dict[str, Any]], summary: dict[str, Any], output: Path, n_skipped: int
) -> None:
    shown = 20
    paths = [display_path(r["path"]) for r in records[:shown]]
    width = min(60, max(len(p) for p in paths))
    for r, path in zip(records[:shown], paths, strict=True):
        verdict = {None: "", True: "DEFECTIVE", False: "ok"}[r["is_defective"]]
        path = path if len(path) <= width else "..." + path[-(width - 3) :]
        print(f"{path:<{width}}  {r['score']:10.4g}  {verdict}")
    if len(records) > shown:
        print(f"... {len(records) - shown} more in {output / 'scores.csv'}")
    n, threshold = summary["n_images"], summary["threshold"]
    if threshold is None:
        verdicts = "no threshold (the model was fitted on a single image)"
    else:
        verdicts = f"{summary['n_defective']} defective (threshold {threshold:.4g})"
    skipped = f", {n_skipped} unreadable skipped" if n_skipped else ""
    print(f"{n} image{'s' * (n != 1)}: {verdicts}{skipped}")
    print(f"wrote {output / 'scores.csv'}, {output / 'scores.json'} and {output / 'overlays'}/")


def _cmd_train_vfm(args: argparse.Namespace) -> int:
    from anomalens.training import train_vfm

    if args.category and len(args.category) > 1:
        raise ValueError("vfm trains one category at a time: give one --category")
    if args.nproc > 1:
        raise ValueError("--nproc: vfm trains in one process (multi-process training is AA-CLIP's)")
    names = ("backbone", "image_size", "precision", "seed", "shots", "epochs", "lora_rank")
    options = {k: getattr(args, k) for k in (*names, "lora_alpha")}
    options |= {"train_batch_size": args.batch_size, "lr": args.lr}
    options["val_fraction"] = args.val_fraction
    detector = train_vfm(
        args.dataset,
        args.root,
        args.output,
        category=args.category[0] if args.category else None,
        model_options=options,
        resume=not args.no_resume,
        skip_bad=args.skip_bad,
        progress=_progress(args),
    )
    history = detector.training_summary.get("history") or [{}]
    fusion = detector.fusion
    print(
        f"trained vfm in {detector.training_summary.get('seconds', 0.0):.1f} s "
        f"(last epoch loss {history[-1].get('loss', float('nan')):.4f}); fusion weight of the "
        f"head: image {fusion.get('image_weight')}, map {fusion.get('map_weight')}"
    )
    print(
        f"saved checkpoint to {args.output} (config.json, model.safetensors; resume state in last/)"
    )
    return EXIT_OK


def _cmd_batch(args: argparse.Namespace) -> int:
    from anomalens.batch import run_batch

    if not args.engine:
        raise ValueError("--workers and --address need --engine (local, process or ray)")
    if args.engine != "ray" and args.address:
        raise ValueError("--address needs --engine ray")
    if args.explain or args.report:
        raise ValueError("--explain and --report write a report folder: run them without --engine")
    r = run_batch(
        args.model,
        args.input,
        args.output,
        engine=args.engine,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        address=args.address,
        content_hash=args.hash,
        progress=_progress(args),
    )
    s = r.summary
    print(
        f"{r.n_new} images scored ({r.images_per_second:.1f} images/s, {r.n_errors} unreadable), "
        f"{r.n_skipped} already scored; all {s['n_images']}: {s['n_defective']} defective, "
        f"{s['n_good']} ok, {s['n_errors']} errors"
    )
    print(f"wrote {args.output / 'results'}/part-*.parquet and {args.output / 'summary.json'}")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    from anomalens.distributed import is_main
    from anomalens.training import train_detector

    if args.method == "vfm":
        return _cmd_train_vfm(args)

    model_options = {
        k: getattr(args, k) for k in ("backbone", "image_size", "precision", "seed", "anchors")
    }
    schedule = {
        "text_epochs": args.text_epochs,
        "image_epochs": args.image_epochs,
        "text_batch_size": args.text_batch_size,
        "image_batch_size": args.batch_size,
        "accumulate": args.accumulate,
        "text_lr": args.text_lr,
        "image_lr": args.lr,
        "seed": args.seed,
    }
    _, result = train_detector(
        args.method,
        args.dataset,
        args.root,
        args.output,
        categories=args.category,
        mode=args.mode,
        model_options=model_options,
        schedule=schedule,
        shots=args.shots,
        val_fraction=args.val_fraction,
        defect_kinds=args.defect_kinds,
        resume=not args.no_resume,
        skip_bad=args.skip_bad,
        progress=_progress(args),
        nproc=args.nproc,
    )
    if not is_main():  # torchrun: rank 0 reports
        return EXIT_OK
    best = result.best or {}
    chosen = ", ".join(
        f"{k} {best[k]:.3f}" for k in ("val_image_auroc", "val_pixel_auroc") if k in best
    )
    print(
        f"trained in {result.seconds:.1f} s; chose stage {best.get('stage')} epoch "
        f"{best.get('epoch')}" + (f" ({chosen})" if chosen else "")
    )
    print(
        f"saved checkpoint to {args.output} (config.json, model.safetensors; resume state in last/)"
    )
    return EXIT_OK


def _cmd_mvtec_ad2(args: argparse.Namespace) -> int:
    from anomalens.mvtec_ad2 import RESULTS_FILE, ThresholdRule, run_ad2

    rule = ThresholdRule(args.threshold_rule, args.threshold_k, args.threshold_quantile)
    result = run_ad2(
        args.root,
        args.category,
        args.method,
        _method_options(args),
        output=args.output,
        rule=rule,
        submission=not args.no_submission,
        skip_bad=args.skip_bad,
        progress=_progress(args),
    )
    shown = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items())
    print(f"{args.category} test_public: {shown}")
    print(
        f"pixel threshold {result.pixel_threshold:.4g} from {result.n_validation} validation images"
    )
    for split, n in result.submission.items():
        print(f"wrote {n} maps and masks of {split} under {args.output}")
    print(f"wrote {args.output / RESULTS_FILE}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from anomalens.demo import DEFAULT_OUTPUT, format_summary, run_demo

    if args.category and args.root is None:
        raise ValueError("--category needs --root (the demo's synthetic data has fixed names)")
    options = {
        k: getattr(args, k)
        for k in ("backbone", "image_size", "memory_size", "shots")
        if getattr(args, k) is not None
    }
    output = args.output or Path(DEFAULT_OUTPUT)
    result = run_demo(
        output,
        root=args.root,
        categories=args.category,
        options=options,
        progress=_progress(args),
    )
    print()
    print(format_summary(result, output))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


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
