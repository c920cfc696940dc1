"""One lock per (stage, key): two bertpress processes on the same artifacts directory never write
the same stage output at once. Different keys (other configs) run side by side.

flock(2) on `<artifacts>/<stage>/.lock-<key>`: the kernel drops the lock when its holder dies,
kill -9 included, so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.stage import StageError

log = logging.getLogger("bertpress.lock")


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "another process"
    return f"pid {text}" if text else "another process"


@contextmanager
def stage_lock(stage_dir: Path, stage: str, key: str, mode: str = "wait",
               timeout_s: float | None = None, poll_s: float = 0.5) -> Iterator[None]:
    """Hold the (stage, key) lock. mode "wait": block (saying so) until it is free or timeout_s
    passes; mode "fail": raise at once if another process holds it."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    path = stage_dir / f".lock-{key}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            holder = _holder(path)
            if mode == "fail":
                raise StageError(
                    f"{stage} (key {key}) is being built by {holder} on this artifacts directory "
                    f"(lock {path}); wait for it to finish, or run with --set runtime.lock=wait"
                )
            waited = time.monotonic() - start
            if timeout_s is not None and waited >= timeout_s:
                raise StageError(
                    f"gave up after {waited:.0f}s waiting for {holder} to finish {stage} (key {key}, "
                    f"lock {path}); raise runtime.lock_timeout_s or try again later"
                )
            if not announced:
                log.warning("[%s] %s is building key %s; waiting for it (lock %s)", stage, holder, key, path)
                announced = True
            time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Block until this process alone holds `path` (for short critical sections, e.g. creating the
    sqlite tracking database, whose schema migration two processes must not run at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
