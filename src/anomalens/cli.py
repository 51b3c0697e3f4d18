"""Command line: ``anomalens {benchmark,fit,predict,train,demo}``.

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
from anomalens.errors import AnomalensError, ImageLoadError
from anomalens.methods import METHODS
from anomalens.methods.aaclip import ANCHOR_SOURCES, TRAINING_MODES
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


def _add_method_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("detector options (unset = the method's default)")
    g.add_argument("--method", default="patchcore", choices=sorted(METHODS), help="%(default)s")
    g.add_argument(
        "--backbone",
        help="backbone spec, e.g. efficientnet-lite0, efficientnet-lite2, "
        "dinov2:facebook/dinov2-base, clip:/path/to/local/folder",
    )
    g.add_argument("--image-size", type=_int_at_least(32), help="square input side in pixels")
    g.add_argument(
        "--shots",
        type=_int_at_least(0),
        help="use only K good training images (0: zero-shot, for methods that support it)",
    )
    g.add_argument("--seed", type=int, help="random seed (shots, coreset)")
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
    p.add_argument("--input", required=True, nargs="+", type=Path, metavar="PATH")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--recursive", action="store_true", help="also search subfolders")
    p.add_argument("--no-figures", action="store_true", help="skip the overlay figures")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    p.set_defaults(handler=_cmd_predict)

    p = sub.add_parser(
        "train",
        parents=[common],
        help="train AA-CLIP adapters (two stages) and save the checkpoint",
        description="Train the adapters of a trainable method (AA-CLIP / AA-SigLIP) on a "
        "dataset and write OUTPUT/config.json + OUTPUT/model.safetensors (the checkpoint chosen "
        "on a validation split) and OUTPUT/last/ (resume state: rerun the same command to "
        "continue after an interruption). Modes: masks (defective images with masks, from the "
        "test split: train on one dataset, benchmark on another), kshot (K images per category, "
        "half good, half defective), synthetic (cut-paste / Perlin defects on the good train "
        "images; no masks needed).",
    )
    _add_dataset_options(p, many=True)
    g = p.add_argument_group("model")
    g.add_argument(
        "--method", default=TRAINABLE_METHODS[0], choices=TRAINABLE_METHODS, help="%(default)s"
    )
    g.add_argument("--backbone", help="backbone spec (default: the method's)")
    g.add_argument("--anchors", choices=ANCHOR_SOURCES, default="text", help="%(default)s")
    g.add_argument("--image-size", type=_int_at_least(32), help="square input side in pixels")
    g.add_argument("--precision", choices=PRECISIONS, help="backbone precision")
    g = p.add_argument_group("data")
    g.add_argument("--mode", choices=TRAINING_MODES, default="masks")
    g.add_argument("--shots", type=_int_at_least(2), help="images per category (kshot mode)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="validation share (0.1)")
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
    g.add_argument("--text-lr", type=float, help="stage 1 learning rate (1e-5)")
    g.add_argument("--lr", type=float, help="stage 2 learning rate (5e-4)")
    g.add_argument("--seed", type=int, help="data order, augmentation and initialisation (0)")
    p.add_argument("--output", required=True, type=Path, metavar="CKPT")
    p.add_argument("--no-resume", action="store_true", help="ignore CKPT/last and start over")
    p.set_defaults(handler=_cmd_train)

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
    g.add_argument("--image-size", type=_int_at_least(32), help="square input side in pixels")
    g.add_argument("--memory-size", type=_int_at_least(1), help="memory bank rows")
    g.add_argument(
        "--shots",
        type=_int_at_least(0),
        help="use only K good training images (0: zero-shot, for methods that support it)",
    )
    p.set_defaults(handler=_cmd_demo)
    _add_deploy_commands(sub, common)
    return parser


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
    )
    print()
    print(format_table(result.rows()))
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
    from anomalens.evaluate import build_detector, load_samples

    category = _resolve_one_category(args.dataset, args.root, args.category)
    detector = build_detector(args.method, category, **_method_options(args))
    train, _, skipped = load_samples(
        args.dataset, args.root, category, "train", args.skip_bad, _progress(args)
    )
    detector.fit([s.image for s in train], progress=_progress(args))
    folder = detector.save(args.output)
    threshold = detector.threshold
    shown = "none (too few images to calibrate)" if threshold is None else f"{threshold:.4g}"
    shots = detector.config.shots
    used = len(train) if shots is None else f"{min(shots, len(train))} of {len(train)}"
    print(
        f"fitted {args.method} on {used} good images of {category!r}"
        + (f" ({len(skipped)} unreadable skipped)" if skipped else "")
        + f"; image threshold {shown}"
    )
    print(f"saved model to {folder} (config.json, model.safetensors)")
    return EXIT_OK


def _cmd_predict(args: argparse.Namespace) -> int:
    from anomalens.inference import predict_paths

    result = predict_paths(
        args.model,
        args.input,
        args.output,
        recursive=args.recursive,
        skip_bad=args.skip_bad,
        figures=not args.no_figures,
        progress=_progress(args),
    )
    _print_predictions(result.records, result.summary, args.output, len(result.skipped))
    return EXIT_OK


def _print_predictions(
    records: list[dict[str, Any]], summary: dict[str, Any], output: Path, n_skipped: int
) -> None:
    shown = 20
    width = min(60, max(len(r["path"]) for r in records))
    for r in records[:shown]:
        verdict = {None: "", True: "DEFECTIVE", False: "ok"}[r["is_defective"]]
        path = r["path"] if len(r["path"]) <= width else "..." + r["path"][-(width - 3) :]
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


def _cmd_train(args: argparse.Namespace) -> int:
    from anomalens.training import train_detector

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
    )
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
    text = text.splitlines()[0] if "\n" in text else text
    if isinstance(exc, FloatingPointError):
        return f"numerical error: {text}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 bad input, 130 interrupted)."""
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
