"""`prune`: give the stores their space back from SystemVM templates nobody uses any more,
holding the registration lock: observe (the database, what uses each template, and the
stores in scope in full), finish what a killed prune left, plan, show the plan and ask,
write the backup of every row it changes, then apply it."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from collections import defaultdict
from typing import Optional

from .. import apply, backup, errors, layout, lock, plan, prune, report, stores
from ..model import Snapshot, human_size
from ..observe import Observer
from ..settings import DEFAULT_BACKUP_DIR, Settings
from . import (
    Command,
    confirm,
    connected,
    exit_codes,
    lock_argument,
    scope_arguments,
    store_arguments,
)

LOG = logging.getLogger(__name__)


def run(args: argparse.Namespace, config: Settings) -> int:
    with connected(config) as catalog:
        locked = (contextlib.nullcontext() if config.dry_run
                  else lock.registration_lock(catalog, config.lock_timeout))
        with locked as held, Observer(catalog, config.mounts, config.jobs) as observer:
            snapshot = _observe(observer, config, finish=not config.dry_run)
            the_plan = prune.prune_plan(snapshot, config.scope, args.keep)
            changes = [s.change for s in the_plan.changes]
            if config.dry_run or not changes:
                return _report(apply.dry_run(the_plan, {}), config, dry_run=True,
                               nothing=not changes)
            if not config.json:
                print(_text(apply.dry_run(the_plan, {}), dry_run=True))
            confirm(args.yes, "Delete these copies and retire these templates?",
                    "prune deletes template copies from the stores")
            saved = backup.write(catalog, changes, args.backup_dir or DEFAULT_BACKUP_DIR,
                                 command="prune")
            LOG.info("Backup of the rows prune changes: %s", saved)
            # No copy is written, so nothing runs long enough to need planning again.
            outcomes = apply.run(the_plan, apply.Context(catalog, observer.roots, {},
                                                         guard=held.verify))
    return _report(outcomes, config, saved=saved)


def _observe(observer: Observer, config: Settings, finish: bool) -> Snapshot:
    """The database, what uses each template, and the NFS stores of the zones in scope, in
    full; with `finish`, the copies a killed prune moved aside are first put back (their
    rows still name them) or deleted (their rows say they are gone)."""
    snapshot = observer.read_users(observer.read())
    zones, _ = plan.resolve_scope(snapshot, config.scope)
    in_scope = {z.id for z in zones}
    targets = [s for s in snapshot.stores if s.protocol == "nfs" and s.zone_id in in_scope]
    snapshot = observer.survey(snapshot, targets)
    if finish and _finish_killed_prunes(snapshot, observer.roots):
        snapshot = observer.survey(snapshot, targets)  # what is there now
    return snapshot


def _finish_killed_prunes(snapshot: Snapshot, roots: dict) -> int:
    finished = 0
    for store_id, root in roots.items():
        for template_id, trashed in stores.trashed_on(root):
            rows_name_it = (store_id, template_id) in snapshot.holdings
            if rows_name_it and not os.path.lexists(layout.template_dir(root, template_id)):
                stores.untrash(root, trashed, template_id)
                LOG.warning("Store %d: put back template %d's copy, which a killed prune had "
                            "moved aside (its rows still name it)", store_id, template_id)
            else:
                stores.empty_trash(root, trashed)
                LOG.warning("Store %d: deleted template %d's copy, which a killed prune had "
                            "moved aside after its rows said it was gone", store_id,
                            template_id)
            finished += 1
    return finished


def space_by_store(outcomes: list[apply.Outcome], made: bool) -> dict[int, int]:
    freed: dict[int, int] = defaultdict(int)
    for outcome in outcomes:
        size = getattr(outcome.step.change, "size", None)
        if size is not None and (outcome.status == apply.READY or not made):
            freed[outcome.step.change.store_id] += size
    return dict(freed)


def _report(outcomes: list[apply.Outcome], config: Settings, dry_run: bool = False,
            nothing: bool = False, saved: Optional[str] = None) -> int:
    freed = space_by_store(outcomes, made=not dry_run)
    if config.json:
        print(json.dumps({"dry_run": dry_run, "backup": saved, "nothing_to_do": nothing,
                          "freed": {str(k): v for k, v in sorted(freed.items())},
                          "records": report.records(outcomes)}, indent=2))
    else:
        print(_text(outcomes, dry_run, nothing, saved))
    LOG.info("Done: %s", report.summary(outcomes))
    failed = any(o.status == apply.FAILED for o in outcomes)
    return errors.EXIT_FAILED if failed else errors.EXIT_OK


def _text(outcomes: list[apply.Outcome], dry_run: bool, nothing: bool = False,
          saved: Optional[str] = None) -> str:
    lines = [report.to_table(outcomes, dry_run=dry_run and not nothing)]
    if nothing:
        lines.append("Nothing to prune: every SYSTEM template left is kept (see why above).")
    freed = space_by_store(outcomes, made=not dry_run)
    verb = "would get back" if dry_run else "got back"
    lines += [f"Store {store_id} {verb} {human_size(size)}."
              for store_id, size in sorted(freed.items())]
    if saved:
        lines.append(f"Backup of the rows changed: {saved} (a record: the copies are deleted, "
                     "so it cannot be undone)")
    return "\n".join(lines)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", type=int, default=prune.DEFAULT_KEEP, metavar="N",
                        help="SYSTEM templates kept per hypervisor and arch, newest first "
                             f"(default {prune.DEFAULT_KEEP}: the current one and the one "
                             "before)")
    scope_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="change nothing; list every template, row and directory that "
                             "would go, with the space per store")
    parser.add_argument("--yes", action="store_true",
                        help="do not ask for confirmation (required without a terminal)")
    parser.add_argument("--backup-dir", metavar="DIR",
                        help=f"where the backup is written (default {DEFAULT_BACKUP_DIR})")
    store_arguments(parser)
    lock_argument(parser)


def _run(args: argparse.Namespace, config: Settings) -> int:
    if args.keep < 1:
        raise errors.SettingsError(f"--keep {args.keep}: at least 1 template per hypervisor "
                                   "must stay.")
    return run(args, config)


PRUNE_COMMAND = Command(
    "prune", "delete unused SystemVM templates and their copies",
    "Give the stores their space back: retire the SYSTEM templates older than the newest "
    "--keep per hypervisor and arch, as CloudStack retires a template (rows Destroyed, "
    "Inactive and removed; directories deleted from every store). Never one that a "
    "router.template.* setting names, that a VM or volume uses, or that is the only Ready "
    "one of a hypervisor in use. Lists everything first, asks (--yes without a terminal), "
    "and writes a backup of every row it changes.",
    _arguments, _run,
    exit_codes(errors.EXIT_FAILED, errors.EXIT_LOCKED,
               meaning={errors.EXIT_OK: "pruned (or, with --dry-run, planned), or nothing "
                                        "to do",
                        errors.EXIT_FAILED: "some copy or row could not be removed (listed)"}),
    mounts=True)
