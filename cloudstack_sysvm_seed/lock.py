"""CloudStack's template-registration lock: wait for it, hold it, check it is still held.

CloudStack's own names (GlobalLock): a management server holds `DatabaseUpgrade` for a whole
database upgrade, and takes `UpgradeDatabase-Lock`, inside it, to register templates. A run
that writes holds the second, and starts only while nobody holds the first.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator, Optional

from .catalog import Catalog, NamedLock
from .errors import CatalogError, LockTimeout

LOG = logging.getLogger(__name__)

UPGRADE_LOCK = "DatabaseUpgrade"
REGISTRATION_LOCK = "UpgradeDatabase-Lock"
POLL_SECONDS = 1.0
TELL_EVERY = 30.0  # seconds between "still waiting" lines


class HeldLock:
    """The registration lock while a run holds it."""

    def __init__(self, lock: NamedLock):
        self.lock = lock

    def verify(self) -> None:
        """:raises CatalogError: once the lock's connection (and so the lock) is gone."""
        self.lock.verify(REGISTRATION_LOCK)


@contextlib.contextmanager
def registration_lock(catalog: Catalog, timeout: float,
                      poll: float = POLL_SECONDS) -> Iterator[HeldLock]:
    """Hold the registration lock, taken only while no management server is upgrading.

    :raises LockTimeout: naming who holds the lock.
    """
    lock = catalog.named_lock()
    started = time.monotonic()
    deadline = started + timeout
    told: Optional[float] = None  # when the wait was last said
    try:
        while True:
            blocker = _try_take(lock)
            if blocker is None:
                break
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"Lock {blocker[0]!r} is still held by {blocker[1]} after {timeout:g}s.",
                    "Another seeding run or a management server upgrade is in progress; "
                    "rerun when it is done (or raise --lock-timeout).")
            told = _tell(blocker, told, started, timeout)
            time.sleep(max(0.0, min(poll, deadline - time.monotonic())))
        if told is not None:
            LOG.info("Took lock %r after %.0fs", REGISTRATION_LOCK, time.monotonic() - started)
        yield HeldLock(lock)
    finally:
        try:
            lock.release(REGISTRATION_LOCK)
        except CatalogError:
            pass  # the lock's connection is gone, and the server released the lock with it
        finally:
            lock.close()


def _tell(blocker: tuple[str, str], told: Optional[float], started: float,
          timeout: float) -> float:
    """Say who is waited for, and why, when the wait starts; then every TELL_EVERY seconds
    who holds it now. Returns when it was last said."""
    name, holder = blocker
    clock = time.monotonic()
    if told is None:
        LOG.info("Waiting for lock %r, held by %s: %s. Giving up after %gs.", name, holder,
                 _WHO_HOLDS[name], timeout)
    elif clock - told >= TELL_EVERY:
        LOG.info("Still waiting for lock %r after %.0fs; held by %s", name, clock - started,
                 holder)
    else:
        return told
    return clock


_WHO_HOLDS = {
    UPGRADE_LOCK: "a management server is upgrading the database",
    REGISTRATION_LOCK: "another seeding run, or a management server registering templates",
}


def _try_take(lock: NamedLock) -> Optional[tuple[str, str]]:
    """Take the registration lock unless something blocks it; the blocker otherwise.

    Never wait with the registration lock held: a management server takes the upgrade lock
    first and this one inside it, so holding ours while waiting for theirs would deadlock.
    """
    upgrading = lock.holder(UPGRADE_LOCK)
    if upgrading:
        return UPGRADE_LOCK, upgrading
    if not lock.acquire(REGISTRATION_LOCK, 0):
        return REGISTRATION_LOCK, lock.holder(REGISTRATION_LOCK) or "another connection"
    upgrading = lock.holder(UPGRADE_LOCK)
    if upgrading:
        lock.release(REGISTRATION_LOCK)
        return UPGRADE_LOCK, upgrading
    return None
