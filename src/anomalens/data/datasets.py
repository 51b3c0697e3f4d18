"""Anomaly detection datasets as lazily-loading sequences of :class:`Sample`.

The file list is found when a dataset is built; images are read only when a sample is requested.
``ds[i]`` always raises :class:`ImageLoadError` for an unusable image; iterating and
:meth:`ImageDataset.load_all` skip it with a :class:`SkippedImageWarning` when ``skip_bad=True``.

Defective images without a ground-truth mask get an all-zero mask; ``has_masks`` is then False
so evaluation can skip pixel-level metrics.
"""

from __future__ import annotations

import copy
import csv
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
from tqdm import tqdm

from anomalens.data.io import load_image, load_mask
from anomalens.data.sample import Sample
from anomalens.errors import DatasetError, ImageLoadError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Image formats that are not read; such files are ignored with an :class:`IgnoredFileWarning`.
UNSUPPORTED_IMAGE_EXTENSIONS = (".webp", ".gif", ".heic", ".heif", ".avif", ".jp2", ".jxl")

PathLike = str | os.PathLike


class SkippedImageWarning(UserWarning):
    """An unusable image was skipped because the dataset was built with ``skip_bad=True``."""


class IgnoredFileWarning(UserWarning):
    """Folder entries that look like images but are not read (FIFOs, dangling links, folders
    named ``x.png``, unsupported formats such as ``.webp`` and ``.gif``)."""


@dataclass(frozen=True)
class Entry:
    """One dataset item before loading."""

    image: Path
    mask: Path | None
    label: int
    defect_type: str


# ----------------------------------------------------------------------------- file helpers


