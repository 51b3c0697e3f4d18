"""Where batch inference finds its images: folders, globs, lists of paths, fsspec URIs.

:func:`list_sources` turns the ``--input`` arguments into sorted, de-duplicated image
locations (local paths as strings, URIs as given); :func:`fingerprint` identifies a file's
content for the resume index (size and mtime, or a SHA-256 of the bytes); :func:`read_image`
decodes a local path or a URI with :func:`anomalens.data.io.load_image`.

An input is, in this order of checks:

* a URI (``scheme://...``, any protocol fsspec supports): a folder is searched recursively, a
  pattern with ``*``, ``?`` or ``[`` is globbed, anything else is one image;
* a local folder: its image files, subfolders included;
* a local file with an image extension: that image;
* a local text file (``.txt``, ``.lst``, ``.csv``): one path or URI per line (blank lines and
  lines starting with ``#`` are skipped; relative paths are relative to the list file's
  folder); listed images are not checked here (a missing one is recorded as an error);
* a glob pattern (``photos/**/*.png``; ``**`` matches subfolders).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from anomalens.data.datasets import IMAGE_EXTENSIONS, is_image_file
from anomalens.data.io import load_image
from anomalens.errors import DatasetError, ImageLoadError

__all__ = ["LIST_EXTENSIONS", "fingerprint", "is_uri", "list_sources", "read_image"]

#: Extensions of text files read as lists of image paths.
LIST_EXTENSIONS = (".txt", ".lst", ".csv")
_GLOB_CHARS = ("*", "?", "[")
_HASH_CHUNK = 1 << 20


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` (fsspec) locations, False for local paths."""
    return "://" in location and not location.startswith("file://")


def _local(location: str) -> str:
    return location[len("file://") :] if location.startswith("file://") else location


def _has_glob(text: str) -> bool:
    return any(c in text for c in _GLOB_CHARS)


def _image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _fsspec():
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec comes with ray[data]
        raise DatasetError("URIs need fsspec, which is not installed: pip install fsspec") from exc
    return fsspec


def _uri_images(uri: str) -> list[str]:
    fs, root = _fsspec().core.url_to_fs(uri)
    protocol = uri.split("://", 1)[0]
    if _has_glob(root):
        found = fs.glob(root)
    elif fs.isdir(root):
        found = fs.find(root)
    elif fs.exists(root):
        return [uri]
    else:
        raise DatasetError(f"{uri}: file or folder not found")
    return [fs.unstrip_protocol(p) if protocol else p for p in sorted(found) if _image_name(p)]


def _list_file(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if is_uri(line) or os.path.isabs(_local(line)):
            out.append(_local(line))
        else:
            out.append(str(path.parent / line))
    return out


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def list_sources(
    inputs: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None
) -> list[str]:
    """Image locations of ``inputs`` (see the module docstring), sorted per input, duplicates
    dropped. Files inside ``exclude`` (the output folder) are skipped when folders and globs
    are searched. Raises DatasetError naming an input that does not exist, a folder or pattern
    without images, or a file that is neither an image nor a list."""
    skip = Path(exclude).resolve() if exclude is not None else None
    exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    found: list[str] = []
    for item in map(os.fspath, inputs):
        if is_uri(item):
            images = _uri_images(item)
        else:
            local = Path(_local(item))
            if local.is_dir():
                images = [
                    str(p)
                    for p in sorted(local.rglob("*"))
                    if is_image_file(p) and not _inside(p, skip)
                ]
            elif local.is_file():
                suffix = local.suffix.lower()
                if suffix in IMAGE_EXTENSIONS:
                    images = [str(local)]
                elif suffix in LIST_EXTENSIONS:
                    images = _list_file(local)
                else:
                    raise DatasetError(
                        f"{item}: neither an image ({exts}) nor a list of paths "
                        f"({', '.join(e.lstrip('.') for e in LIST_EXTENSIONS)})"
                    )
            elif _has_glob(item):
                images = [
                    p
                    for p in sorted(glob.glob(_local(item), recursive=True))
                    if _image_name(p) and os.path.isfile(p) and not _inside(Path(p), skip)
                ]
            else:
                raise DatasetError(f"{item}: file or folder not found")
        if not images:
            raise DatasetError(f"{item}: no images found (extensions {exts})")
        found += images
    return list(dict.fromkeys(found))


def fingerprint(location: str, content_hash: bool = False) -> str:
    """What identifies the content of ``location`` for the resume index: ``size:mtime_ns``
    (URIs: size and the store's modification time or ETag), or with ``content_hash``
    ``sha256:<hex>`` of the bytes. An unreadable file gives ``missing``."""
    try:
        if content_hash:
            digest = hashlib.sha256()
            with _open(location) as f:
                for block in iter(lambda: f.read(_HASH_CHUNK), b""):
                    digest.update(block)
            return "sha256:" + digest.hexdigest()
        if is_uri(location):
            fs, root = _fsspec().core.url_to_fs(location)
            info = fs.info(root)
            stamp = next(
                (info[k] for k in ("mtime", "LastModified", "last_modified", "ETag") if k in info),
                "",
            )
            return f"{info.get('size')}:{stamp}"
        st = os.stat(location)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except (OSError, ValueError):
        return "missing"


def _open(location: str):
    if is_uri(location):
        return _fsspec().open(location, "rb").open()
    return open(location, "rb")


def read_image(location: str) -> np.ndarray:
    """Decode a local path or URI as ``uint8 H x W x 3`` RGB; ImageLoadError names
    ``location`` when it cannot be read or decoded."""
    if not is_uri(location):
        return load_image(location)
    suffix = os.path.splitext(location)[1]
    try:
        with _open(location) as src, tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            shutil.copyfileobj(src, tmp)
            tmp.flush()
            try:
                return load_image(tmp.name)
            except ImageLoadError as exc:
                raise ImageLoadError(str(exc).replace(tmp.name, location)) from exc
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"{location}: cannot read ({exc})") from exc


def fingerprints(locations: Iterable[str], content_hash: bool = False) -> list[str]:
    """:func:`fingerprint` of every location, in order (8 threads: stat and hashing wait on
    storage, not on the CPU)."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda loc: fingerprint(loc, content_hash), locations))
