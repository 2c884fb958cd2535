"""Signals held back while something must not be cut in half (a checkpoint being written, the
modules loading when the command starts)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["defer_sigint"]


@contextlib.contextmanager
def defer_sigint() -> Iterator[None]:
    """Hold back Ctrl-C and SIGTERM while the block runs; they take effect right after it.

    Ctrl-C then raises KeyboardInterrupt; SIGTERM is sent again to the restored handler (the CLI
    turns it into :class:`cnnzoo.errors.Terminated`; without a handler it ends the process).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda n, _: pending.append(n)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if signal.SIGTERM in pending:
            signal.raise_signal(signal.SIGTERM)
        if pending:
            raise KeyboardInterrupt
