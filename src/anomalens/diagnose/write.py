"""Writers: ``diagnostic_results.json``, ``diagnostics.md`` (and the same as a standalone
``diagnostics.html`` page with the figures) and figures (PCA scatters, test bars).

Every file is written to a temporary name and moved into place (``os.replace``), so a reader
never sees half a file.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.atomic import atomic_write_text, atomic_write_with
from anomalens.diagnose.scoring import COLUMNS, PASS_MARKS
from anomalens.report import jsonable

__all__ = [
    "RESULTS_JSON",
    "SUMMARY_HTML",
    "SUMMARY_MD",
    "format_html",
    "format_markdown",
    "summary_lines",
    "write_outputs",
]

RESULTS_JSON = "diagnostic_results.json"
SUMMARY_MD = "diagnostics.md"
SUMMARY_HTML = "diagnostics.html"
FIGURES = "figures"


def _atomic_write(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def _fmt(value: Any, pct: bool = False, digits: int = 3) -> str:
    if value is None:
        return "-"
    v = float(value)
    if not np.isfinite(v):
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def encoder_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per (source, feature set): patch and image silhouette / probe / kNN."""
    rows = []
    for name, enc in results["encoders"].items():
        for set_name, r in enc["sets"].items():
            p, i = r.get("patch") or {}, r.get("image") or {}
            rows.append(
                [
                    name,
                    set_name,
                    _fmt(p.get("silhouette")),
                    _fmt(p.get("probe_auroc")),
                    _fmt(p.get("knn_auroc")),
                    _fmt(i.get("silhouette")),
                    _fmt(i.get("probe_auroc")),
                    _fmt(i.get("knn_auroc")),
                ]
            )
    return rows


