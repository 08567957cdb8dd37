"""`watch` against a real MariaDB and bind-mounted stores: the one query on every schema, a
store added while it runs, busy and stale copies, backoff, SIGTERM, and idle passes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testbed.mariadb import MariaDB
from testbed.nfs.harness import stage_files

from cloudstack_sysvm_seed import dbprops
from cloudstack_sysvm_seed.catalog import Catalog
from cloudstack_sysvm_seed.commands.watch import SETTINGS

# A mount command wrapper that logs its calls (as in test_seed.py), then mounts.
RECORDER = """import json, os, sys
with open(sys.argv[1], "a") as log:
    log.write(json.dumps(sys.argv[2:]) + "\\n")
os.execvp(sys.argv[2], sys.argv[2:])
"""
ALL_ERAS = ["4.11", "4.15", "4.20", "upstream-4.20.2", "upstream-4.22.0"]


def catalog_of(cloud) -> Catalog:
    props = dbprops.load(str(cloud.db_properties))
    return Catalog.connect(dbprops.database_config(props, str(cloud.db_properties), None, {}))


def needs(cloud):
    catalog = catalog_of(cloud)
    try:
        return [(n.store_id, n.hypervisor, n.arch, n.template_id, n.named_by, n.zone_override,
                 n.ref_id) for n in catalog.store_needs(SETTINGS)]
    finally:
        catalog.close()


def ready_ref(builder, template, store):
    return builder.store_ref(template, store, f"/template/tmpl/1/{template}/x.qcow2")


@pytest.mark.parametrize("cloud_db", ALL_ERAS, indirect=True)
def test_the_query_names_each_store_and_template_a_zone_lacks(cloud_db):
    b, era = cloud_db.builder, cloud_db.era
    east, gone = b.zone("east"), b.zone("gone", removed=True)
    b.cluster(east, "KVM")
    b.cluster(east, "XenServer")
    b.cluster(east, "Simulator")  # no system VM template: never needed
    b.cluster(east, "VMware", removed=True)
    b.cluster(gone, "KVM")
    old = b.template("systemvm-kvm-4.19.0", "KVM", "QCOW2")
    new = b.template("systemvm-kvm-4.20.0", "KVM", "QCOW2")
    b.template("systemvm-kvm-4.21.0", "KVM", "QCOW2", removed=True)
    b.template("systemvm-kvm-4.22.0", "KVM", "QCOW2", type="USER")
    xen_old = b.template("systemvm-xen-4.19.0", "XenServer", "VHD")
    xen = b.template("systemvm-xen-4.20.0", "XenServer", "VHD")  # newest: no setting names Xen
    b.config("router.template.kvm", "systemvm-kvm-4.19.0")
    b.config("router.template.xenserver", "")  # unset: the newest Xen template, then
    seeded = b.store(east, "nfs://10.1.0.1/s1")
    for template in (old, xen):
        ready_ref(b, template, seeded)
    lacking = b.store(east, "nfs://10.1.0.2/s2")
    ready_ref(b, xen_old, lacking)  # not the Xen template the zone needs
    b.store_ref(old, lacking, "/template/tmpl/1/x/x.qcow2", state="Ready",
                download_state="DOWNLOAD_ERROR")  # not Ready: CloudStack would not use it
    b.store(east, "s3://bucket", protocol="s3", provider="S3")
    b.store(east, "nfs://10.1.0.3/cache", role="ImageCache")
    b.store(east, "nfs://10.1.0.4/removed", removed=True)
    b.store(None, "nfs://10.1.0.5/region")
    b.store(gone, "nfs://10.1.0.6/gone")
    if era != "4.11":
        b.store(east, "nfs://10.1.0.7/ro", readonly=True)
    assert needs(cloud_db) == [
        (lacking, "KVM", "x86_64", old, "router.template.kvm", False, None),
        (lacking, "XenServer", "x86_64", xen, "", False, None)]

    # The zone's own value wins over the global one.
    b.zone_detail(east, "router.template.kvm", "systemvm-kvm-4.20.0")
    assert [n for n in needs(cloud_db) if n[1] == "KVM"] == [
        (store, "KVM", "x86_64", new, "router.template.kvm", True, None)
        for store in (seeded, lacking)]

    # The arches of 4.20: each (hypervisor, arch) of the zone's clusters has its template.
    if cloud_db.builder.has_column("cluster", "arch"):
        b.cluster(east, "KVM", arch="aarch64")
        arm = b.template("systemvm-kvm-4.20.0-aarch64", "KVM", "QCOW2", arch="aarch64")
        assert (lacking, "KVM", "aarch64", arm, "", False, None) in needs(cloud_db)

    catalog = catalog_of(cloud_db)
    try:
        plan = catalog.explain_store_needs(SETTINGS)
    finally:
        catalog.close()
    assert {row["table"] for row in plan} >= {"s", "t"}


def test_the_query_reads_the_4_22_dump_cheaply(make_cloud):
    """EXPLAIN on the upstream 4.22 dump with a cloud's worth of rows (10 zones of 3 stores,
    2,000 user templates with 20,000 copies): each store's refs are read by index, never
    scanned, no temporary table goes to disk, and the query answers in milliseconds."""
    cloud = make_cloud("upstream-4.22.0")
    b = cloud.builder
    b.config("router.template.kvm", "systemvm-kvm-4.22.0-x86_64")
    template = b.template("systemvm-kvm-4.22.0-x86_64", "KVM", "QCOW2")
    stores = []
    for z in range(10):
        zone = b.zone(f"zone{z}")
        b.cluster(zone, "KVM")
        for n in range(3):
            stores.append(b.store(zone, f"nfs://10.{z}.0.{n}/s"))
            ready_ref(b, template, stores[-1])
    with cloud.conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO vm_template (unique_name, name, uuid, public, featured, type, hvm, "
            "bits, format, created, account_id, guest_os_id, hypervisor_type) "
            "SELECT CONCAT('tmpl-', seq), CONCAT('user-', seq), UUID(), 1, 0, 'USER', 1, 64, "
            "'QCOW2', NOW(), 2, 1, 'KVM' FROM seq_1_to_2000")
        cursor.execute(
            "INSERT INTO template_store_ref (store_id, template_id, created, last_updated, "
            "download_pct, store_role, download_state, state, destroyed) "
            "SELECT s.id, t.id, NOW(), NOW(), 100, 'Image', 'DOWNLOADED', 'Ready', 0 "
            "FROM vm_template t JOIN image_store s ON s.id % 3 = t.id % 3 "
            "WHERE t.type = 'USER' LIMIT 20000")
        for table in ("vm_template", "template_store_ref", "image_store", "cluster"):
            cursor.execute(f"ANALYZE TABLE {table}")
            cursor.fetchall()
    cloud.conn.commit()
    new_zone = b.zone("new")
    b.cluster(new_zone, "KVM")
    lacking = b.store(new_zone, "nfs://10.99.0.1/s")
    catalog = catalog_of(cloud)

    def on_disk():
        with catalog.conn.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Created_tmp_disk_tables'")
            return int(cursor.fetchone()["Value"])

    try:
        plan = catalog.explain_store_needs(SETTINGS)
        disk = on_disk()
        started = time.monotonic()
        found = catalog.store_needs(SETTINGS)
        took = time.monotonic() - started
        assert on_disk() == disk  # its temporary tables stay in memory
    finally:
        catalog.close()
    assert [(n.store_id, n.template_id) for n in found] == [(lacking, template)]
    # Each store's refs by index; vm_template read twice in all (the templates by name and
    # the newest ones, each materialized once), not once per store.
    refs = [row for row in plan if row["table"] in ("b", "u", "r")]
    assert len(refs) == 3 and all(row["type"] in ("ref", "eq_ref") for row in refs), plan
    scans = [row for row in plan if row["table"] == "vm_template"]
    assert [row["select_type"] for row in scans] == ["DERIVED", "DERIVED"], plan
    assert took < 0.5


# --- the watch as a process ------------------------------------------------------------------


def one_zone(world):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    store, export = world.nfs_store(zone, "10.1.0.1", "/export/s1")
    return zone, store, export


def template_id(world):
    (row,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    return row["id"]


class Watch:
    """`cloudstack-sysvm-seed watch` as a process of its own, its log in a file."""

    def __init__(self, world, tmp_path: Path, *args, mount_command=None):
        self.log = tmp_path / "watch.log"
        self.err = open(tmp_path / "watch.err", "w")
        self.process = subprocess.Popen(
            world.command("--log-file", str(self.log), "watch", *args,
                          mount_command=mount_command),
            env=world.env, stdout=subprocess.DEVNULL, stderr=self.err)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for(self, pattern: str, timeout: float) -> float:
        """Wait until the log has a line matching pattern; the time that took."""
        started = time.monotonic()
        while not re.search(pattern, self.text(), re.M):
            assert self.process.poll() is None, self.text()
            assert time.monotonic() - started < timeout, (pattern, self.text())
            time.sleep(0.02)
        return time.monotonic() - started

    def stop(self, within: float = 10.0) -> float:
        """SIGTERM; the time it took to exit, which it must do with 0."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=within + 5)
        took = time.monotonic() - started
        self.err.close()
        assert code == 0, self.text()
        assert took < within, (took, self.text())
        return took

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.err.close()


