"""Read images and masks from disk with clear errors.

Every failure (missing file, directory, empty file, not an image, truncated or corrupt data,
permission problem, decompression bomb, mask of the wrong size) raises
:class:`~anomalens.errors.ImageLoadError` whose message names the file and the problem.

Conversion rules of :func:`load_image` (output is always ``uint8 H x W x 3`` RGB):

* ``RGBA`` / ``LA`` / palette images with transparency: the alpha channel is **dropped** (the
  stored colour values are kept, as ``cv2.imread`` and ``PIL.Image.convert("RGB")`` do).
* 16-bit images (``I;16*``) are scaled by the full range of the type: ``v / 257``
  (65535 -> 255). 32-bit integer ``I`` images are assumed to hold 16-bit data (the way PIL
  reads many 16-bit files), so they are clipped to 0..65535 and scaled the same way.
* Float ``F`` images: values in [0, 1] are scaled by 255, values up to 255 are taken as 8-bit,
  larger values as 16-bit (``/ 257``); the result is clipped. There is no per-image min-max.
* 16-bit RGB files are reduced to 8 bits by PIL itself (high byte).
* EXIF orientation is applied (images come out the way viewers show them).
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from anomalens.errors import ImageLoadError

#: Images with more pixels than this are refused as possible decompression bombs
#: (PIL's default error limit). Lower it to protect small machines.
MAX_IMAGE_PIXELS = 178_956_970


class BlurredMaskWarning(UserWarning):
    """A mask holds values other than 0 and 255; every nonzero pixel is taken as defect."""


#: Errors PIL and its decoders raise on corrupt or truncated data (shared with the service's
#: upload decoding, like :func:`to_rgb_array` and :func:`exif_transpose`).
DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error)


def _check_file(path: Path) -> None:
    """Raise ImageLoadError for paths that cannot be an image file."""
    try:
        if not path.exists():
            raise ImageLoadError(f"{path}: file not found")
        if path.is_dir():
            raise ImageLoadError(f"{path}: is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{path}: file is empty (0 bytes)")
    except PermissionError as e:
        raise ImageLoadError(f"{path}: cannot access file (permission denied)") from e
    except OSError as e:
        raise ImageLoadError(f"{path}: cannot access file ({e.strerror or e})") from e


def _open(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image, with EXIF orientation applied."""
    path = Path(path)
    _check_file(path)
    try:
        fh = path.open("rb")
    except PermissionError as e:
        raise ImageLoadError(f"{path}: cannot read file (permission denied)") from e
    except OSError as e:
        raise ImageLoadError(f"{path}: cannot read file ({e.strerror or e})") from e
    try:
        with fh, warnings.catch_warnings():
            # Our own pixel limit below decides; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh) as img:
                _check_pixels(path, img.size)
                img.load()  # force a full decode so truncated files fail here
                return exif_transpose(img)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(
            f"{path}: image is too large, possible decompression bomb ({e})"
        ) from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(f"{path}: not an image or corrupt (format not recognised)") from e
    except DECODE_ERRORS as e:
        if isinstance(e, OSError) and "truncated" in str(e).lower():
            raise ImageLoadError(f"{path}: image file is truncated ({e})") from e
        raise ImageLoadError(f"{path}: cannot decode image, file is corrupt ({e})") from e


def exif_transpose(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF must not make a readable image unusable
        return img.copy()


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    """Refuse images larger than MAX_IMAGE_PIXELS."""
    n = size[0] * size[1]
    if n > MAX_IMAGE_PIXELS:
        raise ImageLoadError(
            f"{path}: image is too large ({size[0]}x{size[1]} = {n} pixels, limit "
            f"{MAX_IMAGE_PIXELS}), possible decompression bomb"
        )


def _float_to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale float pixel values by the range they appear to use (see module docstring)."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(a.max()) if a.size else 0.0
    if peak <= 1.0:
        a = a * 255.0
    elif peak > 255.0:
        a = a / 257.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode to ``uint8 H x W x 3``."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        gray = np.clip(np.rint(np.clip(a, 0, 65535) / 257.0), 0, 255).astype(np.uint8)
    elif mode == "F":
        gray = _float_to_uint8(np.asarray(img))
    elif mode in ("L", "LA", "1"):
        gray = np.asarray(img.convert("L"))
    else:
        if mode == "P":
            img = img.convert("RGBA")  # handles palette transparency without PIL warnings
        rgb = img if img.mode == "RGB" else img.convert("RGB")  # no extra copy of large photos
        return np.ascontiguousarray(np.asarray(rgb), dtype=np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Load an image file as ``uint8 H x W x 3`` RGB; raise ImageLoadError if unusable."""
    img = _open(path)
    try:
        return to_rgb_array(img)
    except DECODE_ERRORS as e:
        raise ImageLoadError(f"{path}: cannot convert image mode {img.mode!r} to RGB ({e})") from e


def _mask_array(img: Image.Image) -> np.ndarray:
    """Mask values as a 2-D array for any PIL mode (colour: the maximum over channels; alpha
    channels are ignored)."""
    if img.mode == "P":
        img = img.convert("RGB")
    elif img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    elif img.mode not in ("1", "L", "I", "F", "RGB") and not img.mode.startswith("I;16"):
        img = img.convert("RGB")
    a = np.asarray(img)
    if a.ndim == 3:
        a = a.max(axis=2)
    return a


def load_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Load a mask as ``uint8 H x W`` with values {0, 1} (any nonzero pixel is 1).

    If ``shape`` (``(H, W)``, usually the image's) is given and differs from the mask's size,
    raise ImageLoadError naming the mask file and both sizes.
    """
    img = _open(path)
    try:
        values = _mask_array(img)
    except DECODE_ERRORS as e:
        raise ImageLoadError(f"{path}: cannot read mask of mode {img.mode!r} ({e})") from e
    mask = (values != 0).astype(np.uint8)
    if values.dtype == np.uint8:
        counts = np.bincount(values.ravel(), minlength=256)[1:]
        levels = int(np.count_nonzero(counts))
        if levels > 1:  # 0/255 and 0/1 masks have one nonzero level
            soft = int(counts.sum() - counts.max())
            warnings.warn(
                f"{path}: mask has {levels} nonzero gray levels ({soft} pixels off its main "
                "level: blurred, anti-aliased or JPEG mask?); every nonzero pixel counts as "
                "defect",
                BlurredMaskWarning,
                stacklevel=2,
            )
    if shape is not None and tuple(mask.shape) != tuple(shape[:2]):
        raise ImageLoadError(
            f"{path}: mask size {mask.shape[0]}x{mask.shape[1]} (HxW) differs from the image "
            f"size {shape[0]}x{shape[1]}"
        )
    return mask