def format_markdown(results: dict[str, Any]) -> str:
    """The human-readable summary (``diagnostics.md``)."""
    lines = ["# anomalens diagnostics", ""]
    d = results.get("data", {})
    if d.get("category"):
        sub = f", subsampled with seed {d['seed']}" if d.get("subsampled") else ""
        lines.append(
            f"Data: {d['dataset']} `{d['category']}`, {d['n_test']} of {d['n_test_available']} "
            f"test images ({d['n_defective']} defective{sub})."
        )
    if d.get("mmad"):
        lines.append(f"Questions: MMAD file `{d['mmad']}`.")
    env = results.get("environment", {})
    lines += [
        f"Machine: {env.get('cpu', '?')}, {env.get('cores', '?')} cores, torch "
        f"{env.get('torch', '?')}, {env.get('date', '?')}; took {results.get('seconds', 0):.1f} s.",
        "",
    ]
    if results.get("random_weights"):
        lines += [
            "**Random weights:** "
            + ", ".join(f"`{n}`" for n in results["random_weights"])
            + " are tiny models with random weights; their numbers say nothing about the real "
            "models.",
            "",
        ]
    if results["encoders"]:
        lines += [
            "## Encoder tests",
            "",
            "Silhouette of defect vs normal features; linear-probe AUROC (folds by image); "
            "AUROC of the distance to the nearest good-memory feature. Patches, then images.",
            "",
        ]
        header = ["model", "features", "patch silhouette", "patch probe", "patch kNN"]
        header += ["image silhouette", "image probe", "image kNN"]
        lines += [*_table(header, encoder_rows(results)), ""]
        text_rows = []
        for name, enc in results["encoders"].items():
            t = enc.get("text")
            if t:
                s = t.get("sigmoid") or {}
                text_rows.append(
                    [
                        name,
                        _fmt(t["anchor_cosine"]),
                        _fmt(t["zero_shot_image_auroc"]),
                        _fmt(t["zero_shot_patch_auroc"]),
                        _fmt(t["anomaly_awareness_score"], pct=True),
                        _fmt(t["anomaly_gap"], digits=4),
                        _fmt(s.get("p_anomalous_on_defective")),
                        _fmt(s.get("p_anomalous_on_good")),
                    ]
                )
        if text_rows:
            lines += [
                "### Text space",
                "",
                "Anchor cosine (normal vs anomalous); zero-shot AUROC of cos(A) - cos(N); AAS: "
                "% of defective images closer to the anomalous anchor; gap: mean cos(N) - "
                "cos(A) on defective images; SigLIP: mean sigmoid probability of the anomalous "
                "prompts (its training objective) on defective and good images.",
                "",
            ]
            header = ["model", "anchor cos", "image AUROC", "patch AUROC", "AAS %", "gap"]
            header += ["p(anom) defective", "p(anom) good"]
            lines += [*_table(header, text_rows), ""]
            for name, enc in results["encoders"].items():
                words = (enc.get("text") or {}).get("words") or []
                if not words:
                    continue
                lines += [
                    f"State words of `{name}` (each word's anchor against the other side):",
                    "",
                ]
                rows = [
                    [
                        w["state"],
                        w["side"],
                        _fmt(w["image_auroc"]),
                        _fmt(w["patch_auroc"]),
                        _fmt(w["cosine_to_other_anchor"]),
                    ]
                    for w in words
                ]
                lines += _table(
                    ["state", "side", "image AUROC", "patch AUROC", "cos to other"], rows
                )
                lines.append("")
    if results["questions"]:
        lines += ["## Question tests", ""]
        if d.get("n_questions"):
            lines.append(f"{d['n_questions']} questions (MMAD format, 1-shot).")
            lines.append("")
        header = [
            "answerer",
            *(f"{k} ({PASS_MARKS[k][1]} {PASS_MARKS[k][2]:.0%})" for k in PASS_MARKS),
        ]
        header += ["localization", "passed", "s/question"]
        rows = []
        for name, q in results["questions"].items():
            tests = q["tests"]
            rows.append(
                [name]
                + [
                    _fmt(tests[k]["value"], pct=True) + (" ✓" if tests[k]["passed"] else "")
                    for k in PASS_MARKS
                ]
                + [
                    _fmt(q["localization"]["value"], pct=True),
                    f"{q['decision']['passed']}/{q['decision']['total']}",
                    _fmt(q["seconds_per_question"], digits=3),
                ]
            )
        lines += [*_table(header, rows), ""]
        lines += ["Decision (seed 001):", ""]
        for name, q in results["questions"].items():
            lines.append(
                f"- `{name}`: {q['decision']['passed']}/5 passed: "
                f"{q['decision']['recommendation']}."
            )
        lines += ["", "### MMAD scores (percent; Anomaly Detection is balanced accuracy)", ""]
        ref = results["reference"]["models"]
        cols = [
            c
            for c in COLUMNS
            if any(c in q["mmad"]["average"] for q in results["questions"].values())
        ]
        header = ["answerer", *cols, "Average", "Overkill", "Miss"]
        rows = []
        for name, q in results["questions"].items():
            avg = q["mmad"]["average"]
            rows.append(
                [
                    name,
                    *(_fmt(avg.get(c), digits=1) for c in [*cols, "Average", "Overkill", "Miss"]),
                ]
            )
        for model, values in ref.items():
            rows.append(
                [f"{model} (MMAD paper, all of MMAD)"]
                + [_fmt(values.get(c), digits=1) for c in [*cols, "Average", "Overkill", "Miss"]]
            )
        lines += _table(header, rows)
        lines += ["", f"Reference rows: {results['reference']['source']}.", ""]
    return "\n".join(lines) + "\n"


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Short lines for the terminal: per answerer the decision and the MMAD average beside the
    paper's reference points; per encoder its best patch kNN AUROC."""
    ref = results["reference"]["models"]
    paper = ", ".join(f"{m} {v['Average']:.1f}" for m, v in ref.items())
    lines = []
    for name, q in results["questions"].items():
        d = q["decision"]
        lines.append(f"{name}: {d['passed']}/{d['total']} tests passed: {d['recommendation']}")
        lines.append(
            f"  MMAD average {_fmt(q['mmad']['average'].get('Average'), digits=1)} "
            f"(MMAD paper, all of MMAD, not measured here: {paper})"
        )
    for name, enc in results["encoders"].items():
        knn = [
            (r["patch"]["knn_auroc"], s)
            for s, r in enc["sets"].items()
            if r.get("patch") and r["patch"]["knn_auroc"] is not None
        ]
        if knn:
            best, where = max(knn)
            lines.append(f"{name}: best patch kNN AUROC {best:.3f} ({where})")
    return lines


