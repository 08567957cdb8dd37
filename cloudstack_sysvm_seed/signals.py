"""What SIGINT (Ctrl-C) and SIGTERM do to a run: the first one stops every child process
(see runner) and raises in the main thread, so that the cleanup of every `finally` and
`except BaseException` runs; any later one is only logged, so that the cleanup itself is
never cut short. A signal that arrives while the main thread starts something and records
it (a thread, a process) waits until that is done, so nothing started goes unrecorded.

Signal handlers belong to the process, so this module keeps the run's signal state (and the
callbacks that stop its children) as the process does: install() resets it for each run.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Callable, Iterator, Optional

from .errors import Interrupted

LOG = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)

_on_stop: list[Callable[[], None]] = []  # called once, on the first signal
_stopping: Optional[int] = None  # the first signal of this run
_held = 0  # depth of deferred() sections in the main thread
_pending: Optional[int] = None  # a signal that arrived in one


def on_stop(callback: Callable[[], None]) -> None:
    """Call `callback` (from the signal handler, in the main thread) on the first signal."""
    _on_stop.append(callback)


def install() -> Callable[[], None]:
    """Handle SIGINT and SIGTERM for one run; returns what puts the old handlers back."""
    global _stopping, _pending
    _stopping = _pending = None
    previous = {signum: signal.signal(signum, _handle) for signum in HANDLED}

    def restore() -> None:
        global _stopping, _pending
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stopping = _pending = None  # the run is over; what runs next is not stopping
    return restore


def stopping() -> Optional[int]:
    """The signal that is stopping the run, or None."""
    return _stopping


def exception(signum: int) -> BaseException:
    """What a signal raises: KeyboardInterrupt for SIGINT, Interrupted (one) for SIGTERM."""
    return Interrupted() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a signal back until the block ends (in the main thread; elsewhere signals never
    raise). For starting a thread or a process and recording it: an exception between the
    two would leave it running, unknown to every cleanup."""
    global _held, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending is not None:
            signum, _pending = _pending, None
            raise exception(signum)


def _handle(signum: int, frame) -> None:
    global _stopping, _pending
    if _stopping is not None:
        LOG.warning("Got %s again; still undoing partial work, please wait",
                    signal.Signals(signum).name)
        return
    _stopping = signum
    for callback in _on_stop:
        callback()
    if _held:
        _pending = signum
        return
    raise exception(signum)
