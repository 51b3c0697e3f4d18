"""AA-CLIP training-step and inference speed with random-weight models of real sizes.

Random CLIP ViT-L/14@336 and SigLIP SO400M/14@384 models (vision AND text towers at the real
sizes; nothing is downloaded) are written to a temp folder, deleted at the end. For each model
and precision (``AACLIPConfig.precision``, ``anchors="text"``) the script times:

* stage 1 (text adapters): ``Trainer.loss(items, stage=1, rng)`` + backward + Adam step +
  scheduler step on ``network.text_parameters()``, with the default ``prompts_per_step``;
* stage 2 (image side): the same on ``network.image_parameters()`` (the frozen text anchors come
  from the trainer's per-category cache, filled once as in a real run);
* inference: ``AACLIP.score_pixels(pixels, anchors)`` on preprocessed images, against the plain
  ``backbone.encode_image(pixels, levels, with_global=False)`` of the same blocks;
* once per model and precision: ``anchor_pair()`` (the full prompt ensemble through the adapted
  text tower; the stage-2 cache and ``fit`` pay it once per category).

A training step is exactly what ``Trainer._epoch`` does per batch (given ready ``TrainItem``s;
the data augmentation is timed on its own). One warm-up, then the median (and best) of
``--repeats`` runs (fewer once a phase has taken ``--budget`` seconds); the resident-memory peak
of each phase and the CPU share other processes took meanwhile are recorded. The text towers use
word-level tokenizers so that prompt lengths are close to the real ones (CLIP pads to the
longest prompt, max 77; SigLIP pads every prompt to 64 tokens as it was trained). Usage::

    python benchmarks/bench_aaclip.py                                  # both models, fp32 + bf16
    python benchmarks/bench_aaclip.py --models clip-l --precisions bf16 --repeats 3
    python benchmarks/bench_aaclip.py --so400m-text-layers 9           # cheaper SigLIP text tower
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import os
import shutil
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_zero_few_shot import cpu_name  # the script's folder is on sys.path

from anomalens import testing as tm
from anomalens.atomic import atomic_write_json
from anomalens.methods.aaclip import AACLIP, AACLIPConfig
from anomalens.methods.aaclip.data import TrainItem, _augment
from anomalens.methods.aaclip.train import TrainConfig, Trainer
from anomalens.prompts import build_prompts

#: text towers of the real checkpoints
CLIP_L_TEXT = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
)
SO400M_TEXT = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16
)


@dataclass(frozen=True)
class ModelSpec:
    """A random model to build: family, towers, joint-space size, text context length."""

    label: str
    family: str
    vision: dict[str, Any]
    text: dict[str, Any]
    projection_dim: int
    max_len: int


MODELS = {
    "clip-l": ModelSpec("CLIP ViT-L/14@336", "clip", tm.VIT_L14_336, CLIP_L_TEXT, 768, 77),
    "so400m": ModelSpec("SigLIP SO400M/14@384", "siglip", tm.SO400M_14_384, SO400M_TEXT, 1152, 64),
}


# ------------------------------------------------------------------------------ random models


def clip_word_tokenizer():
    """Word-level fast tokenizer with CLIP's start / end tokens (about one token per word and
    punctuation mark, as CLIP's BPE gives for the prompt words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    bos, eos, unk = "<|startoftext|>", "<|endoftext|>", "<unk>"
    words = sorted(set(tm.ensemble_words()) | {"object", ".", "-", ","})
    vocab = {t: i for i, t in enumerate([bos, eos, unk, *words])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=eos
    )


