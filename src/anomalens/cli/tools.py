"""Commands around the core: explanation options and ``report``, ``diagnose``, ``export``,
``serve`` and ``mvtec-ad2``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anomalens.cli.options import EXIT_OK, _int_at_least, _method_options, _name_list, _progress
from anomalens.data.datasets import DATASET_NAMES


def _add_explain_options(p: argparse.ArgumentParser, command: str) -> None:
    """``--explain SPEC`` of ``command``: for ``predict`` and ``serve`` also the explainer's
    options (:func:`_explain_options`), for ``predict`` ``--report``."""
    g = p.add_argument_group("explanations (anomalens.explain)")
    g.add_argument(
        "--explain",
        metavar="SPEC",
        help="explain each image: grounded (offline), hf:HUB_ID_OR_FOLDER (a transformers VLM, "
        "e.g. hf:llava-hf/llava-onevision-qwen2-0.5b-ov-hf) or openai:URL#MODEL (an "
        "OpenAI-compatible server, API key from $OPENAI_API_KEY)"
        + ("; writes report.html per category" if command == "benchmark" else ""),
    )
    if command == "predict":
        g.add_argument("--report", action="store_true", help="also write OUT/report.html")
    if command == "benchmark":
        return
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
    _add_explain_options(p, "serve")
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
        explain_options=_explain_options(args),
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
