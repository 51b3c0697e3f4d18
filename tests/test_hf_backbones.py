"""transformers backbones (CLIP, SigLIP, DINOv2) on tiny random models saved to tmp folders."""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import assert_no_text_tower

from anomalens import testing as tm

transformers = pytest.importorskip("transformers")

from anomalens.backbones.clip import CLIPBackbone  # noqa: E402
from anomalens.backbones.dinov2 import DINOv2Backbone  # noqa: E402
from anomalens.backbones.hf import IMAGENET_MEAN, SIGLIP_MEAN, quarter_layers  # noqa: E402
from anomalens.backbones.siglip import SigLIPBackbone  # noqa: E402
from anomalens.errors import ModelNotAvailableError  # noqa: E402
from anomalens.methods.winclip import window_indices  # noqa: E402

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
        assert t.dtype == torch.float32
        assert not t.is_inference()
        assert t.shape == (2, grid[0] * grid[1], 32)
        assert feats.grids[k] == grid
        torch.testing.assert_close(t, ref_hidden[layer][:, prefix:].float(), atol=1e-5, rtol=1e-5)


def test_clip_tokens_global_and_projection(clip_dir):
    bb = CLIPBackbone(str(clip_dir))
    assert (bb.image_size, bb.patch_size, bb.num_layers) == (32, 8, 4)
    assert bb.mean == (0.1, 0.2, 0.3)
    assert bb.std == (0.4, 0.5, 0.6)
    assert bb.default_layers == (1, 2, 3, 4)
    assert bb.has_text
    assert all(not p.requires_grad for p in bb.parameters())
    assert not bb.model.training
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
    assert text.shape == (3, 24)
    assert text.dtype == torch.float32
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    tok = bb.tokenizer()
    enc = tok(["dog"], return_tensors="pt")
    with torch.no_grad():
        ref = bb.model.text_projection(bb.model.text_model(**enc).pooler_output)
    torch.testing.assert_close(text[2:], torch.nn.functional.normalize(ref, dim=-1))
    assert bb.encode_text([]).shape == (0, 24)


def test_siglip_tokens_global_projection_text(siglip_dir):
    bb = SigLIPBackbone(str(siglip_dir))
    assert bb.image_size == 32
    assert bb.mean == SIGLIP_MEAN
    assert bb.std == (0.5, 0.5, 0.5)
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
    assert bb.num_prefix_tokens == 1 + registers
    assert not bb.has_text
    assert bb.image_size == 32
    assert bb.mean == IMAGENET_MEAN
    pixels = bb.preprocess(_images())
    feats = bb.encode_image(pixels, layers=(-3, -1))
    with torch.no_grad():
        ref = bb.model(pixel_values=pixels, output_hidden_states=True)
    assert ref.hidden_states[-1].shape[1] == 16 + 1 + registers
    _check_tokens(bb, feats, ref.hidden_states, (2, 4), 1 + registers, (4, 4))
    torch.testing.assert_close(feats.global_embedding, ref.pooler_output)
    assert_no_text_tower(bb, 32)


@pytest.mark.parametrize("cls", [CLIPBackbone, SigLIPBackbone, DINOv2Backbone])
def test_other_image_size_and_early_stop(cls, clip_dir, siglip_dir, dino_dir):
    folder = {CLIPBackbone: clip_dir, SigLIPBackbone: siglip_dir}.get(cls, dino_dir[0])
    bb = cls(str(folder), image_size=48, layers=(2, 4))
    assert bb.default_layers == (2, 4)
    assert bb.grid() == (6, 6)
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
    assert not calls
    assert shallow.global_embedding is None
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
    assert quarter_layers(24) == (6, 12, 18, 24)
    assert quarter_layers(2) == (1, 2)


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
    assert model_id in msg
    assert "save_pretrained" in msg
    assert "clip:/path/to/" in msg


# -- the full Backbone contract -----------------------------------------------------------


def _all(clip_dir, siglip_dir, dino_dir):
    return [
        CLIPBackbone(str(clip_dir)),
        SigLIPBackbone(str(siglip_dir)),
        DINOv2Backbone(str(dino_dir[0])),
    ]


