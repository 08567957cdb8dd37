"""What CloudStack reads after a run (settings, system VMs), the registration lock, and
concurrent runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time

import pytest
from testbed.cloud import write_db_properties

from cloudstack_sysvm_seed import cli, errors


def one_zone(world, name="east", hypervisors=("KVM",)):
    zone = world.builder.zone(name)
    for hypervisor in hypervisors:
        world.builder.cluster(zone, hypervisor)
    store, export = world.nfs_store(zone, f"10.{zone}.0.1", "/export/s1")
    return zone, store, export


def config(world, name):
    rows = world.cloud.query("SELECT value FROM configuration WHERE name = %s", (name,))
    return rows[0]["value"] if rows else None


@pytest.mark.parametrize("world", ["4.11", "4.20"], indirect=True)
def test_settings_and_system_vms_point_at_the_new_template(world, stores_root):
    east, _, _ = one_zone(world, "east")
    west = world.builder.zone("west")  # no store: not seeded, its VMs stay
    # Older than every era's bundle (4.16 to 4.20): an upgrade, never a rollback.
    old = world.builder.template("systemvm-kvm-4.15.0", "KVM", "QCOW2")
    b = world.builder
    ssvm = b.system_vm(east, "SecondaryStorageVm", "KVM", old)
    router = b.system_vm(east, "DomainRouter", "KVM", old)
    user = b.system_vm(east, "User", "KVM", old)
    gone = b.system_vm(east, "ConsoleProxy", "KVM", old, removed=True)
    xen = b.system_vm(east, "ConsoleProxy", "XenServer", old)
    elsewhere = b.system_vm(west, "SecondaryStorageVm", "KVM", old)
    world.cloud.query("DELETE FROM configuration WHERE name = 'minreq.sysvmtemplate.version'")
    if world.cloud.era != "4.11":
        b.zone_detail(east, "router.template.kvm", "systemvm-kvm-4.15.0")

    run = world.run("--json")
    assert run.code == 0, run.err
    (template,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    assert config(world, "router.template.kvm") == world.kvm.templatename
    release = world.meta.version.rsplit(".", 1)[0]  # X.Y.Z.S -> X.Y.Z
    assert config(world, "minreq.sysvmtemplate.version") == release  # the row was missing
    vms = {r["id"]: r["vm_template_id"] for r in world.rows("vm_instance")}
    assert vms[ssvm] == vms[router] == template["id"]
    assert vms[user] == vms[gone] == vms[xen] == vms[elsewhere] == old
    changes = [r for r in json.loads(run.out) if r["action"] == "configure"]
    texts = " | ".join(r["detail"] for r in changes)
    assert f"router.template.kvm: 'SYSTEM VM' -> '{world.kvm.templatename}'" in texts or \
        f"-> '{world.kvm.templatename}'" in texts
    assert f"minreq.sysvmtemplate.version: None -> '{release}'" in texts
    assert f"now on template {template['id']}" in texts and "s-" in texts
    if world.cloud.era != "4.11":
        assert world.cloud.query("SELECT * FROM data_center_details WHERE name = "
                                 "'router.template.kvm'") == []

    again = world.run("--json")
    assert [r for r in json.loads(again.out) if r["action"] == "configure"] == []


def test_system_vms_follow_their_hosts_arch(world, stores_root):
    zone, _, _ = one_zone(world)
    b = world.builder
    arm_cluster = b.cluster(zone, "KVM", arch="aarch64")
    arm_host = b.host(arm_cluster, arch="aarch64")
    old = b.template("systemvm-kvm-4.19.0", "KVM", "QCOW2")
    on_arm = b.system_vm(zone, "SecondaryStorageVm", "KVM", old, host_id=arm_host)
    on_x86 = b.system_vm(zone, "ConsoleProxy", "KVM", old)
    run = world.run("--hypervisor", "kvm", "--json")
    assert run.code == 1  # aarch64's checksum is empty in 4.20 metadata: refused
    (x86,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    vms = {r["id"]: r["vm_template_id"] for r in world.rows("vm_instance")}
    assert vms[on_x86] == x86["id"] and vms[on_arm] == old


def hold_lock(world, name):
    """Another connection (a management server, say) holding a MySQL user lock."""
    holder = world.cloud.server.connect(database=world.cloud.name)
    with holder.cursor() as cursor:
        cursor.execute("SELECT GET_LOCK(%s, 0)", (name,))
        assert cursor.fetchone()[0] == 1
    return holder


@pytest.mark.parametrize("lock", ["UpgradeDatabase-Lock", "DatabaseUpgrade"])
def test_a_held_lock_is_waited_for_and_its_holder_named(world, stores_root, lock):
    one_zone(world)
    holder = hold_lock(world, lock)
    try:
        run = world.run("--lock-timeout", "1")
        assert run.code == errors.EXIT_LOCKED
        assert f"Lock '{lock}' is still held by connection" in run.err
        assert "from localhost" in run.err or "from 127.0.0.1" in run.err
        assert world.rows("template_store_ref") == []
    finally:
        holder.close()
    assert world.run().code == 0  # freed: the run goes ahead


def test_a_run_waits_for_the_lock_then_finishes(world, stores_root):
    one_zone(world)
    holder = hold_lock(world, "UpgradeDatabase-Lock")
    threading.Timer(1.5, holder.close).start()
    started = time.monotonic()
    run = world.run("--lock-timeout", "30")
    assert run.code == 0, run.err
    assert time.monotonic() - started >= 1.4
    assert "Waiting for lock 'UpgradeDatabase-Lock', held by connection" in run.err
    # The holder in plain words: an idle connection, not PROCESSLIST's "Sleep".
    (waiting,) = [line for line in run.err.splitlines() if "Waiting for lock" in line]
    assert re.search(r"held by connection \d+ from \S+ \(user \w+, idle for \d+s\): another "
                     r"seeding run, or a management server registering templates\.", waiting)
    assert "Still waiting" not in run.err  # 1.5 s: no second line


@pytest.mark.parametrize("count", [2, 3])
def test_concurrent_runs_end_as_one(world, stores_root, count):
    zone, _, _ = one_zone(world)
    for n in (2, 3):
        world.nfs_store(zone, f"10.9.0.{n}", f"/export/s{n}")
    runs = [subprocess.Popen(world.command("--json"), env=world.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(count)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in runs]
    assert [code for code, _, _ in results] == [0] * count, [err for _, _, err in results]
    templates = world.rows("vm_template", "type = 'SYSTEM' AND name = %s",
                           (world.kvm.templatename,))
    assert len(templates) == 1
    refs = world.rows("template_store_ref", "template_id = %s", (templates[0]["id"],))
    assert len(refs) == 3 and {r["state"] for r in refs} == {"Ready"}
    actions = sorted(r["action"] for _, out, _ in results for r in json.loads(out)
                     if r["action"] != "configure")
    # One run did the work; the others found it done.
    assert actions.count("none") == 3 * (count - 1) and len(actions) == 3 * count
    for export in stores_root.rglob("tmpl/1"):
        assert os.listdir(export) == [str(templates[0]["id"])]
    for process in runs:
        process.stdout.close()
        process.stderr.close()


def test_on_store_added_seeds_that_store_only_and_never_fails_the_addition(world, stores_root):
    zone, first, _ = one_zone(world)
    second, second_dir = world.nfs_store(zone, "10.1.0.2", "/export/s2")
    run = world.run("on-store-added", "--store-id", str(second), "--json")
    assert run.code == 0, run.err
    assert [r["store_id"] for r in world.rows("template_store_ref")] == [second]
    assert {r["store_id"] for r in json.loads(run.out) if r["store_id"]} == {second}

    broken = world.builder.store(zone, "nfs://10.1.0.66/export/gone")
    run = world.run("on-store-added", "--store-id", str(broken))
    assert run.code == 0
    assert f"on-store-added --store-id {broken}" in run.err
    assert world.run("on-store-added", "--store-id", str(broken), "--strict").code == 1
    assert world.run("on-store-added", "--store-id", "999").code == errors.EXIT_USAGE


def test_check_says_ready_or_lists_every_problem(world, stores_root):
    zone, store, export = one_zone(world)
    ready = world.run("check")
    assert (ready.code, ready.out.strip()) == (0, "ready")

    world.builder.store(zone, "nfs://10.1.0.66/export/gone")
    world.builder.template(world.kvm.templatename, "KVM", "QCOW2", type="USER", account_id=2)
    world.builder.config("router.template.kvm", "no-such-template")
    holder = hold_lock(world, "UpgradeDatabase-Lock")
    try:
        with open(world.bundle, "r+b") as f:
            f.seek(100)
            f.write(b"\0\0\0")
        run = world.run("check", "--json")
    finally:
        holder.close()
    assert run.code == 1
    problems = {p["where"]: p["problem"] for p in json.loads(run.out)}
    assert problems["lock 'UpgradeDatabase-Lock'"].startswith("held by connection")
    assert "is of type USER" in next(v for k, v in problems.items() if k.startswith("template"))
    assert problems["router.template.kvm"] == "names 'no-such-template', which no template has"
    assert "does not match its checksum" in problems["[kvm-x86_64]"]
    assert any("Cannot mount 10.1.0.66:/export/gone" in v for v in problems.values())
    assert world.rows("template_store_ref") == []  # read-only
    assert world.leftover_mountpoints() == []


def test_install_writes_one_copy_safely_and_records_it(world, stores_root, tmp_path):
    zone, first, _ = one_zone(world)
    assert world.run().code == 0
    (template,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    second, export = world.nfs_store(zone, "10.1.0.2", "/export/s2")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()

    not_mounted = world.run("install", "-m", str(mountpoint), "-f", str(world.bundle), "-h",
                            "kvm", "--store-id", str(second))
    assert not_mounted.code == errors.EXIT_STORE
    assert "is not a mount point" in not_mounted.err and os.listdir(mountpoint) == []

    argv = world.mount_command.split() + ["10.1.0.2:/export/s2", str(mountpoint)]
    subprocess.run(argv, check=True)
    try:
        args = ["install", "-m", str(mountpoint), "-f", str(world.bundle), "-h", "kvm",
                "--store-id", str(second)]
        run = world.run(*args)
        assert run.code == 0, run.err
        (ref,) = world.rows("template_store_ref", "store_id = %s", (second,))
        assert (ref["template_id"], ref["state"]) == (template["id"], "Ready")
        assert (export / ref["install_path"].lstrip("/")).is_file()

        again = world.run(*args)
        assert again.code == errors.EXIT_STORE and "Pass -F to replace it" in again.err
        forced = world.run(*args, "-F")
        assert forced.code == 0, forced.err
        assert len(os.listdir(export / ".cloudstack-sysvm-seed" / "aside")) == 1

        other = tmp_path / "other.qcow2.bz2"
        other.write_bytes(world.bundle.read_bytes())
        unverified = world.run("install", "-m", str(mountpoint), "-f", str(other), "-h", "kvm",
                               "--store-id", str(second), "-F")
        assert unverified.code == errors.EXIT_USAGE and "No checksum for other" in unverified.err
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    assert config(world, "router.template.kvm") == world.kvm.templatename  # untouched by install


def kill_connections_when_copying(world, exports, which):
    """From another connection, KILL the run's main or lock connection once copying began."""
    admin = world.cloud.server.connect()
    (ours,) = world.cloud.query("SELECT CONNECTION_ID() AS id")  # the test's own: spared

    def victims(cursor):
        cursor.execute("SELECT IS_USED_LOCK('UpgradeDatabase-Lock')")
        lock_id = cursor.fetchone()[0]
        cursor.execute("SELECT id FROM information_schema.PROCESSLIST WHERE db = %s AND id <> "
                       "CONNECTION_ID()", (world.cloud.name,))
        ids = {row[0] for row in cursor.fetchall()} - {None, ours["id"]}
        return {lock_id} if which == "lock" else ids - {lock_id}

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any((e / ".cloudstack-sysvm-seed" / "stage").is_dir() for e in exports):
                with admin.cursor() as cursor:
                    for victim in victims(cursor):
                        cursor.execute(f"KILL {int(victim)}")
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread, admin


