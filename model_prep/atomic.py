"""Pieces for publishing a directory safely: one builder at a time, and renames that survive a crash."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(path: Path, report: Callable[[str], None], waiting_for: str) -> Iterator[None]:
    """Hold an exclusive lock on `path`; say so (naming what we wait for) if another process holds it."""
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(f"another process is {waiting_for}; waiting for it ({path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_once(
    final: Path,
    is_complete: Callable[[], bool],
    fill: Callable[[Path], None],
    report: Callable[[str], None],
    doing: str,
) -> float | None:
    """Make `final` with fill(build_dir) unless is_complete(), one process at a time (doing: what the build does, for
    messages); returns the seconds the build
    took, or None when it was already there. The build happens in a temp dir beside `final` and one rename publishes
    it: an interrupted build is never taken for a complete one, and the next call removes its leftovers."""
    if is_complete():
        return None
    final.parent.mkdir(parents=True, exist_ok=True)
    with locked(final.parent / f".{final.name}.lock", report, doing):
        if is_complete():  # another process finished it while we waited for the lock
            return None
        for stale in [*final.parent.glob(f".{final.name}.tmp-*"), *([final] if final.exists() else [])]:
            report(f"removing an incomplete earlier build (interrupted while {doing}): {stale}")
            shutil.rmtree(stale)
        started = time.monotonic()
        build = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        build.chmod(0o755)  # mkdtemp makes it private; a shared cache must be readable by the serving user
        try:
            fill(build)
            os.rename(build, final)
        except BaseException:  # KeyboardInterrupt too: never leave a half build behind if we can help it
            shutil.rmtree(build, ignore_errors=True)
            raise
        fsync_dir(final.parent)
        return time.monotonic() - started