@pytest.fixture
def watching(world, tmp_path):
    started = []

    def start(*args, mount_command=None) -> Watch:
        watch = Watch(world, tmp_path, *args, mount_command=mount_command)
        started.append(watch)
        return watch

    yield start
    for watch in started:
        watch.kill()


def test_a_store_added_while_watching_is_seeded_within_two_intervals(world, stores_root,
                                                                      watching):
    zone, first, _ = one_zone(world)
    assert world.run().code == 0
    interval = 1.0
    watch = watching("--interval", str(interval))
    watch.wait_for("Watching every", 10)
    time.sleep(0.3)  # a pass has asked, and found nothing
    second, export = world.nfs_store(zone, "10.1.0.2", "/export/s2")
    took = watch.wait_for(rf"Store {second} \(nfs://10.1.0.2/export/s2\) in zone {zone} "
                          "lacks template", 2 * interval)
    assert took <= 2 * interval
    watch.wait_for(rf"Store {second} .* now holds every template its zone needs", 30)
    (ref,) = world.rows("template_store_ref", "store_id = %s", (second,))
    assert (ref["state"], ref["template_id"]) == ("Ready", template_id(world))
    assert (export / "template/tmpl/1" / str(template_id(world)) / "template.properties").exists()
    assert "Report for store(s)" in watch.text() and "1 ready" in watch.text()
    watch.stop()
    assert world.leftover_mountpoints() == []