def _inline(text: str) -> str:
    """Escaped text with ``code`` and **bold** spans of the generated Markdown."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def format_html(markdown: str, figures: dict[str, str]) -> str:
    """A standalone page of the generated Markdown (headings, paragraphs, lists, tables) with
    the figures (paths relative to the output folder)."""
    body: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            head, data = rows[0], rows[2:]
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in data]
            body.append("</table>")
            continue
        level = len(line) - len(line.lstrip("#"))
        if level and line[level : level + 1] == " ":
            body.append(f"<h{level}>{_inline(line[level + 1 :])}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
        i += 1
    body += [
        f'<figure><img src="{html.escape(path)}" alt="{html.escape(name)}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, path in figures.items()
    ]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:"
        "collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:2px 6px;font-size:13px}"
        "th{background:#eee}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>anomalens diagnostics</title><style>{style}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _scatter(path: Path, name: str, fig_data: dict[str, Any]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = fig_data["points"]
    xy, types = np.asarray(pts["xy"]), np.asarray(pts["types"])
    fig = Figure(figsize=(5.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    kinds = ["good", *sorted(set(types.tolist()) - {"good"})]
    for k, kind in enumerate(kinds):
        sel = types == kind
        if sel.any():
            color = "#9e9e9e" if kind == "good" else f"C{k % 10}"
            label = "normal" if kind == "good" else kind
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.6, color=color, label=label)
    ax.set_title(f"{name}: {fig_data['set']} (PCA of patches)", fontsize=9)
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path


def _bars(path: Path, questions: dict[str, Any]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(questions)
    keys = list(PASS_MARKS)
    fig = Figure(figsize=(8, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        vals = [questions[name]["tests"][k]["value"] for k in keys]
        ax.bar(
            np.arange(len(keys)) + j * width,
            [0 if v is None else 100 * v for v in vals],
            width,
            label=name,
        )
    for i, k in enumerate(keys):
        mark = 100 * PASS_MARKS[k][2]
        ax.plot([i - 0.1, i + 0.8], [mark, mark], "k--", lw=1)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    ax.set_xticklabels([k.replace("_", "\n") for k in keys], fontsize=7)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title("Seed tests (dashed: pass marks)", fontsize=9)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name).strip("_")[:80]


def write_outputs(output: Path, results: dict[str, Any], figures: bool = True) -> list[Path]:
    """Write the JSON, the Markdown summary and (``figures``) the PNGs; return the paths.
    The scatter points stay out of the JSON; figure paths are recorded in it instead."""
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    fig_paths: dict[str, str] = {}
    if figures:
        (output / FIGURES).mkdir(exist_ok=True)
        for name, fig in results.get("encoder_figures", {}).items():
            p = _scatter(output / FIGURES / f"scatter_{_slug(name)}.png", name, fig)
            fig_paths[name] = str(p.relative_to(output))
            written.append(p)
        if results["questions"]:
            p = _bars(output / FIGURES / "question_tests.png", results["questions"])
            fig_paths["question_tests"] = str(p.relative_to(output))
            written.append(p)
    doc = {k: v for k, v in results.items() if k != "encoder_figures"}
    doc["figures"] = fig_paths
    written.append(
        _atomic_write(
            output / RESULTS_JSON, json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n"
        )
    )
    markdown = format_markdown(results)
    written.append(_atomic_write(output / SUMMARY_MD, markdown))
    written.append(_atomic_write(output / SUMMARY_HTML, format_html(markdown, fig_paths)))
    return written
