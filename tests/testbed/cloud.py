"""Era-shaped `cloud` databases for tests and the demo.

`load_schema` creates the tables and seed rows of one era (schema/cloudstack-<era>.sql);
`CloudBuilder` adds zones, clusters, stores, templates and system VMs with valid rows;
`write_db_properties` writes the management server's db.properties for the database;
`create_cloud` does all three and hands back a `CloudDB`.
"""

from __future__ import annotations

import secrets
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

import pymysql

from .mariadb import MariaDB

ERAS = ("4.11", "4.15", "4.20")  # our own DDL, shaped like each era's schema
SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
# Real CloudStack databases, built from upstream's own SQL (../shared/reference/
# upstream-schema/README.md); upstream-derived data, so they stay in shared/, beside the checkout.
UPSTREAM_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference" / "upstream-schema"
UPSTREAM_ERAS = {"upstream-4.20.2": "cloud-4.20.2.sql",
                 "upstream-4.22.0": "cloud-4.22.0-snapshot.sql"}

# Guest OS ids the upstream registration code uses per hypervisor (4.16); 4.20 points
# KVM, LXC and Hyper-V at the 'Debian GNU/Linux 12 (64-bit)' row (363 in our seed).
_GUEST_OS = {"KVM": 15, "LXC": 15, "Hyperv": 15, "XenServer": 99, "VMware": 99, "Ovm3": 183}
_GUEST_OS_420 = {"KVM": 363, "LXC": 363, "Hyperv": 363}

# Name prefixes CloudStack gives system VMs (v-12-VM, s-3-VM, r-7-VM, ...).
_VM_PREFIX = {
    "ConsoleProxy": "v",
    "SecondaryStorageVm": "s",
    "DomainRouter": "r",
    "InternalLoadBalancerVm": "b",
    "User": "i-2",
}


def schema_path(era: str) -> Path:
    if era in UPSTREAM_ERAS:
        return UPSTREAM_DIR / UPSTREAM_ERAS[era]
    if era not in ERAS:
        known = ", ".join((*ERAS, *UPSTREAM_ERAS))
        raise ValueError(f"unknown era {era!r}; choose one of {known}")
    return SCHEMA_DIR / f"cloudstack-{era}.sql"


def release_of(era: str) -> str:
    """The CloudStack release of an era: "4.20" for our 4.20 DDL, "4.20.2" upstream's."""
    return era.split("-", 1)[-1]


def split_sql(text: str) -> List[str]:
    """Split a script into statements on `;` outside quotes, dropping `--` comments."""
    statements: List[str] = []
    current: List[str] = []
    quote: Optional[str] = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            current.append(ch)
            if ch == "\\" and quote != "`" and i + 1 < len(text):
                current.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
            current.append(ch)
        elif text.startswith("--", i) and (i + 2 == len(text) or text[i + 2] in " \t\r\n"):
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
            continue
        elif ch == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def load_schema(conn: pymysql.Connection, era: str) -> int:
    """Run the era's schema file in the connection's current database; returns the count."""
    statements = split_sql(schema_path(era).read_text(encoding="utf-8"))
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    conn.commit()
    return len(statements)