def build_model(folder: Path, spec: ModelSpec, text_layers: int | None) -> Path:
    """Save a random model of ``spec`` (tokenizer and preprocessor config) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    text = dict(spec.text, max_position_embeddings=spec.max_len)
    if text_layers:
        text["num_hidden_layers"] = text_layers
    torch.manual_seed(0)
    if spec.family == "clip":
        from transformers import CLIPConfig, CLIPModel

        tok = clip_word_tokenizer()
        text |= dict(
            vocab_size=len(tok.get_vocab()),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        cfg = CLIPConfig(
            text_config=text, vision_config=spec.vision, projection_dim=spec.projection_dim
        )
        model = CLIPModel(cfg)
        mean, std = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]
    else:
        from transformers import SiglipConfig, SiglipModel

        tok = tm.siglip_tokenizer()
        text |= dict(
            vocab_size=len(tok.get_vocab()),
            projection_size=spec.projection_dim,
            bos_token_id=None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=spec.vision))
        mean, std = [0.5] * 3, [0.5] * 3
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    tm._write_preprocessor(folder, spec.vision["image_size"], mean, std)
    del model
    gc.collect()
    return folder


# ----------------------------------------------------------------------------- measurement


def _busy_seconds() -> float:
    """CPU seconds all processes spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Monitor:
    """Context manager sampling this process's resident memory (``peak``, bytes) and measuring
    the CPU share other processes took meanwhile (``foreign``, 0..1 of all cores)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self.foreign = 0.0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> Monitor:
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._t0, self._busy0, self._own0 = time.perf_counter(), _busy_seconds(), _own_seconds()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self._t0
        other = (_busy_seconds() - self._busy0) - (_own_seconds() - self._own0)
        self.foreign = min(1.0, max(0.0, other / (wall * (os.cpu_count() or 1))))
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


@dataclass
class Timing:
    """Wall times of the repeats (warm-up excluded), the RSS peak of the phase and the CPU
    share other processes took."""

    times: list[float]
    peak: int
    foreign: float

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


def timed(fn: Callable[[], Any], repeats: int, budget: float) -> Timing:
    """One warm-up call of ``fn``, then up to ``repeats`` timed calls; no further call starts
    once the phase has taken ``budget`` seconds (at least one timed call)."""
    start = time.perf_counter()
    with Monitor() as mon:
        fn()
        times: list[float] = []
        while len(times) < repeats and (not times or time.perf_counter() - start < budget):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return Timing(times, mon.peak, mon.foreign)


def timed_pair(
    fa: Callable[[], Any], fb: Callable[[], Any], repeats: int, budget: float
) -> tuple[Timing, Timing]:
    """As :func:`timed` for two functions taking turns (fair to their ratio under drift)."""
    start = time.perf_counter()
    out = []
    for fn in (fa, fb):
        with Monitor() as mon:
            fn()
        out.append(Timing([], mon.peak, mon.foreign))
    done = 0
    while done < repeats and (done == 0 or time.perf_counter() - start < budget):
        for fn, t in zip((fa, fb), out, strict=True):
            with Monitor() as mon:
                t0 = time.perf_counter()
                fn()
                t.times.append(time.perf_counter() - t0)
            t.peak = max(t.peak, mon.peak)
            t.foreign = max(t.foreign, mon.foreign)
        done += 1
    return out[0], out[1]


# ------------------------------------------------------------------------------ AA-CLIP parts


class StandInData:
    """What the :class:`Trainer` constructor needs of a ``TrainingData`` (no validation)."""

    mode = "masks"
    categories = ("object",)

    def validation(self) -> list[TrainItem]:
        return []

    def __len__(self) -> int:
        return 0


def train_items(size: int, n: int, seed: int = 0) -> list[TrainItem]:
    """``n`` random items at ``size``, every other one with a rectangular defect."""
    rng = np.random.default_rng(seed)
    items = []
    for k in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=np.uint8)
        if k % 2 == 0:
            y, x = rng.integers(0, size // 2, 2)
            mask[y : y + size // 6, x : x + size // 5] = 1
        items.append(TrainItem(image, mask, int(mask.any()), "object"))
    return items


def training_step(trainer: Trainer, stage: int, items: list[TrainItem]):
    """``(step, done)``: ``step()`` is one optimizer step of ``stage`` as ``Trainer._epoch``
    does it (accumulate 1); ``done()`` freezes the stage's parameters again."""
    cfg = trainer.cfg
    found = [s for s in trainer.stages() if s[0] == stage]
    if not found:
        raise ValueError(f"stage {stage} does not run for this configuration")
    _, _, _, lr, params = found[0]
    trainer.net.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=list(cfg.milestones), gamma=cfg.gamma
    )
    trainer.net.train()
    opt.zero_grad(set_to_none=True)
    counter = itertools.count()

    def step() -> None:
        index = next(counter)
        rng = np.random.default_rng([cfg.seed, stage, 0, index])
        loss, parts = trainer.loss(items, stage, rng)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at stage {stage}: {parts}")
        (loss / cfg.accumulate).backward()
        _ = {"loss": float(loss), **parts}  # the running averages of _epoch
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()

    def done() -> None:
        for p in params:
            p.requires_grad_(False)
        trainer.net.eval()

    return step, done


def text_tokens(det: AACLIP) -> int:
    """Padded token length of ``encode_text`` on the whole ensemble (as the backbone pads)."""
    bb = det.backbone
    normal, anomalous = build_prompts(det.config.class_name, det.config.prompts)
    max_len = int(bb.model.config.text_config.max_position_embeddings)
    if bb.kind == "siglip":
        return max_len
    lengths = [len(ids) for ids in bb.tokenizer()(normal + anomalous)["input_ids"]]
    return min(max(lengths), max_len)


def n_params(params) -> int:
    return sum(p.numel() for p in params)


