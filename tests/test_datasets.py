"""Dataset layouts, lazy loading, skip_bad and the factory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.data.datasets import (
    BTAD,
    MPDD,
    FolderDataset,
    ImageDataset,
    MVTecAD,
    MVTecAD2,
    SkippedImageWarning,
    VisA,
    build_dataset,
    list_categories,
)
from anomalens.data.sample import Sample
from anomalens.errors import DatasetError, ImageLoadError

H, W = 12, 16


def _img(path: Path, value: int = 100, size: tuple[int, int] = (H, W)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)
    return path


def _mask(path: Path, rows: slice = slice(2, 5), size: tuple[int, int] = (H, W), v=255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(size, np.uint8)
    m[rows, 1:4] = v
    Image.fromarray(m).save(path)
    return path


def _mvtec(root: Path, cat: str = "bottle") -> Path:
    c = root / cat
    for i in range(3):
        _img(c / "train" / "good" / f"{i:03d}.png", 10 + i)
    _img(c / "test" / "good" / "000.png", 50)
    for defect, n in (("crack", 2), ("scratch", 1)):
        for i in range(n):
            _img(c / "test" / defect / f"{i:03d}.png", 200)
            _mask(c / "ground_truth" / defect / f"{i:03d}_mask.png", slice(i, i + 3))
    (c / "license.txt").write_text("not an image")
    (c / "test" / "crack" / "._000.png").write_bytes(b"AppleDouble junk")
    return root


# ----------------------------------------------------------------------------- MVTec AD


def test_mvtec_train(tmp_path: Path) -> None:
    ds = MVTecAD(_mvtec(tmp_path), "bottle", "train")
    assert len(ds) == 3
    assert ds.labels == [0, 0, 0]
    assert [Path(p).name for p in ds.paths] == ["000.png", "001.png", "002.png"]
    s = ds[1]
    assert isinstance(s, Sample)
    assert s.image.shape == (H, W, 3)
    assert s.image[0, 0, 0] == 11
    assert s.mask.shape == (H, W)
    assert s.mask.sum() == 0
    assert (s.label, s.category, s.defect_type) == (0, "bottle", "good")


def test_mvtec_test_labels_types_masks(tmp_path: Path) -> None:
    ds = MVTecAD(_mvtec(tmp_path), "bottle", "test")
    assert len(ds) == 4  # hidden ._ file ignored
    assert ds.labels == [1, 1, 0, 1]  # crack, crack, good, scratch (sorted folders)
    assert ds.defect_types == ["crack", "crack", "good", "scratch"]
    assert ds.has_masks
    samples = list(ds)
    assert [s.defect_type for s in samples] == ds.defect_types
    crack1 = samples[1]
    assert crack1.path.endswith("crack/001.png")
    assert crack1.mask.dtype == np.uint8
    assert set(np.unique(crack1.mask)) == {0, 1}
    assert crack1.mask[1:4, 1:4].all()
    assert crack1.mask.sum() == 9
    good = samples[2]
    assert good.mask.shape == (H, W)
    assert good.mask.sum() == 0


def test_mvtec_load_all_and_slicing(tmp_path: Path) -> None:
    ds = MVTecAD(_mvtec(tmp_path), "bottle", "test")
    all_samples = ds.load_all(progress=False)
    assert [s.path for s in all_samples] == ds.paths
    sub = ds[1:3]
    assert isinstance(sub, MVTecAD)
    assert len(sub) == 2
    assert sub.paths == ds.paths[1:3]
    assert ds[-1].defect_type == "scratch"


def test_load_all_progress_bar_names_dataset(tmp_path: Path, capsys) -> None:
    MVTecAD(_mvtec(tmp_path), "bottle", "train").load_all()
    assert "bottle/train" in capsys.readouterr().err


def test_mvtec_missing_mask_warns_and_disables_pixel_metrics(tmp_path: Path) -> None:
    root = _mvtec(tmp_path)
    (root / "bottle" / "ground_truth" / "scratch" / "000_mask.png").unlink()
    with pytest.warns(UserWarning, match="scratch/000.png"):
        ds = MVTecAD(root, "bottle", "test")
    assert not ds.has_masks
    assert ds[3].mask.sum() == 0
    assert ds[3].label == 1


def test_mpdd_same_layout(tmp_path: Path) -> None:
    ds = MPDD(_mvtec(tmp_path, "tubes"), "tubes", "test")
    assert len(ds) == 4
    assert ds.name == "MPDD"
    assert ds[0].category == "tubes"


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (lambda r: None, "nocat"),  # category folder missing
        (lambda r: (r / "nocat" / "train" / "good").mkdir(parents=True), "good"),  # empty
        (lambda r: (r / "nocat").mkdir(), "train"),  # split folder missing
    ],
)
def test_mvtec_layout_errors(tmp_path: Path, setup, fragment: str) -> None:
    setup(tmp_path)
    with pytest.raises(DatasetError) as exc:
        MVTecAD(tmp_path, "nocat", "train")
    assert fragment in str(exc.value)
    assert "expected" in str(exc.value)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does_not_exist"):
        MVTecAD(tmp_path / "does_not_exist", "bottle")


def test_empty_test_folder(tmp_path: Path) -> None:
    (tmp_path / "c" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        MVTecAD(tmp_path, "c", "test")


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="validation"):
        MVTecAD(_mvtec(tmp_path), "bottle", "validation")


def test_extensions_case_insensitive_and_sorted(tmp_path: Path) -> None:
    folder = tmp_path / "c" / "train" / "good"
    for name in ("b.JPG", "a.jpeg", "c.Tif", "d.bmp", "e.tiff", "f.PNG"):
        _img(folder / name)
    (folder / "notes.txt").write_text("x")
    (folder / "sub.png").mkdir()
    ds = MVTecAD(tmp_path, "c")
    assert [Path(p).name for p in ds.paths] == [
        "a.jpeg",
        "b.JPG",
        "c.Tif",
        "d.bmp",
        "e.tiff",
        "f.PNG",
    ]
    assert all(s.image.shape == (H, W, 3) for s in ds)


# ----------------------------------------------------------------------------- bad files


def _with_bad_files(tmp_path: Path) -> Path:
    root = _mvtec(tmp_path)
    (root / "bottle" / "test" / "crack" / "000.png").write_bytes(b"not a png at all")
    _mask(root / "bottle" / "ground_truth" / "scratch" / "000_mask.png", size=(H + 2, W))
    return root


def test_bad_image_raises_by_default(tmp_path: Path) -> None:
    ds = MVTecAD(_with_bad_files(tmp_path), "bottle", "test")
    with pytest.raises(ImageLoadError, match=r"crack/000\.png"):
        list(ds)
    with pytest.raises(ImageLoadError, match=r"crack/000\.png"):
        ds.load_all(progress=False)


def test_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    ds = MVTecAD(_with_bad_files(tmp_path), "bottle", "test")
    with pytest.raises(ImageLoadError) as exc:
        ds[3]
    msg = str(exc.value)
    assert "000_mask.png" in msg
    assert "scratch/000.png" in msg
    assert f"{H + 2}x{W}" in msg
    assert f"{H}x{W}" in msg


def test_skip_bad_warns_and_keeps_the_rest(tmp_path: Path) -> None:
    ds = MVTecAD(_with_bad_files(tmp_path), "bottle", "test", skip_bad=True)
    with pytest.warns(SkippedImageWarning) as record:
        samples = ds.load_all(progress=False)
    assert [s.defect_type for s in samples] == ["crack", "good"]
    messages = " | ".join(str(w.message) for w in record)
    assert "crack/000.png" in messages
    assert "not an image" in messages
    assert "scratch/000.png" in messages
    assert "differs" in messages
    assert len(ds.skipped) == 2
    with pytest.raises(ImageLoadError):  # explicit indexing still raises
        ds[0]


# ----------------------------------------------------------------------------- BTAD


def _btad(root: Path) -> Path:
    c = root / "01"
    _img(c / "train" / "ok" / "0000.bmp")
    _img(c / "train" / "ok" / "0001.bmp")
    _img(c / "test" / "ok" / "0000.bmp")
    _img(c / "test" / "ko" / "0000.bmp")
    _img(c / "test" / "ko" / "0001.bmp")
    _mask(c / "ground_truth" / "ko" / "0000.png", slice(0, 1))
    _mask(c / "ground_truth" / "ko" / "0001.bmp", slice(0, 2))
    return root


def test_btad(tmp_path: Path) -> None:
    root = _btad(tmp_path)
    assert len(BTAD(root, "01", "train")) == 2
    ds = BTAD(root, "01", "test")
    assert ds.labels == [0, 1, 1]
    assert ds.defect_types == ["good", "ko", "ko"]
    assert ds.has_masks
    masks = [s.mask.sum() for s in ds]
    assert masks == [0, 3, 6]  # png and bmp masks both found, each with its own image


# ----------------------------------------------------------------------------- VisA


def _visa(root: Path, write_csv: bool = True) -> Path:
    d = root / "candle" / "Data"
    rows = ["object,split,label,image,mask"]
    for i in range(3):
        rel = f"candle/Data/Images/Normal/{i:04d}.JPG"
        _img(root / rel)
        rows.append(f"candle,{'train' if i < 2 else 'test'},normal,{rel},")
    for i in range(2):
        rel = f"candle/Data/Images/Anomaly/{i:03d}.JPG"
        mrel = f"candle/Data/Masks/Anomaly/{i:03d}.png"
        _img(root / rel)
        _mask(root / mrel, slice(0, i + 1), v=3)  # class id, not 255
        rows.append(f"candle,test,anomaly,{rel},{mrel}")
    _img(root / "pcb1" / "Data" / "Images" / "Normal" / "0000.JPG")
    rows.append("pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,")
    assert d.is_dir()
    if write_csv:
        (root / "split_csv").mkdir()
        (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_split_csv(tmp_path: Path) -> None:
    root = _visa(tmp_path)
    train = VisA(root, "candle", "train")
    assert len(train) == 2
    assert train.labels == [0, 0]
    test = VisA(root, "candle", "test")
    assert sorted(test.labels) == [0, 1, 1]
    by_name = {Path(s.path).name: s for s in test}
    assert by_name["000.JPG"].mask.sum() == 3
    assert by_name["001.JPG"].mask.sum() == 6
    assert by_name["000.JPG"].mask.max() == 1
    assert by_name["0002.JPG"].mask.sum() == 0
    assert by_name["0002.JPG"].label == 0
    assert test.has_masks


def test_visa_custom_csv_path(tmp_path: Path) -> None:
    root = _visa(tmp_path)
    moved = tmp_path / "my_split.csv"
    (root / "split_csv" / "1cls.csv").rename(moved)
    assert len(VisA(root, "candle", "test", split_csv=moved)) == 3


def test_visa_without_csv(tmp_path: Path) -> None:
    root = _visa(tmp_path, write_csv=False)
    with pytest.raises(DatasetError) as exc:
        VisA(root, "candle", "train")
    assert str(root / "split_csv" / "1cls.csv") in str(exc.value)


# ----------------------------------------------------------------------------- MVTec AD 2


def test_mvtec_ad2(tmp_path: Path) -> None:
    c = tmp_path / "can"
    _img(c / "train" / "good" / "000_regular.png")
    _img(c / "validation" / "good" / "000_regular.png")
    _img(c / "validation" / "good" / "001_regular.png")
    _img(c / "test_public" / "good" / "000_regular.png")
    _img(c / "test_public" / "bad" / "000_regular.png")
    _mask(c / "test_public" / "ground_truth" / "bad" / "000_regular_mask.png")
    assert len(MVTecAD2(tmp_path, "can", "train")) == 1
    assert len(MVTecAD2(tmp_path, "can", "validation")) == 2
    ds = MVTecAD2(tmp_path, "can", "test")
    assert ds.labels == [0, 1]
    assert ds.defect_types == ["good", "bad"]
    assert ds[1].mask.sum() == 9
    assert ds.has_masks


# ----------------------------------------------------------------------------- folder


def test_folder_dataset(tmp_path: Path) -> None:
    for i in range(2):
        _img(tmp_path / "good" / f"g{i}.png")
    _img(tmp_path / "bad" / "b0.jpg")
    _img(tmp_path / "bad" / "b1.png")
    _mask(tmp_path / "masks" / "b0_mask.png")
    assert FolderDataset(tmp_path, "train").labels == [0, 0]
    ds = FolderDataset(tmp_path, "test")
    assert ds.labels == [0, 0, 1, 1]
    assert ds.category == tmp_path.name
    assert not ds.has_masks  # b1 has no mask
    assert ds[2].mask.sum() == 9
    assert ds[3].mask.sum() == 0
    _mask(tmp_path / "masks" / "b1.bmp")
    assert FolderDataset(tmp_path, "test").has_masks


def test_folder_dataset_requires_bad_for_test(tmp_path: Path) -> None:
    _img(tmp_path / "good" / "g.png")
    with pytest.raises(DatasetError, match="bad"):
        FolderDataset(tmp_path, "test")


# ----------------------------------------------------------------------------- factory


def test_list_categories(tmp_path: Path) -> None:
    _mvtec(tmp_path / "mv", "bottle")
    _mvtec(tmp_path / "mv", "cable")
    (tmp_path / "mv" / "readme_folder").mkdir()
    assert list_categories("mvtec", tmp_path / "mv") == ["bottle", "cable"]
    assert list_categories("btad", _btad(tmp_path / "bt")) == ["01"]
    assert list_categories("VisA", _visa(tmp_path / "vi")) == ["candle", "pcb1"]
    with pytest.raises(DatasetError, match="no mvtec categories"):
        list_categories("mvtec", tmp_path / "mv" / "readme_folder")


def test_build_dataset(tmp_path: Path) -> None:
    root = _mvtec(tmp_path)
    ds = build_dataset("mvtec", root, "bottle", "test", skip_bad=True)
    assert isinstance(ds, MVTecAD)
    assert ds.skip_bad
    assert len(ds) == 4
    assert isinstance(build_dataset("MPDD", root, "bottle"), MPDD)
    assert isinstance(build_dataset("visa", _visa(tmp_path / "v"), "candle", "test"), VisA)
    with pytest.raises(ValueError, match="unknown dataset 'kolektor'") as exc:
        build_dataset("kolektor", root, "bottle")
    for name in ("mvtec", "mpdd", "btad", "visa", "mvtec_ad2", "folder"):
        assert name in str(exc.value)


def test_build_folder_dataset(tmp_path: Path) -> None:
    _img(tmp_path / "parts" / "good" / "g.png")
    ds = build_dataset("folder", tmp_path, "parts", "train")
    assert isinstance(ds, FolderDataset)
    assert ds.category == "parts"
    assert len(ds) == 1
    assert list_categories("folder", tmp_path) == ["parts"]
    assert list_categories("folder", tmp_path / "parts") == ["parts"]


def test_base_class_with_custom_entries(tmp_path: Path) -> None:
    from anomalens.data.datasets import Entry

    p = _img(tmp_path / "x.png", 7)
    ds = ImageDataset([Entry(p, None, 1, "dent")], "custom", "test")
    s = ds[0]
    assert (s.label, s.defect_type, s.category, int(s.image[0, 0, 0])) == (1, "dent", "custom", 7)
    assert not ds.has_masks
