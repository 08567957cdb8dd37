"""A run against the cloud database: connect, then observe, plan and apply."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterator, Optional

from . import apply, dbprops, metadata, observe, plan
from .catalog import Catalog
from .errors import LockTimeout
from .settings import Settings

LOG = logging.getLogger(__name__)

# CloudStack's own names (GlobalLock): the management server holds the first for a whole
# database upgrade, and takes the second, inside it, to register templates.
UPGRADE_LOCK = "DatabaseUpgrade"
REGISTRATION_LOCK = "UpgradeDatabase-Lock"
POLL_SECONDS = 1.0


@contextlib.contextmanager
def connected(config: Settings) -> Iterator[Catalog]:
    """The cloud database named by db.properties; closed when the block ends."""
    db_config = dbprops.database_config(dbprops.load(config.db_properties),
                                        config.db_properties, config.key_file, os.environ)
    catalog = Catalog.connect(db_config)
    try:
        yield catalog
    finally:
        catalog.close()


@contextlib.contextmanager
def registration_lock(catalog: Catalog, timeout: float,
                      poll: float = POLL_SECONDS) -> Iterator[None]:
    """Hold CloudStack's template-registration lock, and start only while no management
    server is upgrading the database.

    :raises LockTimeout: naming who holds the lock.
    """
    lock = catalog.named_lock()
    deadline = time.monotonic() + timeout
    told = None
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
            if blocker != told:
                LOG.info("Waiting for lock %r, held by %s", *blocker)
                told = blocker
            time.sleep(max(0.0, min(poll, deadline - time.monotonic())))
        yield
    finally:
        try:
            lock.release(REGISTRATION_LOCK)
        finally:
            lock.close()


def _try_take(lock) -> Optional[tuple[str, str]]:
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


def seed(config: Settings) -> list[apply.Outcome]:
    """Register and seed what config.scope asks for; the outcome of every target.

    A real run observes only once it holds the lock, so concurrent runs never plan from the
    same stale snapshot (that is how duplicate templates are born).
    """
    meta = metadata.load(os.path.join(config.templates_dir, "metadata.ini"))
    with connected(config) as catalog:
        with (contextlib.nullcontext() if config.dry_run
              else registration_lock(catalog, config.lock_timeout)):
            return _seed_locked(config, meta, catalog)


def _seed_locked(config: Settings, meta: metadata.Metadata,
                 catalog: Catalog) -> list[apply.Outcome]:
    snapshot = observe.read_catalog(catalog, meta)
    targets, skipped = plan.select(snapshot, meta, config.scope)
    with observe.Observation(snapshot, config.mounts) as observation:
        observation.probe(meta, targets, config.templates_dir, config.downloads)
        the_plan = plan.build(observation.snapshot, meta, targets, skipped,
                              config.allow_unverified)
        if config.dry_run:
            return apply.dry_run(the_plan, observation.sources)
        return apply.run(the_plan, apply.Context(
            catalog, observation.roots, observation.sources,
            tuple(z.id for z in snapshot.zones), meta.release, config.downloads,
            config.max_image_size))
