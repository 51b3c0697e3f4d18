"""Render the result tables of README.md and docs/*.md from the committed JSON results.

The ``benchmarks/*.sh`` and ``benchmarks/bench_*.py`` scripts write small JSON files under
``benchmarks/results/<table>/``. Each table in the docs sits between two markers::

    <!-- results:patchcore-screw -->
    ...generated text: a line naming the machine and date, then a Markdown table...
    <!-- /results:patchcore-screw -->

Usage (from the repository root; standard library only)::

    python benchmarks/results_table.py --write    # rewrite every block from the JSON
    python benchmarks/results_table.py --check    # exit 1 with one line if a block is stale
    python benchmarks/results_table.py            # print every table
    python benchmarks/results_table.py collect runs/x/results.json benchmarks/results/t/x.json \\
        [--set training_seconds=197]               # copy a results.json, adding fields

Tables (name: folder under ``benchmarks/results`` and files):

* ``patchcore-screw``: ``patchcore-screw/*.json``, ``anomalens benchmark`` results (one file per
  setting) of ``benchmarks/screw_patchcore.sh``;
* ``patchcore-speed``: ``patchcore-speed/screw.json`` of ``bench_patchcore_speed.py --json``;
* ``fewshot-screw``: ``fewshot-screw/<method>_k<K>.json`` of ``benchmarks/screw_fewshot.sh``;
* ``aaclip-screw``: ``aaclip-screw/<anchors>.json`` of ``benchmarks/screw_aaclip.sh``;
* ``aaclip-speed``: ``aaclip-speed/*.json`` of ``bench_aaclip.py --json``;
* ``zero-few-shot-speed``: ``zero-few-shot-speed/*.json`` of ``bench_zero_few_shot.py --json``;
* ``predict-memory``: ``predict-memory/*.json`` of ``bench_predict_memory.py --json``;
* ``gaussian-vfm``: ``gaussian-vfm/<dataset>_<method>.json`` of ``benchmarks/gaussian_vfm.sh``;
* ``vfm-speed``: ``vfm-speed/*.json`` of ``bench_vfm.py --json``;
* ``batch-speed``: ``batch-speed/screw.json`` of ``bench_batch.py run ... --json``;
* ``explain-accuracy``: ``explain-accuracy/<category>.json`` of ``bench_explain_accuracy.py``;
* ``explain-speed``: ``explain-speed/main.json`` of ``bench_explain_speed.py --json``;
* ``diagnose-encoders`` / ``diagnose-answerers``: ``diagnose/<category>.json`` of;
* ``export-accuracy``: ``export-accuracy/<category>.json`` of ``export_accuracy.py --json``;
* ``export-speed``: ``export-speed/*.json`` of ``bench_export.py --json``;
* ``service-load``: ``service-load/*.json`` of ``load_service.py --json``;
* ``defaults-categories`` / ``defaults-mean``: ``defaults/<setting>.json`` of
  ``sweep_defaults.py --out benchmarks/results/defaults``; ``defaults-ablations``:
  ``defaults-ablations/*.json`` (screening runs); ``defaults-memory``:
  ``defaults-memory/*.json`` (magnetic tile, one setting each); ``defaults-speed``:
  ``defaults-speed/*.json`` of ``bench_defaults_speed.py --json``; ``methods-by-type``:
  ``methods-by-type/<category>.json`` of ``methods_by_type.py --json``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks") / "results"
#: Files (relative to the repository root) whose blocks are rendered.
DOC_FILES = ("README.md", "docs/*.md")

BLOCK = re.compile(
    r"(<!-- results:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)",
    re.DOTALL,
)
OPEN = re.compile(r"<!-- results:([a-z0-9-]+) -->")

METRICS = (
    ("I-AUROC", "image_auroc"),
    ("P-AUROC", "pixel_auroc"),
    ("P-AP", "pixel_ap"),
    ("AUPRO", "aupro"),
    ("F1-max", "f1_max"),
)


class ResultsError(Exception):
    """A results file is missing or malformed, or a block is broken (one-line message)."""


# ------------------------------------------------------------------------------------ helpers


def load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"cannot read {path}: {exc}") from None


def files(results: Path, table: str) -> list[Path]:
    found = sorted((results / table).glob("*.json"))
    if not found:
        raise ResultsError(f"no results for table {table!r}: {results / table}/*.json is missing")
    return found


def num(value: Any, digits: int) -> str:
    """``value`` with ``digits`` decimals; ``-`` when missing or NaN."""
    if value is None:
        return "-"
    v = float(value)
    return f"{v:.{digits}f}" if math.isfinite(v) else "-"


def sig(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits (at least one decimal below 100)."""
    if value is None or not math.isfinite(float(value)):
        return "-"
    v = float(value)
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v)))) if v else 1
    return f"{v:.{decimals}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine(env: dict[str, Any]) -> str:
    """``2026-11-25, AMD EPYC (2 cores), torch 2.13.0, 2 threads`` from an environment dict."""
    date = str(env.get("date", "?"))[:10]
    cpu = env.get("cpu", "unknown CPU")
    cores = env.get("cores")
    isa = env.get("cpu_isa")
    torch = str(env.get("torch", "?")).split("+")[0]
    threads = env.get("torch_threads")
    detail = ", ".join(x for x in (f"{cores} cores" if cores else "", isa or "") if x)
    text = f"{date}, {cpu}" + (f" ({detail})" if detail else "")
    text += f", torch {torch}"
    if threads:
        text += f", {threads} thread" + ("s" if threads != 1 else "")
    return text


def machines(docs: Sequence[dict[str, Any]]) -> str:
    """The distinct machines / dates of ``docs`` in order, joined by ``; ``."""
    seen: list[str] = []
    for d in docs:
        m = machine(d.get("environment", {}))
        if m not in seen:
            seen.append(m)
    return "; ".join(seen)


def note(docs: Sequence[dict[str, Any]]) -> str:
    """The ``source`` notes of hand-filled files (not produced by a run), if any."""
    notes = sorted({d["source"] for d in docs if d.get("source")})
    return "".join(f" {n}" for n in notes)


