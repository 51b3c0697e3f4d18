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
    "LLAVA_OV_05B",
    "SMOLVLM_256M",
    "SO400M_14_384",
    "TINY_TEXT",
    "TINY_VISION",
    "VIT_B16_224",
    "VIT_L14_336",
    "VLM_FAMILIES",
    "build_vlm",
    "clip_tokenizer",
    "ensemble_words",
    "images",
    "make_clip",
    "make_dinov2",
    "make_model",
    "make_siglip",
    "make_vlm",
    "object_images",
    "siglip_tokenizer",
    "vit",
    "vlm_tokenizer",
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


# --------------------------------------------------------------------------------------------
# vision-language models (explainers)
# --------------------------------------------------------------------------------------------

#: VLM families :func:`make_vlm` builds (model_type in config.json)
VLM_FAMILIES = ("llava_onevision", "idefics3", "qwen2_vl", "qwen2_5_vl")
#: sizes of the real checkpoints (random weights; for speed scripts): text and vision towers
LLAVA_OV_05B = dict(
    text=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, vocab_size=151936),
    vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                num_attention_heads=16, image_size=384, patch_size=14),
)  # fmt: skip
SMOLVLM_256M = dict(
    text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
              num_attention_heads=9, num_key_value_heads=3, vocab_size=49280),
    vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, image_size=512, patch_size=16),
)  # fmt: skip
_TINY_VLM = dict(
    text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2),
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, image_size=32, patch_size=8),
)  # fmt: skip

_VLM_SPECIALS = {
    "llava_onevision": ["<|im_start|>", "<|im_end|>", "<image>", "<video>"],
    "idefics3": ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"],
    "qwen2_vl": [
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ],
}
_VLM_SPECIALS["qwen2_5_vl"] = _VLM_SPECIALS["qwen2_vl"]  # fmt: skip
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "IMAGE{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_VLM_TEMPLATES = {
    "llava_onevision": _CHATML.replace("IMAGE", "<image>\n"),
    "qwen2_vl": _CHATML.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>"),
    "qwen2_5_vl": _CHATML.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>"),
    "idefics3": (
        "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:{% if m['content'] is "
        "string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == "
        "'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
        "{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:"
        "{% endif %}"
    ),
}


