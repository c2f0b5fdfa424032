"""Deferring SIGINT/SIGTERM around a short step that must finish once begun (writing the final weights)."""

from __future__ import annotations

import signal
from contextlib import contextmanager


def interrupted_exit_status(signum: int | None) -> int:
    """The exit status of a run stopped by signal ``signum``: 128 + its number, the shell's convention (130 for
    SIGINT, 143 for SIGTERM); a stop requested without a signal counts as SIGINT."""
    return 128 + int(signum or signal.SIGINT)


@contextmanager
def signals_deferred():
    """Within the block SIGINT and SIGTERM only record that they came; yields that record (a list, truthy once a
    signal arrived) so the caller can stop afterwards. The previous handlers are restored on exit."""
    received: list[int] = []
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda number, frame: received.append(number)) for s in stops}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
