"""Uploaded image bytes -> RGB uint8 arrays, with the checks a public endpoint needs.

The format is sniffed from the first bytes (never the file name or the declared type), the
pixel count is read from the header and checked before anything is decoded (decompression
bombs), and every failure is an :class:`UploadError` carrying the HTTP status and a message
naming the upload.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from anomalens.data.io import DECODE_ERRORS, exif_transpose, to_rgb_array

#: Magic bytes of the accepted formats.
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


class UploadError(Exception):
    """A bad upload: ``status`` (4xx) and a one-line ``message`` naming it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Request limits: bytes per request, pixels per image, images per request."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_images: int = 16

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_pixels, self.max_images) < 1:
            raise ValueError("upload limits must be >= 1")


def sniff_format(data: bytes) -> str | None:
    """``PNG``, ``JPEG``, ``BMP``, ``TIFF`` or ``WEBP`` from the leading bytes, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in SIGNATURES:
        if data.startswith(magic):
            return name
    return None


def decode_image(data: bytes, name: str, limits: Limits) -> np.ndarray:
    """Decode one upload to ``uint8 H x W x 3`` RGB, or raise :class:`UploadError`
    (415 unknown format, 413 too many pixels, 400 corrupt or empty)."""
    if not data:
        raise UploadError(400, f"{name}: empty upload (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise UploadError(
            415,
            f"{name}: not an image in a supported format ({', '.join(FORMATS)}; "
            "the format is read from the bytes, not the file name)",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as img:
                width, height = img.size
                if width * height > limits.max_pixels:
                    raise UploadError(
                        413,
                        f"{name}: {width}x{height} = {width * height} pixels exceeds the limit "
                        f"of {limits.max_pixels} (possible decompression bomb)",
                    )
                img.load()
                return to_rgb_array(exif_transpose(img))
    except UploadError:
        raise
    except Image.DecompressionBombError as exc:
        raise UploadError(413, f"{name}: image too large ({exc})") from exc
    except (*DECODE_ERRORS, Image.UnidentifiedImageError) as exc:
        raise UploadError(
            400, f"{name}: cannot decode the {fmt} data (corrupt or truncated)"
        ) from exc