def test_grid_equals_feature_grids(clip_dir, siglip_dir, dino_dir):
    for bb in _all(clip_dir, siglip_dir, dino_dir):
        assert bb.architecture == "vit"
        assert bb.feature_levels == (1, 2, 3, 4)
        assert bb.grid() == (4, 4)
        for size in (32, 40, 47, 56):
            feats = bb.encode_image(torch.randn(1, 3, size, size), layers=(1, 2, 3, 4))
            assert feats.grids == [bb.grid(layer, size) for layer in (1, 2, 3, 4)]
            assert feats.grids[0] == (size // 8, size // 8)
        with pytest.raises(ValueError, match="out of range"):
            bb.grid(5)
        info = bb.describe()
        assert json.loads(json.dumps(info)) == info
        assert info["kind"] == bb.kind


def test_resolve_layers_negative_and_errors(clip_dir):
    bb = CLIPBackbone(str(clip_dir))
    assert bb.resolve_layers((-1, -4, 2)) == (4, 1, 2)
    assert bb.resolve_layers(-2) == (3,)
    with pytest.raises(ValueError, match=r"layer -5 out of range .* with 4 blocks \(use 1..4"):
        bb.resolve_layers((-5,))
    with pytest.raises(ValueError, match="layer 0 out of range"):
        bb.layer_module(0)
    with pytest.raises(ValueError, match="at least one layer"):
        bb.resolve_layers(())
    assert bb.layer_module(-1) is bb.model.vision_model.encoder.layers[3]


def test_text_tower_attributes(clip_dir, siglip_dir, tmp_path):
    scaled = CLIPBackbone(str(tm.make_clip(tmp_path / "scaled", logit_scale=50.0)))
    assert scaled.logit_scale() == pytest.approx(50.0, rel=1e-5)
    for bb in (CLIPBackbone(str(clip_dir)), SigLIPBackbone(str(siglip_dir)), scaled):
        assert bb.has_text
        assert bb.supports_windows
        assert bb.logit_scale() == float(bb.model.logit_scale.exp())
        assert isinstance(bb.logit_scale(), float)
        assert bb.text_dims() == (TEXT["hidden_size"], TEXT["num_hidden_layers"])
        assert bb.text_layer_module(2) is bb.model.text_model.encoder.layers[1]
        with pytest.raises(ValueError, match=r"text layer 3 out of range 1\.\.2"):
            bb.text_layer_module(3)
    assert CLIPBackbone(str(clip_dir)).embed_dim == 24  # projection_dim
    siglip = SigLIPBackbone(str(siglip_dir))
    assert siglip.embed_dim == siglip.model.config.text_config.projection_size == 32


def _hand_text(bb, prompts):
    """The text tower called by hand on the tokenized prompts (the previous implementation)."""
    max_len = int(bb.model.config.text_config.max_position_embeddings)
    with torch.inference_mode():
        if bb.kind == "clip":
            enc = bb.tokenizer()(
                prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
            )
            out = bb.model.text_model(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            )
            emb = bb.model.text_projection(out.pooler_output)
        else:
            enc = bb.tokenizer()(
                prompts,
                padding="max_length",
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            emb = bb.model.text_model(input_ids=enc["input_ids"]).pooler_output
    return torch.nn.functional.normalize(emb.float(), dim=-1)


@pytest.mark.parametrize("cls", [CLIPBackbone, SigLIPBackbone])
def test_encode_text_bit_identical(cls, clip_dir, siglip_dir, monkeypatch):
    bb = cls(str(clip_dir if cls is CLIPBackbone else siglip_dir))
    prompts = ["a photo of a cat", "a damaged object", "dog", "flawless photo of a scratch"]
    ref = _hand_text(bb, prompts)
    assert torch.equal(bb.encode_text(prompts), ref)
    # chunking over TEXT_BATCH prompts: chunks of 2 give what one call on each half gives
    monkeypatch.setattr("anomalens.backbones.text.TEXT_BATCH", 2)
    chunked = bb.encode_text(prompts)
    assert torch.equal(chunked[:2], _hand_text(bb, prompts[:2]))
    assert torch.equal(chunked[2:], _hand_text(bb, prompts[2:]))


def _hand_window(bb, pixels, idx):
    """A window embedding computed layer by layer, without the embeddings/encoder modules."""
    vision = bb.model.vision_model
    emb = vision.embeddings
    with torch.no_grad():
        x = emb.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [B, 16, C]
        pos = emb.position_embedding.weight
        if bb.kind == "clip":
            cls = (emb.class_embedding + pos[0]).expand(x.shape[0], 1, -1)
            h = torch.cat([cls, (x + pos[1:])[:, idx]], 1)
            h = vision.pre_layrnorm(h)
        else:
            h = (x + pos)[:, idx]
        for layer in vision.encoder.layers:
            out = layer(h, None)
            h = out[0] if isinstance(out, tuple) else out
        if bb.kind == "clip":
            p = bb.model.visual_projection(vision.post_layernorm(h[:, 0]))
        else:
            p = vision.head(vision.post_layernorm(h))
    return torch.nn.functional.normalize(p, dim=-1)


@pytest.mark.parametrize("cls", [CLIPBackbone, SigLIPBackbone])
def test_encode_windows(cls, clip_dir, siglip_dir, monkeypatch):

    bb = cls(str(clip_dir if cls is CLIPBackbone else siglip_dir))
    pixels = bb.preprocess(_images())
    grid = bb.grid()
    indices = [window_indices(grid, 2), window_indices(grid, 4)]
    small, whole = bb.encode_windows(pixels, indices)
    assert small.shape == (2, 9, bb.embed_dim)
    assert whole.shape == (2, 1, bb.embed_dim)
    # a window covering the whole grid is the image embedding
    glob = bb.encode_image(pixels).global_embedding
    torch.testing.assert_close(whole[:, 0], glob, atol=1e-5, rtol=0)
    # 2x2 windows against the vision encoder run by hand on their tokens
    for w in (0, 4, 8):
        ref = _hand_window(bb, pixels, indices[0][w])
        torch.testing.assert_close(small[:, w], ref, atol=1e-5, rtol=0)
    # chunking does not change the result
    monkeypatch.setattr("anomalens.backbones.text.WINDOW_CHUNK", 5)
    again = bb.encode_windows(pixels, indices)
    torch.testing.assert_close(again[0], small, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="n_windows, k"):
        bb.encode_windows(pixels, [indices[0][0]])


def test_dinov2_has_no_windows(dino_dir):
    bb = DINOv2Backbone(str(dino_dir[0]))
    with pytest.raises(NotImplementedError, match="CLIP or SigLIP"):
        bb.encode_windows(bb.preprocess(_images(1)), [window_indices(bb.grid(), 2)])