def category(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    cats = doc.get("categories") or {}
    if len(cats) != 1:
        raise ResultsError(f"{path}: expected one category, found {len(cats)}")
    return next(iter(cats.values()))


def options_label(options: dict[str, Any]) -> str:
    """Command-line flags of a run's options, e.g. ``--shots 8 --augment rot90,hflip``."""
    parts = []
    for key, value in options.items():
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        parts.append(f"--{key.replace('_', '-')} {value}")
    return f"`{' '.join(parts)}`" if parts else ""


# ---------------------------------------------------------------------------------- renderers


def _patchcore_order(path: Path) -> tuple[int, str]:
    order = ["full", "full_fp32", "shot1", "shot2", "shot4", "shot8", "shot8_aug"]
    return (order.index(path.stem) if path.stem in order else len(order), path.stem)


def render_patchcore_screw(results: Path) -> str:
    paths = sorted(files(results, "patchcore-screw"), key=_patchcore_order)
    docs = [load(p) for p in paths]
    rows = []
    for path, doc in zip(paths, docs, strict=True):
        c = category(doc, path)
        opts = {k: v for k, v in doc.get("options", {}).items() if k != "seed" or v != 0}
        setting = options_label(opts) or "defaults"
        if "shots" not in opts:
            setting = f"full-shot ({c.get('n_train')} images), {setting}"
        rows.append([setting, *metric_cells(c, ms_digits=1)])
    c0 = category(docs[0], paths[0])
    head = (
        f"MVTec AD screw, {c0.get('n_train')} train / {c0.get('n_test')} test images, "
        f"seed 0; {machines(docs)}.{note(docs)}"
    )
    header = ["setting", *(h for h, _ in METRICS), "fit s", "ms/image"]
    return head + "\n\n" + table(header, rows)


def metric_cells(c: dict[str, Any], ms_digits: int) -> list[str]:
    """The metric columns of one category result, then ``fit s`` and ``ms/image``."""
    cells = [num(c.get(k), 3) for _, k in METRICS]
    return [*cells, num(c.get("fit_seconds"), 1), num(c.get("ms_per_image"), ms_digits)]


def render_fewshot_screw(results: Path) -> str:
    labels = {"anomalydino": "AnomalyDINO-style", "winclip": "WinCLIP+ memory branch"}

    def key(path: Path) -> tuple[str, int]:
        m = re.fullmatch(r"(.+)_k(\d+)", path.stem)
        if not m:
            raise ResultsError(f"{path}: expected a name <method>_k<K>.json")
        return m.group(1), int(m.group(2))

    paths = sorted(files(results, "fewshot-screw"), key=key)
    docs = [load(p) for p in paths]
    rows = []
    for path, doc in zip(paths, docs, strict=True):
        c = category(doc, path)
        method = doc.get("method", key(path)[0])
        backbone = doc.get("options", {}).get("backbone", "")
        label = labels.get(method, method)
        rows.append([label, str(key(path)[1]), f"`{backbone}`", *metric_cells(c, ms_digits=0)])
    c0 = category(docs[0], paths[0])
    head = (
        f"MVTec AD screw, K good train images (seed 0), {c0.get('n_test')} test images; "
        f"{machines(docs)}.{note(docs)}"
    )
    header = ["method", "K", "backbone", *(h for h, _ in METRICS), "fit s", "ms/image"]
    return head + "\n\n" + table(header, rows)


def render_aaclip_screw(results: Path) -> str:
    order = ["learned", "centroid", "text"]
    paths = sorted(
        files(results, "aaclip-screw"),
        key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.stem),
    )
    docs = [load(p) for p in paths]
    rows = []
    for path, doc in zip(paths, docs, strict=True):
        c = category(doc, path)
        rows.append(
            [f"`{path.stem}`"]
            + [num(c.get(k), 3) for _, k in METRICS]
            + [
                num(doc.get("training_seconds"), 0),
                num(c.get("fit_seconds"), 1),
                num(c.get("ms_per_image"), 1),
            ]
        )
    head = (
        "MVTec AD screw, EfficientNet-Lite0 at 320 px, bf16, adapters trained 10 epochs in "
        f"synthetic mode on the good train images only; {machines(docs)}.{note(docs)}"
    )
    header = ["anchors", *(h for h, _ in METRICS), "training s", "fit s", "ms/image"]
    return head + "\n\n" + table(header, rows)


def render_patchcore_speed(results: Path) -> str:
    path = results / "patchcore-speed" / "screw.json"
    if not path.is_file():
        raise ResultsError(f"no results for table 'patchcore-speed': {path} is missing")
    d = load(path)
    c = d["config"]
    rows = [
        [
            "backbone forward alone",
            num(d["backbone_ms_per_image"], 1),
            num(d["backbone_images_per_second"], 1),
        ],
        [
            "PatchCore `predict`",
            num(d["predict_ms_per_image"], 1),
            num(d["predict_images_per_second"], 1),
        ],
    ]
    rows += [[f"predict part: {k}", num(v, 1), "-"] for k, v in d["breakdown_ms_per_image"].items()]
    fit = ", ".join(f"{k} {num(v, 1)}" for k, v in d.get("fit_breakdown_seconds", {}).items())
    head = (
        f"{d.get('category', 'screw')}, {d.get('n_test')} test images in memory, best of "
        f"{d.get('repeats')}; {c['backbone']} at {c['image_size']} px, layers "
        f"{tuple(c['layers'])}, batch {c['batch_size']}, {c['precision']}, memory "
        f"{c['memory_rows']} x {c['memory_dim']}; {machine(d.get('environment', {}))}."
        f"{note([d])}"
    )
    tail = (
        f"Ratio predict / backbone: {num(d['ratio_predict_backbone'], 2)}. "
        f"Fit: {num(d['fit_seconds'], 1)} s" + (f" ({fit})." if fit else ".")
    )
    return head + "\n\n" + table(["", "ms/image", "images/s"], rows) + "\n\n" + tail