# ------------------------------------------------------------------------------------ bench


def bench_one(key: str, folder: Path, precision: str, args, workdir: Path) -> dict[str, Any]:
    """All timings of one model at one precision."""
    spec = MODELS[key]
    t0 = time.perf_counter()
    det = AACLIP(
        AACLIPConfig(
            backbone=f"{spec.family}:{folder}", precision=precision, anchors="text", seed=0
        )
    )
    bb = det.backbone
    net = det.network
    load_s = time.perf_counter() - t0
    size = bb.image_size
    tcfg = TrainConfig(text_batch_size=args.batch_size, image_batch_size=args.batch_size)
    trainer = Trainer(det, StandInData(), tcfg, workdir / "train", progress=False)

    t0 = time.perf_counter()
    with Monitor() as mem_anchor:
        anchors = det.anchor_pair()
    anchor_s = time.perf_counter() - t0
    # the stage-2 text anchors are this very computation, cached once per category in a run
    trainer._text_cache["object"] = anchors.detach()

    items = train_items(size, args.batch_size)
    rng = np.random.default_rng(0)
    aug = timed(lambda: [_augment(it, rng, 2) for it in items], args.repeats, args.budget)

    step1, done1 = training_step(trainer, 1, items)
    stage1 = timed(step1, args.repeats, args.budget)
    done1()
    print(f"  stage 1 {stage1.median:8.2f} s/step", flush=True)
    step2, done2 = training_step(trainer, 2, items)
    stage2 = timed(step2, args.repeats, args.budget)
    done2()
    print(f"  stage 2 {stage2.median:8.2f} s/step", flush=True)

    images = train_items(size, args.images, seed=1)
    pixels = bb.preprocess([it.image for it in images])
    levels = list(net.levels)
    infer, backbone = timed_pair(
        lambda: det.score_pixels(pixels, anchors),
        lambda: bb.encode_image(pixels, levels, with_global=False),
        args.repeats,
        args.budget,
    )
    row = dict(
        key=key,
        model=spec.label,
        precision=precision,
        load_s=load_s,
        anchor_s=anchor_s,
        anchor_peak=mem_anchor.peak,
        anchor_foreign=mem_anchor.foreign,
        stage1=stage1,
        stage2=stage2,
        infer=infer,
        backbone=backbone,
        aug_ms=1000 * aug.median / args.batch_size,
        text_params=n_params(net.text_parameters()),
        image_params=n_params(net.image_parameters()),
        text_layers=int(bb.model.config.text_config.num_hidden_layers),
        tokens=text_tokens(det),
        prompts=sum(len(p) for p in build_prompts(det.config.class_name, det.config.prompts)),
        prompts_per_step=tcfg.prompts_per_step,
        levels=levels,
        adapt_layers=list(net.adapt_layers),
        text_adapters=len(net.text_adapters),
    )
    print(
        f"  inference {1000 * infer.median / args.images:8.1f} ms/img, backbone "
        f"{1000 * backbone.median / args.images:8.1f} ms/img",
        flush=True,
    )
    return row


PHASES = {"stage1": "stage 1", "stage2": "stage 2", "infer": "inference", "backbone": "backbone"}


def gib(n: int) -> float:
    return n / 2**30


