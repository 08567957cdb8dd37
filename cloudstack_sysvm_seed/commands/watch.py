"""`watch`: run until stopped; each interval one query says which usable NFS image stores
lack a Ready copy of a template their zone needs, and those are seeded as on-store-added
seeds a store (see `watch` for the loop, `catalog.store_needs` for the query)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Optional

from .. import errors, hypervisors, report, watch
from ..catalog import Catalog
from ..errors import SeedError
from ..model import Scope, StoreNeed
from ..settings import Settings
from . import Command, exit_codes, lock_argument, open_catalog, source_arguments, store_arguments
from .seed import seed

LOG = logging.getLogger(__name__)

# The setting that names each hypervisor's template, for the hypervisors that have one.
SETTINGS = tuple((hv.db_name, hv.config_key) for hv in hypervisors.HYPERVISORS)


class Asker:
    """The watch's own connection, kept from pass to pass (its schema learned once) and
    opened again at the next pass after the database went away."""

    def __init__(self, config: Settings):
        self.config = config
        self.catalog: Optional[Catalog] = None

    def __call__(self) -> list[StoreNeed]:
        try:
            if self.catalog is None:
                self.catalog = open_catalog(self.config)
            return self.catalog.store_needs(SETTINGS)
        except SeedError:
            self.close()
            raise

    def close(self) -> None:
        if self.catalog is not None:
            self.catalog.close()
            self.catalog = None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _watch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=_positive_seconds, default=watch.DEFAULT_INTERVAL,
                        metavar="SECONDS",
                        help=f"ask the database this often (default {watch.DEFAULT_INTERVAL:g}; "
                             "fractions allowed); a failing store is tried again after 1, 2, "
                             "4 ... intervals, at most hourly")
    parser.add_argument("--once", action="store_true",
                        help="one pass, then exit (for a timer or cron)")
    store_arguments(parser)
    source_arguments(parser)
    lock_argument(parser)


def _run_watch(args: argparse.Namespace, config: Settings) -> int:
    asker = Asker(config)

    def seed_stores(store_ids: tuple[int, ...], kinds: tuple[str, ...]):
        return seed(dataclasses.replace(config, scope=Scope(hypervisors=kinds,
                                                            stores=store_ids)))

    watcher = watch.Watcher(asker, seed_stores, report.to_table, args.interval)
    try:
        return watcher.run(once=args.once)
    except KeyboardInterrupt as exc:
        if args.once:
            raise
        # How the watch ends: the copy in progress, if any, was undone on the way here.
        LOG.info("Stopped (%s).", "SIGTERM" if isinstance(exc, errors.Interrupted)
                 else "SIGINT")
        return errors.EXIT_OK
    finally:
        asker.close()


WATCH = Command(
    "watch", "seed image stores as they are added, until stopped",
    "Run until stopped. Every interval one query asks the database whether a usable NFS "
    "image store (in a zone, not read-only, role Image) lacks a Ready copy of a template its "
    "zone needs: the one router.template.<hv> names for each hypervisor of the zone (the "
    "zone's value first, then the global one), else the newest registered SYSTEM template "
    "of that hypervisor and arch. Those stores are seeded as on-store-added seeds a store, "
    "holding the same lock, and the report goes to the log. A store whose copy someone "
    "else updated within 30 minutes (Allocated, Creating, DOWNLOAD_IN_PROGRESS) is left "
    "alone and reported busy; an older unfinished copy is seeded over. A failing store is "
    "tried again after 1, 2, 4 ... intervals, at most hourly, and its failure logged once per "
    "cause. SIGTERM or SIGINT stops it: at once between passes, and during a copy once the "
    "copy is undone.",
    _watch_arguments, _run_watch,
    exit_codes(errors.EXIT_FAILED, errors.EXIT_DATABASE, meaning={
        errors.EXIT_OK: "stopped by SIGTERM or SIGINT; with --once: nothing lacked, or every "
                        "store was seeded or is busy",
        errors.EXIT_FAILED: "with --once: a store failed (the log says why)",
        errors.EXIT_DATABASE: "with --once: the database is unreachable (without --once the "
                              "watch asks again every interval)",
        errors.EXIT_INTERRUPTED: "with --once: interrupted (Ctrl-C); the copy in progress "
                                 "was undone",
        errors.EXIT_TERMINATED: "with --once: terminated (SIGTERM); the copy in progress "
                                "was undone"}),
    mounts=True)