def render_zero_few_shot_speed(results: Path) -> str:
    paths = files(results, "zero-few-shot-speed")
    docs = [load(p) for p in paths]
    rows = []
    for doc in docs:
        run = doc.get("run", {})
        suffix = ""
        if run.get("images") == 1 or run.get("repeats") == 1:
            suffix = f" ({run.get('images')} image, {run.get('repeats')} run)"
        for r in doc["rows"]:
            rows.append(
                [
                    r["model"],
                    r["precision"],
                    r["variant"] + suffix,
                    num(r["backbone_ms"], 0),
                    num(r["predict_ms"], 0),
                    num(1000 / r["predict_ms"], 2),
                    num(r["ratio"], 2),
                ]
            )
    head = (
        f"Random-weight CLIP vision towers, images at the model's input size; "
        f"{machines(docs)}.{note(docs)}"
    )
    header = [
        "model",
        "precision",
        "variant",
        "backbone ms/image",
        "predict ms/image",
        "images/s",
        "predict / backbone",
    ]
    return head + "\n\n" + table(header, rows)


def render_aaclip_speed(results: Path) -> str:
    paths = files(results, "aaclip-speed")
    docs = [load(p) for p in paths]
    rows = []
    for doc in docs:
        for r in doc["rows"]:
            rows.append(
                [
                    r["model"],
                    r["precision"],
                    sig(r["stage1_s_per_step"]),
                    sig(r["stage2_s_per_step"]),
                    num(r["inference_ms_per_image"], 0),
                    num(r["backbone_ms_per_image"], 0),
                    num(r["anchors_s"], 1),
                    num(r["peak_gib"], 1),
                ]
            )
    run = docs[0].get("run", {})
    head = (
        f"Random weights at the real sizes, text anchors, training batch "
        f"{run.get('batch_size')}, inference batch {run.get('images')}; "
        f"{machines(docs)}.{note(docs)}"
    )
    header = [
        "model",
        "precision",
        "stage 1 s/step",
        "stage 2 s/step",
        "inference ms/image",
        "backbone ms/image",
        "anchors s",
        "peak GiB",
    ]
    return head + "\n\n" + table(header, rows)


def render_predict_memory(results: Path) -> str:
    docs = [load(p) for p in files(results, "predict-memory")]
    docs.sort(key=lambda d: (d["figures"], d["n_images"]))
    rows = [
        [
            f"{d['n_images']} x {d['image_size_px']} px",
            "yes" if d["figures"] else "no (`--no-figures`)",
            num(d["peak_rss_gib"], 2),
            " / ".join(num(v, 2) for v in d["rss_by_tenth_of_time_gib"] if v is not None),
            num(d["limit_gib"], 1),
            "yes" if d["under_limit"] else "**no**",
        ]
        for d in docs
    ]
    head = (
        f"`anomalens predict` with {docs[0]['method']}, in a child process whose resident "
        f"memory is sampled every 0.2 s; {machines(docs)}.{note(docs)}"
    )
    header = ["images", "overlay figures", "peak RSS GiB", "peak per tenth of the run", "limit"]
    return head + "\n\n" + table([*header, "under"], rows)


GAUSSIAN_VFM_METHODS = ("patchcore", "padim", "gaussian", "vfm")
GAUSSIAN_VFM_LABELS = {
    "patchcore": "PatchCore",
    "padim": "PaDiM",
    "gaussian": "Gaussian AD",
    "vfm": "AnomalyVFM v1.1 (seed design)",
}


def render_gaussian_vfm(results: Path) -> str:
    def key(path: Path) -> tuple[str, int, str]:
        dataset, _, method = path.stem.rpartition("_")
        order = GAUSSIAN_VFM_METHODS.index(method) if method in GAUSSIAN_VFM_METHODS else 9
        return dataset, order, method

    paths = sorted(files(results, "gaussian-vfm"), key=key)
    docs = [load(p) for p in paths]
    rows = []
    for path, doc in zip(paths, docs, strict=True):
        c = category(doc, path)
        method = doc.get("method", key(path)[2])
        size = (doc.get("config") or {}).get("image_size")
        rows.append(
            [
                key(path)[0],
                GAUSSIAN_VFM_LABELS.get(method, method),
                str(size),
                str(c.get("n_train")),
                *metric_cells(c, ms_digits=0),
                str(doc.get("environment", {}).get("torch_threads", "-")),
            ]
        )
    head = (
        "EfficientNet-Lite0, seed 0, every method at its defaults (VFM at 256 px, 5 epochs); "
        "Magnetic Tile with 200 of its 761 train images (`--shots 200`); fit s includes VFM's "
        "training. Timings were taken while other jobs shared the 2 cores: compare them only "
        f"roughly. {machines(docs)}.{note(docs)}"
    )
    header = ["data", "method", "px", "train", *(h for h, _ in METRICS), "fit s", "ms/image"]
    return head + "\n\n" + table([*header, "threads"], rows)


def render_vfm_speed(results: Path) -> str:
    paths = files(results, "vfm-speed")
    docs = [load(p) for p in paths]
    rows = []
    for doc in docs:
        for r in doc["rows"]:
            rows.append(
                [
                    r["model"],
                    str(r["image_size"]),
                    r["precision"],
                    sig(r["train_s_per_step"]),
                    num(r["train_ms_per_image"], 0),
                    num(r["inference_ms_per_image"], 0),
                    num(r["backbone_ms_per_image"], 0),
                    "-" if r.get("lora_parameters") is None else f"{r['lora_parameters']:,}",
                ]
            )
    run = docs[0].get("run", {})
    head = (
        f"Training batch {run.get('batch_size')}, inference on {run.get('images')} images, best "
        f"of {run.get('repeats')} after a warm-up; bf16 is emulated on an AVX2-only CPU (no "
        f"native bf16), where `precision=auto` picks fp32; {machines(docs)}.{note(docs)}"
    )
    header = [
        "model",
        "px",
        "precision",
        "train s/step",
        "train ms/image",
        "inference ms/image",
        "backbone ms/image",
        "LoRA params",
    ]
    return head + "\n\n" + table(header, rows)