@pytest.mark.parametrize("which", ["main", "lock"])
def test_a_dropped_database_connection_mid_run(world, stores_root, slow_bundle, which):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    exports = [world.nfs_store(zone, f"10.1.0.{n}", f"/export/s{n}")[1] for n in (1, 2)]
    world.use_bundle(slow_bundle)
    thread, admin = kill_connections_when_copying(world, exports, which)
    run = world.run("--json")
    thread.join()
    admin.close()
    if which == "main":
        assert run.code == 0, run.err  # reconnected between transactions
    else:
        assert run.code == errors.EXIT_FAILED
        assert "Lost the lock 'UpgradeDatabase-Lock'" in run.out
        assert world.rows("template_store_ref") == []
        assert all(not (e / ".cloudstack-sysvm-seed").exists() for e in exports)
        assert world.run().code == 0  # the rerun converges
    refs = world.rows("template_store_ref")
    assert len(refs) == 2 and {r["state"] for r in refs} == {"Ready"}
    assert len(world.rows("vm_template", "name = %s", (world.kvm.templatename,))) == 1


def test_a_statement_the_database_refuses_is_a_database_error_not_a_bug(world, stores_root,
                                                                        tmp_path):
    """A db.properties user that may not read vm_instance (the system VMs, read while the
    run looks around): exit 4, the statement and the server's own words, no traceback, and
    nothing written."""
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    world.nfs_store(zone, "10.1.0.1", "/export/s1")
    templates = world.rows("vm_template")
    user, password = "seed_narrow", "narrow-pw"
    admin = world.cloud.server.connect()
    try:
        with admin.cursor() as cursor:
            cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
            cursor.execute("SELECT table_name FROM information_schema.tables "
                           "WHERE table_schema = %s", (world.cloud.name,))
            tables = [row[0] for row in cursor.fetchall()]
            for table in tables:
                assert re.fullmatch(r"\w+", table) and re.fullmatch(r"\w+", world.cloud.name)
                if table != "vm_instance":
                    cursor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON "
                                   f"`{world.cloud.name}`.`{table}` TO %s@'%%'", (user,))
        narrow = write_db_properties(tmp_path / "narrow" / "db.properties", world.cloud.server,
                                     world.cloud.name, user, password)
        argv = world.argv("--json")
        argv[argv.index("--db-properties") + 1] = str(narrow)
        world.capsys.readouterr()
        code = cli.main(argv, environ=world.env)
        run = world.capsys.readouterr()
    finally:
        with admin.cursor() as cursor:
            cursor.execute("DROP USER IF EXISTS %s@'%%'", (user,))
        admin.close()
    assert code == errors.EXIT_DATABASE, run.err
    assert ("The cloud database failed a statement (SELECT on vm_instance): (1142) SELECT "
            "command denied to user 'seed_narrow'@") in run.err
    assert "internal error" not in run.err and "Traceback" not in run.err
    assert password not in run.err + run.out
    assert json.loads(run.out)["exit_code"] == errors.EXIT_DATABASE
    assert world.rows("vm_template") == templates and world.rows("template_store_ref") == []
