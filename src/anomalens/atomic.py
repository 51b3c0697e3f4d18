"""Atomic writes: a file or a folder a user cares about is always the old one or the new one.

One helper for every write that replaces a model, a checkpoint, a result or a report:

* :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json`: write a
  temporary file beside the target (``.<name>.tmp-<random>``), flush and ``fsync`` it, then
  ``os.replace`` it onto the target (and ``fsync`` the folder). :func:`atomic_write_with` does
  the same for writers that take a path (``safetensors.save_file``, ``Figure.savefig``).
* :func:`staged_folder`: a context manager that yields a fresh staging folder beside the
  target (``.<name>.staging-<random>``); the caller writes into it, the optional ``verify``
  callback checks it, and on success it is swapped in for the target with one atomic
  ``renameat2(RENAME_EXCHANGE)`` (Linux; elsewhere two renames). On any error, Ctrl-C included,
  the staging folder is removed and the target is untouched.

Failures raise :class:`~anomalens.errors.WriteError` naming the file and the reason, e.g.
``runs/x/model.safetensors: cannot write (No space left on device); the previous version is
kept``. A SIGKILL leaves at worst a hidden ``.<name>.tmp-*`` / ``.staging-*`` / ``.old-*``
entry beside the target, never a half-written target; the next successful write removes
stale ones of the same target.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from anomalens.errors import WriteError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_with",
    "check_output_path",
    "staged_folder",
]

_TMP_TAG = ".tmp-"
_STAGING_TAG = ".staging-"
_OLD_TAG = ".old-"


def _hidden_sibling(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}{tag}{secrets.token_hex(4)}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_error(path: Path, exc: BaseException, what: str = "the previous version") -> WriteError:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    err = WriteError(f"{path}: cannot write ({reason or type(exc).__name__}); {what} is kept")
    err.errno = getattr(exc, "errno", None)  # type: ignore[attr-defined]
    err.path, err.reason = path, reason  # type: ignore[attr-defined]
    return err


def _prepare_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(
            f"{path.parent}: cannot create the folder ({exc.strerror or exc})"
        ) from exc
    if path.is_dir() and not path.is_symlink():
        raise WriteError(f"{path}: is a folder, expected a file path")


def atomic_write_with(
    path: str | os.PathLike, write: Callable[[Path], Any], fsync: bool = True
) -> Path:
    """Call ``write(tmp_path)`` on a temporary path beside ``path``, fsync it, then replace
    ``path`` with it in one ``os.replace``. The target is never seen half-written.
    ``fsync=False`` skips the flush to disk (for files inside a :func:`staged_folder`, which
    syncs everything before its swap)."""
    path = Path(path)
    _prepare_parent(path)
    tmp = _hidden_sibling(path, _TMP_TAG)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) or _is_disk_error(exc):
            raise _write_error(path, exc) from exc
        raise
    if fsync:
        _fsync_dir(path.parent)
    return path


def _is_disk_error(exc: BaseException) -> bool:
    """Library errors that wrap an OS write failure (safetensors' SafetensorError ...)."""
    text = str(exc)
    return type(exc).__name__.endswith("Error") and any(
        s in text for s in ("No space left", "Disk quota", "Input/output error", "Read-only")
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + os.replace)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write_with(path, write)


def atomic_write_text(
    path: str | os.PathLike, text: str, encoding: str = "utf-8", errors: str = "strict"
) -> Path:
    """Write ``text`` to ``path`` atomically (``errors``: the codec's, e.g. ``surrogateescape``
    for file names that are not valid UTF-8)."""
    return atomic_write_bytes(path, text.encode(encoding, errors))


def atomic_write_json(
    path: str | os.PathLike, data: Any, indent: int | None = 2, allow_nan: bool = False
) -> Path:
    """Write ``data`` as JSON (a trailing newline) atomically. NaN/inf are refused unless
    ``allow_nan`` (Python's ``NaN`` literals, not standard JSON): convert them first
    (``anomalens.report.jsonable``)."""
    text = json.dumps(data, indent=indent, allow_nan=allow_nan)
    return atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux ``renameat2(RENAME_EXCHANGE)``; False when the
    call is unavailable (other OS, old kernel or libc, file system without support)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(staging: Path, target: Path) -> Path | None:
    """Put ``staging`` at ``target``; return where the old target now is (None if none)."""
    if not target.exists() and not target.is_symlink():
        os.rename(staging, target)
        return None
    if _renameat2_exchange(staging, target):
        return staging  # staging now holds the old folder
    old = _hidden_sibling(target, _OLD_TAG)
    os.rename(target, old)
    os.rename(staging, target)
    return old


def _remove_stale(target: Path) -> None:
    """Remove leftovers (``.<name>.staging-*`` / ``.old-*`` / ``.tmp-*``) of killed runs."""
    prefix = f".{target.name}"
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            rest = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
            if rest.startswith((_STAGING_TAG, _OLD_TAG, _TMP_TAG)):
                _rmtree(entry)


def _rmtree(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def check_output_path(path: str | os.PathLike | None, option: str = "--output") -> Path:
    """Refuse output folder paths that would clobber something: empty, ``.``, ``..``, the
    current folder, the home folder, a file system root, or an existing file."""
    text = "" if path is None else os.fspath(path)
    if not text.strip():
        raise WriteError(f"{option}: empty output path; name a folder to write")
    p = Path(text)
    try:
        resolved = p.expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise WriteError(f"{text}: cannot resolve the output path ({exc})") from exc
    dangerous = {Path.cwd().resolve(), Path.home().resolve(), Path(resolved.anchor)}
    if p.name in ("", ".", "..") or resolved in dangerous:
        raise WriteError(
            f"{text}: refusing to write into this folder ({resolved}); name a new subfolder"
        )
    if resolved.exists() and not resolved.is_dir():
        raise WriteError(f"{text}: exists and is not a folder")
    return p


@contextlib.contextmanager
def staged_folder(
    target: str | os.PathLike,
    *,
    verify: Callable[[Path], None] | None = None,
    replaceable: Callable[[Path], bool] | None = None,
    carry_over: bool = False,
    keep_on_error: str | os.PathLike | None = None,
    what: str = "folder",
) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``target``; when the block ends without error, run
    ``verify(staging)`` and swap it in, so ``target`` is always the old or the new complete
    folder.

    ``replaceable(target)`` decides whether an existing non-empty ``target`` may be replaced
    (default: yes); when it says no, :class:`WriteError` is raised before anything is
    written. With ``carry_over``, entries of the old folder the new one lacks (e.g. a training
    run's ``last/``) are moved into the new folder after the swap. On error the staging folder
    is removed (or, with ``keep_on_error``, renamed to that path so finished parts of a long
    run survive) and the target is left as it was; a successful run removes a stale
    ``keep_on_error`` folder.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise WriteError(f"{target}: exists and is not a folder; refusing to replace it")
    if replaceable is not None and _non_empty(target) and not replaceable(target):
        raise WriteError(
            f"{target}: not empty and not an anomalens {what}; refusing to replace it (choose "
            "another output folder or remove it)"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(
            f"{target.parent}: cannot create the folder ({exc.strerror or exc})"
        ) from exc
    _remove_stale(target)
    staging = _hidden_sibling(target, _STAGING_TAG)
    try:
        staging.mkdir()
    except OSError as exc:
        raise WriteError(f"{staging}: cannot create the folder ({exc.strerror or exc})") from exc
    try:
        yield staging
        if verify is not None:
            verify(staging)
        _sync_tree(staging)
        old = _swap_in(staging, target)
    except BaseException as exc:
        _discard(staging, keep_on_error)
        if isinstance(exc, WriteError) and getattr(exc, "path", None) is None:
            raise
        if isinstance(exc, OSError) or _is_disk_error(exc):
            where = getattr(exc, "path", None) or getattr(exc, "filename", None) or target
            where = _outside(Path(where), staging, target)
            raise _write_error(where, exc, f"the previous {what} {target}") from exc
        raise
    _fsync_dir(target.parent)
    if old is not None:
        if carry_over:
            _carry_over(old, target)
        _rmtree(old)
    if keep_on_error is not None:
        _rmtree(Path(keep_on_error))


def _discard(staging: Path, keep: str | os.PathLike | None) -> None:
    """Remove the staging folder, or move it to ``keep`` when it holds anything."""
    if keep is not None and _non_empty(staging):
        with contextlib.suppress(OSError):
            _rmtree(Path(keep))
            os.rename(staging, keep)
            return
    _rmtree(staging)


def _outside(path: Path, staging: Path, target: Path) -> Path:
    """``path`` inside the staging folder named as where it was going in ``target``."""
    try:
        return target / path.relative_to(staging)
    except ValueError:
        return path


def _non_empty(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(folder.iterdir())
    except OSError:
        return True


def _carry_over(old: Path, new: Path) -> None:
    """Move entries of ``old`` that ``new`` lacks into ``new``."""
    with contextlib.suppress(OSError):
        for entry in old.iterdir():
            if not (new / entry.name).exists():
                os.rename(entry, new / entry.name)


def _sync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` (written by libraries that do not)."""
    for entry in sorted(folder.rglob("*")):
        if entry.is_file() and not entry.is_symlink():
            with open(entry, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)