def render_batch_speed(results: Path) -> str:
    paths = files(results, "batch-speed")
    docs = [load(p) for p in paths]
    rows = []
    for doc in docs:
        for r in doc["rows"]:
            label = {"local": "local (1 process)", "process": "process", "ray": "ray"}[r["engine"]]
            workers = "-" if r["engine"] == "local" else str(r["workers"])
            rows.append(
                [
                    label,
                    workers,
                    str(r["images"]),
                    num(r["seconds"], 1),
                    num(r["images_per_second"], 1),
                    num(r["startup_seconds"], 1),
                    num(r.get("ray_init_seconds"), 1),
                ]
            )
    head = (
        f"`anomalens predict --engine`, {docs[0].get('model')}, MVTec AD screw PNGs (512 px) "
        f"read from disk, wall time of the whole run (listing, start-up, decoding, scoring, "
        f"Parquet shards); workers and actors use 1 CPU each; {machines(docs)}.{note(docs)}"
    )
    header = [
        "engine",
        "workers",
        "images",
        "seconds",
        "images/s",
        "first rows after s",
        "`ray.init` s",
    ]
    return head + "\n\n" + table(header, rows)


def render_explain_accuracy(results: Path) -> str:
    docs = [load(p) for p in files(results, "explain-accuracy")]
    docs.sort(key=lambda d: d["category"] != "screw")
    rows = [
        [
            d["category"],
            str(d["n_images"]),
            str(len(d["types"])),
            num(d["chance"], 2),
            num(d["type_accuracy"], 3),
            num(d["type_accuracy_flagged"], 3),
            num(d.get("type_accuracy_hits"), 3),
            num(d["type_accuracy_gt_query"], 3),
            num(d["location_accuracy"], 3),
            num(d["location_accuracy_hits"], 3),
            num(d["hit_rate"], 3),
            FEATURE_SOURCES[d.get("features", "backbone")],
        ]
        for d in docs
    ]
    head = (
        "Grounded explainer, default PatchCore per dataset; defect types leave-one-image-out "
        "over the defective test images (labelled regions: the other images' ground-truth "
        "masks; query: the detector's strongest hotspot); location: the stated place on the part "
        f"contains the ground-truth centre. {machines(docs)}.{note(docs)}"
    )
    models = "; ".join(f"{d['category']}: {d['model_note']}" for d in docs if d.get("model_note"))
    header = [
        "data",
        "defective images",
        "types",
        "chance",
        "type acc.",
        "type acc. (flagged)",
        "type acc. (hotspot hits GT)",
        "type acc. (GT region as query)",
        "location acc.",
        "location acc. (hotspot hits GT)",
        "hotspot hits GT",
        "region features",
    ]
    return head + "\n\n" + table(header, rows) + (f"\n\nModels: {models}." if models else "")


#: How defect types pooled region features (``features`` of the accuracy and speed JSONs;
#: files without it predate the choice and used a separate backbone pass).
FEATURE_SOURCES = {
    "detector": "the detector's own",
    "backbone": "separate Lite0 pass",
}


def render_explain_speed(results: Path) -> str:
    """VLM rows of every ``explain-speed/*.json`` (``main.json`` first; a CPU column when they
    come from several machines), then each file's grounded-explainer line."""
    path = results / "explain-speed" / "main.json"
    if not path.is_file():
        raise ResultsError(f"no results for table 'explain-speed': {path} is missing")
    timed = [load(path)] + [
        load(p) for p in sorted(path.parent.glob("*.json")) if p.name != path.name
    ]  # fmt: skip
    with_vlm = [d for d in timed if d.get("vlm")]
    several = len(with_vlm) > 1
    rows = []
    for d in with_vlm:
        env = d.get("environment", {})
        emulated = " (emulated)" if not env.get("native_bf16") else " (native)"
        cpu = f"{env.get('cpu', '?')}" + (" (native bf16)" if env.get("native_bf16") else "")
        for r in d["vlm"]:
            rows.append(
                ([cpu] if several else [])
                + [
                    f"{r['model']} ({r['params_millions']:.0f} M params, random weights)",
                    r["precision"] + (emulated if r["precision"] == "bf16" else ""),
                    num(r["seconds_per_explanation"], 1),
                    num(r["seconds_to_first_token"], 1),
                    num(r["decode_tokens_per_second"], 1),
                    num(r["tokens_per_second"], 2),
                ]
            )
    tokens = with_vlm[0]["vlm"][0]["new_tokens"] if with_vlm else "-"
    where = "; ".join(machine(d.get("environment", {})) for d in with_vlm)
    cols = ["VLM", "precision", "s/explanation", "s to first token", "decode tokens/s"]
    text = (
        f"One defective image (512 px, one region: the image with boxes plus one crop), "
        f"{tokens} new tokens, one timed run after a warm-up; {where}.{note(with_vlm)}\n\n"
        + table((["CPU"] if several else []) + cols + ["tokens/s overall"], rows)
    )
    for doc in timed:
        g = doc.get("grounded")
        if not g:
            continue
        where = f" ({machine(doc.get('environment', {}))})" if len(timed) > 1 else ""
        text += (
            f"\n\nGrounded explainer{where}: {num(g['grounded_ms_per_image'], 2)} ms/image "
            f"against {num(g['predict_ms_per_image'], 1)} ms/image for PatchCore predict "
            f"({num(100 * g['grounded_share_of_predict'], 1)} % of predict; {g['images']} screw "
            "images, half of them with findings)."
        )
        if g.get("grounded_types_ms_per_image") is not None:
            how = (
                "regions pooled on the detector's own patch features"
                if g.get("types_features") == "detector"
                else "one more backbone pass, fp32, per image with findings"
            )
            text += (
                f" Naming defect types from labelled examples ({how}): "
                f"{num(g['grounded_types_ms_per_image'], 2)} ms/image in "
                f"all ({num(100 * g['grounded_types_share_of_predict'], 1)} % of predict)."
            )
    return text


def _diagnose_docs(results: Path, table: str) -> list[dict[str, Any]]:
    return [load(p) for p in files(results, table)]


def _data_label(doc: dict[str, Any]) -> str:
    d = doc["data"]
    sub = (
        f" ({d['n_test']} of {d['n_test_available']}, seed {d['seed']})"
        if d.get("subsampled")
        else ""
    )
    return f"{d['category']}{sub}"


