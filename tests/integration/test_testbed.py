"""The test bed itself: if these fail, every DB/mount test built on it is suspect."""

from __future__ import annotations

import bz2
import configparser
import gzip
import hashlib
import json
import os
import shlex
import socket
import struct
import subprocess
from pathlib import Path
from typing import Set

import pymysql
import pytest
from testbed import mounts
from testbed.cloud import ERAS, split_sql
from testbed.images import (
    MetadataEntry,
    build_kvm_bundle,
    compress,
    make_qcow2,
    write_metadata,
)
from testbed.mariadb import MariaDBError, find_binary

TABLES = {
    "version",
    "data_center",
    "data_center_details",
    "host_pod_ref",
    "cluster",
    "host",
    "image_store",
    "image_store_details",
    "guest_os_category",
    "guest_os",
    "vm_template",
    "template_zone_ref",
    "template_store_ref",
    "sequence",
    "configuration",
    "vm_instance",
}


def _columns(cloud_db, table: str) -> Set[str]:
    rows = cloud_db.query(
        "SELECT column_name AS c FROM information_schema.columns "
        "WHERE table_schema=%s AND table_name=%s",
        (cloud_db.name, table),
    )
    return {r["c"] for r in rows}


def _tcp_listeners(port: int) -> Set[str]:
    """Local addresses in LISTEN state on `port`, from /proc/net/tcp and tcp6."""
    found = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


# -- MariaDB --------------------------------------------------------------------------------


@pytest.mark.db
def test_server_is_reachable_on_loopback_only(mariadb_server):
    conn = mariadb_server.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT @@bind_address, @@port, @@log_bin")
        bind, port, log_bin = cur.fetchone()
    conn.close()
    assert (bind, port, log_bin) == ("127.0.0.1", mariadb_server.port, 0)
    assert _tcp_listeners(mariadb_server.port) == {"127.0.0.1"}
    # Bound to the address, not the wildcard: another loopback address is refused.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", mariadb_server.port), timeout=2).close()


def test_missing_binary_names_the_package():
    with pytest.raises(MariaDBError, match="apt-get install mariadb-server"):
        find_binary("mariadbd-that-does-not-exist")


# -- schemas --------------------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize(
    "cloud_db, present, absent",
    [
        ("4.11", {"state"}, {"arch", "readonly", "deploy_as_is"}),
        ("4.15", {"state", "readonly", "deploy_as_is"}, {"arch"}),
        ("4.20", {"state", "readonly", "deploy_as_is", "arch"}, set()),
    ],
    indirect=["cloud_db"],
)
def test_era_schema_shape(cloud_db, present, absent):
    tables = {
        r["t"]
        for r in cloud_db.query(
            "SELECT table_name AS t FROM information_schema.tables WHERE table_schema=%s",
            (cloud_db.name,),
        )
    }
    assert tables == TABLES
    template = _columns(cloud_db, "vm_template")
    era_columns = {c for c in ("state", "deploy_as_is", "arch") if c in template} | (
        {"readonly"} & _columns(cloud_db, "image_store")
    )
    assert era_columns == present
    assert not era_columns & absent
    has_arch = "arch" in present
    assert ("arch" in _columns(cloud_db, "cluster")) is has_arch
    assert ("arch" in _columns(cloud_db, "host")) is has_arch


@pytest.mark.db
@pytest.mark.parametrize("cloud_db", ERAS, indirect=True)
def test_seed_rows(cloud_db):
    seq = cloud_db.query("SELECT value FROM sequence WHERE name='vm_template_seq'")
    assert seq == [{"value": 200}]
    keys = {r["name"]: r["value"] for r in cloud_db.query("SELECT name, value FROM configuration")}
    for hv in ("kvm", "vmware", "xenserver", "hyperv", "lxc", "ovm3"):
        assert f"router.template.{hv}" in keys
    assert keys["minreq.sysvmtemplate.version"] == f"{cloud_db.era}.0"
    os_ids = {r["id"] for r in cloud_db.query("SELECT id FROM guest_os")}
    assert {15, 99, 183} <= os_ids
    debian12 = cloud_db.query(
        "SELECT id FROM guest_os WHERE display_name='Debian GNU/Linux 12 (64-bit)'"
    )
    assert debian12 == ([{"id": 363}] if cloud_db.era == "4.20" else [])
    system = cloud_db.query(
        "SELECT id, unique_name, hypervisor_type FROM vm_template "
        "WHERE type='SYSTEM' AND removed IS NULL ORDER BY id"
    )
    assert [r["unique_name"] for r in system] == [f"routing-{r['id']}" for r in system]
    assert {r["hypervisor_type"] for r in system} == {"XenServer", "KVM", "VMware", "Hyperv", "LXC"}