def is_image_file(path: Path) -> bool:
    """True for visible files with a supported image extension (case-insensitive)."""
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def file_kind(path: Path) -> str:
    """What a path is, for messages: ``a FIFO``, ``a folder``, ``a dangling symbolic link`` ..."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a dangling symbolic link" if path.is_symlink() else "missing"
    except OSError as e:
        return f"not accessible ({e.strerror or e})"
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def ignored_entries(folder: Path) -> list[tuple[Path, str]]:
    """``(path, reason)`` of the visible entries of ``folder`` that look like images but are
    not read: FIFOs, sockets, dangling links and folders with an image extension, and files of
    :data:`UNSUPPORTED_IMAGE_EXTENSIONS`."""
    out: list[tuple[Path, str]] = []
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return out
    for p in entries:
        ext = p.suffix.lower()
        if p.name.startswith(".") or (
            ext not in IMAGE_EXTENSIONS and ext not in UNSUPPORTED_IMAGE_EXTENSIONS
        ):
            continue
        if ext in UNSUPPORTED_IMAGE_EXTENSIONS:
            out.append((p, f"unsupported format {ext}; convert it to PNG"))
        elif not p.is_file():
            out.append((p, f"{file_kind(p)}, not an image file"))
    return out


def warn_ignored(folders: Sequence[Path]) -> list[tuple[Path, str]]:
    """:func:`ignored_entries` of each folder, with one :class:`IgnoredFileWarning` per folder
    naming the first few; returns all of them."""
    found: list[tuple[Path, str]] = []
    for folder in dict.fromkeys(folders):
        entries = ignored_entries(folder)
        if entries:
            shown = "; ".join(f"{p.name} ({why})" for p, why in entries[:3])
            more = f"; and {len(entries) - 3} more" if len(entries) > 3 else ""
            n = len(entries)
            what = (
                "1 entry that looks like an image"
                if n == 1
                else f"{n} entries that look like images"
            )
            warnings.warn(
                f"{folder}: ignored {what}: {shown}{more}",
                IgnoredFileWarning,
                stacklevel=2,
            )
            found += entries
    return found


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def _require_dir(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found (expected {what})")
    return folder


def _require_images(folder: Path, what: str) -> list[Path]:
    """Sorted images of a folder that must exist and hold at least one image."""
    images = list_images(_require_dir(folder, what))
    if not images:
        exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise DatasetError(f"{folder}: no images found (expected {what}; extensions {exts})")
    return images


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_mask(folder: Path, stem: str, suffixes: Sequence[str] = ("_mask", "")) -> Path | None:
    """First image file in ``folder`` named ``<stem><suffix>.<any image ext>``, or None."""
    if not folder.is_dir():
        return None
    for suffix in suffixes:
        for ext in IMAGE_EXTENSIONS:
            for candidate in (ext, ext.upper()):
                path = folder / f"{stem}{suffix}{candidate}"
                if path.is_file():
                    return path
    return None


def _good(images: list[Path]) -> list[Entry]:
    return [Entry(p, None, 0, "good") for p in images]


def _bad(images: list[Path], defect: str, mask_dir: Path, suffixes: Sequence[str]) -> list[Entry]:
    """Defective entries with masks looked up in ``mask_dir``; warn about missing masks."""
    entries = []
    for p in images:
        mask = find_mask(mask_dir, p.stem, suffixes)
        if mask is None:
            warnings.warn(
                f"no ground-truth mask for {p} in {mask_dir}; pixel metrics will be unavailable",
                stacklevel=3,
            )
        entries.append(Entry(p, mask, 1, defect))
    return entries


# ----------------------------------------------------------------------------- base class


class ImageDataset(Sequence[Sample]):
    """A lazily-loading list of samples built from :class:`Entry` items."""

    name = "dataset"

    def __init__(
        self, entries: Sequence[Entry], category: str, split: str, skip_bad: bool = False
    ) -> None:
        self.entries = list(entries)
        self.category = category
        self.split = split
        self.skip_bad = skip_bad
        #: ``(path, reason)`` of every sample skipped so far (only with ``skip_bad``).
        self.skipped: list[tuple[str, str]] = []
        #: ``(path, reason)`` of entries beside the images that look like images but are not
        #: read (FIFOs, folders named ``x.png``, ``.webp`` ...); warned about once.
        self.ignored: list[tuple[str, str]] = [
            (str(p), why) for p, why in warn_ignored([e.image.parent for e in self.entries])
        ]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(category={self.category!r}, split={self.split!r}, "
            f"n={len(self)})"
        )

    def __len__(self) -> int:
        return len(self.entries)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> ImageDataset: ...

    def __getitem__(self, index: int | slice) -> Sample | ImageDataset:
        """``ds[i]`` loads one sample (raises ImageLoadError); ``ds[a:b]`` returns a dataset."""
        if isinstance(index, slice):
            sub = copy.copy(self)
            sub.entries = self.entries[index]
            sub.skipped = []
            return sub
        return self.load_sample(self.entries[index])

    def __iter__(self) -> Iterator[Sample]:
        for entry in self.entries:
            try:
                yield self.load_sample(entry)
            except ImageLoadError as e:
                if not self.skip_bad:
                    raise
                self.skipped.append((str(entry.image), str(e)))
                warnings.warn(f"skipping {entry.image}: {e}", SkippedImageWarning, stacklevel=2)

    def load_sample(self, entry: Entry) -> Sample:
        """Read the image and mask of one entry."""
        image = load_image(entry.image)
        shape = image.shape[:2]
        if entry.mask is None:
            mask = np.zeros(shape, dtype=np.uint8)
        else:
            try:
                mask = load_mask(entry.mask, shape)
            except ImageLoadError as e:
                raise ImageLoadError(f"{e} (mask of image {entry.image})") from e
        return Sample(
            image=image,
            mask=mask,
            label=entry.label,
            category=self.category,
            defect_type=entry.defect_type,
            path=str(entry.image),
        )

    def load_all(self, progress: bool = True) -> list[Sample]:
        """Load every sample (skipping bad ones if ``skip_bad``) with a tqdm progress bar."""
        desc = f"{self.name} {self.category}/{self.split}"
        return list(tqdm(self, total=len(self), desc=desc, unit="img", disable=not progress))

    @property
    def paths(self) -> list[str]:
        """Image paths, in dataset order."""
        return [str(e.image) for e in self.entries]

    @property
    def labels(self) -> list[int]:
        """Labels (0 good, 1 defective), in dataset order."""
        return [e.label for e in self.entries]

    @property
    def defect_types(self) -> list[str]:
        """Defect type names ("good" for good images), in dataset order."""
        return [e.defect_type for e in self.entries]

    @property
    def has_masks(self) -> bool:
        """True when every defective image has a ground-truth mask file."""
        return all(e.mask is not None for e in self.entries if e.label == 1)


def _check_split(split: str, valid: Sequence[str], dataset: str) -> None:
    if split not in valid:
        raise ValueError(f"{dataset}: unknown split {split!r}; valid splits: {', '.join(valid)}")


def _category_dir(root: PathLike, category: str, what: str) -> Path:
    root = _require_dir(Path(root), f"the dataset root folder containing {what}")
    return _require_dir(root / category, f"category folder {category!r} inside {root}")


# ----------------------------------------------------------------------------- layouts


class MVTecAD(ImageDataset):
    """MVTec AD layout: ``<category>/train/good``, ``<category>/test/<defect>``,
    ``<category>/ground_truth/<defect>/<stem>_mask.png``."""

    name = "MVTec AD"

    def __init__(
        self, root: PathLike, category: str, split: str = "train", skip_bad: bool = False
    ) -> None:
        _check_split(split, ("train", "test"), type(self).__name__)
        cat = _category_dir(root, category, "train/ and test/ folders per category")
        if split == "train":
            entries = _good(_require_images(cat / "train" / "good", "good training images"))
        else:
            test = _require_dir(cat / "test", "test/<defect type>/ image folders")
            entries = []
            for sub in _subdirs(test):
                images = list_images(sub)
                if sub.name == "good":
                    entries += _good(images)
                else:
                    entries += _bad(images, sub.name, cat / "ground_truth" / sub.name, ("_mask",))
            if not entries:
                raise DatasetError(f"{test}: no images found (expected test/<defect type>/*.png)")
        super().__init__(entries, category, split, skip_bad)


class MPDD(MVTecAD):
    """MPDD (metal parts), same folder layout as MVTec AD."""

    name = "MPDD"


class BTAD(ImageDataset):
    """BTAD layout: ``NN/train/ok``, ``NN/test/{ok,ko}`` and
    ``NN/ground_truth/ko/<stem>.<png|bmp>`` (masks share the image stem)."""

    name = "BTAD"

    def __init__(
        self, root: PathLike, category: str, split: str = "train", skip_bad: bool = False
    ) -> None:
        _check_split(split, ("train", "test"), "BTAD")
        cat = _category_dir(root, category, "numbered product folders (01, 02, 03)")
        if split == "train":
            entries = _good(_require_images(cat / "train" / "ok", "good (ok) training images"))
        else:
            test = _require_dir(cat / "test", "test/ok and test/ko image folders")
            ok = list_images(test / "ok") if (test / "ok").is_dir() else []
            ko = list_images(test / "ko") if (test / "ko").is_dir() else []
            if not ok and not ko:
                raise DatasetError(f"{test}: no images found (expected test/ok and test/ko)")
            entries = _good(ok) + _bad(ko, "ko", cat / "ground_truth" / "ko", ("", "_mask"))
        super().__init__(entries, category, split, skip_bad)


class VisA(ImageDataset):
    """VisA with its official split csv (columns ``object,split,label,image,mask``; paths
    relative to ``root``). By default the csv is ``root/split_csv/1cls.csv``."""

    name = "VisA"

    def __init__(
        self,
        root: PathLike,
        category: str,
        split: str = "train",
        split_csv: PathLike | None = None,
        skip_bad: bool = False,
    ) -> None:
        _check_split(split, ("train", "test"), "VisA")
        root = Path(root)
        _category_dir(root, category, "<category>/Data/Images folders")
        csv_path = Path(split_csv) if split_csv is not None else root / "split_csv" / "1cls.csv"
        if not csv_path.is_file():
            raise DatasetError(
                f"{csv_path}: VisA split csv not found. Put the official split file "
                f"(split_csv/1cls.csv from the VisA repository) there or pass split_csv=..."
            )
        entries = _visa_entries(root, csv_path, category, split)
        if not entries:
            raise DatasetError(f"{csv_path}: no rows for object {category!r}, split {split!r}")
        super().__init__(entries, category, split, skip_bad)


def _visa_entries(root: Path, csv_path: Path, category: str, split: str) -> list[Entry]:
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{csv_path}: missing columns {sorted(missing)} in the split csv")
        rows = [r for r in reader if r["object"] == category and r["split"] == split]
    entries = []
    for r in sorted(rows, key=lambda r: r["image"]):
        label = r["label"].strip().lower()
        if label not in ("normal", "anomaly"):
            raise DatasetError(f"{csv_path}: label must be normal/anomaly, got {r['label']!r}")
        if label == "normal":
            entries.append(Entry(root / r["image"], None, 0, "good"))
        else:
            mask = root / r["mask"] if r["mask"].strip() else None
            entries.append(Entry(root / r["image"], mask, 1, "anomaly"))
    return entries


class MVTecAD2(ImageDataset):
    """MVTec AD 2 layout: ``train/good``, ``validation/good``, ``test_public/{good,bad}``,
    ``test_public/ground_truth/bad/<stem>_mask.png``. Split ``"test"`` is ``test_public``."""

    name = "MVTec AD 2"

    def __init__(
        self, root: PathLike, category: str, split: str = "train", skip_bad: bool = False
    ) -> None:
        _check_split(split, ("train", "validation", "test"), "MVTecAD2")
        cat = _category_dir(root, category, "train/, validation/ and test_public/ folders")
        if not (cat / "test_public").is_dir() and not (cat / "validation").is_dir():
            hint = " (it has test/: MVTec AD layout, use --dataset mvtec)" * (cat / "test").is_dir()
            raise DatasetError(
                f"{cat}: not an MVTec AD 2 category (no test_public/ or validation/ folder){hint}"
            )
        if split in ("train", "validation"):
            entries = _good(_require_images(cat / split / "good", f"good {split} images"))
        else:
            test = _require_dir(cat / "test_public", "test_public/good and test_public/bad")
            good = list_images(test / "good") if (test / "good").is_dir() else []
            bad = list_images(test / "bad") if (test / "bad").is_dir() else []
            if not good and not bad:
                raise DatasetError(f"{test}: no images found (expected good/ and bad/ folders)")
            mask_dir = test / "ground_truth" / "bad"
            entries = _good(good) + _bad(bad, "bad", mask_dir, ("_mask",))
        super().__init__(entries, category, split, skip_bad)


class FolderDataset(ImageDataset):
    """Plain folder: ``good/``, ``bad/`` and optional ``masks/`` (``<stem>.<ext>`` or
    ``<stem>_mask.<ext>``). ``train`` is all of ``good/``; ``test`` is good + bad.

    Bad images without a mask get an all-zero mask and make ``has_masks`` False.
    """

    name = "folder"

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        category: str | None = None,
        skip_bad: bool = False,
    ) -> None:
        _check_split(split, ("train", "test"), "FolderDataset")
        root = _require_dir(Path(root), "a folder with good/ and bad/ subfolders")
        good = _require_images(root / "good", "good images in good/")
        entries = _good(good)
        if split == "test":
            bad = _require_images(root / "bad", "defective images in bad/")
            masks = root / "masks"
            entries += [Entry(p, find_mask(masks, p.stem, ("", "_mask")), 1, "bad") for p in bad]
        super().__init__(entries, category or root.name, split, skip_bad)


# ----------------------------------------------------------------------------- discovery

DATASETS: dict[str, type[ImageDataset]] = {
    "mvtec": MVTecAD,
    "mpdd": MPDD,
    "btad": BTAD,
    "visa": VisA,
    "mvtec_ad2": MVTecAD2,
    "folder": FolderDataset,
}
#: Dataset layout names accepted by :func:`build_dataset` (and the CLI's ``--dataset``).
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def _normalize_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def list_categories(dataset_name: str, root: PathLike) -> list[str]:
    """Category names found under ``root`` for a dataset layout, sorted."""
    key = _normalize_name(dataset_name)
    root = _require_dir(Path(root), f"the {dataset_name} dataset root folder")
    if key == "folder":
        if (root / "good").is_dir():
            return [root.name]
        cats = [d.name for d in _subdirs(root) if (d / "good").is_dir()]
        expected = "good/ in the root or in its subfolders"
    elif key == "visa":
        cats = [d.name for d in _subdirs(root) if (d / "Data").is_dir()]
        expected = "<category>/Data folders"
    else:
        marker = "test_public" if key == "mvtec_ad2" else "test"
        cats = [d.name for d in _subdirs(root) if (d / "train").is_dir() or (d / marker).is_dir()]
        expected = f"<category>/train or <category>/{marker} folders"
    if not cats:
        raise DatasetError(f"{root}: no {dataset_name} categories found (expected {expected})")
    return cats


def resolve_one_category(dataset: str, root: str | os.PathLike, category: str | None) -> str:
    """``category``, or the only category under ``root``; DatasetError naming the choices
    when there are several."""
    if category:
        return category
    found = list_categories(dataset, root)
    if len(found) == 1:
        return found[0]
    raise DatasetError(
        f"{root}: holds {len(found)} categories ({', '.join(found)}); choose one with --category"
    )


def resolve_categories(
    dataset_name: str, root: PathLike, categories: Sequence[str] | None
) -> list[str]:
    """``categories`` checked against the ones found under ``root`` (all of them when None).

    Duplicates are dropped (first occurrence kept). For ``folder`` the given names are kept
    as they are (they only name the folder). Raises DatasetError listing the available
    categories when one is missing.
    """
    found = list_categories(dataset_name, root)
    if not categories:
        return found
    if _normalize_name(dataset_name) == "folder":
        return list(categories)
    missing = [c for c in categories if c not in found]
    if missing:
        raise DatasetError(
            f"{root}: category {', '.join(repr(c) for c in missing)} not found; "
            f"available: {', '.join(found)}"
        )
    return list(dict.fromkeys(categories))


def build_dataset(
    name: str,
    root: PathLike,
    category: str | None,
    split: str = "train",
    skip_bad: bool = False,
    **kw,
) -> ImageDataset:
    """Build a dataset by name: ``mvtec, mpdd, btad, visa, mvtec_ad2, folder``.

    For ``folder``, ``category`` selects ``root/<category>`` when that folder holds ``good/``;
    otherwise ``root`` itself is used and ``category`` only names it.
    """
    key = _normalize_name(name)
    if key == "folder":
        sub = Path(root) / category if category else None
        if sub is not None and (sub / "good").is_dir():
            return FolderDataset(sub, split, category=category, skip_bad=skip_bad, **kw)
        return FolderDataset(root, split, category=category, skip_bad=skip_bad, **kw)
    if not category:
        raise ValueError(f"{name}: a category is required (see list_categories)")
    return DATASETS[key](root, category, split, skip_bad=skip_bad, **kw)