def render_diagnose_encoders(results: Path) -> str:
    docs = _diagnose_docs(results, "diagnose")
    rows = []
    for doc in docs:
        for name, enc in doc["encoders"].items():
            for set_name, r in enc["sets"].items():
                p, i = r.get("patch") or {}, r.get("image") or {}
                rows.append(
                    [_data_label(doc), doc["data"].get("normal_patches", "all"), name, set_name]
                    + [num(p.get(k), 3) for k in ("silhouette", "probe_auroc", "knn_auroc")]
                    + [num(i.get(k), 3) for k in ("silhouette", "probe_auroc", "knn_auroc")]
                )
    mem = sorted({str(d["data"].get("memory_images")) for d in docs})
    head = (
        f"Test split of each category (masks); good memory: {', '.join(mem)} train images; "
        f"{machines(docs)}.{note(docs)}"
    )
    header = ["category", "normal patches", "backbone", "features", "patch silhouette"]
    header.append("patch probe AUROC")
    header += ["patch kNN AUROC", "image silhouette", "image probe AUROC", "image kNN AUROC"]
    return head + "\n\n" + table(header, rows)


DIAGNOSE_TESTS = (
    ("binary_discrimination", "binary (> 80%)"),
    ("hallucination_rate", "hallucination (< 10%)"),
    ("miss_rate", "miss (< 15%)"),
    ("defect_type", "type (> 70%)"),
    ("description_consistency", "description (> 70%)"),
)


def render_diagnose_answerers(results: Path) -> str:
    docs = _diagnose_docs(results, "diagnose")
    rows = []
    for doc in docs:
        for name, q in doc["questions"].items():
            t = q["tests"]
            rows.append(
                [_data_label(doc), name]
                + [
                    num(100 * t[k]["value"], 1) if t[k]["value"] is not None else "-"
                    for k, _ in DIAGNOSE_TESTS
                ]
                + [
                    num(100 * q["localization"]["value"], 1)
                    if q["localization"]["value"] is not None
                    else "-",
                    f"{q['decision']['passed']}/{q['decision']['total']}",
                    num((q.get("mmad_average") or {}).get("Average"), 1),
                ]
            )
    head = (
        "Questions generated from the test split (MMAD format, 1-shot; percent); MMAD average: "
        f"its macro mean over the subtasks asked here; {machines(docs)}."
    )
    header = ["category", "answerer", *(h for _, h in DIAGNOSE_TESTS), "location", "passed"]
    header.append("MMAD average")
    return head + note(docs) + "\n\n" + table(header, rows)


def render_diagnose_speed(results: Path) -> str:
    docs = _diagnose_docs(results, "diagnose-speed")
    rows = []
    for doc in docs:
        run = doc["run"]
        enc = "; ".join(f"{n} {num(e['seconds'], 1)} s" for n, e in doc["encoders"].items())
        ans = "; ".join(
            f"{n} {num(q['seconds_per_question'], 3)} s/question"
            for n, q in doc["questions"].items()
        )
        shots = (run.get("detector_options") or {}).get("shots")
        rows.append(
            [
                _data_label(doc),
                f"{run['detector']}" + (f" ({shots} shots)" if shots else ""),
                num(doc["seconds"], 0),
                enc or "-",
                ans or "-",
            ]
        )
    head = f"One `run_diagnose` call alone on the machine; {machines(docs)}.{note(docs)}"
    header = ["data", "detector", "total s", "encoder tests", "questions"]
    return head + "\n\n" + table(header, rows)


def _flags(d: dict[str, Any]) -> str:
    """``AVX512-VNNI no, AVX-VNNI no, AMX no`` from a ``cpu_flags`` dict."""
    f = d.get("cpu_flags", {})
    names = (("AVX512-VNNI", "avx512_vnni"), ("AVX-VNNI", "avx_vnni"), ("AMX", "amx_int8"))
    return ", ".join(f"{label} {'yes' if f.get(key) else 'no'}" for label, key in names)


def render_export_accuracy(results: Path) -> str:
    docs = [load(p) for p in files(results, "export-accuracy")]
    rows = []
    for d in docs:
        subset = "" if d["n_test"] == d["n_test_available"] else f" ({d['n_test']} of "
        subset += f"{d['n_test_available']} test images)" if subset else ""
        for name, m in d["rows"].items():
            diff = d["differences_to_torch"].get(name, {})
            rows.append(
                [f"{d['category']}{subset}", name]
                + [num(m[key], 3) for _, key in METRICS]
                + [f"{diff['score_rel_max']:.1e}" if diff else "-"]
                + [f"{diff['map_rel_range_max']:.1e}" if diff else "-"]
            )
    head = (
        f"PatchCore ({docs[0]['backbone']}, defaults) saved by `anomalens fit`, exported by "
        f"`benchmarks/export_accuracy.py`; INT8 calibrated on {docs[0]['calibration_images']} good "
        f"train images; {machines(docs)}."
    )
    header = ["category", "runtime", *(m for m, _ in METRICS), "max score diff", "max map diff"]
    tail = (
        "Score diff: largest |ONNX - torch| / |torch| over the test images; map diff: largest "
        "|ONNX - torch| over each map's range."
    )
    return head + "\n\n" + table(header, rows) + "\n\n" + tail


def render_export_speed(results: Path) -> str:
    docs = [load(p) for p in files(results, "export-speed")]
    rows = []
    for d in docs:
        for name, r in d["rows"].items():
            rows.append(
                [
                    d["category"],
                    name,
                    num(r["batch1_ms_per_image"], 1),
                    num(r["batch4_ms_per_image"], 1),
                ]
            )
    d = docs[0]
    head = (
        f"ms/image of the whole `predict` ({d['method']}, {d['backbone']} at {d['image_size']} px) "
        f"on {d['n_images']} test images in memory, variants taking turns, best of "
        f"{d['repeats']}; onnxruntime threads: {d['onnxruntime_threads']}; {machines(docs)}; "
        f"{_flags(d)}."
    )
    return head + "\n\n" + table(["category", "runtime", "batch 1", "batch 4"], rows)


