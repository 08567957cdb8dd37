"""All SQL: one named, parameterised query per question against CloudStack's `cloud`
database, and every row the tool writes.

The schema (columns and their types) is learned once from information_schema, so one code
path serves databases from 4.11 (no readonly, no deploy_as_is, no arch) to 4.22 (a BIGINT
`configuration.scope`). Every write goes through that path: a value that does not fit its
column, or a NOT NULL column the tool cannot fill, is a `SchemaError` naming the table, the
column and the value, and `check_row` raises it before anything is written.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence

import pymysql
from pymysql.constants import CLIENT

from . import configkeys
from .dbprops import DbConfig
from .errors import CatalogError, SchemaError, StatementFailed
from .model import (
    READY_DOWNLOAD_STATES,
    UNFINISHED_DOWNLOAD_STATES,
    UNFINISHED_STATES,
    Override,
    Store,
    StoreNeed,
    StoreRef,
    SystemVm,
    Template,
    Zone,
)

LOG = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10
NFS_VERSION_KEY = "secstorage.nfs.version"  # global setting, also a store detail in 4.22
NFS_VERSION_DETAIL = "nfs.version"
_REQUIRED_TABLES = (
    "data_center", "image_store", "cluster", "vm_template", "template_zone_ref",
    "template_store_ref",
)
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_STRING_TYPES = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext",
                           "enum", "set"})
_INTEGER_BITS = {"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "integer": 32,
                 "bigint": 64}
_TIME_TYPES = frozenset({"datetime", "timestamp", "date"})


@dataclass(frozen=True)
class Column:
    """What information_schema says of one column."""

    name: str
    data_type: str  # lower case: varchar, bigint, datetime ...
    max_length: Optional[int]  # characters, for string types
    nullable: bool
    has_default: bool  # a default, or auto_increment: it may be left out of an INSERT
    unsigned: bool = False

    @property
    def integer(self) -> bool:
        return self.data_type in _INTEGER_BITS


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
    # What repair and seed may change in rows they did not insert.
    _TEMPLATE_CHANGES = frozenset({"state", "cross_zones", "removed", "size"})
    _REF_CHANGES = frozenset({"destroyed"})

    def __init__(self, connection, config: Optional[DbConfig] = None):
        self.conn = connection
        self.config = config  # to reconnect, and for the lock's own connection
        self.schema = self._learn_schema()

    @classmethod
    def connect(cls, config: DbConfig) -> Catalog:
        """:raises CatalogError: naming the server and the cause, never the password."""
        return cls(_open(config), config)

    def named_lock(self) -> NamedLock:
        """A second connection for MySQL user locks, as CloudStack's GlobalLock keeps one."""
        return NamedLock(_open(self.config))

    def close(self) -> None:
        try:
            self.conn.close()
        except pymysql.MySQLError:
            pass  # already closed (the server went away)

    # --- schema --------------------------------------------------------------------------

    def _learn_schema(self) -> dict[str, dict[str, Column]]:
        rows = self._all(
            "SELECT table_name AS t, column_name AS c, data_type AS type, "
            "character_maximum_length AS length, is_nullable AS nullable, "
            "column_default AS dflt, column_type AS ctype, extra "
            "FROM information_schema.columns WHERE table_schema = DATABASE()")
        tables: dict[str, dict[str, Column]] = {}
        for row in rows:
            nullable = row["nullable"] == "YES"
            tables.setdefault(row["t"].lower(), {})[row["c"].lower()] = Column(
                row["c"].lower(), (row["type"] or "").lower(), row["length"], nullable,
                nullable or row["dflt"] is not None or "auto_increment" in (row["extra"] or ""),
                "unsigned" in (row["ctype"] or ""))
        missing = [t for t in _REQUIRED_TABLES if t not in tables]
        if missing:
            raise CatalogError(
                f"The database does not look like CloudStack's cloud database: no table "
                f"{', '.join(missing)}.",
                "Check db.cloud.name in db.properties.",
            )
        return tables

    def has(self, table: str, column: str) -> bool:
        return column in self.schema.get(table, {})

    def check_row(self, table: str, values: dict, inserting: bool = True) -> dict:
        """The values this schema has columns for, each checked against its column.

        :raises SchemaError: for a value that does not fit its column, or (inserting) a
            NOT NULL column without a default that the values leave out.
        """
        columns = self.schema.get(table, {})
        present = {k: v for k, v in values.items() if k in columns}
        for name, value in present.items():
            problem = _misfit(columns[name], value)
            if problem:
                raise SchemaError(f"Cannot write {table}.{name} = {value!r}: {problem}.",
                                  "The database schema is not one this version of the tool "
                                  "knows; nothing was written. Please report it.")
        if inserting:
            unfilled = sorted(c.name for c in columns.values()
                              if not c.has_default and c.name not in present)
            if unfilled:
                raise SchemaError(
                    f"Cannot insert into {table}: column(s) {', '.join(unfilled)} are NOT NULL "
                    "without a default, and the tool has no value for them.",
                    "The database schema is newer than this version of the tool knows; "
                    "nothing was written. Upgrade cloudstack-sysvm-seed.")
        return present

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
        if "configuration" in self.schema:
            versions[None] = self.settings([NFS_VERSION_KEY]).get(NFS_VERSION_KEY) or None
        if "image_store_details" in self.schema:
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

    def system_templates(self, removed: bool = False) -> list[Template]:
        """Every SYSTEM template, whatever its name, oldest first: the non-removed ones, or
        (removed) those retired."""
        optional = {"arch": "'x86_64'", "state": "NULL", "size": "NULL"}
        extra = ", ".join(f"{c if self.has('vm_template', c) else default} AS {c}"
                          for c, default in optional.items())
        which = "IS NOT NULL" if removed else "IS NULL"
        rows = self._all(
            "SELECT id, uuid, name, hypervisor_type, format, url, cross_zones, "
            f"{extra} FROM vm_template WHERE type = 'SYSTEM' AND removed {which} ORDER BY id")
        return [Template(r["id"], r["name"], r["hypervisor_type"] or "", r["arch"] or "x86_64",
                         r["state"], r["size"], r["uuid"], bool(r["cross_zones"]),
                         r["format"] or "", r["url"] or "") for r in rows]

    def template_users(self, template_ids: Iterable[int]) -> dict[int, tuple[str, ...]]:
        """What uses these templates: non-removed VMs of any type (users' too) and, where the
        table records it, non-removed volumes created from them."""
        ids = sorted(set(template_ids))
        if not ids:
            return {}
        found: dict[int, list[str]] = {}
        for row in self._all(
                "SELECT vm_template_id AS t, instance_name, type FROM vm_instance "
                f"WHERE removed IS NULL AND vm_template_id IN ({_marks(ids)}) ORDER BY id", ids):
            found.setdefault(row["t"], []).append(f"VM {row['instance_name']} ({row['type']})")
        if self.has("volumes", "template_id"):
            for row in self._all(
                    "SELECT template_id AS t, id, name FROM volumes WHERE removed IS NULL "
                    f"AND template_id IN ({_marks(ids)}) ORDER BY id", ids):
                found.setdefault(row["t"], []).append(f"volume {row['name'] or row['id']}")
        return {t: tuple(users) for t, users in found.items()}

    def templates_named(self, name: str) -> list[dict]:
        """Non-removed templates of any type with this name (registration matches names)."""
        return self._all("SELECT id, type, hypervisor_type FROM vm_template "
                         "WHERE name = %s AND removed IS NULL ORDER BY id", (name,))

    def store_refs(self, template_ids: Iterable[int]) -> list[StoreRef]:
        """The non-destroyed Image refs of these templates."""
        ids = sorted(set(template_ids))
        if not ids:
            return []
        rows = self._all(
            "SELECT id, template_id, store_id, state, download_state, download_pct, "
            "install_path, size, physical_size, error_str, last_updated "
            f"FROM template_store_ref WHERE template_id IN ({_marks(ids)}) "
            "AND store_role = 'Image' AND destroyed = 0 ORDER BY id", ids)
        return [StoreRef(**row) for row in rows]

    def zone_refs(self, template_ids: Iterable[int]) -> frozenset[tuple[int, int]]:
        """(template id, zone id) of the non-removed zone refs of these templates."""
        ids = sorted(set(template_ids))
        if not ids:
            return frozenset()
        rows = self._all(
            "SELECT template_id, zone_id FROM template_zone_ref "
            f"WHERE template_id IN ({_marks(ids)}) AND removed IS NULL", ids)
        return frozenset((r["template_id"], r["zone_id"]) for r in rows)

    def store_holdings(self) -> frozenset[tuple[int, int]]:
        """(store id, template id) of every non-destroyed ref, any template."""
        rows = self._all("SELECT DISTINCT store_id, template_id FROM template_store_ref "
                         "WHERE destroyed = 0 AND store_id IS NOT NULL")
        return frozenset((r["store_id"], r["template_id"]) for r in rows)

    def settings(self, names: Iterable[str]) -> dict[str, Optional[str]]:
        """Global values of these settings; a name without a row is left out."""
        names = sorted(set(names))
        if not names or "configuration" not in self.schema:
            return {}
        rows = self._all(
            f"SELECT name, value FROM configuration WHERE name IN ({_marks(names)})", names)
        return {r["name"]: r["value"] for r in rows}

    def zone_overrides(self, names: Iterable[str]) -> list[Override]:
        """Zone values of these settings (data_center_details)."""
        names = sorted(set(names))
        if not names or "data_center_details" not in self.schema:
            return []
        rows = self._all(
            "SELECT id, dc_id, name, value FROM data_center_details "
            f"WHERE name IN ({_marks(names)}) ORDER BY id", names)
        return [Override(r["id"], r["dc_id"], r["name"], r["value"]) for r in rows]

    def system_vms(self) -> list[SystemVm]:
        """Non-removed VMs of every type but User, with the arch of their host (its last
        one when stopped; x86_64 where hosts record no arch)."""
        arch_join, arch = "", "'x86_64'"
        if self.has("host", "arch"):
            host = ("COALESCE(vm.host_id, vm.last_host_id)"
                    if self.has("vm_instance", "last_host_id") else "vm.host_id")
            arch_join, arch = f"LEFT JOIN host h ON h.id = {host} ", "COALESCE(h.arch, 'x86_64')"
        rows = self._all(
            "SELECT vm.id, vm.instance_name, vm.type, vm.data_center_id, vm.hypervisor_type, "
            f"vm.vm_template_id, {arch} AS arch FROM vm_instance vm {arch_join}"
            "WHERE vm.removed IS NULL AND vm.type <> 'User' ORDER BY vm.id")
        return [SystemVm(r["id"], r["instance_name"], r["type"], r["data_center_id"],
                         r["hypervisor_type"], r["arch"] or "x86_64", r["vm_template_id"])
                for r in rows]

    def store_needs(self, settings: Sequence[tuple[str, str]]) -> list[StoreNeed]:
        """Every (usable NFS image store, template its zone needs) without a Ready copy there,
        in one statement: `watch` asks it each interval, so a pass with nothing to do costs
        this query alone.

        settings: (hypervisor as the database spells it, its router.template.<hv> setting),
        the hypervisors that have system VM templates. A zone needs, per (hypervisor, arch)
        of its non-removed clusters, the SYSTEM template its value of that setting names (the
        zone's override in data_center_details, else the global value), or else the newest
        registered SYSTEM template of that hypervisor and arch. A store is usable when it is
        not removed, has role Image, protocol nfs, a zone (not removed) and is not read-only.
        With each need comes the unfinished store ref of that pair (Allocated, Creating or
        DOWNLOAD_IN_PROGRESS) updated last, and its age by the database's clock.

        :raises CatalogError: when the query fails (the connection was lost, say).
        """
        if not settings:
            return []
        try:
            rows = self._all(*self._store_needs_sql(settings))
        except StatementFailed as exc:
            raise CatalogError(f"The query for stores that lack templates failed: "
                               f"{exc.reason}.",
                               "Check that the database is up; the next pass asks again.") from exc
        needs = [StoreNeed(
            r["store_id"], r["store_url"] or "", r["zone_id"], r["hypervisor"], r["arch"],
            r["template_id"], r["template_name"], r["setting"] or "", bool(r["zone_named"]),
            r["ref_id"], "/".join(x for x in (r["ref_state"], r["ref_download_state"]) if x),
            None if r["ref_age"] is None else float(r["ref_age"])) for r in rows]
        # Sorted here: an ORDER BY would sort the wide rows (urls) in a temporary table.
        return sorted(needs, key=lambda n: (n.store_id, n.hypervisor, n.arch))

    def explain_store_needs(self, settings: Sequence[tuple[str, str]]) -> list[dict]:
        """The database's EXPLAIN of store_needs' statement: what it reads, and how."""
        sql, args = self._store_needs_sql(settings)
        return self._all("EXPLAIN " + sql, args)

    def _store_needs_sql(self, settings: Sequence[tuple[str, str]]) -> tuple[str, list]:
        keys = " UNION ALL ".join(["SELECT %s AS hypervisor, %s AS setting"] * len(settings))
        cluster_arch = "COALESCE(c.arch, 'x86_64')" if self.has("cluster", "arch") else "'x86_64'"
        if self.has("vm_template", "arch"):
            template_arch, by_arch = "COALESCE(arch, 'x86_64')", ", arch"
        else:
            template_arch, by_arch = "'x86_64'", ""
        # A template name is at most 255 characters (vm_template.name); so cast, the derived
        # tables stay narrow and in memory (configuration.value is a VARCHAR(8191)).
        zone_value = ("(SELECT CAST(NULLIF(d.value, '') AS CHAR(255)) FROM data_center_details "
                      "d WHERE d.dc_id = c.data_center_id AND d.name = k.setting ORDER BY d.id "
                      "LIMIT 1)" if "data_center_details" in self.schema else "NULL")
        global_value = ("(SELECT CAST(NULLIF(g.value, '') AS CHAR(255)) FROM configuration g "
                        "WHERE g.name = k.setting)" if "configuration" in self.schema else "NULL")
        readonly = "AND s.readonly = 0 " if self.has("image_store", "readonly") else ""
        touched = ("GREATEST(COALESCE({0}.last_updated, {0}.created), "
                   "COALESCE({0}.updated, {0}.last_updated, {0}.created))"
                   if self.has("template_store_ref", "updated")
                   else "COALESCE({0}.last_updated, {0}.created)")
        ready = _marks(READY_DOWNLOAD_STATES)
        unfinished, downloading = _marks(UNFINISHED_STATES), _marks(UNFINISHED_DOWNLOAD_STATES)
        system = "FROM vm_template WHERE type = 'SYSTEM' AND removed IS NULL"
        sql = (
            "SELECT s.id AS store_id, s.url AS store_url, s.data_center_id AS zone_id, "
            "n.hypervisor, n.arch, n.setting, n.zone_named, n.template_id, "
            "t.name AS template_name, b.id AS ref_id, b.state AS ref_state, "
            "b.download_state AS ref_download_state, "
            f"TIMESTAMPDIFF(SECOND, {touched.format('b')}, UTC_TIMESTAMP()) AS ref_age "
            "FROM image_store s "
            # What each zone needs: (hypervisor, arch) of its clusters -> one template id.
            "JOIN (SELECT p.zone_id, p.hypervisor, p.arch, "
            "CASE WHEN named.id IS NULL THEN NULL ELSE p.setting END AS setting, "
            "named.id IS NOT NULL AND p.zone_value IS NOT NULL AS zone_named, "
            "COALESCE(named.id, newest.id) AS template_id "
            "FROM (SELECT DISTINCT c.data_center_id AS zone_id, k.hypervisor, "
            f"{cluster_arch} AS arch, k.setting, {zone_value} AS zone_value, "
            f"{global_value} AS global_value "
            "FROM cluster c JOIN data_center z ON z.id = c.data_center_id AND z.removed IS NULL "
            f"JOIN ({keys}) k ON k.hypervisor = c.hypervisor_type "
            "WHERE c.removed IS NULL) p "
            f"LEFT JOIN (SELECT hypervisor_type, {template_arch} AS arch, name, MAX(id) AS id "
            f"{system} GROUP BY hypervisor_type{by_arch}, name) named "
            "ON named.hypervisor_type = p.hypervisor AND named.arch = p.arch "
            "AND named.name = COALESCE(p.zone_value, p.global_value) "
            f"LEFT JOIN (SELECT hypervisor_type, {template_arch} AS arch, MAX(id) AS id "
            f"{system} GROUP BY hypervisor_type{by_arch}) newest "
            "ON newest.hypervisor_type = p.hypervisor AND newest.arch = p.arch) n "
            "ON n.zone_id = s.data_center_id "
            "JOIN vm_template t ON t.id = n.template_id "
            # The unfinished row of this (template, store) that was updated last, if any.
            "LEFT JOIN template_store_ref b ON b.id = (SELECT u.id FROM template_store_ref u "
            "WHERE u.template_id = n.template_id AND u.store_id = s.id "
            "AND u.store_role = 'Image' AND u.destroyed = 0 "
            f"AND (u.state IN ({unfinished}) OR u.download_state IN ({downloading})) "
            f"ORDER BY {touched.format('u')} DESC, u.id DESC LIMIT 1) "
            "WHERE s.removed IS NULL AND s.role = 'Image' AND LOWER(s.protocol) = 'nfs' "
            f"AND s.data_center_id IS NOT NULL {readonly}"
            # No Ready copy there. (A scalar subquery with LIMIT: looked up by index for each
            # store and template; NOT EXISTS would be turned into a scan of every ref.)
            "AND (SELECT r.id FROM template_store_ref r "
            "WHERE r.template_id = n.template_id AND r.store_id = s.id "
            "AND r.store_role = 'Image' AND r.destroyed = 0 AND r.state = 'Ready' "
            f"AND r.download_state IN ({ready}) LIMIT 1) IS NULL")
        args = [value for pair in settings for value in pair]
        args += [*UNFINISHED_STATES, *UNFINISHED_DOWNLOAD_STATES, *READY_DOWNLOAD_STATES]
        return sql, args

    def guest_os_ids(self, display_names: Iterable[str]) -> dict[str, int]:
        names = sorted(set(display_names))
        if not names or "guest_os" not in self.schema:
            return {}
        rows = self._all(
            "SELECT display_name, MIN(id) AS id FROM guest_os "
            f"WHERE removed IS NULL AND display_name IN ({_marks(names)}) "
            "GROUP BY display_name", names)
        return {r["display_name"]: r["id"] for r in rows}

    def database_name(self) -> str:
        (name,) = self._one("SELECT DATABASE() AS db")
        return name or ""

    # --- writes, inside `transaction()` -----------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, guard: Callable[[], None] = lambda: None) -> Iterator[None]:
        """Commit when the block ends normally; roll back on any exception, interrupts too.

        guard() runs first: the run's lock checks there that it still holds the lock. The
        connection runs in autocommit mode, so reads outside this block always see fresh
        rows; BEGIN opens an explicit transaction all the same.
        """
        guard()
        self._reconnect_if_dropped()
        try:
            self.conn.begin()
            yield
        except (pymysql.MySQLError, StatementFailed) as exc:
            self._rollback_quietly()
            why = exc.reason if isinstance(exc, StatementFailed) else _reason(exc)
            raise CatalogError(f"Database error, changes rolled back: {why}.") from exc
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
        if "sequence" in self.schema:
            row = self._row("SELECT value FROM sequence WHERE name = 'vm_template_seq' FOR UPDATE")
            if row is not None:
                candidate = max(candidate, int(row["value"]))
                self._execute("UPDATE sequence SET value = %s WHERE name = 'vm_template_seq'",
                              (candidate + 1,))
        return candidate

    @staticmethod
    def template_row(template: NewTemplate, created: datetime.datetime) -> dict:
        """The vm_template row we register, Inactive until a copy is Ready (as upstream)."""
        return {
            "id": template.id, "uuid": template.uuid, "unique_name": f"routing-{template.id}",
            "name": template.name, "display_text": template.name, "public": 0, "featured": 0,
            "type": "SYSTEM", "hvm": 1, "bits": 64, "account_id": 1, "url": template.url,
            "checksum": template.checksum, "enable_password": 0,
            "format": template.image_format, "guest_os_id": template.guest_os_id,
            "cross_zones": 1, "hypervisor_type": template.hypervisor, "created": created,
            "state": "Inactive", "deploy_as_is": 0, "arch": template.arch,
        }

    @staticmethod
    def store_ref_row(template_id: int, store_id: int, install_path: str, url: str,
                      when: datetime.datetime) -> dict:
        """A store ref in its first state (NOT_DOWNLOADED/Allocated), as upstream inserts it."""
        return {
            "store_id": store_id, "template_id": template_id, "created": when,
            "last_updated": when, "download_pct": 0, "download_state": "NOT_DOWNLOADED",
            "state": "Allocated", "install_path": install_path, "url": url,
            "store_role": "Image", "physical_size": 0, "is_copy": 0, "destroyed": 0,
            "update_count": 0, "ref_cnt": 0,
        }

    @staticmethod
    def zone_ref_row(template_id: int, zone_id: int, when: datetime.datetime) -> dict:
        return {"zone_id": zone_id, "template_id": template_id, "created": when,
                "last_updated": when}

    def setting_row(self, name: str, value: str, when: datetime.datetime) -> dict:
        """A configuration row as CloudStack's own ConfigKey creates it (see configkeys), with
        the scope in the form this schema keeps it: a name, or 4.22's bitmask."""
        key = configkeys.lookup(name)
        if key is None:
            raise SchemaError(f"The tool does not know how CloudStack defines {name!r}.")
        scope = self.schema.get("configuration", {}).get("scope")
        return {
            "category": key.category, "instance": "DEFAULT", "component": key.component,
            "name": key.name, "value": value, "default_value": key.default,
            "description": key.description, "updated": when, "is_dynamic": int(key.dynamic),
            "scope": key.scope_bit if scope is not None and scope.integer else key.scope,
        }

    def insert_template(self, template: NewTemplate, created: datetime.datetime) -> None:
        self._insert("vm_template", self.template_row(template, created))

    def add_zone_refs(self, template_id: int, zone_ids: Iterable[int],
                      when: datetime.datetime) -> None:
        for zone_id in zone_ids:
            self._insert("template_zone_ref", self.zone_ref_row(template_id, zone_id, when))

    def insert_store_ref(self, template_id: int, store_id: int, install_path: str, url: str,
                         when: datetime.datetime) -> int:
        return self._insert("template_store_ref", self.store_ref_row(
            template_id, store_id, install_path, url, when))

    def mark_store_ref_ready(self, ref_id: int, install_path: str, virtual_size: int,
                             physical_size: int, when: datetime.datetime) -> None:
        self._update("template_store_ref", {
            "download_state": "DOWNLOADED", "state": "Ready", "download_pct": 100,
            "install_path": install_path, "size": virtual_size, "physical_size": physical_size,
            "error_str": None, "last_updated": when,
        }, ref_id)

    def update_template(self, template_id: int, changes: dict) -> None:
        assert set(changes) <= self._TEMPLATE_CHANGES, changes
        self._update("vm_template", changes, template_id)

    def update_store_ref(self, ref_id: int, changes: dict) -> None:
        assert set(changes) <= self._REF_CHANGES, changes
        self._update("template_store_ref", changes, ref_id)

    def destroy_store_refs(self, ref_ids: Iterable[int]) -> None:
        """As CloudStack marks a deleted copy: destroyed, state Destroyed."""
        for ref_id in sorted(set(ref_ids)):
            self._update("template_store_ref", {"destroyed": 1, "state": "Destroyed"}, ref_id)

    def retire_template(self, template_id: int, when: datetime.datetime) -> None:
        """As CloudStack deletes a template: Inactive and removed, its zone refs removed."""
        self._update("vm_template", {"state": "Inactive", "removed": when}, template_id)
        self._execute("UPDATE template_zone_ref SET removed = %s WHERE template_id = %s "
                      "AND removed IS NULL", (when, template_id))

    def set_setting(self, name: str, value: str, when: datetime.datetime) -> None:
        """Set a global setting's value, inserting the row as CloudStack defines it when it is
        missing (upstream's plain UPDATE reported success when no row matched)."""
        changes = self.check_row("configuration", {"value": value, "updated": when},
                                 inserting=False)
        assignments = ", ".join(f"{k} = %s" for k in changes)
        matched = self._execute(f"UPDATE configuration SET {assignments} WHERE name = %s",
                                [*changes.values(), name])
        if matched == 0:
            self._insert("configuration", self.setting_row(name, value, when))

    def delete_overrides(self, override_ids: Iterable[int]) -> int:
        ids = sorted(set(override_ids))
        if not ids:
            return 0
        return self._execute(f"DELETE FROM data_center_details WHERE id IN ({_marks(ids)})", ids)

    def point_vms(self, vm_ids: Iterable[int], template_id: int) -> int:
        """Point these system VMs at a template; the removed and the already pointed stay."""
        ids = sorted(set(vm_ids))
        if not ids:
            return 0
        return self._execute(
            "UPDATE vm_instance SET vm_template_id = %s WHERE removed IS NULL "
            "AND (vm_template_id IS NULL OR vm_template_id <> %s) "
            f"AND id IN ({_marks(ids)})", [template_id, template_id, *ids])

    # --- backups (repair and its undo) -------------------------------------------------------

    def backup_rows(self, table: str, column: str, values: Iterable) -> list[dict]:
        """Whole rows of a table repair may change, by one of the scopes it backs up."""
        assert (table, column) in self._BACKUP_SCOPES, (table, column)
        values = sorted(set(values))
        if not values or table not in self.schema:
            return []
        key = self.BACKUP_KEYS[table]
        return self._all(
            f"SELECT * FROM {table} WHERE {column} IN ({_marks(values)}) ORDER BY {key}", values)

    def restore_row(self, table: str, row: dict, columns: Iterable[str]) -> int:
        """Put these columns of a backed-up row back; returns the rows matched (0: gone)."""
        key = self.BACKUP_KEYS[table]
        names = [c for c in columns if c != key and self.has(table, c)]
        if not names:
            return 0
        return self._update_where(table, {n: row[n] for n in names}, key, row[key])

    def reinsert_row(self, table: str, row: dict) -> None:
        """Insert a backed-up row again, with its key, as it was."""
        assert table in self.BACKUP_KEYS, table
        self._insert(table, row)

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
        """INSERT the columns this schema has, each value checked against its column."""
        present = self.check_row(table, values)
        names = list(present)
        for name in [table, *names]:
            assert _IDENTIFIER.match(name), name
        sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({_marks(names)})"
        with self.conn.cursor() as cursor:
            cursor.execute(sql, [present[n] for n in names])
            return cursor.lastrowid

    def _update(self, table: str, values: dict, row_id: int) -> None:
        if self._update_where(table, values, "id", row_id) != 1:
            raise CatalogError(f"{table} row {row_id} vanished while it was being updated.")

    def _update_where(self, table: str, values: dict, key: str, value) -> int:
        present = self.check_row(table, values, inserting=False)
        for name in [table, key, *present]:
            assert _IDENTIFIER.match(name), name
        assignments = ", ".join(f"{name} = %s" for name in present)
        return self._execute(f"UPDATE {table} SET {assignments} WHERE {key} = %s",
                             [*present.values(), value])

    def _execute(self, sql: str, args=()) -> int:
        with self._cursor(sql) as cursor:
            return cursor.execute(sql, args)

    def _all(self, sql: str, args=()) -> list[dict]:
        with self._cursor(sql) as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def _row(self, sql: str, args=()) -> Optional[dict]:
        with self._cursor(sql) as cursor:
            cursor.execute(sql, args)
            return cursor.fetchone()

    @contextlib.contextmanager
    def _cursor(self, sql: str) -> Iterator:
        """A cursor for `sql`: a driver error becomes StatementFailed, which the operator
        reads as a database failure, not as a bug with a traceback."""
        try:
            with self.conn.cursor() as cursor:
                yield cursor
        except pymysql.MySQLError as exc:
            raise StatementFailed(_statement_gist(sql), _reason(exc)) from exc

    def _one(self, sql: str, args=()) -> tuple:
        return tuple(self._row(sql, args).values())

    def _rollback_quietly(self) -> None:
        try:
            self.conn.rollback()
        except pymysql.MySQLError as exc:
            # The connection may be gone; the server then rolls back by itself.
            LOG.warning("Rollback failed: %s", _reason(exc))


