"""Advisory exclusive locks on outputs being written (stores, spike files): one writer at a time.

Torch-free. ``exclusive_lock(target)`` holds ``fcntl.flock`` on ``<target>.lock`` (a sibling, so it
covers the target and its temporary ``.tmp`` name alike) and records the holder's PID in it. A
second writer fails at once with :class:`LockedError` ("in use by PID ..."), never waits and never
overwrites. The kernel drops the lock when its holder dies (``kill -9`` included), so a stale lock
file never blocks a rerun; the file is removed when the lock is released.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from corticalrnn.errors import CorticalRNNError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking available
    fcntl = None  # type: ignore[assignment]


class LockedError(CorticalRNNError):
    """Another process holds the write lock of an output."""


def lock_path(target: str | os.PathLike[str]) -> Path:
    p = Path(target)
    return p.with_name(p.name + ".lock")


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike[str], what: str = "written") -> Iterator[Path]:
    """Hold the exclusive write lock of ``target`` for the duration of the block.

    Raises :class:`LockedError` naming ``target`` and the PID that holds it when it is taken.
    """
    lp = lock_path(target)
    lp.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield lp
        return
    while True:
        fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise LockedError(
                f"{target}: in use by PID {_holder(lp)} (another process is writing it; wait for it to "
                f"finish or stop it, then run again)"
            ) from None
        # the previous holder may have removed the lock file between our open and flock
        try:
            same = os.stat(lp).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lp)
        os.close(fd)