def vlm_tokenizer(family: str, vocab_size: int | None = None):
    """Word-level fast tokenizer (prompt words, characters, digits and the family's special
    tokens), padded with filler tokens to ``vocab_size``; decodes with spaces between words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from anomalens.explain.prompts import prompt_words

    specials = ["<|endoftext|>", *_VLM_SPECIALS[family]]
    words = sorted(set(prompt_words()) | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    words += list(".,:;!?()[]{}\"'-_/%<>=#")
    vocab = {t: i for i, t in enumerate([*specials, "<unk>", *words])}
    for i in range(len(vocab), vocab_size or 0):
        vocab[f"tok{i}"] = i
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tk.decoder = decoders.WordPiece(prefix="##")
    eos = "<end_of_utterance>" if family == "idefics3" else "<|im_end|>"
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<|endoftext|>", eos_token=eos
    )
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tok


def make_vlm(family: str, folder: str | Path, sizes: dict | None = None, seed: int = 0) -> Path:
    """Save a random image-text-to-text model of ``family`` (one of :data:`VLM_FAMILIES`) with
    its tokenizer, image processor, chat template and processor config to ``folder`` (the
    files of a hub checkpoint). ``sizes`` = ``{"text": ..., "vision": ...}`` overrides the tiny
    default (e.g. :data:`LLAVA_OV_05B`, :data:`SMOLVLM_256M`)."""
    build_vlm(family, folder, sizes, seed).save_pretrained(folder)
    return Path(folder)


def build_vlm(family: str, folder: str | Path, sizes: dict | None = None, seed: int = 0):
    """:func:`make_vlm` without saving the weights: writes the tokenizer, processor files and
    config to ``folder`` and returns the random model (for speed scripts: real-size models
    need no multi-GB write)."""
    import torch
    import transformers as tf

    if family not in VLM_FAMILIES:
        raise ValueError(f"unknown VLM family {family!r}; choose from {VLM_FAMILIES}")
    sizes = sizes or _TINY_VLM
    text, vision = dict(sizes["text"]), dict(sizes["vision"])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = vlm_tokenizer(family, text.pop("vocab_size", None))
    text["vocab_size"] = len(tok)
    side, patch = vision["image_size"], vision["patch_size"]
    ids = {t: tok.convert_tokens_to_ids(t) for t in _VLM_SPECIALS[family]}
    torch.manual_seed(seed)
    processor: dict[str, Any] = {}
    if family == "llava_onevision":
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil as ImageProcessor,
        )

        pinpoints = [[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]]
        cfg = tf.LlavaOnevisionConfig(
            text_config=dict(model_type="qwen2", **text),
            vision_config=dict(model_type="siglip_vision_model", **vision),
            image_token_id=ids["<image>"],
            video_token_id=ids["<video>"],
            image_grid_pinpoints=pinpoints,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        )
        model = tf.LlavaOnevisionForConditionalGeneration(cfg)
        image_processor = ImageProcessor(
            size={"height": side, "width": side}, image_grid_pinpoints=pinpoints
        )
        processor = dict(
            num_image_tokens=(side // patch) ** 2,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        )
    elif family == "idefics3":
        from transformers.models.idefics3.image_processing_pil_idefics3 import (
            Idefics3ImageProcessorPil as ImageProcessor,
        )

        scale = 2
        cfg = tf.Idefics3Config(
            text_config=dict(model_type="llama", **text),
            vision_config=dict(model_type="idefics3_vision", **vision),
            scale_factor=scale,
            image_token_id=ids["<image>"],
        )
        model = tf.Idefics3ForConditionalGeneration(cfg)
        image_processor = ImageProcessor(
            size={"longest_edge": side},
            max_image_size={"longest_edge": side},
            do_image_splitting=False,
        )
        processor = dict(image_seq_len=(side // patch) ** 2 // scale**2)
    else:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as ImageProcessor,
        )

        heads = text["num_attention_heads"]
        quarter = text["hidden_size"] // heads // 2
        section = [quarter - 2 * (quarter // 4), quarter // 4, quarter // 4]
        qwen25 = family == "qwen2_5_vl"
        vision_cfg = dict(
            depth=vision["num_hidden_layers"],
            num_heads=vision["num_attention_heads"],
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        if qwen25:
            vision_cfg |= dict(
                hidden_size=vision["hidden_size"],
                intermediate_size=vision["intermediate_size"],
                out_hidden_size=text["hidden_size"],
                window_size=4 * patch,
                fullatt_block_indexes=[vision["num_hidden_layers"] - 1],
            )
        else:
            vision_cfg |= dict(embed_dim=vision["hidden_size"], hidden_size=text["hidden_size"])
        config_class = tf.Qwen2_5_VLConfig if qwen25 else tf.Qwen2VLConfig
        cfg = config_class(
            text_config=dict(
                **text,
                rope_parameters={"rope_type": "default", "mrope_section": section},
                bos_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            ),
            vision_config=vision_cfg,
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )
        model_class = (
            tf.Qwen2_5_VLForConditionalGeneration if qwen25 else tf.Qwen2VLForConditionalGeneration
        )
        model = model_class(cfg)
        image_processor = ImageProcessor(
            min_pixels=(2 * patch) ** 2 * 4,
            max_pixels=side * side,
            patch_size=patch,
            merge_size=2,
            temporal_patch_size=2,
        )
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(_VLM_TEMPLATES[family])
    name = {
        "llava_onevision": "LlavaOnevision",
        "idefics3": "Idefics3",
        "qwen2_vl": "Qwen2VL",
        "qwen2_5_vl": "Qwen2_5_VL",
    }
    processor["processor_class"] = f"{name[family]}Processor"
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2))
    return model