@pytest.mark.db
def test_template_without_format_is_rejected(cloud_db):
    columns = "unique_name, name, public, featured, hvm, bits, created, account_id, guest_os_id"
    values = "'routing-300', 'x', 0, 0, 1, 64, NOW(), 1, 99"
    with pytest.raises(pymysql.err.MySQLError) as left_out:
        cloud_db.query(f"INSERT INTO vm_template ({columns}) VALUES ({values})")
    assert left_out.value.args[0] == 1364  # ER_NO_DEFAULT_FOR_FIELD
    assert "'format'" in left_out.value.args[1]
    with pytest.raises(pymysql.err.IntegrityError) as as_null:
        cloud_db.query(f"INSERT INTO vm_template ({columns}, format) VALUES ({values}, NULL)")
    assert as_null.value.args[0] == 1048  # ER_BAD_NULL_ERROR


@pytest.mark.db
@pytest.mark.parametrize("cloud_db", ["4.11", "4.20"], indirect=True)
def test_builder_template_round_trips(cloud_db):
    b = cloud_db.builder
    zone = b.zone("zone-a")
    template = b.template(
        "systemvm-kvm-4.20.1-aarch64",
        "KVM",
        "QCOW2",
        arch="aarch64",
        checksum="{SHA-512}" + "ab" * 64,
        url="https://example.invalid/t.qcow2.bz2",
    )
    b.zone_ref(template, zone)
    store = b.store(zone, "nfs://nfs1.example/export/secondary")
    b.store_ref(template, store, f"template/tmpl/1/{template}/x.qcow2")

    (row,) = cloud_db.query("SELECT * FROM vm_template WHERE id=%s", (template,))
    assert template >= 200
    assert row["unique_name"] == f"routing-{template}"
    assert (row["name"], row["type"], row["format"], row["hypervisor_type"]) == (
        "systemvm-kvm-4.20.1-aarch64",
        "SYSTEM",
        "QCOW2",
        "KVM",
    )
    assert (row["public"], row["featured"], row["hvm"], row["bits"], row["account_id"]) == (
        0,
        0,
        1,
        64,
        1,
    )
    assert (row["state"], row["cross_zones"], row["removed"]) == ("Active", 1, None)
    assert row["checksum"].startswith("{SHA-512}") and row["created"] is not None
    if cloud_db.era == "4.20":
        assert (row["arch"], row["guest_os_id"]) == ("aarch64", 363)
    else:
        assert "arch" not in row and row["guest_os_id"] == 15
    seq = cloud_db.query("SELECT value FROM sequence WHERE name='vm_template_seq'")
    assert seq[0]["value"] > template
    (ref,) = cloud_db.query("SELECT * FROM template_store_ref WHERE template_id=%s", (template,))
    assert (ref["store_id"], ref["state"], ref["download_state"], ref["download_pct"]) == (
        store,
        "Ready",
        "DOWNLOADED",
        100,
    )


@pytest.mark.db
def test_foreign_keys_hold(cloud_db):
    b = cloud_db.builder
    zone = b.zone("zone-fk")
    template = b.template("t", "KVM", "QCOW2")
    b.zone_ref(template, zone)
    with pytest.raises(pymysql.err.IntegrityError):
        b.store_ref(999999, b.store(zone, "nfs://h/p"), "template/tmpl/1/999999/x.qcow2")
    cloud_db.query("DELETE FROM data_center WHERE id=%s", (zone,))
    assert cloud_db.query("SELECT * FROM template_zone_ref WHERE zone_id=%s", (zone,)) == []


