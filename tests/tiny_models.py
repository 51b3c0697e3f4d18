"""Tiny random CLIP / SigLIP / DINOv2 model folders (what ``save_pretrained`` writes), for tests
and speed benchmarks. Import from tests (``import tiny_models``) or add ``tests/`` to sys.path.

The tokenizers are built in memory: CLIP gets a character-level BPE vocabulary (every word is
spelled out, so any prompt tokenizes), SigLIP a word-level vocabulary made of the words of the
prompt ensembles (unknown words map to ``<unk>``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomalens.prompts import ENSEMBLES

TINY_VISION: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)
TINY_TEXT: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)

# vision towers of the real checkpoints (random weights are enough for timing)
VIT_B16_224 = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=16,
)
VIT_L14_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
)
SO400M_14_384 = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=384,
    patch_size=14,
)


def ensemble_words() -> list[str]:
    """Every word of the prompt ensembles (templates and state patterns)."""
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


def make_clip(
    folder: str | Path,
    seed: int = 0,
    vision: dict | None = None,
    text: dict | None = None,
    projection_dim: int = 24,
    logit_scale: float | None = None,
) -> Path:
    """Save a random ``CLIPModel`` with a tokenizer and preprocessor config to ``folder``."""
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = clip_tokenizer()
    text_cfg = (text or TINY_TEXT) | dict(
        vocab_size=len(tok.get_vocab()),
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision_cfg = vision or TINY_VISION
    cfg = CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=projection_dim)
    model = CLIPModel(cfg)
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(float(np.log(logit_scale)))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    size = vision_cfg["image_size"]
    _write_preprocessor(folder, size, [0.48, 0.46, 0.41], [0.27, 0.26, 0.28])
    return folder


def make_siglip(
    folder: str | Path, seed: int = 1, vision: dict | None = None, text: dict | None = None
) -> Path:
    """Save a random ``SiglipModel`` (with attention-pooling head) and tokenizer to ``folder``."""
    from transformers import SiglipConfig, SiglipModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = siglip_tokenizer()
    vision_cfg = vision or TINY_VISION
    text_cfg = (text or TINY_TEXT) | dict(
        vocab_size=len(tok.get_vocab()), max_position_embeddings=16
    )
    if vision is not None and text is None:
        text_cfg["hidden_size"] = vision_cfg["hidden_size"]  # SigLIP shares the width
    SiglipModel(SiglipConfig(text_config=text_cfg, vision_config=vision_cfg)).save_pretrained(
        folder
    )
    tok.save_pretrained(folder)
    size = vision_cfg["image_size"]
    _write_preprocessor(folder, size, [0.5] * 3, [0.5] * 3)
    return folder


def make_dinov2(folder: str | Path, seed: int = 2, vision: dict | None = None) -> Path:
    """Save a random ``Dinov2Model`` to ``folder``."""
    from transformers import Dinov2Config, Dinov2Model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(**(vision or TINY_VISION))).save_pretrained(folder)
    return folder


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