class CloudBuilder:
    """Adds rows an operator's CloudStack would have; every method returns the new id.

    Columns an era lacks (arch before 4.20, ...) are left out, so one test body serves
    every era. Values a test does not pass are filled with realistic constants.
    """

    def __init__(self, conn: pymysql.Connection, era: str) -> None:
        schema_path(era)  # validates the era
        self.conn = conn
        self.era = era
        self._columns: Dict[str, Set[str]] = {}

    # -- infrastructure ------------------------------------------------------------------

    def zone(
        self,
        name: str,
        uuid: Optional[str] = None,
        removed: bool = False,
        networktype: str = "Advanced",
    ) -> int:
        return self._insert(
            "data_center",
            name=name,
            uuid=uuid or _uuid(),
            dns1="8.8.8.8",
            internal_dns1="10.0.0.2",
            networktype=networktype,
            allocation_state="Enabled",
            created=_Now,
            removed=_Now if removed else None,
        )

    def zone_detail(self, zone_id: int, name: str, value: str) -> int:
        """A zone-scoped setting override (data_center_details)."""
        return self._insert("data_center_details", dc_id=zone_id, name=name, value=value)

    def pod(self, zone_id: int, name: Optional[str] = None) -> int:
        count = self._scalar("SELECT COUNT(*) FROM host_pod_ref WHERE data_center_id=%s", zone_id)
        return self._insert(
            "host_pod_ref",
            name=name or f"pod-{zone_id}-{count + 1}",
            uuid=_uuid(),
            data_center_id=zone_id,
            gateway="10.1.0.1",
            cidr_address="10.1.0.0",
            cidr_size=24,
            created=_Now,
        )

    def cluster(
        self,
        zone_id: int,
        hypervisor: str,
        arch: str = "x86_64",
        removed: bool = False,
        pod_id: Optional[int] = None,
        name: Optional[str] = None,
    ) -> int:
        """A cluster in the zone's first pod (made when the zone has none)."""
        if pod_id is None:
            pod_id = self._scalar(
                "SELECT MIN(id) FROM host_pod_ref WHERE data_center_id=%s AND removed IS NULL",
                zone_id,
            ) or self.pod(zone_id)
        return self._insert(
            "cluster",
            name=name or f"cluster-{secrets.token_hex(3)}",
            uuid=_uuid(),
            pod_id=pod_id,
            data_center_id=zone_id,
            hypervisor_type=hypervisor,
            created=_Now,
            removed=_Now if removed else None,
            arch=arch,
        )

    def host(
        self,
        cluster_id: int,
        name: Optional[str] = None,
        type: str = "Routing",
        status: str = "Up",
        removed: bool = False,
        hypervisor: Optional[str] = None,
        arch: Optional[str] = None,
    ) -> int:
        """A host in the cluster; zone, pod, hypervisor and arch default to the cluster's."""
        cluster = self._row("SELECT * FROM cluster WHERE id=%s", cluster_id)
        return self._insert(
            "host",
            name=name or f"host-{secrets.token_hex(3)}",
            uuid=_uuid(),
            status=status,
            type=type,
            private_ip_address="10.1.0.10",
            cluster_id=cluster_id,
            data_center_id=cluster["data_center_id"],
            pod_id=cluster["pod_id"],
            hypervisor_type=hypervisor or cluster["hypervisor_type"],
            version=f"{release_of(self.era)}.0",
            dom0_memory=0,
            last_ping=0,
            created=_Now,
            removed=_Now if removed else None,
            resource_state="Enabled",
            arch=arch or cluster.get("arch") or "x86_64",
        )

    def store(
        self,
        zone_id: Optional[int],
        url: str,
        name: Optional[str] = None,
        protocol: str = "nfs",
        provider: str = "NFS",
        role: str = "Image",
        readonly: bool = False,
        removed: bool = False,
    ) -> int:
        """An image store; zone_id None makes it region-scoped."""
        if readonly and not self.has_column("image_store", "readonly"):
            raise ValueError(f"image_store.readonly does not exist in the {self.era} schema")
        return self._insert(
            "image_store",
            name=name or f"store-{secrets.token_hex(3)}",
            image_provider_name=provider,
            protocol=protocol,
            url=url,
            data_center_id=zone_id,
            scope="ZONE" if zone_id is not None else "REGION",
            role=role,
            uuid=_uuid(),
            parent=None,
            created=_Now,
            removed=_Now if removed else None,
            readonly=1 if readonly else 0,
        )

    def store_detail(self, store_id: int, name: str, value: str) -> int:
        return self._insert("image_store_details", store_id=store_id, name=name, value=value)

    def guest_os(self, display_name: str, category_id: int = 2, id: Optional[int] = None) -> int:
        return self._insert(
            "guest_os",
            id=id,
            category_id=category_id,
            uuid=_uuid(),
            display_name=display_name,
            created=_Now,
        )

    # -- templates -----------------------------------------------------------------------

    def template(
        self,
        name: str,
        hypervisor: str,
        format: str,
        *,
        arch: str = "x86_64",
        type: str = "SYSTEM",
        state: str = "Active",
        cross_zones: int = 1,
        removed: bool = False,
        checksum: Optional[str] = None,
        url: Optional[str] = None,
        id: Optional[int] = None,
        account_id: int = 1,
        guest_os_id: Optional[int] = None,
        unique_name: Optional[str] = None,
        uuid: Optional[str] = None,
        size: Optional[int] = None,
        display_text: Optional[str] = None,
        public: int = 0,
        featured: int = 0,
        hvm: int = 1,
        bits: int = 64,
        deploy_as_is: bool = False,
    ) -> int:
        """A complete vm_template row, shaped like the ones upstream registration writes.

        Without `id`, the id comes from sequence `vm_template_seq` (as our tool allocates it),
        and the sequence always ends up past the id, so `routing-<id>` stays unique.
        `arch` is dropped on eras without the column (the row is then x86_64 by nature).
        """
        if deploy_as_is and not self.has_column("vm_template", "deploy_as_is"):
            raise ValueError(f"vm_template.deploy_as_is does not exist in the {self.era} schema")
        new_id = self._next_template_id(id)
        if unique_name is None:
            unique_name = f"routing-{new_id}" if type == "SYSTEM" else f"tmpl-{new_id}"
        self._insert(
            "vm_template",
            id=new_id,
            unique_name=unique_name,
            name=name,
            uuid=uuid or _uuid(),
            public=public,
            featured=featured,
            type=type,
            hvm=hvm,
            bits=bits,
            url=url or f"http://templates.sandbox.invalid/{name}.{format.lower()}",
            format=format,
            created=_Now,
            removed=_Now if removed else None,
            account_id=account_id,
            checksum=checksum,
            display_text=display_text or name,
            enable_password=0,
            guest_os_id=guest_os_id or self._default_guest_os(hypervisor),
            cross_zones=cross_zones,
            hypervisor_type=hypervisor,
            size=size,
            state=state,
            deploy_as_is=1 if deploy_as_is else 0,
            arch=arch,
        )
        return new_id

    def zone_ref(self, template_id: int, zone_id: int) -> int:
        return self._insert(
            "template_zone_ref",
            zone_id=zone_id,
            template_id=template_id,
            created=_Now,
            last_updated=_Now,
        )

    def store_ref(
        self,
        template_id: int,
        store_id: int,
        install_path: str,
        state: str = "Ready",
        download_state: str = "DOWNLOADED",
        size: Optional[int] = 2 * 1024**3,
        physical_size: Optional[int] = 400 * 1024**2,
        pct: int = 100,
        url: Optional[str] = None,
    ) -> int:
        """A template_store_ref row; the defaults describe a finished copy."""
        return self._insert(
            "template_store_ref",
            store_id=store_id,
            template_id=template_id,
            created=_Now,
            last_updated=_Now,
            download_pct=pct,
            size=size,
            store_role="Image",
            physical_size=physical_size,
            download_state=download_state,
            install_path=install_path,
            url=url,
            state=state,
            destroyed=0,
            is_copy=0,
            update_count=0,
            ref_cnt=0,
        )

    # -- VMs and settings ----------------------------------------------------------------

    def system_vm(
        self,
        zone_id: int,
        type: str,
        hypervisor: str,
        template_id: Optional[int],
        removed: bool = False,
        state: str = "Running",
        host_id: Optional[int] = None,
    ) -> int:
        """A vm_instance row (type ConsoleProxy, SecondaryStorageVm, DomainRouter, User ...)."""
        if type not in _VM_PREFIX:
            raise ValueError(f"unknown VM type {type!r}; choose one of {', '.join(_VM_PREFIX)}")
        self._ensure_owner_rows()
        new_id = self._next_sequence("vm_instance_seq")
        guest_os = self._scalar("SELECT guest_os_id FROM vm_template WHERE id=%s", template_id)
        name = f"{_VM_PREFIX[type]}-{new_id}-VM"
        return self._insert(
            "vm_instance",
            id=new_id,
            name=name,
            uuid=_uuid(),
            instance_name=name,
            state="Expunging" if removed else state,
            vm_template_id=template_id,
            guest_os_id=guest_os or self._default_guest_os(hypervisor),
            data_center_id=zone_id,
            host_id=host_id,
            vnc_password=secrets.token_hex(8),
            created=_Now,
            removed=_Now if removed else None,
            type=type,
            vm_type=type,
            account_id=1,
            domain_id=1,
            service_offering_id=1,
            hypervisor_type=hypervisor,
        )

    def _ensure_owner_rows(self) -> None:
        """The system account and a system offering, which a real schema's vm_instance rows
        must reference (foreign keys) and a management server creates at its first start."""
        if self._table_columns("account") and not self._scalar(
                "SELECT COUNT(*) FROM account WHERE id = 1"):
            self._insert("account", id=1, account_name="system", uuid=_uuid(), type=1,
                         domain_id=1, state="enabled", created=_Now)
        if self._table_columns("service_offering") and not self._scalar(
                "SELECT COUNT(*) FROM service_offering WHERE id = 1"):
            self._insert("service_offering", id=1, name="System Offering For Secondary "
                         "Storage VM", uuid=_uuid(), system_use=1, default_use=1,
                         vm_type="secondarystoragevm", cpu=1, speed=500, ram_size=512,
                         created=_Now)

    def config(self, name: str, value: Optional[str]) -> None:
        """Set a global setting, adding the row when the schema's seed does not have it."""
        with self.conn.cursor() as cur:
            cur.execute(
                "INSERT INTO configuration (category, instance, component, name, value) "
                "VALUES ('Advanced', 'DEFAULT', 'management-server', %s, %s) "
                "ON DUPLICATE KEY UPDATE value=VALUES(value)",
                (name, value),
            )
        self.conn.commit()

    # -- schema knowledge ----------------------------------------------------------------

    def has_column(self, table: str, column: str) -> bool:
        return column in self._table_columns(table)

    def _table_columns(self, table: str) -> Set[str]:
        if table not in self._columns:
            rows = self._all(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema=DATABASE() AND table_name=%s",
                table,
            )
            self._columns[table] = {next(iter(r.values())) for r in rows}
        return self._columns[table]

    # -- internals -----------------------------------------------------------------------

    def _insert(self, table: str, **values: Any) -> int:
        """INSERT the values whose column exists in this era; NOW() for the _Now marker."""
        known = self._table_columns(table)
        names = [k for k in values if k in known]
        missing = {k for k in values if k not in known} - _ERA_OPTIONAL
        if missing:
            raise ValueError(f"{table} has no column(s) {sorted(missing)} in the {self.era} schema")
        placeholders = ["NOW()" if values[k] is _Now else "%s" for k in names]
        args = [values[k] for k in names if values[k] is not _Now]
        sql = (
            f"INSERT INTO `{table}` ({', '.join(f'`{k}`' for k in names)}) "
            f"VALUES ({', '.join(placeholders)})"
        )
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            new_id = values.get("id") or cur.lastrowid
        self.conn.commit()
        return int(new_id)

    def _next_template_id(self, wanted: Optional[int]) -> int:
        """Take the id from vm_template_seq (or use `wanted`) and move the sequence past it."""
        self.conn.begin()  # the connection autocommits; FOR UPDATE needs a transaction
        with self.conn.cursor() as cur:
            cur.execute("SELECT value FROM sequence WHERE name='vm_template_seq' FOR UPDATE")
            (seq,) = cur.fetchone()
            cur.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM vm_template")
            (after_max,) = cur.fetchone()
            new_id = wanted if wanted is not None else max(seq, after_max)
            cur.execute(
                "UPDATE sequence SET value=%s WHERE name='vm_template_seq'",
                (max(seq, new_id + 1),),
            )
        self.conn.commit()
        return int(new_id)

    def _next_sequence(self, name: str) -> int:
        self.conn.begin()
        with self.conn.cursor() as cur:
            cur.execute("SELECT value FROM sequence WHERE name=%s FOR UPDATE", (name,))
            (value,) = cur.fetchone()
            cur.execute("UPDATE sequence SET value=value+1 WHERE name=%s", (name,))
        self.conn.commit()
        return int(value)

    def _default_guest_os(self, hypervisor: str) -> int:
        if release_of(self.era).startswith("4.2") and hypervisor in _GUEST_OS_420:
            return _GUEST_OS_420[hypervisor]
        return _GUEST_OS.get(hypervisor, 99)

    def _scalar(self, sql: str, *args: Any) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            row = cur.fetchone()
        return row[0] if row else None

    def _row(self, sql: str, *args: Any) -> Dict[str, Any]:
        rows = self._all(sql, *args)
        if not rows:
            raise LookupError(f"no row for {sql} {args}")
        return rows[0]

    def _all(self, sql: str, *args: Any) -> List[Dict[str, Any]]:
        with self.conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())


