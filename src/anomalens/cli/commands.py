"""The core commands: benchmark, fit, predict (report folder or batch engines), train, demo."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anomalens.cli.options import EXIT_OK, _method_options, _progress
from anomalens.cli.tools import _explain_options
from anomalens.data.datasets import resolve_one_category
from anomalens.errors import display_path


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


def _cmd_fit(args: argparse.Namespace) -> int:
    from anomalens.evaluate import build_detector, load_split
    from anomalens.methods.base import check_model_folder
    from anomalens.overlap import training_record

    check_model_folder(args.output)  # before minutes of fitting
    category = resolve_one_category(args.dataset, args.root, args.category)
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
    for note in detector.fit_report.notes:
        print(note)
    pose = getattr(detector, "pose", None)
    if pose is not None and getattr(detector.config, "pose", "off") != "off":
        print(f"pose normalisation: {pose.reason}")  # the decision of fit and why
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
