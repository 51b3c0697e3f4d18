"""Image and mask loading: every supported mode and every failure case."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.data import io
from anomalens.data.io import load_image, load_mask
from anomalens.errors import ImageLoadError


def _rgb(h: int = 12, w: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


# ----------------------------------------------------------------------------- modes


@pytest.mark.parametrize("ext", ["png", "bmp", "tif", "tiff"])
def test_rgb_lossless_formats_roundtrip(tmp_path: Path, ext: str) -> None:
    a = _rgb()
    out = load_image(_save(Image.fromarray(a), tmp_path / f"x.{ext}"))
    assert out.dtype == np.uint8
    assert out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out, a)


def test_jpeg_uppercase_extension(tmp_path: Path) -> None:
    a = np.full((16, 16, 3), (200, 40, 90), dtype=np.uint8)
    out = load_image(_save(Image.fromarray(a), tmp_path / "x.JPG", format="JPEG", quality=95))
    assert out.shape == (16, 16, 3)
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - a).max() <= 6


def test_grayscale_is_replicated_to_three_channels(tmp_path: Path) -> None:
    g = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    out = load_image(_save(Image.fromarray(g, mode="L"), tmp_path / "g.png"))
    assert out.shape == (12, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g)


def test_la_drops_alpha(tmp_path: Path) -> None:
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 0], la[..., 1] = 100, 0
    out = load_image(_save(Image.fromarray(la, mode="LA"), tmp_path / "la.png"))
    assert out.shape == (4, 4, 3)
    assert (out == 100).all()


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    a[0, 0] = (10, 20, 30, 0)  # fully transparent: colour is kept, not blackened
    a[1, 1] = (200, 100, 50, 128)
    out = load_image(_save(Image.fromarray(a, mode="RGBA"), tmp_path / "a.png"))
    assert out.shape == (4, 4, 3)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[1, 1]) == (200, 100, 50)


def test_palette_image(tmp_path: Path) -> None:
    p = Image.new("P", (5, 3))
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    p.putpixel((1, 0), 1)
    p.putpixel((2, 2), 2)
    out = load_image(_save(p, tmp_path / "p.png"))
    assert out.shape == (3, 5, 3)
    assert tuple(out[0, 1]) == (255, 0, 0)
    assert tuple(out[2, 2]) == (0, 0, 255)
    assert tuple(out[0, 0]) == (0, 0, 0)


def test_palette_with_transparency_no_warning(tmp_path: Path, recwarn) -> None:
    p = Image.new("P", (4, 4))
    p.putpalette([9, 8, 7, 1, 2, 3] + [0] * (256 * 3 - 6))
    p.putpixel((0, 0), 1)
    path = _save(p, tmp_path / "pt.png", transparency=0)
    out = load_image(path)
    assert tuple(out[0, 0]) == (1, 2, 3)
    assert tuple(out[3, 3]) == (9, 8, 7)
    assert not [w for w in recwarn if "ransparency" in str(w.message)]


def test_one_bit_image(tmp_path: Path) -> None:
    b = np.zeros((6, 8), bool)
    b[2, 3] = True
    out = load_image(_save(Image.fromarray(b), tmp_path / "b.png"))
    assert out.shape == (6, 8, 3)
    assert tuple(out[2, 3]) == (255, 255, 255)
    assert out.sum() == 255 * 3


def test_cmyk_jpeg(tmp_path: Path) -> None:
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_save(img, tmp_path / "c.jpg", quality=95))
    assert out.shape == (8, 8, 3)
    r, g, b = out[4, 4].astype(int)
    assert r > 200
    assert g < 60
    assert b < 60


def test_cmyk_tiff(tmp_path: Path) -> None:
    img = Image.new("CMYK", (8, 8), (255, 0, 255, 0))  # green
    out = load_image(_save(img, tmp_path / "c.tif"))
    assert tuple(out[0, 0]) == (0, 255, 0)


def test_16bit_grayscale_png_scaled_by_type_range(tmp_path: Path) -> None:
    a = np.array([[0, 65535, 257], [1000, 32896, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(a), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    assert out.dtype == np.uint8
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[:, :, 0], [[0, 255, 1], [4, 128, 255]])


def test_16bit_dark_image_is_not_stretched(tmp_path: Path) -> None:
    a = np.full((4, 4), 514, dtype=np.uint16)
    a[0, 0] = 0
    out = load_image(_save(Image.fromarray(a), tmp_path / "dark16.png"))
    assert out.max() == 2  # full type range, no per-image min-max stretch


def test_16bit_big_endian_mode(tmp_path: Path) -> None:
    a = np.array([[0, 65535], [257, 514]], dtype=">u2")
    img = Image.frombytes("I;16B", (2, 2), a.tobytes())
    out = load_image(_save(img, tmp_path / "be.tif"))
    np.testing.assert_array_equal(out[:, :, 1], [[0, 255], [1, 2]])


def test_32bit_integer_mode_treated_as_16bit(tmp_path: Path) -> None:
    a = np.array([[0, 65535], [70000, -5]], dtype=np.int32)
    out = load_image(_save(Image.fromarray(a, mode="I"), tmp_path / "i.tif"))
    np.testing.assert_array_equal(out[:, :, 2], [[0, 255], [255, 0]])


def test_16bit_rgb_png(tmp_path: Path) -> None:
    import cv2

    a = np.zeros((3, 4, 3), np.uint16)
    a[0, 0] = (65535, 0, 257 * 100)  # BGR for OpenCV
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), a)
    out = load_image(path)
    assert out.dtype == np.uint8
    assert out.shape == (3, 4, 3)
    assert tuple(out[0, 0]) == (100, 0, 255)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([[0.0, 0.5], [1.0, 0.25]], [[0, 128], [255, 64]]),  # unit range
        ([[0.0, 100.0], [255.0, 7.0]], [[0, 100], [255, 7]]),  # 8-bit range
        ([[0.0, 65535.0], [257.0, 1e6]], [[0, 255], [1, 255]]),  # 16-bit range, clipped
    ],
)
def test_float_images(tmp_path: Path, values, expected) -> None:
    f = np.array(values, dtype=np.float32)
    out = load_image(_save(Image.fromarray(f, mode="F"), tmp_path / "f.tif"))
    np.testing.assert_array_equal(out[:, :, 0], expected)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    a = np.zeros((10, 20, 3), np.uint8)
    a[0, 0] = 255  # top-left marker
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(img, tmp_path / "o.png", exif=exif)
    out = load_image(path)
    assert out.shape == (20, 10, 3)
    assert out[0, -1].min() == 255
    assert out[0, 0].max() == 0


# ----------------------------------------------------------------------------- failures


def _assert_error(path: Path, *words: str) -> None:
    with pytest.raises(ImageLoadError) as exc:
        load_image(path)
    msg = str(exc.value)
    assert path.name in msg
    for w in words:
        assert w in msg.lower()


def test_missing_file(tmp_path: Path) -> None:
    _assert_error(tmp_path / "nope.png", "not found")


def test_directory(tmp_path: Path) -> None:
    d = tmp_path / "folder.png"
    d.mkdir()
    _assert_error(d, "directory")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    _assert_error(p, "empty")


def test_garbage_bytes(tmp_path: Path) -> None:
    p = tmp_path / "garbage.png"
    p.write_bytes(os.urandom(64) + b"this is not an image")
    _assert_error(p, "not an image")


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    full = _save(Image.fromarray(_rgb(64, 64)), tmp_path / f"full.{fmt}")
    data = full.read_bytes()
    p = tmp_path / f"cut.{fmt}"
    p.write_bytes(data[: len(data) // 2])
    _assert_error(p, "truncated")


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _save(Image.fromarray(_rgb(20, 20)), tmp_path / "bomb.png")
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", 399)
    _assert_error(p, "decompression bomb", "400")
    with pytest.raises(ImageLoadError, match="bomb"):
        load_mask(p)
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", 400)
    assert load_image(p).shape == (20, 20, 3)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file"
)
def test_unreadable_file(tmp_path: Path) -> None:
    p = _save(Image.fromarray(_rgb()), tmp_path / "secret.png")
    p.chmod(0)
    try:
        _assert_error(p, "permission")
    finally:
        p.chmod(0o644)


def test_permission_error_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs even as root: simulate the OS refusing to open the file."""
    p = _save(Image.fromarray(_rgb()), tmp_path / "locked.png")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    _assert_error(p, "permission denied")