@pytest.mark.db
def test_builder_covers_the_rest(cloud_db):
    b = cloud_db.builder
    zone = b.zone("zone-b")
    cluster = b.cluster(zone, "KVM", arch="aarch64")
    host = b.host(cluster)
    region = b.store(None, "nfs://nfs9/export/region")
    ro = b.store(zone, "nfs://nfs2/export/ro", readonly=True)
    b.store_detail(ro, "secstorage.nfs.version", "4.1")
    vm = b.system_vm(zone, "SecondaryStorageVm", "KVM", template_id=3, host_id=host)
    b.config("router.template.kvm", "systemvm-kvm-4.20.1-x86_64")

    (h,) = cloud_db.query(
        "SELECT data_center_id, hypervisor_type, arch FROM host WHERE id=%s", (host,)
    )
    assert h == {"data_center_id": zone, "hypervisor_type": "KVM", "arch": "aarch64"}
    stores = cloud_db.query("SELECT id, scope, readonly FROM image_store ORDER BY id")
    assert stores == [
        {"id": region, "scope": "REGION", "readonly": 0},
        {"id": ro, "scope": "ZONE", "readonly": 1},
    ]
    (v,) = cloud_db.query("SELECT name, vm_template_id, type FROM vm_instance WHERE id=%s", (vm,))
    assert v == {"name": f"s-{vm}-VM", "vm_template_id": 3, "type": "SecondaryStorageVm"}
    (c,) = cloud_db.query("SELECT value FROM configuration WHERE name='router.template.kvm'")
    assert c["value"] == "systemvm-kvm-4.20.1-x86_64"


@pytest.mark.db
def test_4_15_flags_are_refused_on_4_11(make_cloud):
    builder = make_cloud("4.11").builder
    with pytest.raises(ValueError, match="readonly"):
        builder.store(None, "nfs://h/p", readonly=True)
    with pytest.raises(ValueError, match="deploy_as_is"):
        builder.template("t", "VMware", "OVA", deploy_as_is=True)


@pytest.mark.db
def test_db_properties_reach_the_database(cloud_db):
    text = "[p]\n" + cloud_db.db_properties.read_text()
    props = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    props.optionxform = str
    props.read_string(text)
    p = props["p"]
    assert p["db.cloud.encryption.type"] == "none"
    conn = pymysql.connect(
        host=p["db.cloud.host"],
        port=int(p["db.cloud.port"]),
        user=p["db.cloud.username"],
        password=p["db.cloud.password"],
        database=p["db.cloud.name"],
    )
    with conn.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == (cloud_db.name,)
    conn.close()


def test_split_sql_respects_quotes_and_comments():
    script = "-- a; comment\nSELECT 'x;y' ; SELECT \"it\\'s;\"; -- tail\nSELECT `a;b`"
    assert split_sql(script) == ["SELECT 'x;y'", 'SELECT "it\\\'s;"', "SELECT `a;b`"]


# -- bind-mount -----------------------------------------------------------------------------


def _mount(mount_command: str, *args: str) -> subprocess.CompletedProcess:
    argv = shlex.split(mount_command) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@pytest.mark.mounts
def test_bind_mount_mounts_and_umount_undoes_it(make_export, mount_command, tmp_path):
    export = make_export("nfs1.example", "/export/secondary")
    (export / "marker").write_text("from the server")
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    done = _mount(mount_command, "-o", "vers=3,soft", "nfs1.example:/export/secondary", str(mnt))
    assert done.returncode == 0, done.stderr
    assert "ignoring NFS options: vers=3,soft" in done.stderr
    assert str(mnt.resolve()) in mounts.mountinfo_points()
    assert os.path.ismount(mnt)  # own device, like a real NFS mount
    assert (mnt / "marker").read_text() == "from the server"
    (mnt / "written").write_text("through the mount")
    assert (export / "written").read_text() == "through the mount"

    subprocess.run(["umount", str(mnt)], check=True, timeout=30)
    assert str(mnt.resolve()) not in mounts.mountinfo_points()
    assert not (mnt / "marker").exists()


