"""Encoder tests and the detector-as-answerer row on a real category (``anomalens diagnose``).

Runs :func:`anomalens.diagnose.run_diagnose` with the given backbones, a PatchCore detector as
answerer and the scripted answerers, writes the full report to ``--output`` and a compact JSON
(encoder metrics, question tests, seconds, machine) to ``--json``::

    python benchmarks/bench_diagnose.py --dataset mvtec --root ../shared/data/mvtec_ad \\
        --category screw --normal-patches all \\
        --json benchmarks/results/diagnose/screw.json --output runs/diag/screw
    python benchmarks/bench_diagnose.py --dataset mvtec --root ../shared/data/magnetic_tile \\
        --category magnetic_tile --max-images 200 --detector-shots 200 --normal-patches all \\
        --json benchmarks/results/diagnose/magnetic_tile.json --output runs/diag/magnetic_tile

Speed (``--speed``): the same call on a small setting, meant to run alone under the exclusive
CPU lock; the JSON goes to ``benchmarks/results/diagnose-speed/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomalens.atomic import atomic_write_json
from anomalens.diagnose import run_diagnose
from anomalens.report import jsonable


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="mvtec")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--category", required=True)
    p.add_argument(
        "--backbone", action="append", default=None, help="default: Lite0 and Lite2 (repeatable)"
    )
    p.add_argument("--detector", default="patchcore")
    p.add_argument("--detector-shots", type=int, default=None, help="good train images used")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--answerer", action="append", default=None)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--speed", action="store_true", help="label the JSON as a timing run")
    p.add_argument("--normal-patches", choices=("foreground", "all"), default="foreground")
    p.add_argument("--encoders-only", action="store_true", help="no question tests")
    a = p.parse_args(argv)
    backbones = a.backbone or ["efficientnet-lite0", "efficientnet-lite2"]
    answerers = a.answerer if a.answerer is not None else ["always-yes", "always-no", "random-0"]
    options = {} if a.detector_shots is None else {"shots": a.detector_shots, "seed": a.seed}
    if a.encoders_only:
        a.detector, answerers = "", []
    res = run_diagnose(
        a.output,
        normal_patches=a.normal_patches,
        backbones=backbones,
        detector=a.detector or None,
        detector_options=options,
        answerers=answerers,
        dataset=a.dataset,
        root=a.root,
        category=a.category,
        max_images=a.max_images,
        seed=a.seed,
        progress=not a.speed,
    )
    doc = {
        "run": {
            "backbones": backbones,
            "detector": a.detector,
            "detector_options": options,
            "answerers": answerers,
            "max_images": a.max_images,
            "seed": a.seed,
            "speed": a.speed,
        },
        "data": res["data"],
        "encoders": {
            name: {"sets": enc["sets"], "seconds": enc["seconds"]}
            for name, enc in res["encoders"].items()
        },
        "questions": {
            name: {
                "tests": q["tests"],
                "localization": q["localization"],
                "decision": q["decision"],
                "mmad_average": q["mmad"]["average"],
                "seconds": q["seconds"],
                "seconds_per_question": q["seconds_per_question"],
            }
            for name, q in res["questions"].items()
        },
        "seconds": res["seconds"],
        "environment": res["environment"],
    }
    atomic_write_json(a.json, jsonable(doc), indent=2, allow_nan=True)
    print(f"wrote {a.json} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
