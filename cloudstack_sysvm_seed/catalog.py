"""All SQL: named, parameterised queries against CloudStack's `cloud` database.

The schema's columns are learned once from information_schema, so one code path serves
databases from 4.11 (no readonly, no deploy_as_is, no arch) to 4.22.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import pymysql
from pymysql.constants import CLIENT

from .dbprops import DbConfig
from .errors import CatalogError

LOG = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10
READY_DOWNLOAD_STATES = ("DOWNLOADED", "BYPASSED")
NFS_VERSION_KEY = "secstorage.nfs.version"  # global setting, also a store detail in 4.22
NFS_VERSION_DETAIL = "nfs.version"
_REQUIRED_TABLES = (
    "data_center", "image_store", "cluster", "vm_template", "template_zone_ref",
    "template_store_ref",
)
_IDENTIFIER = re.compile(r"^[a-z_]+$")


@dataclass(frozen=True)
class Zone:
    id: int
    uuid: str
    name: str


@dataclass(frozen=True)
class Store:
    id: int
    uuid: str
    name: str
    zone_id: Optional[int]  # None for a region-wide store
    url: str
    protocol: str
    provider: str
    readonly: bool
    nfs_version: Optional[str] = None  # image_store_details, else secstorage.nfs.version


@dataclass(frozen=True)
class Template:
    id: int
    name: str
    hypervisor: str  # database spelling, e.g. KVM
    arch: str
    state: Optional[str]  # None on schemas without the column
    size: Optional[int]
    uuid: Optional[str]


@dataclass(frozen=True)
class StoreRef:
    id: int
    template_id: int
    store_id: int
    state: str
    download_state: Optional[str]
    download_pct: Optional[int]
    install_path: Optional[str]
    size: Optional[int]
    physical_size: Optional[int]
    error_str: Optional[str] = None
    last_updated: Optional[datetime.datetime] = None

    @property
    def ready(self) -> bool:
        """As CloudStack counts a copy usable (findSystemVMReadyTemplates)."""
        return self.state == "Ready" and self.download_state in READY_DOWNLOAD_STATES


@dataclass(frozen=True)
class NewTemplate:
    """The values of a vm_template row we register (upstream's, see reference 1.6)."""

    id: int
    uuid: str
    name: str
    url: str
    checksum: str  # always {ALG}hex
    image_format: str
    guest_os_id: int
    hypervisor: str
    arch: str


def now() -> datetime.datetime:
    """CloudStack keeps timestamps in UTC, without a zone."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, microsecond=0)


class Catalog:
    """A connection to the cloud database, and every statement the tool runs on it."""

    def __init__(self, connection):
        self.conn = connection
        self.config: Optional[DbConfig] = None  # set by connect(); needed for named_lock()
        # Called before every write transaction; the run's lock sets it to check it still
        # holds the registration lock.
        self.guard: Callable[[], None] = lambda: None
        self.columns = self._learn_columns()

    @classmethod
    def connect(cls, config: DbConfig) -> Catalog:
        """:raises CatalogError: naming the server and the cause, never the password."""
        catalog = cls(_open(config))
        catalog.config = config
        return catalog

    def named_lock(self) -> NamedLock:
        """A second connection for MySQL user locks, as CloudStack's GlobalLock keeps one."""
        return NamedLock(_open(self.config))

    def close(self) -> None:
        self.conn.close()

    # --- schema --------------------------------------------------------------------------

    def _learn_columns(self) -> dict[str, frozenset[str]]:
        rows = self._all(
            "SELECT table_name AS t, column_name AS c FROM information_schema.columns "
            "WHERE table_schema = DATABASE()"
        )
        tables: dict[str, set[str]] = {}
        for row in rows:
            tables.setdefault(row["t"].lower(), set()).add(row["c"].lower())
        missing = [t for t in _REQUIRED_TABLES if t not in tables]
        if missing:
            raise CatalogError(
                f"The database does not look like CloudStack's cloud database: no table "
                f"{', '.join(missing)}.",
                "Check db.cloud.name in db.properties.",
            )
        return {name: frozenset(cols) for name, cols in tables.items()}

    def has(self, table: str, column: str) -> bool:
        return column in self.columns.get(table, ())

    # --- reads ---------------------------------------------------------------------------

    def zones(self) -> list[Zone]:
        rows = self._all("SELECT id, uuid, name FROM data_center WHERE removed IS NULL ORDER BY id")
        return [Zone(r["id"], r["uuid"] or "", r["name"]) for r in rows]

    def image_stores(self) -> list[Store]:
        """Every non-removed store with role Image, whatever its protocol."""
        readonly = "readonly" if self.has("image_store", "readonly") else "0"
        rows = self._all(
            "SELECT id, uuid, name, data_center_id, url, protocol, image_provider_name, "
            f"{readonly} AS readonly FROM image_store "
            "WHERE removed IS NULL AND role = 'Image' ORDER BY id"
        )
        versions = self._nfs_versions()
        return [
            Store(r["id"], r["uuid"] or "", r["name"], r["data_center_id"], r["url"] or "",
                  (r["protocol"] or "").lower(), r["image_provider_name"] or "",
                  bool(r["readonly"]), versions.get(r["id"], versions.get(None)))
            for r in rows
        ]

    def _nfs_versions(self) -> dict[Optional[int], str]:
        """NFS versions by store id (None: the global secstorage.nfs.version)."""
        versions: dict[Optional[int], str] = {}
        if "configuration" in self.columns:
            versions[None] = self.config_value(NFS_VERSION_KEY) or None
        if "image_store_details" in self.columns:
            for row in self._all(
                    "SELECT store_id, value FROM image_store_details WHERE name IN (%s, %s) "
                    "ORDER BY name DESC", (NFS_VERSION_DETAIL, NFS_VERSION_KEY)):
                if (row["value"] or "").strip():
                    versions.setdefault(row["store_id"], row["value"].strip())
        return {k: v for k, v in versions.items() if v}

    def zone_hypervisors(self) -> dict[int, frozenset[tuple[str, str]]]:
        """(hypervisor, arch) pairs of each zone's non-removed clusters, External excluded."""
        arch = "arch" if self.has("cluster", "arch") else "NULL"
        rows = self._all(
            f"SELECT DISTINCT data_center_id, hypervisor_type, {arch} AS arch "
            "FROM cluster WHERE removed IS NULL AND hypervisor_type IS NOT NULL "
            "AND hypervisor_type <> 'External'"
        )
        pairs: dict[int, set[tuple[str, str]]] = {}
        for r in rows:
            pairs.setdefault(r["data_center_id"], set()).add(
                (r["hypervisor_type"], r["arch"] or "x86_64"))
        return {zone: frozenset(p) for zone, p in pairs.items()}

    def system_templates(self, names: Iterable[str]) -> list[Template]:
        """Non-removed SYSTEM templates with one of these names, newest first."""
        names = sorted(set(names))
        if not names:
            return []
        return self._system_templates(f"name IN ({_marks(names)})", names)

    def system_templates_of(self, hypervisor: str, arch: str) -> list[Template]:
        """Non-removed SYSTEM templates of a hypervisor (and arch, where recorded)."""
        arch_column = "arch" if self.has("vm_template", "arch") else "'x86_64'"
        return self._system_templates(f"hypervisor_type = %s AND {arch_column} = %s",
                                      [hypervisor, arch])

    def _system_templates(self, condition: str, args: list) -> list[Template]:
        arch = "arch" if self.has("vm_template", "arch") else "NULL"
        state = "state" if self.has("vm_template", "state") else "NULL"
        size = "size" if self.has("vm_template", "size") else "NULL"
        rows = self._all(
            f"SELECT id, name, hypervisor_type, {arch} AS arch, {state} AS state, "
            f"{size} AS size, uuid FROM vm_template WHERE type = 'SYSTEM' AND removed IS NULL "
            f"AND {condition} ORDER BY id DESC", args)
        return [Template(r["id"], r["name"], r["hypervisor_type"] or "", r["arch"] or "x86_64",
                         r["state"], r["size"], r["uuid"]) for r in rows]

    def templates_named(self, name: str) -> list[dict]:
        """Non-removed templates of any type with this name (registration matches names)."""
        return self._all("SELECT id, type, hypervisor_type FROM vm_template "
                         "WHERE name = %s AND removed IS NULL ORDER BY id", (name,))

    def store_refs(self, template_ids: Iterable[int]) -> list[StoreRef]:
        ids = sorted(set(template_ids))
        if not ids:
            return []
        marks = ", ".join(["%s"] * len(ids))
        rows = self._all(
            "SELECT id, template_id, store_id, state, download_state, download_pct, "
            "install_path, size, physical_size, error_str, last_updated "
            f"FROM template_store_ref WHERE template_id IN ({marks}) AND store_role = 'Image' "
            "AND destroyed = 0 ORDER BY id",
            ids,
        )
        return [StoreRef(**row) for row in rows]

    def zone_refs(self, template_ids: Iterable[int]) -> frozenset[tuple[int, int]]:
        ids = sorted(set(template_ids))
        if not ids:
            return frozenset()
        marks = ", ".join(["%s"] * len(ids))
        rows = self._all(
            "SELECT template_id, zone_id FROM template_zone_ref "
            f"WHERE template_id IN ({marks}) AND removed IS NULL",
            ids,
        )
        return frozenset((r["template_id"], r["zone_id"]) for r in rows)

    def guest_os_ids(self, display_names: Iterable[str]) -> dict[str, int]:
        names = sorted(set(display_names))
        if not names or "guest_os" not in self.columns:
            return {}
        marks = ", ".join(["%s"] * len(names))
        rows = self._all(
            "SELECT display_name, MIN(id) AS id FROM guest_os "
            f"WHERE removed IS NULL AND display_name IN ({marks}) "
            "GROUP BY display_name",
            names,
        )
        return {r["display_name"]: r["id"] for r in rows}

    # --- writes, inside `transaction()` -----------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit when the block ends normally; roll back on any exception, interrupts too.

        The connection runs in autocommit mode, so reads outside this block always see fresh
        rows; BEGIN opens an explicit transaction all the same.
        """
        self.guard()
        self._reconnect_if_dropped()
        try:
            self.conn.begin()
            yield
        except pymysql.MySQLError as exc:
            self._rollback_quietly()
            raise CatalogError(f"Database error, changes rolled back: {_reason(exc)}.") from exc
        except BaseException:
            self._rollback_quietly()
            raise
        try:
            self.conn.commit()
        except pymysql.MySQLError as exc:
            self._rollback_quietly()
            raise CatalogError(f"Commit failed: {_reason(exc)}.") from exc

    def _reconnect_if_dropped(self) -> None:
        """A connection dropped since the last write (server restart, idle timeout, KILL) is
        opened again; nothing is lost, as no transaction was open on it."""
        try:
            self.conn.ping(False)
        except pymysql.MySQLError as exc:
            if self.config is None:
                raise CatalogError(f"The database connection was lost: {_reason(exc)}.") from exc
            LOG.warning("The database connection was lost (%s); connecting again", _reason(exc))
            self.conn = _open(self.config)

    def allocate_template_id(self) -> int:
        """The next template id, kept in step with `sequence.vm_template_seq`.

        Upstream takes unique_name's number from the sequence and the id from AUTO_INCREMENT,
        which can disagree; we take one number that satisfies both and insert it explicitly.
        """
        # No FOR UPDATE here: that would lock vm_template for the management servers.
        (highest,) = self._one("SELECT COALESCE(MAX(id), 0) AS m FROM vm_template")
        candidate = int(highest) + 1  # COALESCE over BIGINT UNSIGNED comes back as Decimal
        if "sequence" in self.columns:
            row = self._row("SELECT value FROM sequence WHERE name = 'vm_template_seq' FOR UPDATE")
            if row is not None:
                candidate = max(candidate, int(row["value"]))
                self._execute("UPDATE sequence SET value = %s WHERE name = 'vm_template_seq'",
                              (candidate + 1,))
        return candidate

    def insert_template(self, template: NewTemplate, created: datetime.datetime) -> None:
        """Insert the vm_template row, Inactive until a copy is Ready (as upstream)."""
        self._insert("vm_template", {
            "id": template.id,
            "uuid": template.uuid,
            "unique_name": f"routing-{template.id}",
            "name": template.name,
            "display_text": template.name,
            "public": 0,
            "featured": 0,
            "type": "SYSTEM",
            "hvm": 1,
            "bits": 64,
            "account_id": 1,
            "url": template.url,
            "checksum": template.checksum,
            "enable_password": 0,
            "format": template.image_format,
            "guest_os_id": template.guest_os_id,
            "cross_zones": 1,
            "hypervisor_type": template.hypervisor,
            "created": created,
            "state": "Inactive",
            "deploy_as_is": 0,
            "arch": template.arch,
        })

    def activate_template(self, template_id: int, virtual_size: int) -> None:
        changes = {"state": "Active", "size": virtual_size}
        self._update("vm_template", changes, template_id)

    def add_zone_refs(self, template_id: int, zone_ids: Iterable[int],
                      when: datetime.datetime) -> None:
        for zone_id in zone_ids:
            self._insert("template_zone_ref", {
                "zone_id": zone_id, "template_id": template_id, "created": when,
                "last_updated": when,
            })

    def insert_store_ref(self, template_id: int, store_id: int, install_path: str, url: str,
                         when: datetime.datetime) -> int:
        """A store ref in its first state (NOT_DOWNLOADED/Allocated), as upstream inserts it."""
        return self._insert("template_store_ref", {
            "store_id": store_id,
            "template_id": template_id,
            "created": when,
            "last_updated": when,
            "download_pct": 0,
            "download_state": "NOT_DOWNLOADED",
            "state": "Allocated",
            "install_path": install_path,
            "url": url,
            "store_role": "Image",
            "physical_size": 0,
            "is_copy": 0,
            "destroyed": 0,
            "update_count": 0,
            "ref_cnt": 0,
        })

    def mark_store_ref_ready(self, ref_id: int, install_path: str, virtual_size: int,
                             physical_size: int, when: datetime.datetime) -> None:
        self._update("template_store_ref", {
            "download_state": "DOWNLOADED",
            "state": "Ready",
            "download_pct": 100,
            "install_path": install_path,
            "size": virtual_size,
            "physical_size": physical_size,
            "error_str": None,
            "last_updated": when,
        }, ref_id)

    # --- what CloudStack reads after registration ------------------------------------------

    def config_value(self, name: str) -> Optional[str]:
        row = self._row("SELECT value FROM configuration WHERE name = %s", (name,))
        return row["value"] if row else None

    def set_config(self, name: str, value: str, description: str) -> None:
        """Set a global setting, inserting the row when it is missing.

        Upstream's plain UPDATE reported success when no row matched; here a missing row is
        inserted, so the value always lands.
        """
        changes = {"value": value, "updated": now()}
        present = {k: v for k, v in changes.items() if self.has("configuration", k)}
        assignments = ", ".join(f"{k} = %s" for k in present)
        matched = self._execute(f"UPDATE configuration SET {assignments} WHERE name = %s",
                                [*present.values(), name])
        if matched == 0:
            self._insert("configuration", {
                "category": "Advanced", "instance": "DEFAULT",
                "component": "ManagementServer", "name": name, "value": value,
                "default_value": value, "description": description, "updated": now(),
                "scope": "Global", "is_dynamic": 0,
            })

    def delete_zone_overrides(self, names: Iterable[str], zone_ids: Iterable[int]) -> int:
        """Zone-level values of these settings (data_center_details), which would hide ours."""
        names, zones = sorted(set(names)), sorted(set(zone_ids))
        if not names or not zones or "data_center_details" not in self.columns:
            return 0
        return self._execute(
            f"DELETE FROM data_center_details WHERE name IN ({_marks(names)}) "
            f"AND dc_id IN ({_marks(zones)})", [*names, *zones])

    def system_vms_not_on(self, template_id: int, hypervisor: str, arch: str,
                          zone_ids: Iterable[int]) -> list[dict]:
        """Non-removed system VMs of a hypervisor (and arch, where hosts record one) in these
        zones that use another template. A VM without a host counts as x86_64."""
        zones = sorted(set(zone_ids))
        if not zones:
            return []
        arch_join, arch_test, args = "", "", [template_id, hypervisor, *zones]
        if self.has("host", "arch"):
            arch_join = "LEFT JOIN host h ON h.id = COALESCE(vm.host_id, vm.last_host_id) "
            arch_test = "AND COALESCE(h.arch, 'x86_64') = %s "
            args.append(arch)
        return self._all(
            "SELECT vm.id, vm.instance_name, vm.type, vm.data_center_id, vm.vm_template_id "
            f"FROM vm_instance vm {arch_join}"
            "WHERE vm.removed IS NULL AND vm.type <> 'User' AND vm.vm_template_id <> %s "
            f"AND vm.hypervisor_type = %s AND vm.data_center_id IN ({_marks(zones)}) "
            f"{arch_test}ORDER BY vm.id", args)

    def point_system_vms_at(self, vm_ids: Iterable[int], template_id: int) -> int:
        ids = sorted(set(vm_ids))
        if not ids:
            return 0
        return self._execute(
            f"UPDATE vm_instance SET vm_template_id = %s WHERE id IN ({_marks(ids)})",
            [template_id, *ids])

    # --- doctor and repair ---------------------------------------------------------------

    # Tables repair may change, each with its key, and the columns a backup is scoped by.
    BACKUP_KEYS = {
        "vm_template": "id", "template_zone_ref": "id", "template_store_ref": "id",
        "configuration": "name", "data_center_details": "id", "vm_instance": "id",
    }
    _BACKUP_SCOPES = frozenset({
        ("vm_template", "id"), ("template_zone_ref", "template_id"),
        ("template_store_ref", "template_id"), ("configuration", "name"),
        ("data_center_details", "name"), ("vm_instance", "id"),
    })
    _COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")
    _TEMPLATE_REPAIRS = frozenset({"state", "cross_zones", "removed", "size"})
    _REF_REPAIRS = frozenset({"install_path", "size", "physical_size", "state",
                              "download_state", "download_pct", "error_str", "last_updated",
                              "destroyed"})

    def database_name(self) -> str:
        (name,) = self._one("SELECT DATABASE() AS db")
        return name or ""

    def doctor_templates(self) -> list[dict]:
        """Every non-removed SYSTEM template, whatever its name, with what doctor checks."""
        optional = {"arch": "'x86_64'", "state": "NULL", "size": "NULL"}
        extra = ", ".join(f"{c if self.has('vm_template', c) else default} AS {c}"
                          for c, default in optional.items())
        return self._all(
            "SELECT id, uuid, name, hypervisor_type, format, url, cross_zones, "
            f"{extra} FROM vm_template WHERE type = 'SYSTEM' AND removed IS NULL ORDER BY id")

    def doctor_zone_refs(self, template_ids: Iterable[int]) -> list[dict]:
        ids = sorted(set(template_ids))
        if not ids:
            return []
        return self._all(
            "SELECT id, template_id, zone_id FROM template_zone_ref "
            f"WHERE template_id IN ({_marks(ids)}) AND removed IS NULL ORDER BY id", ids)

    def doctor_store_holdings(self, store_ids: Iterable[int]) -> frozenset[tuple[int, int]]:
        """(store id, template id) of every non-destroyed ref on these stores, any template."""
        ids = sorted(set(store_ids))
        if not ids:
            return frozenset()
        rows = self._all(
            "SELECT DISTINCT store_id, template_id FROM template_store_ref "
            f"WHERE store_id IN ({_marks(ids)}) AND destroyed = 0", ids)
        return frozenset((r["store_id"], r["template_id"]) for r in rows)

    def doctor_settings(self, names: Iterable[str]) -> dict[str, Optional[str]]:
        """Global values of these settings; a name without a row is left out."""
        names = sorted(set(names))
        if not names:
            return {}
        rows = self._all(
            f"SELECT name, value FROM configuration WHERE name IN ({_marks(names)})", names)
        return {r["name"]: r["value"] for r in rows}

    def doctor_zone_overrides(self, names: Iterable[str]) -> list[dict]:
        names = sorted(set(names))
        if not names or "data_center_details" not in self.columns:
            return []
        return self._all(
            "SELECT id, dc_id, name, value FROM data_center_details "
            f"WHERE name IN ({_marks(names)}) ORDER BY id", names)

    def doctor_system_vms(self) -> list[dict]:
        """Non-removed system VMs (every type but User), with the arch of their host."""
        arch_join, arch = "", "'x86_64'"
        if self.has("host", "arch"):
            host = ("COALESCE(vm.host_id, vm.last_host_id)"
                    if self.has("vm_instance", "last_host_id") else "vm.host_id")
            arch_join, arch = f"LEFT JOIN host h ON h.id = {host} ", "COALESCE(h.arch, 'x86_64')"
        return self._all(
            "SELECT vm.id, vm.instance_name, vm.type, vm.data_center_id, vm.hypervisor_type, "
            f"vm.vm_template_id, {arch} AS arch FROM vm_instance vm {arch_join}"
            "WHERE vm.removed IS NULL AND vm.type <> 'User' ORDER BY vm.id")

    def repair_template(self, template_id: int, changes: dict) -> None:
        assert set(changes) <= self._TEMPLATE_REPAIRS, changes
        self._update("vm_template", changes, template_id)

    def repair_store_ref(self, ref_id: int, changes: dict) -> None:
        assert set(changes) <= self._REF_REPAIRS, changes
        self._update("template_store_ref", changes, ref_id)

    def repair_delete_zone_overrides(self, override_ids: Iterable[int]) -> int:
        ids = sorted(set(override_ids))
        if not ids:
            return 0
        return self._execute(f"DELETE FROM data_center_details WHERE id IN ({_marks(ids)})", ids)

    def repair_point_vms(self, vm_ids: Iterable[int], template_id: int) -> int:
        """Point these system VMs at a template; the removed and the already pointed stay."""
        ids = sorted(set(vm_ids))
        if not ids:
            return 0
        return self._execute(
            "UPDATE vm_instance SET vm_template_id = %s WHERE removed IS NULL "
            "AND (vm_template_id IS NULL OR vm_template_id <> %s) "
            f"AND id IN ({_marks(ids)})", [template_id, template_id, *ids])

    def backup_rows(self, table: str, column: str, values: Iterable) -> list[dict]:
        """Whole rows of a table repair may change, by one of the scopes it backs up."""
        assert (table, column) in self._BACKUP_SCOPES, (table, column)
        values = sorted(set(values))
        if not values or table not in self.columns:
            return []
        key = self.BACKUP_KEYS[table]
        return self._all(
            f"SELECT * FROM {table} WHERE {column} IN ({_marks(values)}) ORDER BY {key}", values)

    def restore_row(self, table: str, row: dict, columns: Iterable[str]) -> int:
        """Put these columns of a backed-up row back; returns the rows matched (0: gone)."""
        key = self.BACKUP_KEYS[table]
        names = [c for c in columns if c != key and self.has(table, c)]
        for name in names:
            assert self._COLUMN.match(name), name
        if not names:
            return 0
        assignments = ", ".join(f"{name} = %s" for name in names)
        return self._execute(f"UPDATE {table} SET {assignments} WHERE {key} = %s",
                             [*(row[n] for n in names), row[key]])

    def reinsert_row(self, table: str, row: dict) -> None:
        """Insert a backed-up row again, with its key, as it was."""
        assert table in self.BACKUP_KEYS, table
        names = [c for c in row if self.has(table, c)]
        for name in names:
            assert self._COLUMN.match(name), name
        self._execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({_marks(names)})",
                      [row[n] for n in names])

    def delete_backup_rows(self, table: str, keys: Iterable) -> int:
        """Delete rows (by key) that repair added within a backed-up scope."""
        assert table in self.BACKUP_KEYS, table
        keys = sorted(set(keys))
        if not keys:
            return 0
        return self._execute(
            f"DELETE FROM {table} WHERE {self.BACKUP_KEYS[table]} IN ({_marks(keys)})", keys)

    # --- plumbing ------------------------------------------------------------------------

    def _insert(self, table: str, values: dict) -> int:
        """INSERT the columns this schema has; names are ours, values are parameters."""
        present = {k: v for k, v in values.items() if self.has(table, k)}
        names = list(present)
        for name in [table, *names]:
            assert _IDENTIFIER.match(name), name
        sql = (f"INSERT INTO {table} ({', '.join(names)}) "
               f"VALUES ({', '.join(['%s'] * len(names))})")
        with self.conn.cursor() as cursor:
            cursor.execute(sql, [present[n] for n in names])
            return cursor.lastrowid

    def _update(self, table: str, values: dict, row_id: int) -> None:
        present = {k: v for k, v in values.items() if self.has(table, k)}
        for name in [table, *present]:
            assert _IDENTIFIER.match(name), name
        assignments = ", ".join(f"{name} = %s" for name in present)
        rows = self._execute(f"UPDATE {table} SET {assignments} WHERE id = %s",
                             [*present.values(), row_id])
        if rows != 1:
            raise CatalogError(f"{table} row {row_id} vanished while it was being updated.")

    def _execute(self, sql: str, args=()) -> int:
        with self.conn.cursor() as cursor:
            return cursor.execute(sql, args)

    def _all(self, sql: str, args=()) -> list[dict]:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def _row(self, sql: str, args=()) -> Optional[dict]:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchone()

    def _one(self, sql: str, args=()) -> tuple:
        return tuple(self._row(sql, args).values())

    def _rollback_quietly(self) -> None:
        try:
            self.conn.rollback()
        except pymysql.MySQLError as exc:
            # The connection may be gone; the server then rolls back by itself.
            LOG.warning("Rollback failed: %s", _reason(exc))


class NamedLock:
    """MySQL user locks (GET_LOCK) on a dedicated autocommit connection: held until released
    or until the connection dies, so a crashed run never leaves one behind."""

    def __init__(self, connection):
        self.conn = connection

    def acquire(self, name: str, seconds: float) -> bool:
        row = self._row("SELECT COALESCE(GET_LOCK(%s, %s), 0) AS got", (name, seconds))
        return bool(row["got"])

    def release(self, name: str) -> None:
        self._row("SELECT RELEASE_LOCK(%s) AS released", (name,))

    def verify(self, name: str) -> None:
        """:raises CatalogError: unless this connection still holds the lock."""
        try:
            row = self._row("SELECT IS_USED_LOCK(%s) = CONNECTION_ID() AS mine", (name,))
        except CatalogError:
            row = None  # the connection is gone, and the lock went with it
        if not row or not row["mine"]:
            raise CatalogError(f"Lost the lock {name!r} (its database connection was closed); "
                               "stopped before writing anything more.",
                               "Rerun: it picks up where this run stopped.")

    def holder(self, name: str) -> Optional[str]:
        """Who holds a lock (connection, host), or None when it is free."""
        row = self._row("SELECT IS_USED_LOCK(%s) AS id", (name,))
        if not row or row["id"] is None:
            return None
        process = self._row(
            "SELECT host, user, command, time FROM information_schema.PROCESSLIST "
            "WHERE id = %s", (row["id"],))
        if not process:
            return f"connection {row['id']}"
        return (f"connection {row['id']} from {process['host']} (user {process['user']}, "
                f"{process['command']} for {process['time']}s)")

    def close(self) -> None:
        try:
            self.conn.close()
        except pymysql.MySQLError:
            pass  # already closed by the server

    def _row(self, sql: str, args) -> Optional[dict]:
        try:
            with self.conn.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchone()
        except pymysql.MySQLError as exc:
            raise CatalogError(f"Lock query failed: {_reason(exc)}.") from exc


def _open(config: DbConfig):
    try:
        return pymysql.connect(
            host=config.host, port=config.port, user=config.user, password=config.password,
            database=config.name, connect_timeout=CONNECT_TIMEOUT, autocommit=True,
            charset="utf8mb4", cursorclass=pymysql.cursors.DictCursor,
            # Row counts then mean "rows matched", so an UPDATE that changes nothing is
            # still told apart from one that found no row.
            client_flag=CLIENT.FOUND_ROWS, ssl=tls_options(config),
        )
    except pymysql.MySQLError as exc:
        raise CatalogError(
            f"Cannot connect to the cloud database {config.describe()}: {_reason(exc)}.",
            "Check db.properties (--db-properties) and that MySQL/MariaDB is running.",
        ) from None


def tls_options(config: DbConfig) -> Optional[dict]:
    """PyMySQL's ssl options for db.cloud.useSSL=true.

    The management server names Java keystores (.jks/.p12), which Python cannot read: then
    the link is encrypted without verifying the server, as Connector/J does by default. A
    PEM trust store (.pem/.crt) is used to verify the server.
    """
    if not config.ssl:
        return None
    trust = config.ssl_trust_store or ""
    if trust.endswith((".pem", ".crt")):
        return {"ca": trust}
    LOG.warning("db.cloud.useSSL: encrypting without verifying the server (trust store %s "
                "is not PEM)", trust or "not set")
    return {"verify_mode": ssl.CERT_NONE}


def _marks(values) -> str:
    return ", ".join(["%s"] * len(values))


def _reason(exc: pymysql.MySQLError) -> str:
    if len(exc.args) >= 2:
        return f"({exc.args[0]}) {exc.args[1]}"
    return str(exc)
