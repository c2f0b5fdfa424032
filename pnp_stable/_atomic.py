"""Files that readers only ever see whole: the shared write-then-rename of weights, checkpoints and extracted data."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A fresh temporary path beside ``target`` for the block to write, renamed onto ``target`` when the block
    succeeds (``os.replace``: atomic on one file system) and removed when it fails. Its name is unique per call, so
    writers of one target at once (two processes, two threads) never truncate or rename away each other's file, and
    an interrupted write never leaves a truncated ``target``. The file gets the permissions an ordinary new file
    would (0666 less the umask), or those of the ``target`` it replaces: some writers (safetensors) create theirs
    private, 0600."""
    target = Path(target)
    partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.part")
    try:
        yield partial
        os.chmod(partial, target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_umask())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask: from /proc where Linux shows it, else read by setting it and setting it back (which a
    thread creating a file at that instant could see)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