class _NowMarker:
    """Stands for SQL NOW() among insert values, so rows carry the server's clock."""

    def __repr__(self) -> str:
        return "NOW()"


_Now = _NowMarker()
# Columns the builder passes on every era and simply drops where the era lacks them.
_ERA_OPTIONAL = {"arch", "readonly", "deploy_as_is"}


def _uuid() -> str:
    return str(uuidlib.uuid4())


# -- db.properties ------------------------------------------------------------------------

_URL_PARAMS = (
    "prepStmtCacheSize=517&cachePrepStmts=true&sessionVariables=sql_mode='STRICT_TRANS_TABLES,"
    "NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'"
    "&serverTimezone=UTC"
)


def _escape(value: str) -> str:
    """Java-properties value escaping for the characters that would change the meaning."""
    out = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    if out[:1] in (" ", "\t"):
        out = "\\" + out
    return out


def write_db_properties(
    path: Path | str,
    server: MariaDB,
    dbname: str,
    username: str = "root",
    password: str = "",
) -> Path:
    """A management-server-style db.properties pointing at `dbname` on `server`."""
    pairs = [
        ("cluster.node.IP", "127.0.0.1"),
        ("cluster.servlet.port", "9090"),
        ("region.id", "1"),
        ("db.cloud.username", username),
        ("db.cloud.password", password),
        ("db.cloud.host", server.host),
        ("db.cloud.port", str(server.port)),
        ("db.cloud.name", dbname),
        ("db.cloud.driver", "jdbc:mysql"),
        ("db.cloud.maxActive", "250"),
        ("db.cloud.maxIdle", "30"),
        ("db.cloud.maxWait", "600000"),
        ("db.cloud.validationQuery", "/* ping */ SELECT 1"),
        ("db.cloud.testOnBorrow", "true"),
        ("db.cloud.url.params", _URL_PARAMS),
        ("db.cloud.useSSL", "false"),
        ("db.cloud.encryption.type", "none"),
        ("db.cloud.encrypt.secret", ""),
        ("db.usage.username", username),
        ("db.usage.password", password),
        ("db.usage.host", server.host),
        ("db.usage.port", str(server.port)),
        ("db.usage.name", "cloud_usage"),
        ("db.usage.driver", "jdbc:mysql"),
        ("db.usage.maxActive", "100"),
        ("db.usage.url.params", "serverTimezone=UTC"),
    ]
    lines = ["# Written by the cloudstack-sysvm-seed test bed (testbed.cloud)."]
    lines += [f"{key}={_escape(value)}" for key, value in pairs]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