# ----------------------------------------------------------------------------- masks


def test_mask_l_nonzero_is_one(tmp_path: Path) -> None:
    m = np.zeros((5, 6), np.uint8)
    m[1, 1], m[2, 3], m[4, 5] = 255, 1, 7
    out = load_mask(_save(Image.fromarray(m), tmp_path / "m.png"))
    assert out.dtype == np.uint8
    assert out.shape == (5, 6)
    np.testing.assert_array_equal(out, (m > 0).astype(np.uint8))


def test_mask_one_bit(tmp_path: Path) -> None:
    b = np.zeros((5, 6), bool)
    b[0, 2] = True
    out = load_mask(_save(Image.fromarray(b), tmp_path / "b.png"))
    np.testing.assert_array_equal(out, b.astype(np.uint8))


def test_mask_rgb_any_channel(tmp_path: Path) -> None:
    m = np.zeros((4, 4, 3), np.uint8)
    m[0, 0] = (0, 0, 9)
    m[3, 3] = (255, 255, 255)
    out = load_mask(_save(Image.fromarray(m), tmp_path / "rgb.png"))
    assert out.shape == (4, 4)
    assert out.sum() == 2
    assert out[0, 0] == 1
    assert out[3, 3] == 1


def test_mask_16bit(tmp_path: Path) -> None:
    m = np.zeros((4, 4), np.uint16)
    m[1, 2] = 1  # would round to 0 if scaled like an image
    m[3, 0] = 65535
    out = load_mask(_save(Image.fromarray(m), tmp_path / "m16.png"))
    assert out.sum() == 2
    assert out[1, 2] == 1
    assert out[3, 0] == 1


def test_mask_shape_ok_and_mismatch(tmp_path: Path) -> None:
    p = _save(Image.fromarray(np.zeros((10, 8), np.uint8)), tmp_path / "m_mask.png")
    assert load_mask(p, (10, 8)).shape == (10, 8)
    with pytest.raises(ImageLoadError) as exc:
        load_mask(p, (12, 8))
    msg = str(exc.value)
    assert "m_mask.png" in msg
    assert "10x8" in msg
    assert "12x8" in msg


def test_mask_errors_name_file(tmp_path: Path) -> None:
    p = tmp_path / "broken_mask.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageLoadError, match=r"broken_mask\.png"):
        load_mask(p)
