"""Tiny random CLIP / SigLIP / DINOv2 model folders (what ``save_pretrained`` writes) and small
synthetic images, for tests and speed benchmarks: ``from anomalens import testing as tm``.

The tokenizers are built in memory: CLIP gets a character-level BPE vocabulary (every word is
spelled out, so any prompt tokenizes), SigLIP a word-level vocabulary made of the words of the
prompt ensembles (unknown words map to ``<unk>``).

Importing this module is cheap: torch, transformers and tokenizers are imported by the functions
that need them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FAMILIES",
    "SO400M_14_384",
    "TINY_TEXT",
    "TINY_VISION",
    "VIT_B16_224",
    "VIT_L14_336",
    "clip_tokenizer",
    "ensemble_words",
    "images",
    "make_clip",
    "make_dinov2",
    "make_model",
    "make_siglip",
    "object_images",
    "siglip_tokenizer",
    "vit",
]


def vit(
    hidden: int, intermediate: int, layers: int, heads: int, image: int, patch: int
) -> dict[str, Any]:
    """A ViT vision-tower config (the keys CLIP, SigLIP and DINOv2 configs share)."""
    return dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image,
        patch_size=patch,
    )


TINY_VISION: dict[str, Any] = vit(32, 64, 4, 4, image=32, patch=8)
TINY_TEXT: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)

# vision towers of the real checkpoints (random weights are enough for timing)
VIT_B16_224 = vit(768, 3072, 12, 12, image=224, patch=16)
VIT_L14_336 = vit(1024, 4096, 24, 16, image=336, patch=14)
SO400M_14_384 = vit(1152, 4304, 27, 16, image=384, patch=14)

#: model families :func:`make_model` builds, with their default seeds
FAMILIES = {"clip": 0, "siglip": 1, "dinov2": 2}


def ensemble_words() -> list[str]:
    """Every word of the prompt ensembles (templates and state patterns)."""
    from anomalens.prompts import ENSEMBLES

    words: set[str] = set()
    for e in ENSEMBLES.values():
        for text in e.templates + e.normal_states + e.anomalous_states:
            words.update(re.findall(r"[a-z]+", text.replace("{}", " ")))
    return sorted(words)


def clip_tokenizer():
    """Character-level ``CLIPTokenizer`` (no merges)."""
    from transformers import CLIPTokenizer

    chars = list("abcdefghijklmnopqrstuvwxyz.-")
    toks = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(toks)}, merges=[])


def siglip_tokenizer(extra_words: tuple[str, ...] = ("screw", "object", "widget", "scratched")):
    """Word-level fast tokenizer over the ensemble words plus ``extra_words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(ensemble_words()) | set(extra_words))
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="</s>", eos_token="</s>"
    )


def _write_preprocessor(folder: Path, size: int, mean: list[float], std: list[float]) -> None:
    prep = {"crop_size": size, "do_center_crop": True, "size": {"shortest_edge": size}}
    prep |= {"image_mean": mean, "image_std": std}
    (folder / "preprocessor_config.json").write_text(json.dumps(prep))


def _clip_model(tok, vision: dict, text: dict | None, projection_dim: int):
    from transformers import CLIPConfig, CLIPModel

    text_cfg = (text or TINY_TEXT) | dict(
        vocab_size=len(tok.get_vocab()),
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = CLIPConfig(text_config=text_cfg, vision_config=vision, projection_dim=projection_dim)
    return CLIPModel(cfg)


def _siglip_model(tok, vision: dict, text: dict | None):
    from transformers import SiglipConfig, SiglipModel

    text_cfg = (text or TINY_TEXT) | dict(
        vocab_size=len(tok.get_vocab()), max_position_embeddings=16
    )
    if text is None:
        text_cfg["hidden_size"] = vision["hidden_size"]  # SigLIP shares the width
    return SiglipModel(SiglipConfig(text_config=text_cfg, vision_config=vision))


def make_model(
    family: str,
    folder: str | Path,
    seed: int | None = None,
    vision: dict | None = None,
    text: dict | None = None,
    projection_dim: int = 24,
    logit_scale: float | None = None,
) -> Path:
    """Save a random model of ``family`` (``"clip"``, ``"siglip"`` or ``"dinov2"``) to
    ``folder``: the weights, and for the vision-language families a tokenizer and a
    preprocessor config. ``seed`` defaults to the family's entry in :data:`FAMILIES`;
    ``projection_dim`` and ``logit_scale`` (the scale itself, not its log) are CLIP's."""
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(FAMILIES)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(FAMILIES[family] if seed is None else seed)
    vision_cfg = vision or TINY_VISION
    if family == "dinov2":
        from transformers import Dinov2Config, Dinov2Model

        Dinov2Model(Dinov2Config(**vision_cfg)).save_pretrained(folder)
        return folder
    if family == "clip":
        tok = clip_tokenizer()
        model = _clip_model(tok, vision_cfg, text, projection_dim)
        if logit_scale is not None:
            with torch.no_grad():
                model.logit_scale.fill_(float(np.log(logit_scale)))
        mean, std = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]
    else:
        tok = siglip_tokenizer()
        model = _siglip_model(tok, vision_cfg, text)
        mean, std = [0.5] * 3, [0.5] * 3
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    _write_preprocessor(folder, vision_cfg["image_size"], mean, std)
    return folder


def make_clip(
    folder: str | Path,
    seed: int = 0,
    vision: dict | None = None,
    text: dict | None = None,
    projection_dim: int = 24,
    logit_scale: float | None = None,
) -> Path:
    """Save a random ``CLIPModel`` with a tokenizer and preprocessor config to ``folder``."""
    return make_model("clip", folder, seed, vision, text, projection_dim, logit_scale)


def make_siglip(
    folder: str | Path, seed: int = 1, vision: dict | None = None, text: dict | None = None
) -> Path:
    """Save a random ``SiglipModel`` (with attention-pooling head) and tokenizer to ``folder``."""
    return make_model("siglip", folder, seed, vision, text)


def make_dinov2(folder: str | Path, seed: int = 2, vision: dict | None = None) -> Path:
    """Save a random ``Dinov2Model`` to ``folder``."""
    return make_model("dinov2", folder, seed, vision)


def images(n: int, seed: int = 0, shape: tuple[int, int] = (40, 52)) -> list[np.ndarray]:
    """Random RGB uint8 images."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(n)]


def object_images(n: int, seed: int = 0, size: int = 48) -> list[np.ndarray]:
    """A bright disc on a dark, slightly noisy background (the foreground mask finds it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        img = rng.integers(0, 30, (size, size, 3)).astype(np.uint8)
        disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.3) ** 2
        img[disc] = rng.integers(180, 230, (int(disc.sum()), 3)).astype(np.uint8)
        out.append(img)
    return out