# -- one database, ready to use -----------------------------------------------------------


@dataclass
class CloudDB:
    """A loaded `cloud`-shaped database plus what a test needs to drive the tool at it."""

    server: MariaDB
    name: str
    era: str
    conn: pymysql.Connection
    db_properties: Path
    builder: CloudBuilder = field(init=False)

    def __post_init__(self) -> None:
        self.builder = CloudBuilder(self.conn, self.era)

    def query(self, sql: str, args: Sequence[Any] = ()) -> List[Dict[str, Any]]:
        """Rows as dicts, read on the shared autocommit connection (sees committed data)."""
        with self.conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(sql, tuple(args))
            return list(cur.fetchall())

    def close(self) -> None:
        self.conn.close()


def create_cloud(server: MariaDB, era: str, name: str, properties_path: Path | str) -> CloudDB:
    """(Re)create database `name`, load the era's schema and write db.properties for it."""
    path = schema_path(era)
    server.create_database(name)
    if era in UPSTREAM_ERAS:
        server.load_dump(name, path)  # a mysqldump, routines included: the client's job
    conn = server.connect(database=name)
    if era not in UPSTREAM_ERAS:
        load_schema(conn, era)
    props = write_db_properties(properties_path, server, name)
    return CloudDB(server=server, name=name, era=era, conn=conn, db_properties=props)
