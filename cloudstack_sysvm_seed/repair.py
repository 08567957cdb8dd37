"""`doctor` and `repair`: read the database and every zone's NFS stores into a doctor snapshot,
print the findings, and apply the repair decisions with a backup that `repair --undo` restores.

Order of a repair (holding the registration lock): observe, decide, write the backup of every
row that may change, copy templates onto the stores that lack them (apply.run: the same stage,
verify, publish path as seeding), then one transaction for the rows (templates, refs, zone
refs, settings, system VMs), then delete abandoned stages.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import decimal
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Iterable, Optional

from . import __version__, apply, doctor, errors, hypervisors, metadata, plan, sources, stores
from .catalog import Catalog, StoreRef, Template, now
from .doctor import (
    AddZoneRef,
    CopyTemplate,
    DropOverride,
    DropRef,
    FixRef,
    PointVms,
    RemoveStage,
    SetSetting,
    SetTemplate,
)
from .errors import MetadataError, SeedError, SettingsError, StoreError
from .session import connected, registration_lock
from .settings import Settings

LOG = logging.getLogger(__name__)

DEFAULT_BACKUP_DIR = "/var/lib/cloudstack-sysvm-seed/backups"
BACKUP_FORMAT = 1
DONE, FAILED, SKIPPED, PLANNED = "done", "failed", "skipped", "planned"
# Columns undo puts back where a live management server also writes the row: only ours.
_RESTORED_COLUMNS = {"configuration": ("value", "updated"), "vm_instance": ("vm_template_id",)}


# --- command line ---------------------------------------------------------------------------

DOCTOR_DESCRIPTION = (
    "Check, without changing anything, what keeps system VMs from starting: duplicate "
    "per-zone templates, missing zone refs and store copies, refs that are not Ready, files "
    "that disagree with the rows, zero sizes, router.template.<hv>, system VMs on old "
    "templates, orphan directories and abandoned stages. Exits 0 when healthy, 1 with "
    "findings.")
REPAIR_DESCRIPTION = (
    "Fix what doctor finds, where it is safe, in one run (the one-template-per-zone mess "
    "included): writes a JSON backup of every row it may change first; `repair --undo FILE` "
    "puts them back. Never destroys a VM and never deletes a template's files.")


def doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print the findings as JSON (code, rows, zones, stores, fix)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="where downloaded images are kept (accepted for symmetry)")


def repair_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--lock-timeout", type=float, metavar="SECONDS",
                        help="wait this long for the registration lock (default 1200)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_doctor(args: argparse.Namespace, config: Settings) -> int:
    with connected(config) as catalog, contextlib.ExitStack() as mounts:
        snapshot, _ = observe(catalog, config.mounts, mounts)
        findings = doctor.diagnose(snapshot)
    print(json.dumps([f.record() for f in findings], indent=2) if config.json
          else findings_text(findings))
    return errors.EXIT_FAILED if findings else errors.EXIT_OK


def run_repair(args: argparse.Namespace, config: Settings) -> int:
    if args.undo:
        return _run_undo(args, config)
    with connected(config) as catalog:
        locked = (contextlib.nullcontext() if config.dry_run
                  else registration_lock(catalog, config.lock_timeout))
        with locked, contextlib.ExitStack() as mounts:
            snapshot, roots = observe(catalog, config.mounts, mounts)
            bundled = bundled_sources(config, snapshot)
            decided = doctor.decide(snapshot, frozenset(bundled))
            if config.dry_run or not decided.actions:
                print(_report(decided, None, [], config.json, dry_run=config.dry_run))
                return errors.EXIT_FAILED if decided.left and not config.dry_run else 0
            if not config.json:
                print(plan_text(decided))
            _confirm(args, "Apply these changes?")
            backup = None
            if any(values for _, _, values in backup_scopes(decided)):
                backup = write_backup(catalog, decided, snapshot,
                                      args.backup_dir or DEFAULT_BACKUP_DIR)
                LOG.info("Backup of the rows repair may change: %s", backup)
            results = execute(decided, snapshot, catalog, roots, bundled, config)
    print(_report(decided, backup, results, config.json))
    failed = any(r.status != DONE for r in results)
    return errors.EXIT_FAILED if failed or decided.left else errors.EXIT_OK


def _run_undo(args: argparse.Namespace, config: Settings) -> int:
    saved = read_backup(args.undo)
    with connected(config) as catalog:
        if saved["database"] and saved["database"] != catalog.database_name():
            raise SettingsError(
                f"{args.undo} was taken from database {saved['database']!r}, not "
                f"{catalog.database_name()!r}.", "Point --db-properties at that database.")
        with registration_lock(catalog, config.lock_timeout):
            changes = undo(catalog, saved, dry_run=True)
            if not config.json:
                print(f"Undo {args.undo} ({saved['created']}): "
                      f"{len(changes) or 'no'} row change(s)")
                print("\n".join(f"- {c}" for c in changes))
            if changes and not config.dry_run:
                _confirm(args, "Put these rows back?")
                changes = undo(catalog, saved)
    kept = [f"store {c['store_id']}: template/tmpl/1/{c['template_id']}"
            for c in saved.get("copies", ())]
    if config.json:
        print(json.dumps({"backup": args.undo, "dry_run": config.dry_run, "changes": changes,
                          "copies_kept": kept}, indent=2))
    elif kept:
        print("Copies repair wrote are kept on the stores (doctor reports them; a repair "
              "records them again, or move them off by hand): " + ", ".join(kept))
    return errors.EXIT_OK


def _confirm(args: argparse.Namespace, question: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise SettingsError("repair changes the database and the stores; without a terminal "
                            "it needs --yes.", "Review `repair --dry-run`, then pass --yes.")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise SettingsError("Nothing was changed (not confirmed).")


# --- observe ----------------------------------------------------------------------------------


def observe(catalog: Catalog, mounts: stores.MountSettings,
            stack: contextlib.ExitStack) -> tuple[doctor.Snapshot, dict[int, str]]:
    """The doctor snapshot; every zone NFS store is mounted on `stack` (once) and surveyed."""
    templates = tuple(_template(r) for r in catalog.doctor_templates())
    ids = [t.id for t in templates]
    image_stores = tuple(catalog.image_stores())
    surveyed = [s for s in image_stores if s.protocol == "nfs" and s.zone_id is not None]
    keys = [hv.config_key for hv in hypervisors.HYPERVISORS]
    by_id = {t.id: t for t in templates}
    surveys, roots = {}, {}
    for store in surveyed:
        try:
            root = stack.enter_context(stores.mounted(store.url, mounts, f"store {store.id}"))
        except (StoreError, ValueError) as exc:
            LOG.error("store %d (%s): %s", store.id, store.url, exc)
            surveys[store.id] = doctor.Survey(store.id, error=str(exc))
            continue
        roots[store.id] = root
        surveys[store.id] = _survey(root, store.id, by_id)
    snapshot = doctor.Snapshot(
        zones=tuple(catalog.zones()),
        stores=image_stores,
        zone_hypervisors=catalog.zone_hypervisors(),
        templates=templates,
        refs=tuple(catalog.store_refs(ids)),
        zone_refs=frozenset((r["template_id"], r["zone_id"])
                            for r in catalog.doctor_zone_refs(ids)),
        holdings=catalog.doctor_store_holdings(s.id for s in surveyed),
        settings=catalog.doctor_settings(keys),
        overrides=tuple(doctor.Override(r["id"], r["dc_id"], r["name"], r["value"])
                        for r in catalog.doctor_zone_overrides(keys)),
        system_vms=tuple(
            doctor.SystemVm(r["id"], r["instance_name"], r["type"], r["data_center_id"],
                            r["hypervisor_type"], r["arch"] or hypervisors.DEFAULT_ARCH,
                            r["vm_template_id"])
            for r in catalog.doctor_system_vms()),
        surveys=surveys,
        now=now(),
    )
    return snapshot, roots


def _template(row: dict) -> doctor.SysTemplate:
    return doctor.SysTemplate(
        row["id"], row["uuid"] or "", row["name"], row["hypervisor_type"] or "",
        row["arch"] or hypervisors.DEFAULT_ARCH, row["state"], row["size"],
        bool(row["cross_zones"]), row["format"] or "", row["url"] or "")


def _extension(template: doctor.SysTemplate) -> str:
    hypervisor = hypervisors.by_db_name(template.hypervisor)
    return hypervisor.extension if hypervisor else template.image_format.lower()


def _survey(root: str, store_id: int, templates: dict) -> doctor.Survey:
    try:
        ids = stores.template_ids_on(root)
        copies = {tid: stores.probe(root, tid, _extension(templates[tid]))
                  for tid in ids if tid in templates}
        clock = time.time()
        stages = tuple((name, max(0.0, clock - mtime))
                       for name, mtime in stores.stages_on(root))
    except OSError as exc:
        return doctor.Survey(store_id, error=f"cannot read the store: {exc}")
    return doctor.Survey(store_id, "", tuple(ids), copies, stages)


def bundled_sources(config: Settings, snapshot: doctor.Snapshot) -> dict:
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


# --- backup and undo ------------------------------------------------------------------------


def backup_scopes(decided: doctor.RepairPlan) -> list[tuple[str, str, list]]:
    """(table, column, values): every row the actions may change, insert or delete."""
    actions = decided.actions
    templates = sorted({a.template_id for a in actions if hasattr(a, "template_id")})
    settings = sorted({a.name for a in actions if isinstance(a, (SetSetting, DropOverride))})
    vms = sorted({vm for a in actions if isinstance(a, PointVms) for vm in a.vm_ids})
    return [
        ("vm_template", "id", templates),
        ("template_store_ref", "template_id", templates),
        ("template_zone_ref", "template_id", templates),
        ("configuration", "name", settings),
        ("data_center_details", "name", settings),
        ("vm_instance", "id", vms),
    ]


def write_backup(catalog: Catalog, decided: doctor.RepairPlan, snapshot: doctor.Snapshot,
                 directory: str) -> str:
    """Write the backup (0600, fsynced, renamed into place) before anything changes.

    :raises SettingsError: when it cannot be written; nothing has changed then.
    """
    tables = []
    for table, column, values in backup_scopes(decided):
        if not values:
            continue
        rows = catalog.backup_rows(table, column, values)
        tables.append({"table": table, "column": column, "values": values,
                       "columns": list(_RESTORED_COLUMNS.get(table, ("*",))),
                       "rows": [{k: _encode(v) for k, v in row.items()} for row in rows]})
    copies = [{"store_id": a.store_id, "template_id": a.template_id}
              for a in decided.actions if isinstance(a, CopyTemplate)]
    document = {
        "format": BACKUP_FORMAT, "tool": f"cloudstack-sysvm-seed {__version__}",
        "created": now().isoformat(sep=" ") + " UTC", "database": catalog.database_name(),
        "findings": [f.record() for f in decided.findings],
        "actions": [a.describe() for a in decided.actions],
        "tables": tables, "copies": copies,
    }
    stamp = time.strftime("%Y%m%dT%H%M%S")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".repair-", dir=directory)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, indent=1)
            stores.fsync_file(stream)
        path = os.path.join(directory, f"repair-{stamp}-{os.getpid()}.json")
        os.rename(temporary, path)
    except OSError as exc:
        raise SettingsError(f"Cannot write the repair backup in {directory}: {exc}. Nothing "
                            "was changed.", "Pass --backup-dir DIR.") from exc
    return path


def read_backup(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as stream:
            document = json.load(stream)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"Cannot read the backup {path}: {exc}.") from exc
    if not isinstance(document, dict) or document.get("format") != BACKUP_FORMAT:
        raise SettingsError(f"{path} is not a repair backup (format {BACKUP_FORMAT}).")
    return document


def undo(catalog: Catalog, document: dict, dry_run: bool = False) -> list[str]:
    """Put the backed-up rows back in one transaction; rows added in a backed-up scope
    since are deleted, rows deleted are inserted again. Returns what changes."""
    changes: list[str] = []
    context = contextlib.nullcontext() if dry_run else catalog.transaction()
    with context:
        for entry in document["tables"]:
            table, columns = entry["table"], entry["columns"]
            key = Catalog.BACKUP_KEYS[table]
            saved = {row[key]: {k: _decode(v) for k, v in row.items()} for row in entry["rows"]}
            current = {row[key]: row for row in catalog.backup_rows(
                table, entry["column"], entry["values"])}
            added = sorted(set(current) - set(saved), key=str)
            if added:
                changes.append(f"{table}: delete {', '.join(map(str, added))} (added by repair)")
                if not dry_run:
                    catalog.delete_backup_rows(table, added)
            for row_key, row in saved.items():
                names = list(row) if columns == ["*"] else columns
                if row_key not in current:
                    changes.append(f"{table} {row_key}: insert again")
                    if not dry_run:
                        catalog.reinsert_row(table, row)
                    continue
                differ = [n for n in names if n in current[row_key]
                          and current[row_key][n] != row.get(n)]
                if differ:
                    changes.append(f"{table} {row_key}: restore {', '.join(differ)}")
                    if not dry_run:
                        catalog.restore_row(table, row, differ)
    return changes


def _encode(value):
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"$date": value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {"$seconds": value.total_seconds()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def _decode(value):
    if not isinstance(value, dict) or len(value) != 1:
        return value
    (kind, text), = value.items()
    if kind == "$datetime":
        return datetime.datetime.fromisoformat(text)
    if kind == "$date":
        return datetime.date.fromisoformat(text)
    if kind == "$seconds":
        return datetime.timedelta(seconds=text)
    if kind == "$decimal":
        return decimal.Decimal(text)
    if kind == "$bytes":
        return base64.b64decode(text)
    return value


# --- execute ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    action: doctor.Action
    status: str
    detail: str = ""


def execute(decided: doctor.RepairPlan, snapshot: doctor.Snapshot, catalog: Catalog,
            roots: dict, bundled: dict, config: Settings) -> list[Result]:
    results = _copy(decided, snapshot, catalog, roots, bundled, config)
    copied = {(r.action.template_id, r.action.zone_id) for r in results if r.status == DONE}
    ready = set(decided.ready) | copied
    results += _rows(decided, snapshot, catalog, ready)
    for action in (a for a in decided.actions if isinstance(a, RemoveStage)):
        try:
            stores.remove_stage(roots[action.store_id], action.name)
            results.append(Result(action, DONE))
        except (OSError, ValueError, KeyError) as exc:
            results.append(Result(action, FAILED, str(exc)))
    return results


def _copy(decided: doctor.RepairPlan, snapshot: doctor.Snapshot, catalog: Catalog,
          roots: dict, bundled: dict, config: Settings) -> list[Result]:
    """Seed each template onto the stores that lack it, through apply.run."""
    by_template: dict[int, list[CopyTemplate]] = {}
    for action in decided.actions:
        if isinstance(action, CopyTemplate):
            by_template.setdefault(action.template_id, []).append(action)
    zones = {z.id: z for z in snapshot.zones}
    store_of = {s.id: s for s in snapshot.stores}
    templates = {t.id: t for t in snapshot.templates}
    refs = {r.id: r for r in snapshot.refs}
    results = []
    for template_id, copies in by_template.items():
        template = templates[template_id]
        hypervisor = hypervisors.by_db_name(template.hypervisor)
        spec, source = _source(template, copies[0].source_store, snapshot, roots, bundled,
                               hypervisor)
        steps, action_of = [], {}
        for action in copies:
            ref = refs.get(action.ref_id) if action.ref_id else None
            step = plan.Step(
                plan.SEED, zones[action.zone_id], store_of[action.store_id], hypervisor.key,
                template.arch, template.id, "repair: " + action.describe(),
                StoreRef(ref.id, ref.template_id, ref.store_id, ref.state, ref.download_state,
                         ref.download_pct, ref.install_path, ref.size, ref.physical_size)
                if ref else None, stores.StoreCopy("absent"))
            steps.append(step)
            action_of[step] = action
        work = plan.TemplateWork(
            spec, Template(template.id, template.name, template.hypervisor, template.arch,
                           template.state, template.size, template.uuid),
            hypervisor.guest_os_id, (), not template.size, tuple(steps))
        outcomes = apply.run(plan.Plan((work,), ()), apply.Context(
            catalog, roots, {spec.section: source}, downloads=config.downloads,
            max_image_size=config.max_image_size, update_pointers=False,
            stall_timeout=config.stall_timeout))
        for outcome in outcomes:
            action = action_of.get(outcome.step)
            if action is not None:
                ok = outcome.status == apply.READY
                results.append(Result(action, DONE if ok else FAILED, outcome.error))
    return results


def _source(template: doctor.SysTemplate, donor: Optional[int], snapshot: doctor.Snapshot,
            roots: dict, bundled: dict, hypervisor):
    """The spec and source to copy from: the bundled file, or the donor store's copy (an
    uncompressed image, which apply's reader takes as it is)."""
    if donor is None:
        return bundled[template.id]
    copy = snapshot.surveys[donor].copies[template.id]
    path = os.path.join(stores.template_dir(roots[donor], template.id), copy.filename)
    spec = metadata.TemplateSpec(
        f"store-{donor}-template-{template.id}", hypervisor, template.arch, template.name,
        copy.filename, None, template.url, None)
    return spec, sources.Source(f"store {donor} copy", path)