def test_a_busy_copy_is_left_alone_then_seeded_over_once_stale(world, stores_root):
    zone, first, _ = one_zone(world)
    assert world.run().code == 0
    second, export = world.nfs_store(zone, "10.1.0.2", "/export/s2")
    template = template_id(world)
    ref = world.builder.store_ref(template, second, f"/template/tmpl/1/{template}/x.qcow2",
                                  state="Creating", download_state="DOWNLOAD_IN_PROGRESS",
                                  size=None, physical_size=0, pct=40)

    def age(minutes):
        world.cloud.query("UPDATE template_store_ref SET last_updated = UTC_TIMESTAMP() - "
                          "INTERVAL %s MINUTE WHERE id = %s", (minutes, ref))

    age(10)
    run = world.run("watch", "--once")
    assert run.code == 0, run.err
    assert (f"Store {second} (nfs://10.1.0.2/export/s2): template {template} "
            f"({world.kvm.templatename}, named by the global router.template.kvm) is being "
            f"written by someone else (template_store_ref {ref}: "
            "Creating/DOWNLOAD_IN_PROGRESS, updated 10m ago); left alone") in run.err
    assert world.rows("template_store_ref", "id = %s", (ref,))[0]["state"] == "Creating"
    assert os.listdir(export) == []  # not even mounted: nothing written

    age(31)
    run = world.run("watch", "--once")
    assert run.code == 0, run.err
    assert "being written by someone else" not in run.err
    rows = world.rows("template_store_ref", "store_id = %s", (second,))
    assert [(r["id"], r["state"], r["download_pct"]) for r in rows] == [(ref, "Ready", 100)]
    assert (export / "template/tmpl/1" / str(template) / "template.properties").exists()


FAILING_MOUNT = """#!/bin/sh
# Stands in for mount.nfs: refuses 10.1.0.99 with the message in {cause}, recording when.
case "$*" in
*10.1.0.99*) date +%s.%N >>{tries}; cat {cause} >&2; exit 32;;
esac
exec {mount} "$@"
"""