def render_service_load(results: Path) -> str:
    docs = [load(p) for p in files(results, "service-load")]
    rows = []
    for d in docs:
        lat = d["latency_ms_good"]
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(d["by_status"].items()))
        rows.append(
            [
                f"{d['clients']} clients, {d['requests_sent']} requests",
                num(d["throughput_rps"], 1),
                num(d["good_images_per_s"], 1),
                f"{num(lat.get('p50'), 0)} / {num(lat.get('p95'), 0)} / {num(lat.get('p99'), 0)}",
                codes,
                str(d["server_5xx"]),
                str(d["connection_errors"]),
                f"{num(d['rss_mb_idle'], 0)} / {num(d['rss_mb_before'], 0)} / "
                f"{num(d['rss_mb_after'], 0)}",
            ]
        )
    head = (
        f"`benchmarks/load_service.py` against `anomalens serve` on loopback ({docs[0]['model']}); "
        "mix: 60% good images, 10% each corrupt, over 20 MB, wrong content type, no token; "
        f"{machines(docs)}."
    )
    header = [
        "load",
        "requests/s",
        "images/s",
        "good p50 / p95 / p99 ms",
        "status counts",
        "5xx",
        "dropped",
        "RSS MB idle / half / end",
    ]
    return head + "\n\n" + table(header, rows)


DEFAULTS_ORDER = ("plain", "previous", "defaults")
DEFAULTS_LABELS = {
    "plain": "plain PatchCore (reference)",
    "previous": "previous defaults (stretched square, no border)",
    "defaults": "**defaults**",
}
DEFAULTS_CATEGORIES = {
    "screw": "screw",
    "magnetic_tile": "magnetic tile",
    "brick": "brick",
    "grass": "grass",
    "gravel": "gravel",
}