def _rows(decided: doctor.RepairPlan, snapshot: doctor.Snapshot, catalog: Catalog,
          ready: set) -> list[Result]:
    """Every row change in one transaction, each one only when what it needs is Ready."""
    actions = [a for a in decided.actions
               if not isinstance(a, (CopyTemplate, RemoveStage))]
    results, done = [], []
    templates = {t.id: t for t in snapshot.templates}
    try:
        with catalog.transaction():
            when = now()
            for action in actions:
                missing = [f"{t} in zone {z}" for t, z in getattr(action, "needs", ())
                           if (t, z) not in ready]
                if missing:
                    results.append(Result(action, SKIPPED,
                                          "not Ready yet: template " + ", ".join(missing)))
                    continue
                _apply_row(catalog, action, templates, when)
                done.append(action)
    except SeedError as exc:
        LOG.error("Row changes rolled back: %s", exc)
        return results + [Result(a, FAILED, str(exc)) for a in done]
    return results + [Result(a, DONE) for a in done]


def _apply_row(catalog: Catalog, action: doctor.Action, templates: dict,
               when: datetime.datetime) -> None:
    if isinstance(action, SetTemplate):
        changes = {}
        if action.retire:
            changes = {"state": "Inactive", "removed": when}
        for name in ("state", "cross_zones", "size"):
            if getattr(action, name) is not None:
                changes[name] = getattr(action, name)
        catalog.repair_template(action.template_id, changes)
    elif isinstance(action, DropRef):
        catalog.repair_store_ref(action.ref_id, {"destroyed": 1})
    elif isinstance(action, FixRef):
        ref_id = action.ref_id or catalog.insert_store_ref(
            action.template_id, action.store_id, action.install_path,
            templates[action.template_id].url, when)
        catalog.mark_store_ref_ready(ref_id, action.install_path, action.size,
                                     action.physical_size, when)
    elif isinstance(action, AddZoneRef):
        catalog.add_zone_refs(action.template_id, [action.zone_id], when)
    elif isinstance(action, SetSetting):
        if catalog.config_value(action.name) != action.new:
            catalog.set_config(action.name, action.new, "Set by cloudstack-sysvm-seed repair")
    elif isinstance(action, DropOverride):
        catalog.repair_delete_zone_overrides([action.id])
    elif isinstance(action, PointVms):
        catalog.repair_point_vms(action.vm_ids, action.template_id)
    else:  # pragma: no cover - every action type is handled above
        raise TypeError(action)


