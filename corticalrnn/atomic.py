"""Atomic file output: write under a temporary name next to the target, rename when complete.

Torch-free. The one place that implements "nothing is half-written under its final name".
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def temporary_name(path: str | os.PathLike[str]) -> Path:
    """The temporary sibling used while ``path`` is being written (same folder: rename is atomic)."""
    p = Path(path)
    return p.with_name(p.name + ".tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write to; on success rename it to ``path``, on error remove it.

    Works for files and for folders (a folder is renamed as a whole; an existing target folder is
    not replaced — callers decide what to do with it first).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    _remove(tmp)
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)
