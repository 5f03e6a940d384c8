"""Atomic file and folder writes, hashing and small JSON helpers shared by every stage.

Every artifact is written under a temporary name in the same directory and renamed into place,
so a crash (or SIGKILL) never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from pipelines.errors import V2WError


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (renames) to disk; a no-op where the OS does not support it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; on success fsync and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_checked(path: str | os.PathLike, load: Callable[[Path], Any], what: str, errors: tuple[type[BaseException], ...]) -> Any:
    """``load(path)``, with the file problems every artifact reader shares turned into one-line
    V2WErrors naming the file: not found, unreadable, or (``errors``, the parsing library's
    exceptions) truncated or corrupt, e.g. a half-copied download. ``what``: "JSON", "safetensors
    file", ... for the message."""
    path = Path(path)
    try:
        return load(path)
    except FileNotFoundError:
        raise V2WError("file not found", path=path) from None
    except IsADirectoryError:
        raise V2WError(f"is a folder, not a {what}", path=path) from None
    except errors as e:
        raise V2WError(f"{what} is truncated or corrupt ({_reason(e)}); re-copy or re-create it", path=path) from None
    except OSError as e:
        raise V2WError(f"cannot read it ({e.strerror or e})", path=path) from None


def _reason(e: BaseException) -> str:
    """The library's reason, short: its first sentence (torch's zip errors run on for lines)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.split(". ")[0].rstrip(".")
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_json(path: str | os.PathLike) -> Any:
    def load(p: Path) -> Any:
        with open(p, "rb") as f:
            return json.load(f)

    return read_checked(path, load, "JSON", (json.JSONDecodeError, UnicodeDecodeError))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def normalize_permissions(root: str | os.PathLike) -> None:
    """Give a folder made with mkdtemp (0700) and files written by libraries (some 0600) the
    permissions a plain mkdir / open would have given under the current umask."""
    mask = _umask()
    root = Path(root)
    os.chmod(root, 0o777 & ~mask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a finished ``tmp_dir`` to ``final_dir``, replacing an older ``final_dir`` only at the end.

    The old folder is first renamed aside, the new one renamed in, then the old one deleted, so at
    every instant either the complete old or the complete new folder sits under ``final_dir``
    (up to the two renames).
    """
    final_dir = Path(final_dir)
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temporary sibling; on success it replaces ``path`` in one rename.

    On any error the temporary folder is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        normalize_permissions(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_artifact(folder: str | os.PathLike, filename: str, kind: str, format_version: int, made_by: str) -> dict:
    """Read an artifact's JSON (``manifest.json``/``config.json``) and check its kind and version."""
    file = Path(folder) / filename
    if not file.exists():
        raise V2WError(f"no {filename} here; is this a folder written by {made_by}?", path=folder)
    data = read_json(file)
    if not isinstance(data, dict):
        raise V2WError(f"is JSON but not a v2w {filename} (no object at the top); re-copy or re-create it", path=file)
    if data.get("kind") != kind:
        raise V2WError(f"{filename} kind is {data.get('kind')!r}, expected {kind!r}", path=file)
    if data.get("format_version", 0) > format_version:
        raise V2WError(
            f"format_version {data['format_version']} is newer than this v2w understands ({format_version}); upgrade v2w",
            path=file,
        )
    return data
