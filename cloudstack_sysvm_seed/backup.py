"""The backup a repair (or prune) writes before it changes anything, and the undo that
restores a repair's.

A backup holds, as JSON, every row the repair may change, insert or delete, scoped by the
tables and keys of its actions; undo puts them back in one transaction (rows added since in a
backed-up scope are deleted, rows deleted are inserted again). Copies written to stores are
listed, and kept: undo never deletes a template's files.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import json
import os
import tempfile
import time

from . import __version__, stores
from .catalog import Catalog, now
from .errors import SettingsError
from .model import CopyTemplate, DropOverride, PointVms, SetSetting

FORMAT = 1
# Columns undo puts back where a live management server also writes the row: only ours.
_RESTORED_COLUMNS = {"configuration": ("value", "updated"), "vm_instance": ("vm_template_id",)}


def scopes(actions) -> list[tuple[str, str, list]]:
    """(table, column, values): every row the actions may change, insert or delete."""
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


def write(catalog: Catalog, actions, directory: str, findings=(),
          command: str = "repair") -> str:
    """Write the backup of the rows `actions` may change (0600, fsynced, renamed into
    place) before anything changes; returns its path. findings: doctor's, for the record.

    :raises SettingsError: when it cannot be written; nothing has changed then.
    """
    tables = []
    for table, column, values in scopes(actions):
        if not values:
            continue
        rows = catalog.backup_rows(table, column, values)
        tables.append({"table": table, "column": column, "values": values,
                       "columns": list(_RESTORED_COLUMNS.get(table, ("*",))),
                       "rows": [{k: _encode(v) for k, v in row.items()} for row in rows]})
    copies = [{"store_id": a.store_id, "template_id": a.template_id}
              for a in actions if isinstance(a, CopyTemplate)]
    document = {
        "format": FORMAT, "tool": f"cloudstack-sysvm-seed {__version__}", "command": command,
        "created": now().isoformat(sep=" ") + " UTC", "database": catalog.database_name(),
        "findings": [f.record() for f in findings],
        "actions": [a.describe() for a in actions],
        "tables": tables, "copies": copies,
    }
    stamp = time.strftime("%Y%m%dT%H%M%S")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{command}-", dir=directory)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, indent=1)
            stores.fsync_file(stream)
        path = os.path.join(directory, f"{command}-{stamp}-{os.getpid()}.json")
        os.rename(temporary, path)
    except OSError as exc:
        raise SettingsError(f"Cannot write the {command} backup in {directory}: {exc}. "
                            "Nothing was changed.", "Pass --backup-dir DIR.") from exc
    return path


def read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as stream:
            document = json.load(stream)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"Cannot read the backup {path}: {exc}.") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SettingsError(f"{path} is not a repair backup (format {FORMAT}).")
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
