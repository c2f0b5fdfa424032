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
    an interrupted write never leaves a truncated ``target``."""
    target = Path(target)
    partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.part")
    try:
        yield partial
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
