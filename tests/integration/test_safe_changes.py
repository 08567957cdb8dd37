"""Safe changes, on the real MariaDB, on our own DDL and on a real CloudStack 4.20.2 schema:
a run never rolls back without being asked, stays in scope, holds back what a failure
leaves incomplete, moves minreq last, and its dry run lists exactly what it then changes."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time

import pytest
from conftest import VIRTUAL_SIZE
from testbed import images

from cloudstack_sysvm_seed import errors

ERAS = ["4.20", "upstream-4.20.2"]
MINREQ = "minreq.sysvmtemplate.version"


def setting(world, name):
    rows = world.cloud.query("SELECT value FROM configuration WHERE name = %s", (name,))
    return rows[0]["value"] if rows else None


def vm_templates(world):
    return {r["id"]: r["vm_template_id"] for r in world.rows("vm_instance")}


def configure(records):
    return [r for r in records if r["action"] == "configure"]


def copies(records):
    return [r for r in records if r["action"] != "configure"]


def kvm_zone(world, name, *hosts):
    """A zone with a KVM cluster and one NFS store per host."""
    zone = world.builder.zone(name)
    world.builder.cluster(zone, "KVM")
    return zone, [world.nfs_store(zone, host, "/export/secondary")[0] for host in hosts]


def older_templates(world, tmp_path, version):
    """A templates directory of another (older) release, as the package would ship it."""
    directory = tmp_path / f"templates-{version}"
    meta = images.build_kvm_bundle(directory, version, VIRTUAL_SIZE, form="4.20")
    return directory, meta


def run_with(world, templates, *args):
    saved, world.templates = world.templates, templates
    try:
        return world.run(*args)
    finally:
        world.templates = saved


# --- never backwards without being asked ------------------------------------------------------


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_an_older_templates_directory_is_refused_then_rolled_back_only_when_asked(
        world, stores_root, tmp_path):
    zone, (store,) = kvm_zone(world, "east", "10.1.0.1")
    old = world.builder.template("systemvm-kvm-4.15.0", "KVM", "QCOW2")
    ssvm = world.builder.system_vm(zone, "SecondaryStorageVm", "KVM", old)
    assert world.run().code == 0
    (new,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    assert vm_templates(world)[ssvm] == new["id"]
    release = world.meta.version.rsplit(".", 1)[0]  # 4.20.0
    assert setting(world, MINREQ) == release

    older, meta = older_templates(world, tmp_path, "4.19.1.0")
    before = world.state(stores_root)
    refused = run_with(world, older, "--json")
    assert refused.code == errors.EXIT_FAILED
    (failure,) = [r for r in json.loads(refused.out) if r["status"] == "failed"]
    assert (failure["hypervisor"], failure["arch"]) == ("kvm", "x86_64")
    assert "4.19.1" in failure["error"] and "older than 4.20" in failure["error"]
    assert "--allow-downgrade" in failure["error"]
    assert world.state(stores_root) == before  # no row, no file
    assert setting(world, "router.template.kvm") == world.kvm.templatename
    assert setting(world, MINREQ) == release  # never lowered without the flag
    assert vm_templates(world)[ssvm] == new["id"]
    held = [r for r in configure(json.loads(refused.out)) if r["status"] == "held"]
    assert any(MINREQ in r["detail"] and "--allow-downgrade" in r["detail"] for r in held)

    check = run_with(world, older, "check", "--json")
    assert check.code == errors.EXIT_FAILED
    assert any("--allow-downgrade" in p["problem"] for p in json.loads(check.out))

    forced = run_with(world, older, "--json", "--allow-downgrade")
    assert forced.code == 0, forced.out + forced.err
    (rolled,) = world.rows("vm_template", "name = %s", (meta.sections["kvm-x86_64"].templatename,))
    assert vm_templates(world)[ssvm] == rolled["id"]
    assert setting(world, "router.template.kvm") == rolled["name"]
    assert setting(world, MINREQ) == "4.19.1"
    details = [r["detail"] for r in configure(json.loads(forced.out))]
    assert any("router.template.kvm" in d and "rolled back from 4.20" in d for d in details)
    assert any(d.startswith(f"{MINREQ}: '{release}' -> '4.19.1'") and "rolled back" in d
               for d in details)

    # doctor tells: the current template is older than one that is Ready.
    findings = json.loads(world.run("doctor", "--json").out)
    (rollback,) = [f for f in findings if f["code"] == "older-template-in-use"]
    assert {"table": "vm_template", "id": new["id"]} in rollback["rows"]


def test_a_template_name_without_a_version_is_older_than_any(world, stores_root):
    zone, _ = kvm_zone(world, "east", "10.1.0.1")
    install_time = world.builder.template("SystemVM Template (KVM)", "KVM", "QCOW2")
    ssvm = world.builder.system_vm(zone, "SecondaryStorageVm", "KVM", install_time)
    world.builder.config("router.template.kvm", "SystemVM Template (KVM)")
    assert world.run().code == 0
    (new,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    assert vm_templates(world)[ssvm] == new["id"]


# --- one plan: the dry run lists what the run then changes ------------------------------------


def normalized(records):
    """What a plan says, with a new template's id (unknown in a dry run) as its name."""
    said = []
    for record in records:
        detail = re.sub(r"template \d+ \(([^)]*)\)", r"template \1", record["detail"] or "")
        detail = detail.replace(" (registered by this run)", "")
        said.append((record["zone_id"], record["store_id"], record["hypervisor"],
                     record["arch"], record["action"], detail))
    return sorted(said, key=str)


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_the_dry_run_lists_every_change_the_run_then_makes(world, stores_root):
    east, _ = kvm_zone(world, "east", "10.1.0.1", "10.1.0.2")
    west, _ = kvm_zone(world, "west", "10.2.0.1")
    old = world.builder.template("systemvm-kvm-4.15.0", "KVM", "QCOW2")
    vms = [world.builder.system_vm(zone, kind, "KVM", old) for zone in (east, west)
           for kind in ("SecondaryStorageVm", "ConsoleProxy")]
    world.builder.zone_detail(west, "router.template.kvm", "systemvm-kvm-4.15.0")
    world.builder.config("router.template.kvm", "systemvm-kvm-4.15.0")
    world.cloud.query(f"DELETE FROM configuration WHERE name = '{MINREQ}'")

    before = world.state(stores_root)
    dry = world.run("--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert world.state(stores_root) == before
    planned = json.loads(dry.out)
    assert {r["status"] for r in configure(planned)} == {"planned"}

    run = world.run("--json")
    assert run.code == 0, run.out + run.err
    made = json.loads(run.out)
    assert {r["status"] for r in configure(made)} == {"ready"}
    assert normalized(made) == normalized(planned)
    details = " | ".join(r["detail"] for r in configure(made))
    assert "router.template.kvm: 'systemvm-kvm-4.15.0' -> " in details
    assert f"{MINREQ}: None -> " in details
    assert "override router.template.kvm='systemvm-kvm-4.15.0': deleted" in details
    assert sum("system VMs in zone" in r["detail"] for r in configure(made)) == 2
    (new,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    assert set(vm_templates(world)[vm] for vm in vms) == {new["id"]}
    # The text report says it in the same words.
    text = world.run("--dry-run")
    assert "router.template.kvm" not in text.out  # nothing left to change
    assert world.run("--json").out and configure(json.loads(world.run("--json").out)) == []


# --- scope is a promise -----------------------------------------------------------------------


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_a_scoped_run_changes_its_zones_only_and_holds_the_global_settings(world, stores_root):
    east, (east_store,) = kvm_zone(world, "east", "10.1.0.1")
    west, (west_store,) = kvm_zone(world, "west", "10.2.0.1")
    old = world.builder.template("systemvm-kvm-4.15.0", "KVM", "QCOW2")
    east_vm = world.builder.system_vm(east, "SecondaryStorageVm", "KVM", old)
    west_vm = world.builder.system_vm(west, "SecondaryStorageVm", "KVM", old)
    world.builder.config("router.template.kvm", "systemvm-kvm-4.15.0")
    world.builder.config(MINREQ, "4.15.0")

    run = world.run("--zone", "east", "--json")
    assert run.code == 0, run.out + run.err
    (new,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    assert [r["store_id"] for r in world.rows("template_store_ref")] == [east_store]
    assert vm_templates(world) == {east_vm: new["id"], west_vm: old}
    assert setting(world, "router.template.kvm") == "systemvm-kvm-4.15.0"
    assert setting(world, MINREQ) == "4.15.0"
    held = {r["detail"] for r in configure(json.loads(run.out)) if r["status"] == "held"}
    (router,) = [d for d in held if d.startswith("router.template.kvm stays")]
    assert "zone west" in router and f"store {west_store}" in router
    assert "Finish with: cloudstack-sysvm-seed seed --zone west" in router
    assert any(d.startswith(f"{MINREQ} stays '4.15.0'") for d in held)

    # A plain seed of everything then finishes the job.
    everything = world.run("--json")
    assert everything.code == 0, everything.err
    assert vm_templates(world) == {east_vm: new["id"], west_vm: new["id"]}
    assert setting(world, "router.template.kvm") == world.kvm.templatename
    assert setting(world, MINREQ) == world.meta.version.rsplit(".", 1)[0]
    # minreq moves last: after every other change of the run.
    assert configure(json.loads(everything.out))[-1]["detail"].startswith(MINREQ)


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_on_store_added_repoints_the_system_vms_of_its_zone_only(world, stores_root):
    east, _ = kvm_zone(world, "east", "10.1.0.1")
    west, _ = kvm_zone(world, "west", "10.2.0.1")
    assert world.run().code == 0
    (new,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    old = world.builder.template("systemvm-kvm-4.15.0", "KVM", "QCOW2")
    east_vm = world.builder.system_vm(east, "SecondaryStorageVm", "KVM", old)
    west_vm = world.builder.system_vm(west, "SecondaryStorageVm", "KVM", old)
    added, _ = world.nfs_store(east, "10.1.0.9", "/export/new")
    run = world.run("on-store-added", "--store-id", str(added), "--json")
    assert run.code == 0, run.out + run.err
    assert vm_templates(world) == {east_vm: new["id"], west_vm: old}


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_a_hypervisor_out_of_scope_keeps_its_setting(world, stores_root):
    zone, _ = kvm_zone(world, "east", "10.1.0.1")
    world.builder.cluster(zone, "LXC")
    world.builder.config("router.template.kvm", "systemvm-kvm-4.15.0")
    world.builder.config(MINREQ, "4.15.0")
    run = world.run("--hypervisor", "lxc", "--json")
    assert run.code == 0, run.out + run.err
    assert setting(world, "router.template.kvm") == "systemvm-kvm-4.15.0"
    assert setting(world, "router.template.lxc") == world.meta.sections["lxc"].templatename
    assert setting(world, MINREQ) == "4.15.0"  # KVM, in use, still lacks its template


# --- failures change nothing around them ------------------------------------------------------


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_a_failed_hypervisor_keeps_its_settings_and_vms_and_holds_minreq(world, stores_root):
    zone, _ = kvm_zone(world, "east", "10.1.0.1")
    world.builder.cluster(zone, "XenServer")  # the KVM-only bundle has no xen file
    old_kvm = world.builder.template("systemvm-kvm-4.15.0", "KVM", "QCOW2")
    old_xen = world.builder.template("systemvm-xenserver-4.15.0", "XenServer", "VHD")
    kvm_vm = world.builder.system_vm(zone, "SecondaryStorageVm", "KVM", old_kvm)
    xen_vm = world.builder.system_vm(zone, "ConsoleProxy", "XenServer", old_xen)
    world.builder.config("router.template.xenserver", "systemvm-xenserver-4.15.0")
    world.builder.config(MINREQ, "4.15.0")
    run = world.run("--json", "--download-attempts", "1")
    assert run.code == errors.EXIT_FAILED
    (new,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    assert vm_templates(world) == {kvm_vm: new["id"], xen_vm: old_xen}
    assert setting(world, "router.template.kvm") == world.kvm.templatename
    assert setting(world, "router.template.xenserver") == "systemvm-xenserver-4.15.0"
    assert setting(world, MINREQ) == "4.15.0"
    held = [r["detail"] for r in configure(json.loads(run.out)) if r["status"] == "held"]
    # minreq waited for the Xen copy, which failed.
    assert any(d.startswith(f"{MINREQ}: '4.15.0' -> ") and "held back: a copy of "
               "systemvm-xenserver-4.20.0-x86_64 in zone" in d for d in held), held


def test_a_failed_copy_of_lxc_changes_neither_its_setting_nor_minreq(world, stores_root):
    zone, _ = kvm_zone(world, "east", "10.1.0.1")
    world.builder.cluster(zone, "LXC")
    world.builder.config(MINREQ, "4.15.0")
    with open(world.bundle, "r+b") as stream:  # KVM and LXC share the file
        stream.seek(100)
        stream.write(b"\0\0\0")
    before = setting(world, "router.template.lxc")
    run = world.run("--hypervisor", "lxc", "--json")
    assert run.code == errors.EXIT_FAILED
    assert setting(world, "router.template.lxc") == before
    assert setting(world, MINREQ) == "4.15.0"


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_a_store_that_fails_holds_back_the_zones_settings_until_the_rerun(
        world, stores_root, tmp_path):
    zone, (good, broken) = kvm_zone(world, "east", "10.1.0.1", "10.1.0.66")
    old = world.builder.template("systemvm-kvm-4.15.0", "KVM", "QCOW2")
    ssvm = world.builder.system_vm(zone, "SecondaryStorageVm", "KVM", old)
    shutil.rmtree(stores_root / "10.1.0.66")  # the export is gone: the mount fails
    run = world.run("--json")
    assert run.code == errors.EXIT_FAILED
    assert vm_templates(world)[ssvm] == old
    assert setting(world, "router.template.kvm") != world.kvm.templatename
    (stays,) = [r for r in configure(json.loads(run.out))
                if r["detail"].startswith("system VMs in zone")]
    assert stays["status"] == "held" and f"store {broken}" in stays["detail"]
    world.make_export("10.1.0.66", "/export/secondary")
    assert world.run().code == 0
    (new,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    assert vm_templates(world)[ssvm] == new["id"]
    assert setting(world, "router.template.kvm") == world.kvm.templatename


# --- the database changes while the copies are written ----------------------------------------


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_row_changes_are_planned_again_when_the_database_changed_meanwhile(
        world, stores_root, slow_bundle):
    zone, _ = kvm_zone(world, "east", "10.1.0.1", "10.1.0.2")
    old = world.builder.template("systemvm-kvm-4.15.0", "KVM", "QCOW2")
    first = world.builder.system_vm(zone, "SecondaryStorageVm", "KVM", old)
    world.use_bundle(slow_bundle)
    exports = [stores_root / host / "export" / "secondary" for host in ("10.1.0.1", "10.1.0.2")]
    added = {}

    def recreate_a_vm_while_copying():
        # As a management server would, between the plan and the row changes.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any((e / ".cloudstack-sysvm-seed" / "stage").is_dir() for e in exports):
                added["vm"] = world.builder.system_vm(zone, "ConsoleProxy", "KVM", old)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=recreate_a_vm_while_copying)
    watcher.start()
    run = world.run("--json")
    watcher.join()
    assert run.code == 0, run.out + run.err
    assert "planned the row changes again" in run.err
    (new,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    assert vm_templates(world) == {first: new["id"], added["vm"]: new["id"]}
    (moved,) = [r for r in configure(json.loads(run.out)) if "system VMs" in r["detail"]]
    assert "s-" in moved["detail"] and "v-" in moved["detail"]