@pytest.mark.mounts
def test_bind_mount_refuses_a_missing_export(stores_root, mount_command, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = _mount(mount_command, "nfs9.example:/no/such/export", str(mnt))
    assert done.returncode == 32
    assert "access denied by server while mounting nfs9.example:/no/such/export" in done.stderr
    assert not mounts.is_mounted(mnt)


# -- images and metadata --------------------------------------------------------------------


def test_qcow2_and_compression(tmp_path):
    size = 48 * 1024**2
    image = make_qcow2(tmp_path / "t.qcow2", size)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(image)],
            capture_output=True,
            check=True,
            text=True,
            timeout=30,
        ).stdout
    )
    assert (info["format"], info["virtual-size"]) == ("qcow2", size)
    raw = image.read_bytes()
    assert raw[:4] == b"QFI\xfb" and struct.unpack(">Q", raw[24:32])[0] == size
    assert b"\xcd" * 512 in raw  # the data written through qemu-io

    packed = compress(image, tmp_path / "t.qcow2.bz2", "bz2").read_bytes()
    assert packed[:3] == b"BZh" and bz2.decompress(packed) == raw
    gzipped = compress(image, tmp_path / "t.qcow2.gz", "gz").read_bytes()
    assert gzipped[:2] == b"\x1f\x8b" and gzip.decompress(gzipped) == raw
    assert compress(image, tmp_path / "copy.qcow2", "none").read_bytes() == raw
    assert image.exists()  # -k: the source stays


@pytest.mark.parametrize(
    "form, version, sections, keys",
    [
        (
            "4.16",
            "4.16.0.0",
            ["kvm", "vmware", "xenserver", "hyperv", "lxc", "ovm3"],
            {"templatename", "checksum", "downloadurl", "filename"},
        ),
        (
            "4.19",
            "4.19.1.0",
            ["kvm", "vmware", "xenserver", "hyperv", "lxc", "ovm3"],
            {"templatename", "checksum", "downloadurl", "filename", "arch"},
        ),
        (
            "4.20",
            "4.20.1.0",
            ["kvm-x86_64", "kvm-aarch64", "vmware", "xenserver", "hyperv", "lxc", "ovm3"],
            {"templatename", "checksum", "downloadurl", "filename", "arch", "guestos"},
        ),
    ],
)
def test_metadata_forms(tmp_path, form, version, sections, keys):
    meta = build_kvm_bundle(tmp_path, version, virtual_size="16M", form=form)
    assert meta.path.read_text().startswith("\n[default]\nversion = ")
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(meta.path)
    assert ini.sections() == ["default", *sections]
    assert ini["default"]["version"] == version
    for name in sections:
        assert set(ini[name]) == keys, name

    kvm = ini[sections[0]]
    short, full = version.rsplit(".", 2)[0], version.rsplit(".", 1)[0]
    bundle = tmp_path / kvm["filename"]
    assert kvm["checksum"] == hashlib.md5(bundle.read_bytes()).hexdigest()
    assert kvm["downloadurl"].endswith(f"/systemvm/{short}/{kvm['filename']}")
    assert ini["lxc"]["filename"] == kvm["filename"]  # LXC ships the KVM image
    if form == "4.16":
        assert (kvm["templatename"], kvm["filename"]) == (
            f"systemvm-kvm-{full}",
            f"systemvmtemplate-{full}-kvm.qcow2.bz2",
        )
    else:
        assert kvm["templatename"] == f"systemvm-kvm-{full}-x86_64"
        assert kvm["filename"] == f"systemvmtemplate-{full}-x86_64-kvm.qcow2.bz2"
    if form == "4.20":
        assert ini["kvm-aarch64"]["arch"] == "aarch64"
        assert ini["vmware"]["guestos"] == "Other Linux (64-bit)"
        assert kvm["guestos"] == "Debian GNU/Linux 12 (64-bit)"
    assert meta.sections[sections[0]].bundled == bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["metadata.ini", bundle.name])


def test_metadata_prefixed_sha512_and_arch_limits(tmp_path):
    image = compress(make_qcow2(tmp_path / "i.qcow2", "8M"), tmp_path / "i.qcow2.bz2")
    meta = write_metadata(
        tmp_path / "t",
        [MetadataEntry("kvm", path=image)],
        version="4.22.0.0",
        form="4.20",
        checksum_alg="sha512",
        prefixed=True,
    )
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(meta.path)
    digest = hashlib.sha512(image.read_bytes()).hexdigest()
    assert ini["kvm-x86_64"]["checksum"] == "{SHA-512}" + digest
    with pytest.raises(ValueError, match="aarch64"):
        write_metadata(tmp_path / "old", [MetadataEntry("kvm", arch="aarch64")], form="4.16")


def test_example_metadata_is_the_4_20_form():
    example = Path(__file__).resolve().parents[2] / "templates" / "metadata.ini.example"
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(example)
    assert {"kvm-x86_64", "kvm-aarch64"} <= set(ini.sections())
    assert ini["kvm-x86_64"]["guestos"] == "Debian GNU/Linux 12 (64-bit)"
