"""transformers backbones (CLIP, SigLIP, DINOv2) on tiny random models saved to tmp folders."""

from __future__ import annotations

import json
import time

import pytest
import torch

from anomalens import testing as tm

transformers = pytest.importorskip("transformers")

from anomalens.backbones.clip import CLIPBackbone  # noqa: E402
from anomalens.backbones.dinov2 import DINOv2Backbone  # noqa: E402
from anomalens.backbones.hf import IMAGENET_MEAN, SIGLIP_MEAN, quarter_layers  # noqa: E402
from anomalens.backbones.siglip import SigLIPBackbone  # noqa: E402
from anomalens.errors import ModelNotAvailableError  # noqa: E402

WORDS = ["a", "photo", "of", "cat", "dog", "damaged", "flawless", "object", "scratch"]
VISION, TEXT = tm.TINY_VISION, tm.TINY_TEXT
# bf16 autocast keeps ~3 significant digits; through 4 random blocks tokens stay within this
BF16_MIN_COSINE = 0.99


def _siglip_tokenizer():
    return tm.siglip_tokenizer(extra_words=tuple(WORDS))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    tok = tm.clip_tokenizer()
    text = TEXT | dict(
        vocab_size=len(tok.get_vocab()),
        max_position_embeddings=16,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = CLIPConfig(text_config=text, vision_config=VISION, projection_dim=24)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    prep = {"crop_size": 32, "do_center_crop": True, "size": {"shortest_edge": 32}}
    prep |= {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}
    (folder / "preprocessor_config.json").write_text(json.dumps(prep))
    return folder


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(1)
    tok = _siglip_tokenizer()
    text = TEXT | dict(vocab_size=len(tok.get_vocab()), max_position_embeddings=12)
    cfg = SiglipConfig(text_config=text, vision_config=VISION)
    folder = tmp_path_factory.mktemp("siglip")
    SiglipModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    # transformers 5 processors nest the image processor in processor_config.json
    prep = {"image_processor": {"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3}}
    (folder / "processor_config.json").write_text(json.dumps(prep))
    return folder


@pytest.fixture(scope="module", params=[0, 4], ids=["noreg", "reg4"])
def dino_dir(request, tmp_path_factory):
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(2)
    folder = tmp_path_factory.mktemp(f"dino{request.param}")
    if request.param:
        cfg = Dinov2WithRegistersConfig(**VISION, num_register_tokens=request.param)
        Dinov2WithRegistersModel(cfg).save_pretrained(folder)
    else:
        Dinov2Model(Dinov2Config(**VISION)).save_pretrained(folder)
    return folder, request.param


def _images(n=2, seed=0):
    return tm.images(n, seed)


def _check_tokens(bb, feats, ref_hidden, layers, prefix, grid):
    for k, layer in enumerate(layers):
        t = feats.tokens[k]
        assert t.dtype == torch.float32 and not t.is_inference()
        assert t.shape == (2, grid[0] * grid[1], 32)
        assert feats.grids[k] == grid
        torch.testing.assert_close(t, ref_hidden[layer][:, prefix:].float(), atol=1e-5, rtol=1e-5)


def test_clip_tokens_global_and_projection(clip_dir):
    bb = CLIPBackbone(str(clip_dir))
    assert (bb.image_size, bb.patch_size, bb.num_layers) == (32, 8, 4)
    assert bb.mean == (0.1, 0.2, 0.3) and bb.std == (0.4, 0.5, 0.6)
    assert bb.default_layers == (1, 2, 3, 4) and bb.has_text
    assert all(not p.requires_grad for p in bb.parameters()) and not bb.model.training
    pixels = bb.preprocess(_images())
    feats = bb.encode_image(pixels, layers=(1, 3, -1))
    with torch.no_grad():
        ref = bb.model.vision_model(pixel_values=pixels, output_hidden_states=True)
        emb = bb.model.visual_projection(ref.pooler_output)
    _check_tokens(bb, feats, ref.hidden_states, (1, 3, 4), 1, (4, 4))
    g = feats.global_embedding
    assert g.shape == (2, 24)
    torch.testing.assert_close(g, torch.nn.functional.normalize(emb, dim=-1), atol=1e-5, rtol=0)
    # projecting the last layer's CLS token reproduces the image embedding
    cls = ref.hidden_states[-1][:, :1]
    torch.testing.assert_close(bb.project_tokens(cls)[:, 0], g, atol=1e-5, rtol=0)
    proj = bb.project_tokens(feats.tokens[1])
    assert proj.shape == (2, 16, 24)
    torch.testing.assert_close(proj.norm(dim=-1), torch.ones(2, 16))


def test_clip_text(clip_dir):
    bb = CLIPBackbone(str(clip_dir))
    text = bb.encode_text(["a photo of a cat", "a scratched object", "dog"])
    assert text.shape == (3, 24) and text.dtype == torch.float32
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    tok = bb.tokenizer()
    enc = tok(["dog"], return_tensors="pt")
    with torch.no_grad():
        ref = bb.model.text_projection(bb.model.text_model(**enc).pooler_output)
    torch.testing.assert_close(text[2:], torch.nn.functional.normalize(ref, dim=-1))
    assert bb.encode_text([]).shape == (0, 24)


def test_siglip_tokens_global_projection_text(siglip_dir):
    bb = SigLIPBackbone(str(siglip_dir))
    assert bb.image_size == 32 and bb.mean == SIGLIP_MEAN and bb.std == (0.5, 0.5, 0.5)
    pixels = bb.preprocess(_images())
    feats = bb.encode_image(pixels, layers=(2, 4))
    vision = bb.model.vision_model
    with torch.no_grad():
        ref = vision(pixel_values=pixels, output_hidden_states=True)
    _check_tokens(bb, feats, ref.hidden_states, (2, 4), 0, (4, 4))
    g = feats.global_embedding
    torch.testing.assert_close(g, torch.nn.functional.normalize(ref.pooler_output, dim=-1))
    # project_tokens = post_layernorm + pooling head on each token alone
    x = feats.tokens[1][:, 5:6]
    with torch.no_grad():
        head = vision.head(vision.post_layernorm(x))
    proj = bb.project_tokens(feats.tokens[1])
    assert proj.shape == (2, 16, 32)
    torch.testing.assert_close(proj[:, 5], torch.nn.functional.normalize(head, dim=-1))
    text = bb.encode_text(["a photo of a cat", "flawless object"])
    assert text.shape == (2, bb.embed_dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))


def test_dinov2_drops_cls_and_registers(dino_dir):
    folder, registers = dino_dir
    bb = DINOv2Backbone(str(folder))
    assert bb.num_prefix_tokens == 1 + registers and not bb.has_text
    assert bb.image_size == 32 and bb.mean == IMAGENET_MEAN
    pixels = bb.preprocess(_images())
    feats = bb.encode_image(pixels, layers=(-3, -1))
    with torch.no_grad():
        ref = bb.model(pixel_values=pixels, output_hidden_states=True)
    assert ref.hidden_states[-1].shape[1] == 16 + 1 + registers
    _check_tokens(bb, feats, ref.hidden_states, (2, 4), 1 + registers, (4, 4))
    torch.testing.assert_close(feats.global_embedding, ref.pooler_output)
    with pytest.raises(NotImplementedError, match="no text tower"):
        bb.encode_text(["a cat"])


@pytest.mark.parametrize("cls", [CLIPBackbone, SigLIPBackbone, DINOv2Backbone])
def test_other_image_size_and_early_stop(cls, clip_dir, siglip_dir, dino_dir):
    folder = {CLIPBackbone: clip_dir, SigLIPBackbone: siglip_dir}.get(cls, dino_dir[0])
    bb = cls(str(folder), image_size=48, layers=(2, 4))
    assert bb.default_layers == (2, 4) and bb.grid() == (6, 6)
    pixels = bb.preprocess(_images())
    assert pixels.shape == (2, 3, 48, 48)
    feats = bb.encode_image(pixels)
    assert [t.shape for t in feats.tokens] == [(2, 36, 32)] * 2
    assert feats.as_map(0).shape == (2, 32, 6, 6)
    # determinism
    again = bb.encode_image(pixels)
    assert all(torch.equal(a, b) for a, b in zip(feats.tokens, again.tokens, strict=True))
    assert torch.equal(feats.global_embedding, again.global_embedding)
    # with_global=False stops after the deepest requested block
    calls = []
    last = bb._blocks()[-1]
    handle = last.register_forward_hook(lambda *_: calls.append(1))
    try:
        shallow = bb.encode_image(pixels, layers=(2,), with_global=False)
    finally:
        handle.remove()
    assert not calls and shallow.global_embedding is None
    torch.testing.assert_close(shallow.tokens[0], feats.tokens[0])


def test_bf16_close_to_fp32(clip_dir):
    fp32 = CLIPBackbone(str(clip_dir))
    bf16 = CLIPBackbone(str(clip_dir), precision="bf16")
    pixels = fp32.preprocess(_images())
    a, b = fp32.encode_image(pixels), bf16.encode_image(pixels)
    for ta, tb in zip(a.tokens, b.tokens, strict=True):
        assert tb.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(ta, tb, dim=-1)
        assert cos.min() > BF16_MIN_COSINE
    cos = torch.nn.functional.cosine_similarity(a.global_embedding, b.global_embedding, dim=-1)
    assert cos.min() > BF16_MIN_COSINE
    text = torch.nn.functional.cosine_similarity(
        fp32.encode_text(["a cat"]), bf16.encode_text(["a cat"]), dim=-1
    )
    assert text.min() > BF16_MIN_COSINE


def test_bad_arguments(clip_dir, dino_dir):
    with pytest.raises(ValueError, match="precision"):
        CLIPBackbone(str(clip_dir), precision="fp16")
    bb = CLIPBackbone(str(clip_dir))
    with pytest.raises(ValueError, match="out of range"):
        bb.encode_image(torch.zeros(1, 3, 32, 32), layers=(5,))
    with pytest.raises(ModelNotAvailableError, match="'clip' model"):
        DINOv2Backbone(str(clip_dir))
    assert quarter_layers(24) == (6, 12, 18, 24) and quarter_layers(2) == (1, 2)


def test_missing_files_raise_clear_errors(tmp_path, clip_dir):
    with pytest.raises(ModelNotAvailableError, match="no such folder"):
        CLIPBackbone(str(tmp_path / "nope"))
    # config but no weights
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "config.json").write_text((clip_dir / "config.json").read_text())
    with pytest.raises(ModelNotAvailableError, match="only_config"):
        CLIPBackbone(str(only_config))
    # weights but no tokenizer: the image side works, encode_text explains
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((clip_dir / name).read_bytes())
    bb = CLIPBackbone(str(no_tok))
    assert bb.encode_image(bb.preprocess(_images(1))).tokens[0].shape == (1, 16, 32)
    with pytest.raises(ModelNotAvailableError, match="tokenizer"):
        bb.encode_text(["a cat"])


def test_uncached_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_id = "anomalens-tests/clip-not-downloaded"
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as info:
        CLIPBackbone(model_id)
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert model_id in msg and "save_pretrained" in msg and "clip:/path/to/" in msg
