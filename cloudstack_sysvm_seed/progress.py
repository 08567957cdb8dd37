"""Signs of life during a long copy: a bar per source file on a terminal (tqdm), otherwise a
log line every INTERVAL seconds, because package hooks and systemd units have no terminal;
nor under dpkg, which apt runs on a pseudo-terminal, where a bar would be drawn into apt's
output and /var/log/apt/term.log.

Progress counts bytes read from the source file, whose size is known before the pass, so
the bar can show a fraction and a time to go; decompressed sizes are not known until the end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import time
from typing import Callable, Mapping, Optional, Protocol, TextIO

LOG = logging.getLogger(__name__)

INTERVAL = 10.0


class Progress(Protocol):
    def advance(self, count: int) -> None: ...

    def close(self) -> None: ...


def start(label: str, total: int, stream: Optional[TextIO] = None,
          environ: Optional[Mapping[str, str]] = None) -> Progress:
    """A bar when `stream` (stderr by default) is a terminal, no package manager runs us,
    and tqdm is installed."""
    stream = stream or sys.stderr
    environ = os.environ if environ is None else environ
    if stream.isatty() and not under_package_manager(environ) and _have_tqdm():
        return Bar(label, total, stream)
    return LogLines(label, total)


def _have_tqdm() -> bool:
    # Imported by Bar, only on a terminal: tqdm costs ~40 ms of every run's start. A bare
    # install without it still works, with log lines only.
    return importlib.util.find_spec("tqdm") is not None


def under_package_manager(environ: Mapping[str, str]) -> bool:
    """dpkg sets DPKG_MAINTSCRIPT_PACKAGE for maintainer scripts and triggers (RPM's
    scriptlets and systemd units have no terminal to begin with)."""
    return bool(environ.get("DPKG_MAINTSCRIPT_PACKAGE"))


class Bar:
    """A tqdm bar; log records go through tqdm meanwhile, so they print above the bar."""

    def __init__(self, label: str, total: int, stream: TextIO):
        import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.redirect = contextlib.ExitStack()
        self.redirect.enter_context(logging_redirect_tqdm())
        self.bar = tqdm.tqdm(total=total, desc=label, file=stream, unit="B", unit_scale=True,
                             unit_divisor=1024, dynamic_ncols=True, mininterval=0.5)

    def advance(self, count: int) -> None:
        self.bar.update(count)

    def close(self) -> None:
        self.bar.close()
        self.redirect.close()


class LogLines:
    """An INFO line every INTERVAL seconds: how far, how fast."""

    def __init__(self, label: str, total: int, clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.total = total
        self.done = 0
        self.clock = clock
        self.started = self.reported = clock()

    def advance(self, count: int) -> None:
        self.done += count
        now = self.clock()
        if now - self.reported >= INTERVAL:
            self.reported = now
            rate = self.done / max(now - self.started, 1e-3)
            LOG.info("%s: %d%% read (%d of %d MiB, %.0f MiB/s)", self.label,
                     100 * self.done // max(self.total, 1), self.done >> 20, self.total >> 20,
                     rate / (1 << 20))

    def close(self) -> None:
        pass