# --- reports ----------------------------------------------------------------------------------


def findings_text(findings: Iterable[doctor.Finding]) -> str:
    findings = list(findings)
    if not findings:
        return "Healthy: no findings."
    lines = [f"{len(findings)} finding(s):"]
    for finding in findings:
        lines += ["", *_finding_lines(finding)]
    return "\n".join(lines)


def _finding_lines(finding: doctor.Finding) -> list[str]:
    where = " ".join(x for x in (finding.hypervisor, finding.arch) if x)
    rows = ", ".join(f"{table} {key}" for table, key in finding.rows) or "-"
    return [
        f"[{finding.code}]" + (f" {where}" if where else ""),
        f"  {finding.message}",
        f"  rows: {rows}; zones: {', '.join(map(str, finding.zones)) or '-'}; "
        f"stores: {', '.join(map(str, finding.stores)) or '-'}",
        f"  fix: {finding.fix}",
    ]


def plan_text(decided: doctor.RepairPlan) -> str:
    if not decided.decisions:
        return "Healthy: nothing to repair."
    lines = [f"{len(decided.decisions)} finding(s):"]
    for decision in decided.decisions:
        lines += ["", *_finding_lines(decision.finding)[:2]]
        lines += [f"  will: {a.describe()}" for a in decision.actions]
        if decision.left:
            lines.append(f"  left as is: {decision.left}")
    return "\n".join(lines)


def _report(decided: doctor.RepairPlan, backup: Optional[str], results: list[Result],
            as_json: bool, dry_run: bool = False) -> str:
    if as_json:
        return json.dumps({
            "dry_run": dry_run, "backup": backup,
            "findings": [{**d.finding.record(), "actions": [a.describe() for a in d.actions],
                          "left": d.left or None} for d in decided.decisions],
            "results": [{"action": r.action.describe(), "status": r.status,
                         "detail": r.detail or None} for r in results],
        }, indent=2)
    if not results:
        text = plan_text(decided)
        return ("Dry run: nothing was changed.\n" + text) if dry_run else text
    lines = [f"Backup: {backup} (undo: repair --undo {backup})" if backup
             else "Backup: none (no row changes)", "Results:"]
    lines += [f"  {r.status:7} {r.action.describe()}" + (f": {r.detail}" if r.detail else "")
              for r in results]
    left = decided.left
    if left:
        lines.append("Left as is:")
        lines += [f"  [{d.finding.code}] {d.left}" for d in left]
    return "\n".join(lines)
