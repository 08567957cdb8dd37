"""Processes a test started, or that something it started started, watched from /proc."""

from __future__ import annotations

import time
from typing import Iterable, List


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a killed orphan waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def still_running(pids: Iterable[int], seconds: float = 5.0) -> List[int]:
    """Those of `pids` still running after waiting up to `seconds` for all to end."""
    pids = list(pids)
    deadline = time.monotonic() + seconds
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if running(p)]