def report(rows: list[dict[str, Any]], args) -> None:
    """The summary table and the per-row details."""
    b, n = args.batch_size, args.images
    head = (
        f"{'model':<21} {'prec':<5} {'stage-1 s/step':>14} {'stage-2 s/step':>14} "
        f"{'s/img (st2)':>11} {'infer ms/img':>12} {'backbone ms/img':>15} {'ratio':>6} "
        f"{'anchors s':>9} {'peak GiB':>8} {'other CPU':>9}"
    )
    print(
        f"\n# batch size {b} (stage 1 and 2), inference on {n} images per call; median of up to "
        f"{args.repeats} timed runs after 1 warm-up (fewer when a phase passes {args.budget:.0f} s)"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        phases = [r[k] for k in PHASES]
        peak = max(r["anchor_peak"], *(t.peak for t in phases))
        other = max(r["anchor_foreign"], *(t.foreign for t in phases))
        print(
            f"{r['model']:<21} {r['precision']:<5} {r['stage1'].median:14.2f} "
            f"{r['stage2'].median:14.2f} {r['stage2'].median / b:11.2f} "
            f"{1000 * r['infer'].median / n:12.1f} {1000 * r['backbone'].median / n:15.1f} "
            f"{r['infer'].median / r['backbone'].median:6.2f} {r['anchor_s']:9.1f} "
            f"{gib(peak):8.1f} {100 * other:8.0f}%"
        )
    print(
        "# ratio: inference / backbone; anchors: anchor_pair() once (whole prompt ensemble); "
        "peak: resident memory;\n# other CPU: the largest share of all cores other processes "
        "used during a timed phase (0% = undisturbed)"
    )
    print("\n# details: best (number of timed runs) and RSS peak per phase")
    seen = set()
    for r in rows:
        if r["key"] not in seen:
            seen.add(r["key"])
            real = MODELS[r["key"]].text["num_hidden_layers"]
            print(
                f"{r['model']}: trainable text side {r['text_params']:,} "
                f"({r['text_adapters']} text adapter(s) + projection), image side "
                f"{r['image_params']:,} (adapters after layers {r['adapt_layers']}, levels "
                f"{r['levels']}); text tower {r['text_layers']} of {real} layers, "
                f"{r['prompts']} prompts for the anchors, {2 * r['prompts_per_step']} per "
                f"stage-1 step, padded to {r['tokens']} tokens or fewer"
            )
        runs = "; ".join(
            f"{name} {r[k].best:.2f} s ({len(r[k].times)}) {gib(r[k].peak):.1f} GiB"
            for k, name in PHASES.items()
        )
        other = " / ".join(f"{100 * r[k].foreign:.0f}%" for k in PHASES)
        other += f" / anchors {100 * r['anchor_foreign']:.0f}%"
        print(
            f"  {r['precision']}: {runs}; anchors {r['anchor_s']:.1f} s "
            f"{gib(r['anchor_peak']):.1f} GiB; augmentation {r['aug_ms']:.1f} ms/img (not in "
            f"the steps); load {r['load_s']:.1f} s; other CPU per phase {other}"
        )


def write_json(path: str, rows: list[dict[str, Any]], args) -> None:
    """The summary table as JSON (with the run options and the environment) for
    ``benchmarks/results_table.py``."""

    from anomalens.evaluate import environment

    out_rows = []
    for r in rows:
        phases = [r[k] for k in PHASES]
        out_rows.append(
            dict(
                model=r["model"],
                precision=r["precision"],
                stage1_s_per_step=r["stage1"].median,
                stage2_s_per_step=r["stage2"].median,
                inference_ms_per_image=1000 * r["infer"].median / args.images,
                backbone_ms_per_image=1000 * r["backbone"].median / args.images,
                anchors_s=r["anchor_s"],
                peak_gib=gib(max(r["anchor_peak"], *(t.peak for t in phases))),
                other_cpu_share=max(r["anchor_foreign"], *(t.foreign for t in phases)),
                text_params=r["text_params"],
                image_params=r["image_params"],
            )
        )
    run = dict(
        batch_size=args.batch_size, images=args.images, repeats=args.repeats, budget=args.budget
    )
    doc = dict(benchmark="aaclip_speed", run=run, environment=environment(), rows=out_rows)
    atomic_write_json(Path(path), doc, indent=2, allow_nan=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--json", help="also write the summary rows to this JSON file (for results_table.py)"
    )
    parser.add_argument("--models", default="clip-l,so400m", help=f"of {','.join(MODELS)}")
    parser.add_argument("--precisions", default="fp32,bf16", help="of fp32,bf16")
    parser.add_argument("--batch-size", type=int, default=2, help="images per training step")
    parser.add_argument("--images", type=int, default=4, help="images per inference call")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after the warm-up")
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="seconds per phase after which no further timed run starts (at least one runs)",
    )
    parser.add_argument(
        "--so400m-text-layers", type=int, default=None, help="SigLIP text layers (default 27)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if unknown := sorted(set(models) - set(MODELS)) + sorted(set(precisions) - {"fp32", "bf16"}):
        parser.error(f"unknown models / precisions {unknown}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # float(loss) in Trainer.loss / _epoch: harmless, printed once per call site
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    start = time.perf_counter()
    print(
        f"# {datetime.datetime.now():%Y-%m-%d %H:%M}  {cpu_name()}  {os.cpu_count()} cores  "
        f"torch {torch.__version__}  threads {torch.get_num_threads()}  load average "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="anomalens-bench-aaclip-"))
    rows = []
    try:
        for key in models:
            t0 = time.perf_counter()
            layers = args.so400m_text_layers if key == "so400m" else None
            folder = build_model(workdir / key, MODELS[key], layers)
            print(f"{MODELS[key].label}: built in {time.perf_counter() - t0:.0f} s", flush=True)
            for precision in precisions:
                print(f" {precision}", flush=True)
                rows.append(bench_one(key, folder, precision, args, workdir))
                gc.collect()  # free this precision's model before loading the next
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(rows, args)
    if args.json:
        write_json(args.json, rows, args)
    print(
        f"\n# total {time.perf_counter() - start:.0f} s; load average now "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
