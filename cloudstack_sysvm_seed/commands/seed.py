"""`seed` (the default command) and `on-store-added`: observe, plan every change, and carry
the plan out holding the registration lock (or, with --dry-run, print it)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Optional

from .. import apply, errors, lock, plan, report
from ..catalog import Catalog
from ..metadata import Metadata
from ..model import Plan, Snapshot
from ..observe import Observer
from ..settings import Settings
from . import (
    PROG,
    Command,
    connected,
    exit_codes,
    load_metadata,
    lock_argument,
    scope_arguments,
    source_arguments,
    store_arguments,
)

LOG = logging.getLogger(__name__)


def seed(config: Settings) -> list[apply.Outcome]:
    """Register and seed what config.scope asks for; the outcome of every step.

    A real run observes only once it holds the lock, so concurrent runs never plan from the
    same stale snapshot (that is how duplicate templates are born).
    """
    meta = load_metadata(config)
    with connected(config) as catalog:
        if config.dry_run:
            return _seed(config, meta, catalog, None)
        with lock.registration_lock(catalog, config.lock_timeout) as held:
            return _seed(config, meta, catalog, held)


def _seed(config: Settings, meta: Metadata, catalog: Catalog,
          held: Optional[lock.HeldLock]) -> list[apply.Outcome]:
    with Observer(catalog, config.mounts, config.jobs) as observer:
        snapshot, the_plan = observe_and_plan(observer, meta, config)
        if held is None:
            return apply.dry_run(the_plan, observer.sources)

        def replan(touched: list[int]) -> Optional[Plan]:
            if not observer.changed_since(snapshot, touched):
                return None
            return observe_and_plan(observer, meta, config, snapshot.missing_sources)[1]

        outcomes = apply.run(the_plan, apply.Context(
            catalog, observer.roots, observer.sources, config.downloads,
            config.max_image_size, config.stall_timeout, guard=held.verify, replan=replan))
        observer.stalled.update(o.step.store.id for o in outcomes if o.timed_out)
        return outcomes


def observe_and_plan(observer: Observer, meta: Metadata, config: Settings,
                     missing_sources: Optional[dict] = None) -> tuple[Snapshot, Plan]:
    """Read the database, look into the stores in scope (only at the templates they are to
    hold), find each image, and plan. missing_sources: reuse what an earlier look found."""
    snapshot = observer.read(s.guest_os for s in meta.specs if s.guest_os)
    targets, _ = plan.select(snapshot, meta, config.scope)
    wanted: dict[int, set] = {}
    for _, store, spec in targets:
        template = snapshot.registered(spec)
        wanted.setdefault(store.id, set()).update([template] if template else [])
    snapshot = observer.survey(snapshot, [store for _, store, _ in targets],
                               lambda store: wanted[store.id])
    snapshot = (observer.find_sources(snapshot, meta, [t[2] for t in targets],
                                      config.templates_dir, config.downloads)
                if missing_sources is None
                else dataclasses.replace(snapshot, missing_sources=missing_sources))
    return snapshot, plan.seed_plan(snapshot, meta, config.scope, config.allow_unverified,
                                    config.allow_downgrade)


def report_and_exit(outcomes: list[apply.Outcome], config: Settings) -> int:
    """Print the report; log each warning, and each distinct failure at ERROR (so that
    stderr and the log file say why, --json or not), then the counts."""
    print(report.to_json(outcomes) if config.json else
          report.to_table(outcomes, dry_run=config.dry_run))
    records = report.records(outcomes)
    for warning in report.warnings(records):
        LOG.warning("%s", warning)
    for error, where in report.failures(records):
        LOG.error("%s", report.failure_line(error, where))
    LOG.info("Done: %s", report.summary(outcomes))
    failed = any(o.status == apply.FAILED for o in outcomes)
    return errors.EXIT_FAILED if failed else errors.EXIT_OK


def _seed_arguments(parser: argparse.ArgumentParser) -> None:
    scope_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="change nothing; print the plan (every change, in the words of "
                             "the run)")
    parser.add_argument("--allow-downgrade", action="store_true",
                        help="roll hypervisors back to the older templates directory on "
                             "purpose (settings, minreq and system VMs included)")
    store_arguments(parser)
    source_arguments(parser)
    lock_argument(parser)


def _run_seed(args: argparse.Namespace, config: Settings) -> int:
    return report_and_exit(seed(config), config)


SEED = Command(
    "seed", "register the templates, seed every NFS store (default)",
    "Register the SystemVM templates described by metadata.ini and seed them onto every NFS "
    "image store of each zone; then point router.template.<hv>, "
    "minreq.sysvmtemplate.version and the system VMs in scope at them, where that is safe. "
    "Never rolls a hypervisor back to an older templates directory unless "
    "--allow-downgrade.",
    _seed_arguments, _run_seed,
    exit_codes(errors.EXIT_FAILED, errors.EXIT_METADATA, errors.EXIT_STORE,
               errors.EXIT_LOCKED,
               meaning={errors.EXIT_OK: "every store in scope is Ready, or there was nothing "
                                        "to do",
                        errors.EXIT_FAILED: "some store or hypervisor failed, or was refused "
                                            "(an older templates directory)"}),
    mounts=True)


def _store_added_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store-id", type=int, required=True, metavar="N",
                        help="the image store just added (image_store.id)")
    parser.add_argument("--strict", action="store_true",
                        help="exit non-zero when seeding fails (default: report and exit 0)")
    store_arguments(parser)
    source_arguments(parser)
    lock_argument(parser)


def _run_store_added(args: argparse.Namespace, config: Settings) -> int:
    code = report_and_exit(seed(config), config)
    if code and not args.strict:
        # Like upstream, adding a store never fails because of templates; say what to do.
        LOG.warning("Seeding store %d did not finish; the store is added all the same. "
                    "Rerun: %s on-store-added --store-id %d", args.store_id, PROG,
                    args.store_id)
        return errors.EXIT_OK
    return code


ON_STORE_ADDED = Command(
    "on-store-added", "seed one newly added image store",
    "Seed one newly added image store with the system template of every hypervisor of its "
    "zone. Exits 0 even when seeding fails (the report says why), unless --strict.",
    _store_added_arguments, _run_store_added,
    exit_codes(errors.EXIT_FAILED, errors.EXIT_METADATA, errors.EXIT_LOCKED,
               meaning={errors.EXIT_OK: "the store is seeded, or seeding failed without "
                                        "--strict",
                        errors.EXIT_FAILED: "with --strict: seeding the store failed"}),
    mounts=True)
