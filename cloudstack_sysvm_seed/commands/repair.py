"""`repair`: fix what doctor finds, where it is safe, holding the registration lock: observe
(as doctor does), decide, show the plan and ask, write the backup of every row that may
change, then apply the plan (copies through the same stage, verify, publish path as seeding,
then the row changes, each when what it needs is Ready). `repair --undo BACKUP` puts the
rows back."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

from .. import apply, backup, doctor, errors, hypervisors, layout, lock, metadata, plan, sources
from ..errors import MetadataError, SettingsError
from ..model import CopyTemplate, Plan, Snapshot
from ..observe import Observer
from ..settings import DEFAULT_BACKUP_DIR, Settings
from . import Command, confirm, connected, exit_codes, lock_argument, store_arguments
from .doctor import finding_lines, observe_all

LOG = logging.getLogger(__name__)

DONE, FAILED, SKIPPED = "done", "failed", "skipped"
_RESULT_OF = {apply.READY: DONE, apply.FAILED: FAILED, apply.HELD: SKIPPED}
CHANGED_MEANWHILE = ("the database changed while the copies were written; run `repair` "
                     "again (the copies are kept and will be recorded)")


@dataclass(frozen=True)
class Result:
    action: doctor.Action
    status: str
    detail: str = ""


def repair(args: argparse.Namespace, config: Settings) -> int:
    with connected(config) as catalog:
        locked = (contextlib.nullcontext() if config.dry_run
                  else lock.registration_lock(catalog, config.lock_timeout))
        with locked as held, Observer(catalog, config.mounts, config.jobs) as observer:
            snapshot = observe_all(observer)
            bundled = bundled_sources(config, snapshot)
            decided = doctor.decide(snapshot, frozenset(bundled))
            if config.dry_run or not decided.actions:
                print(_report(decided, None, [], config.json, dry_run=config.dry_run))
                return errors.EXIT_FAILED if decided.left and not config.dry_run else 0
            if not config.json:
                print(plan_text(decided))
            confirm(args.yes, "Apply these changes?",
                    "repair changes the database and the stores")
            saved = None
            if any(values for _, _, values in backup.scopes(decided.actions)):
                saved = backup.write(catalog, decided.actions,
                                     args.backup_dir or DEFAULT_BACKUP_DIR, decided.findings)
                LOG.info("Backup of the rows repair may change: %s", saved)
            specs, found = copy_sources(decided, snapshot, observer.roots, bundled)
            the_plan = plan.repair_plan(snapshot, decided, specs)

            def replan(touched: list[int]) -> Optional[Plan]:
                # The backup covers the rows decided on: a new decision could reach past it.
                if not observer.changed_since(snapshot, touched):
                    return None
                return dataclasses.replace(the_plan, steps=tuple(
                    dataclasses.replace(s, held=True, reason=f"{s.reason}: {CHANGED_MEANWHILE}")
                    for s in the_plan.steps))

            outcomes = apply.run(the_plan, apply.Context(
                catalog, observer.roots, found, config.downloads, config.max_image_size,
                config.stall_timeout, guard=held.verify, replan=replan))
    results = [Result(o.step.change, _RESULT_OF.get(o.status, FAILED), o.error or _why(o))
               for o in outcomes if o.step.change is not None]
    print(_report(decided, saved, results, config.json))
    for result in results:
        if result.status == FAILED:  # stderr and the log file say why, --json or not
            LOG.error("Failed: %s: %s", result.action.describe(), result.detail)
    failed = any(r.status != DONE for r in results)
    return errors.EXIT_FAILED if failed or decided.left else errors.EXIT_OK


def _why(outcome: apply.Outcome) -> str:
    """What held a change back: the words after "held back: " in its detail."""
    return outcome.detail.rpartition("; held back: ")[2] if outcome.status == apply.HELD else ""


def bundled_sources(config: Settings, snapshot: Snapshot) -> dict:
    """Templates whose image metadata.ini bundles (or our cache holds): id -> (spec, source).
    Downloads are not used: repair copies what is already on this host or on a store."""
    path = os.path.join(config.templates_dir, "metadata.ini")
    try:
        meta = metadata.load(path)
    except MetadataError as exc:
        LOG.info("No bundled images to copy from (%s); stores are the only source", exc)
        return {}
    found = {}
    for template in snapshot.templates:
        hypervisor = hypervisors.by_db_name(template.hypervisor)
        spec = meta.spec_for(hypervisor, template.arch) if hypervisor else None
        if spec is None or spec.name != template.name:
            continue
        source = sources.locate(spec, meta, config.templates_dir, config.downloads)
        if isinstance(source, sources.Source) and source.kind != sources.DOWNLOAD:
            found[template.id] = (spec, source)
    return found


def copy_sources(decided: doctor.RepairPlan, snapshot: Snapshot, roots: dict,
                 bundled: dict) -> tuple[dict, dict]:
    """For each template repair copies: the spec to copy it by (template id -> spec) and its
    source (section -> Source): the bundled file, or the donor store's complete copy."""
    specs, found = {}, {}
    for action in decided.actions:
        if not isinstance(action, CopyTemplate) or action.template_id in specs:
            continue
        if action.source_store is None:
            spec, source = bundled[action.template_id]
        else:
            template = snapshot.template(action.template_id)
            copy = snapshot.copy(action.source_store, template.id)
            spec = plan.donor_spec(template, action.source_store, copy)
            path = os.path.join(layout.template_dir(roots[action.source_store], template.id),
                                copy.filename)
            source = sources.Source(f"store {action.source_store} copy", path)
        specs[action.template_id] = spec
        found[spec.section] = source
    return specs, found