def _misfit(column: Column, value) -> str:
    """Why a value does not fit a column in strict mode, or ""."""
    if value is None:
        return "" if column.nullable else "the column is NOT NULL"
    if column.integer:
        if not isinstance(value, int):  # bool is an int: MySQL stores True as 1
            return f"the column is {column.data_type}, not {type(value).__name__}"
        bits = _INTEGER_BITS[column.data_type] - (0 if column.unsigned else 1)
        low = 0 if column.unsigned else -(1 << bits)
        if not low <= value < (1 << bits):
            return f"out of range for {column.data_type}{' unsigned' if column.unsigned else ''}"
    elif column.data_type in _STRING_TYPES:
        text = value if isinstance(value, str) else str(value)
        if column.max_length is not None and len(text) > column.max_length:
            return (f"{len(text)} characters do not fit {column.data_type}"
                    f"({column.max_length})")
    elif column.data_type in _TIME_TYPES and not isinstance(value, (datetime.date, str)):
        return f"the column is {column.data_type}"
    return ""


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
        """Who holds a lock (connection, host, what it is doing, for how long), or None."""
        row = self._row("SELECT IS_USED_LOCK(%s) AS id", (name,))
        if not row or row["id"] is None:
            return None
        process = self._row(
            "SELECT host, user, command, time FROM information_schema.PROCESSLIST "
            "WHERE id = %s", (row["id"],))
        if not process:
            return f"connection {row['id']}"
        doing = _DOING.get(process["command"], str(process["command"]).lower())
        return (f"connection {row['id']} from {process['host']} (user {process['user']}, "
                f"{doing} for {process['time']}s)")

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


# PROCESSLIST.COMMAND, as a person would say it ("Sleep for 2s" is an idle connection).
_DOING = {"Sleep": "idle", "Query": "running a query", "Execute": "running a statement",
          "Connect": "connecting", "Killed": "being killed"}


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


def _statement_gist(sql: str) -> str:
    """A statement's verb and first table ("SELECT on vm_template"), for messages."""
    verb = sql.split(None, 1)[0].upper() if sql.strip() else "statement"
    table = _FIRST_TABLE.search(sql)
    return f"{verb} on {table.group(1)}" if table else verb


_FIRST_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+`?([\w.]+)", re.IGNORECASE)


def _reason(exc: pymysql.MySQLError) -> str:
    if len(exc.args) >= 2:
        return f"({exc.args[0]}) {exc.args[1]}"
    return str(exc)