def test_a_failing_store_is_retried_with_backoff_and_logged_once_per_cause(
        world, stores_root, watching, tmp_path):
    zone, good, _ = one_zone(world)
    assert world.run().code == 0
    bad, _ = world.nfs_store(zone, "10.1.0.99", "/export/bad")
    tries, cause = tmp_path / "tries", tmp_path / "cause"
    cause.write_text("mount.nfs: access denied by server while mounting\n")
    script = tmp_path / "mount"
    script.write_text(FAILING_MOUNT.format(cause=cause, tries=tries, mount=world.mount_command))
    script.chmod(0o755)
    interval = 0.2
    watch = watching("--interval", str(interval), mount_command=str(script))

    def times():
        return [float(t) for t in tries.read_text().split()] if tries.exists() else []

    def wait_tries(count):
        deadline = time.monotonic() + 20
        while len(times()) < count:
            assert time.monotonic() < deadline, watch.text()
            time.sleep(0.05)
        time.sleep(0.1)  # that try's lines are written

    # The first failure says it all once: the mount's error, the report, the watch's line.
    watch.wait_for(r" WARNING cloudstack_sysvm_seed\.watch: .*access denied", 20)  # its last
    told = watch.text().count("access denied")
    wait_tries(4)  # tried at 0, then 0.2, 0.4 and 0.8 s after each failure
    cause.write_text("mount.nfs: Connection timed out\n")  # a new cause: told once more
    stamps = times()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    # Each try waits 0.2, 0.4, 0.8 s after the last failure: at least that apart (and the
    # try itself, under a second even on a loaded machine).
    for n, gap in enumerate(gaps):
        assert interval * 2 ** n * 0.95 <= gap < interval * 2 ** n + 1.5, gaps
    # The watch's own line about it, once (the mount's own warning is the first try's too).
    warned = [line for line in watch.text().splitlines()
              if " WARNING cloudstack_sysvm_seed.watch: " in line and "access denied" in line]
    assert len(warned) == 1, watch.text()
    assert f"Store {bad} (nfs://10.1.0.99/export/bad) in zone {zone}: " in warned[0]
    assert "Next try in 0.2s, then twice as long each time up to 1h" in warned[0]
    assert watch.text().count("access denied") == told, watch.text()  # the retries: silent

    watch.wait_for(r" WARNING cloudstack_sysvm_seed\.watch: .*Connection timed out", 20)  # 5th
    told = watch.text().count("Connection timed out")
    wait_tries(6)  # 3.2 s later
    assert watch.text().count("Connection timed out") == told, watch.text()
    watch.stop()
    assert world.rows("template_store_ref", "store_id = %s", (bad,)) == []
    assert world.leftover_mountpoints() == []


def test_sigterm_during_a_copy_leaves_nothing_behind(world, stores_root, watching,
                                                     slow_bundle):
    zone, first, _ = one_zone(world)
    assert world.run().code == 0
    world.use_bundle(slow_bundle)
    exports = [world.nfs_store(zone, f"10.1.0.{n}", f"/export/s{n}")[1] for n in (2, 3)]
    watch = watching("--interval", "0.2")
    deadline = time.monotonic() + 60
    while not any(stage_files(e) for e in exports):
        assert watch.process.poll() is None, watch.text()
        assert time.monotonic() < deadline, "the copy never started"
        time.sleep(0.002)
    watch.stop(within=10)
    assert "Stopped (SIGTERM)." in watch.text()
    for export in exports:
        assert os.listdir(export) == [], (export, list(os.walk(export)), watch.text())
    assert [r["store_id"] for r in world.rows("template_store_ref")] == [first]
    assert world.leftover_mountpoints() == []


def selects(server: MariaDB) -> int:
    connection = server.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
            return int(cursor.fetchone()[1])
    finally:
        connection.close()


def test_a_pass_with_nothing_to_do_is_one_query_and_no_mount(world, stores_root, watching,
                                                             tmp_path):
    one_zone(world)
    assert world.run().code == 0
    recorder, log = tmp_path / "recorder.py", tmp_path / "mounts.log"
    recorder.write_text(RECORDER)
    command = f"{sys.executable} {recorder} {log} {world.mount_command}"
    before = selects(world.cloud.server)
    watch = watching("--debug", "--interval", "0.1", mount_command=command)
    watch.wait_for("Pass 20: nothing to seed", 20)
    # Between passes, SIGTERM ends it at once.
    assert watch.stop(within=2) < 2
    after = selects(world.cloud.server)
    passes = len(re.findall(r"Pass \d+: nothing to seed", watch.text()))
    assert passes >= 20
    # One query a pass, and once, at the start, the schema (information_schema); SIGTERM may
    # have cut the last pass short after its query, before it logged.
    assert after - before - 1 - passes in (0, 1), (after - before, passes)
    assert not log.exists(), log.read_text()  # no mount, ever
    assert world.leftover_mountpoints() == []