def undo(args: argparse.Namespace, config: Settings) -> int:
    saved = backup.read(args.undo)
    if saved.get("command", "repair") != "repair":
        raise SettingsError(
            f"{args.undo} is the record of a {saved['command']}, which deleted copies from "
            "the stores: putting its rows back would point CloudStack at copies that are "
            "gone.", "Seed the templates again instead, if they are needed.")
    with connected(config) as catalog:
        if saved["database"] and saved["database"] != catalog.database_name():
            raise SettingsError(
                f"{args.undo} was taken from database {saved['database']!r}, not "
                f"{catalog.database_name()!r}.", "Point --db-properties at that database.")
        with lock.registration_lock(catalog, config.lock_timeout):
            changes = backup.undo(catalog, saved, dry_run=True)
            if not config.json:
                print(f"Undo {args.undo} ({saved['created']}): "
                      f"{len(changes) or 'no'} row change(s)")
                print("\n".join(f"- {c}" for c in changes))
            if changes and not config.dry_run:
                confirm(args.yes, "Put these rows back?", "undo changes the database")
                changes = backup.undo(catalog, saved)
    kept = [f"store {c['store_id']}: template/tmpl/1/{c['template_id']}"
            for c in saved.get("copies", ())]
    if config.json:
        print(json.dumps({"backup": args.undo, "dry_run": config.dry_run, "changes": changes,
                          "copies_kept": kept}, indent=2))
    elif kept:
        print("Copies repair wrote are kept on the stores (doctor reports them; a repair "
              "records them again, or move them off by hand): " + ", ".join(kept))
    return errors.EXIT_OK


def plan_text(decided: doctor.RepairPlan) -> str:
    if not decided.decisions:
        return "Healthy: nothing to repair."
    lines = [f"{len(decided.decisions)} finding(s):"]
    for decision in decided.decisions:
        lines += ["", *finding_lines(decision.finding)[:2]]
        lines += [f"  will: {a.describe()}" for a in decision.actions]
        if decision.left:
            lines.append(f"  left as is: {decision.left}")
    return "\n".join(lines)


def _report(decided: doctor.RepairPlan, saved: Optional[str], results: list[Result],
            as_json: bool, dry_run: bool = False) -> str:
    if as_json:
        return json.dumps({
            "dry_run": dry_run, "backup": saved,
            "findings": [{**d.finding.record(), "actions": [a.describe() for a in d.actions],
                          "left": d.left or None} for d in decided.decisions],
            "results": [{"action": r.action.describe(), "status": r.status,
                         "detail": r.detail or None} for r in results],
        }, indent=2)
    if not results:
        text = plan_text(decided)
        return ("Dry run: nothing was changed.\n" + text) if dry_run else text
    lines = [f"Backup: {saved} (undo: repair --undo {saved})" if saved
             else "Backup: none (no row changes)", "Results:"]
    lines += [f"  {r.status:7} {r.action.describe()}" + (f": {r.detail}" if r.detail else "")
              for r in results]
    left = decided.left
    if left:
        lines.append("Left as is:")
        lines += [f"  [{d.finding.code}] {d.left}" for d in left]
    return "\n".join(lines)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="change nothing; print the findings and what repair would do")
    parser.add_argument("--yes", action="store_true",
                        help="do not ask for confirmation (required without a terminal)")
    parser.add_argument("--undo", metavar="BACKUP",
                        help="put back the rows saved in this backup file")
    parser.add_argument("--backup-dir", metavar="DIR",
                        help=f"where the backup is written (default {DEFAULT_BACKUP_DIR})")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="downloaded images usable as a copy source")
    parser.add_argument("--max-image-size", type=float, metavar="GIB",
                        help="refuse images that expand beyond this (default 64)")
    store_arguments(parser)
    lock_argument(parser)


def _run(args: argparse.Namespace, config: Settings) -> int:
    return undo(args, config) if args.undo else repair(args, config)


REPAIR = Command(
    "repair", "fix what doctor finds; --undo restores its backup",
    "Fix what doctor finds, where it is safe, in one run (the one-template-per-zone mess "
    "included): shows the plan and asks (--yes without a terminal), writes a JSON backup of "
    "every row it may change first; `repair --undo FILE` puts them back. Never destroys a "
    "VM and never deletes a template's files.",
    _arguments, _run,
    exit_codes(errors.EXIT_FAILED, errors.EXIT_LOCKED,
               meaning={errors.EXIT_OK: "repaired (or, with --dry-run, planned)",
                        errors.EXIT_FAILED: "something failed, or was left as is "
                                            "(the report says why)"}),
    mounts=True)