def _defaults_docs(
    results: Path, ablations: bool
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """``(setting name, doc)`` of the sweep's files in table order (only the named settings
    unless ``ablations``) and the categories every one of them holds."""

    def key(path: Path) -> tuple[int, str]:
        stem = path.stem
        order = DEFAULTS_ORDER.index(stem) if stem in DEFAULTS_ORDER else len(DEFAULTS_ORDER)
        return order, stem

    paths = sorted(files(results, "defaults"), key=key)
    named = [(p.stem, load(p)) for p in paths]
    if not ablations:
        named = [(n, d) for n, d in named if n in DEFAULTS_ORDER]
    cats = [c for c in DEFAULTS_CATEGORIES if all(c in d["categories"] for _, d in named)]
    return named, cats


def _defaults_label(name: str, doc: dict[str, Any]) -> str:
    if name in DEFAULTS_LABELS:
        return DEFAULTS_LABELS[name]
    opts = ", ".join(f"{k}={v}" for k, v in (doc.get("options") or {}).items())
    return f"defaults + `{opts}`" if opts else name


def _defaults_head(docs: Sequence[dict[str, Any]]) -> str:
    limits = docs[0].get("limits") or {}
    limited = ", ".join(f"{DEFAULTS_CATEGORIES.get(k, k)} {v}" for k, v in limits.items())
    return (
        "MVTec AD screw, Magnetic Tile Defects and the demo textures (20 train, 30 + 30 test "
        "images each), seed 0, fp32"
        + (f"; training images limited to: {limited}" if limited else "")
        + f". {machines(docs)}.{note(docs)}"
    )


def render_defaults_categories(results: Path) -> str:
    named, cats = _defaults_docs(results, ablations=True)
    rows = []
    for name, doc in named:
        cells = [
            "{} / {} / {}".format(
                *(num(doc["categories"][c][k], 3) for k in ("image_auroc", "pixel_auroc", "aupro"))
            )
            for c in cats
        ]
        mean_i = sum(doc["categories"][c]["image_auroc"] for c in cats) / len(cats)
        mean_p = sum(doc["categories"][c]["pixel_auroc"] for c in cats) / len(cats)
        rows.append([_defaults_label(name, doc), *cells, num(mean_i, 3), num(mean_p, 3)])
    header = ["setting", *(DEFAULTS_CATEGORIES[c] for c in cats), "mean I-AUROC", "mean P-AUROC"]
    head = _defaults_head([d for _, d in named]) + " Cells: image AUROC / pixel AUROC / AUPRO."
    return head + "\n\n" + table(header, rows)


def render_defaults_mean(results: Path) -> str:
    named, cats = _defaults_docs(results, ablations=False)
    rows = []
    for name, doc in named:
        cs = [doc["categories"][c] for c in cats]
        rows.append(
            [
                _defaults_label(name, doc),
                num(sum(c["image_auroc"] for c in cs) / len(cs), 3),
                num(sum(c["pixel_auroc"] for c in cs) / len(cs), 3),
                num(min(c["image_auroc"] for c in cs), 3),
            ]
        )
    header = ["PatchCore", "mean image AUROC", "mean pixel AUROC", "worst image AUROC"]
    head = _defaults_head([d for _, d in named]) + " Per category: docs/benchmarks.md."
    return head + "\n\n" + table(header, rows)


#: variants of benchmarks/fewshot_pose.py, in table order, with their labels
FEWSHOT_POSE_VARIANTS = {
    "baseline": "AnomalyDINO, former defaults (pose off, foreground off, top 1% score)",
    "foreground": "+ foreground auto",
    "rotaug": "+ foreground auto, memory + rot90/180/270 copies",
    "pose_nobright": "+ foreground auto, pose auto without brightness match",
    "pose_top": "+ foreground auto, pose auto (top 1% score)",
    "pose_max": "+ foreground auto, pose auto, max score (the new defaults)",
    "pose_max_448": "+ foreground auto, pose auto, max score, 448 px",
    "patchcore": "PatchCore defaults",
    "patchcore_pose": "PatchCore, pose auto",
}


def render_fewshot_pose(results: Path) -> str:
    """benchmarks/fewshot_pose.py: mean (min-max) over shot seeds per category, variant, K."""
    paths = files(results, "fewshot")
    docs = [load(p) for p in paths]
    order = list(FEWSHOT_POSE_VARIANTS)
    cells, notes = [], []
    for path, doc in zip(paths, docs, strict=True):
        cat = doc.get("category", path.stem)
        for variant, by_k in doc.get("summary", {}).items():
            for k, c in by_k.items():
                runs = [
                    r
                    for r in doc.get("runs", [])
                    if r["variant"] == variant and str(r["shots"]) == k
                ]
                key = (cat, order.index(variant) if variant in order else len(order), int(k))
                cells.append((key, variant, c, runs))
        choice = doc.get("score_choice")
        if choice:
            means = ", ".join(f"{k} {v:.3f}" for k, v in choice["mean_val_auroc"].items())
            notes.append(
                f"{cat}: image score chosen on held-out good train images with synthetic "
                f"defects (mean validation AUROC over K and seeds: {means}): "
                f"**{choice['chosen']}**."
            )
        decisions = doc.get("decisions", [])
        if decisions:
            on = sum(1 for d in decisions if d["pose"])
            reasons = sorted({d["pose_reason"] for d in decisions})
            notes.append(
                f"{cat}: `fit` with pose auto decided on in {on} of {len(decisions)} fits "
                f"(K = {', '.join(str(k) for k in doc.get('shots', []))}, seeds "
                f"{', '.join(str(s) for s in doc.get('seeds', []))}): {'; '.join(reasons)}."
            )
    rows = []
    for (cat, _, k), variant, c, runs in sorted(cells, key=lambda x: x[0]):
        pose = sorted({"on" if r["pose"] else "off" for r in runs})
        lo, hi = c["image_auroc_range"] or (None, None)
        ms = [r["ms_per_image"] for r in runs]
        rows.append([
            cat.replace("_", " "),
            FEWSHOT_POSE_VARIANTS.get(variant, variant),
            str(k),
            f"**{num(c['image_auroc'], 3)}** ({num(lo, 2)}-{num(hi, 2)})",
            num(c["pixel_auroc"], 3),
            num(c["aupro"], 3),
            "/".join(pose),
            num(sum(ms) / len(ms), 0) if ms else "-",
        ])  # fmt: skip
    header = ["category", "variant", "K", "I-AUROC mean (min-max)", "P-AUROC", "AUPRO"]
    header += ["pose", "ms/image"]
    head = (
        f"EfficientNet-Lite0 (320 px unless said), seeds of the shot choice 0, 1, 2; "
        f"{machines(docs)}; ms/image on a machine shared by several jobs (not a speed figure)."
    )
    return head + "\n\n" + table(header, rows) + "".join("\n\n" + n for n in notes)


def render_defaults_ablations(results: Path) -> str:
    paths = sorted(files(results, "defaults-ablations"))
    docs = [load(p) for p in paths]
    cats = [c for c in DEFAULTS_CATEGORIES if all(c in d["categories"] for d in docs)]
    rows = []
    for doc in sorted(docs, key=lambda d: json.dumps(d["options"], sort_keys=True)):
        o = dict(doc["options"])
        score = "max" if not o.get("top_fraction") else f"top {100 * o['top_fraction']:g} %"
        rest = ", ".join(
            f"{k}={v}" for k, v in o.items() if k not in ("resize", "border", "top_fraction")
        )
        cs = [doc["categories"][c] for c in cats]
        rows.append(
            [
                o["resize"],
                f"{o['border']:g}",
                score,
                f"`{rest}`" if rest else "",
                *(f"{num(c['image_auroc'], 3)} / {num(c['pixel_auroc'], 3)}" for c in cs),
                num(sum(c["image_auroc"] for c in cs) / len(cs), 3),
                num(sum(c["pixel_auroc"] for c in cs) / len(cs), 3),
            ]
        )
        if rest or o["resize"] != "letterbox" or o.get("top_fraction"):
            continue
        for f in ("0.001", "0.003", "0.01", "0.03"):  # other scores of the same maps
            key = f"image_auroc_top{f}"
            if not all(key in c for c in cs):
                continue
            rows.append(
                [
                    o["resize"],
                    f"{o['border']:g}",
                    f"top {100 * float(f):g} % (same maps)",
                    "",
                    *(f"{num(c[key], 3)} / {num(c['pixel_auroc'], 3)}" for c in cs),
                    num(sum(c[key] for c in cs) / len(cs), 3),
                    num(sum(c["pixel_auroc"] for c in cs) / len(cs), 3),
                ]
            )
    header = ["resize", "border", "image score", "other", *(DEFAULTS_CATEGORIES[c] for c in cats)]
    head = _defaults_head(docs) + " Cells: image AUROC / pixel AUROC."
    return head + "\n\n" + table([*header, "mean I-AUROC", "mean P-AUROC"], rows)


def render_defaults_speed(results: Path) -> str:
    """One row per setting and machine (a CPU column when the files come from several)."""
    docs = [load(p) for p in files(results, "defaults-speed")]
    cpus = [cpu_label(d.get("environment", {})) for d in docs]
    several = len(set(cpus)) > 1
    rows = []
    for doc, cpu in zip(docs, cpus, strict=True):
        for r in doc["rows"]:
            rows.append(
                ([cpu] if several else [])
                + [
                    doc["category"],
                    r["setting"],
                    "on" if r["pose_on"] else "off",
                    num(r["fit_seconds"], 1),
                    num(r["ms_per_image"], 1),
                ]
            )
    repeats = " or ".join(str(r) for r in sorted({d["repeats"] for d in docs}))
    head = (
        f"PatchCore fit on the {docs[0]['n_train']} training images and predict (best of "
        f"{repeats} passes) on the {docs[0]['n_test']} test images, in memory, back to back; "
        f"{machines(docs)}.{note(docs)}"
    )
    cols = ["data", "setting", "pose", "fit s", "ms/image"]
    return head + "\n\n" + table((["CPU"] if several else []) + cols, rows)


def cpu_label(env: dict[str, Any]) -> str:
    """``AMD EPYC (AVX2)``: the CPU model and its bf16 path, from an environment dict."""
    cpu = env.get("cpu", "unknown CPU")
    isa = env.get("cpu_isa")
    return f"{cpu} ({isa})" if isa else str(cpu)


def render_methods_by_type(results: Path) -> str:
    """benchmarks/methods_by_type.py: one table per category, a column per defect type."""
    docs = [load(p) for p in files(results, "methods-by-type")]
    parts = [
        f"Every method at its defaults, all training images; image AUROC per defect type is good "
        f"test images against that type; the map sum is a probe (each map over its own pixel "
        f"threshold, added, top 0.3 % score), not a method of the library; {machines(docs)}."
    ]
    for doc in docs:
        types = list(doc["rows"][0]["by_type"])
        rows = [
            [GAUSSIAN_VFM_LABELS.get(r["name"], r["name"])]
            + [num(r[k], 3) for k in ("image_auroc", "pixel_auroc", "aupro")]
            + [num(r["by_type"][t], 3) for t in types]
            for r in doc["rows"]
        ]
        name = DEFAULTS_CATEGORIES.get(doc["category"], doc["category"])
        head = f"**{name}** ({doc['n_train']} train / {doc['n_test']} test images):"
        parts.append(head + "\n\n" + table(["", "I-AUROC", "P-AUROC", "AUPRO", *types], rows))
    return "\n\n".join(parts)


def render_defaults_memory(results: Path) -> str:
    docs = [load(p) for p in files(results, "defaults-memory")]
    rows = []
    for doc in sorted(docs, key=lambda d: d["categories"]["magnetic_tile"]["image_auroc"]):
        o, c = doc["options"], doc["categories"]["magnetic_tile"]
        fraction = o.get("memory_fraction", 0.0)
        rule = f"{o['memory_size']} rows"
        if fraction:
            rule += f", or {100 * fraction:g} % of the patches when more (the default)"
        metrics = (num(c[k], 3) for k in ("image_auroc", "pixel_auroc", "aupro"))
        rows.append([rule, str(c.get("n_train")), *metrics])
    head = (
        "Magnetic Tile Defects, all 761 training images (1.2 million patches), the other settings "
        f"at the defaults, 1 torch thread; {machines(docs)}.{note(docs)}"
    )
    header = ["coreset", "train", "I-AUROC", "P-AUROC", "AUPRO"]
    return head + "\n\n" + table(header, rows)


RENDERERS: dict[str, Callable[[Path], str]] = {
    "defaults-ablations": render_defaults_ablations,
    "defaults-memory": render_defaults_memory,
    "defaults-speed": render_defaults_speed,
    "methods-by-type": render_methods_by_type,
    "defaults-categories": render_defaults_categories,
    "defaults-mean": render_defaults_mean,
    "patchcore-screw": render_patchcore_screw,
    "patchcore-speed": render_patchcore_speed,
    "fewshot-screw": render_fewshot_screw,
    "fewshot": render_fewshot_pose,
    "aaclip-screw": render_aaclip_screw,
    "aaclip-speed": render_aaclip_speed,
    "zero-few-shot-speed": render_zero_few_shot_speed,
    "predict-memory": render_predict_memory,
    "gaussian-vfm": render_gaussian_vfm,
    "vfm-speed": render_vfm_speed,
    "batch-speed": render_batch_speed,
    "explain-accuracy": render_explain_accuracy,
    "explain-speed": render_explain_speed,
    "diagnose-encoders": render_diagnose_encoders,
    "diagnose-answerers": render_diagnose_answerers,
    "diagnose-speed": render_diagnose_speed,
    "export-accuracy": render_export_accuracy,
    "export-speed": render_export_speed,
    "service-load": render_service_load,
}


# ------------------------------------------------------------------------------------- blocks


def render(name: str, results: Path) -> str:
    if name not in RENDERERS:
        raise ResultsError(f"unknown results block {name!r} (known: {', '.join(RENDERERS)})")
    return RENDERERS[name](results)


def rewrite(text: str, results: Path, where: str = "text") -> str:
    """``text`` with every results block re-rendered from ``results``."""
    opened = OPEN.findall(text)
    closed = re.findall(r"<!-- /results:([a-z0-9-]+) -->", text)
    if sorted(opened) != sorted(closed) or len(BLOCK.findall(text)) != len(opened):
        raise ResultsError(f"{where}: unbalanced results markers")
    return BLOCK.sub(
        lambda m: m.group(1) + render(m.group("name"), results) + "\n" + m.group(4), text
    )


def doc_paths(repo: Path) -> list[Path]:
    out: list[Path] = []
    for pattern in DOC_FILES:
        out += sorted(repo.glob(pattern))
    return out


def write_or_check(repo: Path, write: bool) -> int:
    results = repo / RESULTS
    for path in doc_paths(repo):
        rel = path.relative_to(repo)
        old = path.read_text(encoding="utf-8")
        new = rewrite(old, results, str(rel))
        if new == old:
            continue
        if write:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote {rel}")
            continue
        for m_old, m_new in zip(BLOCK.finditer(old), BLOCK.finditer(new), strict=True):
            if m_old.group("body") != m_new.group("body"):
                print(
                    f"{rel}: block results:{m_old.group('name')} differs from {RESULTS}; "
                    "run python benchmarks/results_table.py --write"
                )
                return 1
    return 0


def collect(src: Path, dest: Path, settings: Sequence[str]) -> None:
    """Copy a ``results.json`` (or any result JSON) to ``dest``, adding ``key=value`` fields
    (values parsed as JSON when they parse, else kept as strings)."""
    doc = load(src)
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise ResultsError(f"--set expects key=value, got {item!r}")
        try:
            doc[key] = json.loads(value)
        except ValueError:
            doc[key] = value
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["collect"]:
            p = argparse.ArgumentParser(prog="results_table.py collect")
            p.add_argument("src", type=Path)
            p.add_argument("dest", type=Path)
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
            a = p.parse_args(argv[1:])
            collect(a.src, a.dest, a.set)
            return 0
        p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        g = p.add_mutually_exclusive_group()
        g.add_argument("--write", action="store_true", help="rewrite the blocks in place")
        g.add_argument("--check", action="store_true", help="exit 1 if a block is stale")
        p.add_argument("--repo", type=Path, default=REPO, help="repository root")
        a = p.parse_args(argv)
        if a.write or a.check:
            return write_or_check(a.repo, write=a.write)
        for name in RENDERERS:
            print(f"<!-- results:{name} -->\n{render(name, a.repo / RESULTS)}\n")
        return 0
    except ResultsError as exc:
        print(f"results_table.py: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
