"""anomalens.atomic: files and folders are always the old or the new complete version."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from anomalens import atomic
from anomalens.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
    check_output_path,
    staged_folder,
)
from anomalens.errors import WriteError


def _enospc(path: Path) -> None:
    Path(path).write_bytes(b"half")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_write_round_trips_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": [1, 2.5]})
    assert json.loads(target.read_text()) == {"x": [1, 2.5]}
    atomic_write_text(target, "héllo")
    assert target.read_bytes() == "héllo".encode()
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_failed_write_keeps_the_old_file_and_names_it(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(WriteError) as info:
        atomic_write_with(target, _enospc)
    assert str(info.value) == (
        f"{target}: cannot write (No space left on device); the previous version is kept"
    )
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_library_disk_errors_are_named_too(tmp_path: Path) -> None:
    class SafetensorError(Exception):
        pass

    def write(path: Path) -> None:
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    with pytest.raises(WriteError, match=r"model\.safetensors: cannot write .*No space left"):
        atomic_write_with(tmp_path / "model.safetensors", write)


def test_surrogate_escapes_keep_the_file_name_bytes(tmp_path: Path) -> None:
    name = os.fsdecode(b"bad\xff.png")
    atomic_write_text(tmp_path / "x.csv", name, errors="surrogateescape")
    assert (tmp_path / "x.csv").read_bytes() == b"bad\xff.png"


def _fill(folder: Path, text: str) -> None:
    (folder / "a.txt").write_text(text)
    (folder / "b.txt").write_text(text)


def test_staged_folder_swaps_in_a_complete_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with staged_folder(target) as staging:
        assert staging.parent == tmp_path
        assert staging.name.startswith(".model.staging-")
        _fill(staging, "v1")
        assert not target.exists()
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "v1", "b.txt": "v1"}
    with staged_folder(target) as staging:
        _fill(staging, "v2")
        assert (target / "a.txt").read_text() == "v1"  # old one until the swap
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "v2", "b.txt": "v2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_staged_folder_error_keeps_the_old_folder(tmp_path: Path, error) -> None:
    target = tmp_path / "model"
    target.mkdir()
    _fill(target, "old")

    def interrupted() -> None:
        with staged_folder(target) as staging:
            (staging / "a.txt").write_text("new")
            raise error

    with pytest.raises(type(error)):
        interrupted()
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "old", "b.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_verify_failure_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.mkdir()
    (target / "a.txt").write_text("old")

    def verify(folder: Path) -> None:
        raise ValueError(f"{folder}: incomplete")

    with pytest.raises(ValueError, match="incomplete"), staged_folder(target, verify=verify) as s:
        (s / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "old"


def test_disk_error_in_staging_names_the_file(tmp_path: Path) -> None:
    target = tmp_path / "report"
    target.mkdir()
    (target / "scores.csv").write_text("old")
    with pytest.raises(WriteError) as info, staged_folder(target, what="report folder") as s:
        raise OSError(errno.ENOSPC, "No space left on device", str(s / "overlays" / "x.png"))
    message = str(info.value)
    assert f"{target}/overlays/x.png: cannot write (No space left on device)" in message
    assert f"the previous report folder {target} is kept" in message
    assert (target / "scores.csv").read_text() == "old"


def test_replaceable_refuses_a_foreign_folder_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"x")
    refused = staged_folder(target, replaceable=lambda p: False, what="report folder")
    with pytest.raises(WriteError, match="not empty and not an anomalens report folder"):
        refused.__enter__()
    assert [p.name for p in target.iterdir()] == ["holiday.jpg"]
    # an empty folder is always fine
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_folder(empty, replaceable=lambda p: False) as s:
        (s / "x").write_text("1")
    assert (empty / "x").read_text() == "1"


def test_carry_over_keeps_other_entries(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    (target / "last").mkdir(parents=True)
    (target / "last" / "state.json").write_text("{}")
    (target / "config.json").write_text("old")
    with staged_folder(target, carry_over=True) as s:
        (s / "config.json").write_text("new")
    assert (target / "config.json").read_text() == "new"
    assert (target / "last" / "state.json").read_text() == "{}"


def test_keep_on_error_saves_the_partial_run(tmp_path: Path) -> None:
    target, partial = tmp_path / "out", tmp_path / "out.partial"
    target.mkdir()
    (target / "results.json").write_text("complete")

    def second_category_fails() -> None:
        with staged_folder(target, keep_on_error=partial) as s:
            (s / "results.json").write_text("first category")
            raise RuntimeError("second category failed")

    with pytest.raises(RuntimeError):
        second_category_fails()
    assert (target / "results.json").read_text() == "complete"
    assert (partial / "results.json").read_text() == "first category"
    with staged_folder(target, keep_on_error=partial) as s:
        (s / "results.json").write_text("all")
    assert (target / "results.json").read_text() == "all"
    assert not partial.exists()


def test_stale_staging_of_a_killed_run_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".m.staging-deadbeef"
    stale.mkdir()
    (stale / "x").write_text("1")
    other = tmp_path / ".other.staging-deadbeef"
    other.mkdir()
    with staged_folder(tmp_path / "m") as s:
        (s / "y").write_text("2")
    assert not stale.exists()
    assert other.exists()  # another target's


def test_exchange_fallback_still_swaps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "_renameat2_exchange", lambda a, b: False)
    target = tmp_path / "m"
    target.mkdir()
    (target / "a").write_text("old")
    with staged_folder(target) as s:
        (s / "a").write_text("new")
    assert (target / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("bad", ["", "  ", ".", "..", "~"])
def test_check_output_path_refuses_dangerous_paths(bad: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WriteError):
        check_output_path(bad)


def test_check_output_path_refuses_cwd_and_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WriteError, match="refusing to write into this folder"):
        check_output_path(str(tmp_path))
    (tmp_path / "f").write_text("x")
    with pytest.raises(WriteError, match="exists and is not a folder"):
        check_output_path(tmp_path / "f")
    assert check_output_path("new/sub") == Path("new/sub")
