"""`prune` on the real MariaDB and real mounts: what goes, what never goes (each with its
reason), how it goes (as CloudStack retires a template), preview and consent, scope, a store
that does not mount, a kill in the middle, and doctor's view of what is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import VIRTUAL_SIZE, place_copy
from testbed import images as testbed_images

from cloudstack_sysvm_seed import errors

ERAS = ["4.20", "upstream-4.20.2"]


@pytest.fixture(scope="session")
def qcow2_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("prune-qcow2") / "systemvm.qcow2"
    testbed_images.make_qcow2(path, VIRTUAL_SIZE)
    return path


class Cloud:
    """A zone (or two) whose stores hold several KVM SYSTEM templates, older to newer."""

    def __init__(self, world, image, zones=("east",)):
        self.world, self.image, self.b = world, image, world.builder
        self.zones, self.stores, self.exports = {}, {}, {}
        for n, name in enumerate(zones, start=1):
            zone = self.b.zone(name)
            self.b.cluster(zone, "KVM")
            self.zones[name] = zone
            for m in (1, 2):
                store, export = world.nfs_store(zone, f"10.{n}.0.{m}", "/export/secondary")
                self.stores[(name, m)] = store
                self.exports[store] = export

    def template(self, version, on=None, hypervisor="KVM", fmt="QCOW2", ext="qcow2"):
        """A registered SYSTEM template with a complete copy (and Ready ref) on each store."""
        name = f"systemvm-{hypervisor.lower()}-{version}"
        tid = self.b.template(name, hypervisor, fmt, size=VIRTUAL_SIZE)
        for zone in self.zones.values():
            self.b.zone_ref(tid, zone)
        for store in (on if on is not None else self.stores.values()):
            path, physical = place_copy(self.exports[store], tid, self.image, VIRTUAL_SIZE,
                                        ext, hypervisor.lower())
            self.b.store_ref(tid, store, path, size=VIRTUAL_SIZE, physical_size=physical)
        return tid

    def directory(self, store, tid):
        return self.exports[store] / "template" / "tmpl" / "1" / str(tid)


def prune(world, tmp_path, *args):
    return world.run("prune", "--yes", "--backup-dir", str(tmp_path / "backups"), *args)


def template_row(world, tid):
    (row,) = world.rows("vm_template", "id = %s", (tid,))
    return row


def is_pruned(world, cloud, tid, stores):
    row = template_row(world, tid)
    refs = world.rows("template_store_ref", "template_id = %s", (tid,))
    zone_refs = world.rows("template_zone_ref", "template_id = %s", (tid,))
    return (row["state"] == "Inactive" and row["removed"] is not None
            and all(r["destroyed"] == 1 and r["state"] == "Destroyed" for r in refs)
            and all(z["removed"] is not None for z in zone_refs)
            and not any(cloud.directory(s, tid).exists() for s in stores))


def untouched(world, cloud, tid, stores):
    row = template_row(world, tid)
    refs = world.rows("template_store_ref", "template_id = %s", (tid,))
    return (row["removed"] is None and all(r["destroyed"] == 0 for r in refs)
            and all(cloud.directory(s, tid).is_dir() for s in stores))


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_the_oldest_go_as_cloudstack_retires_a_template_and_a_second_prune_has_nothing_to_do(
        world, stores_root, qcow2_image, tmp_path):
    cloud = Cloud(world, qcow2_image)
    stores = list(cloud.stores.values())
    oldest, older, old, current = (cloud.template(v) for v in
                                   ("4.17.0", "4.18.0", "4.19.0", "4.20.0"))
    world.builder.config("router.template.kvm", "systemvm-kvm-4.20.0")
    before = world.state(stores_root)

    dry = world.run("prune", "--dry-run", "--json")
    assert dry.code == 0, dry.out + dry.err
    planned = json.loads(dry.out)
    assert world.state(stores_root) == before
    assert planned["dry_run"] and set(planned["freed"]) == {str(s) for s in stores}
    size = sum(f.stat().st_size for f in cloud.directory(stores[0], oldest).iterdir())
    assert planned["freed"][str(stores[0])] == 2 * size  # two templates' copies
    details = [r["detail"] for r in planned["records"]]
    for tid in (oldest, older):
        assert any(f"vm_template {tid}: state Inactive, removed set" in d for d in details)
        for store in stores:
            assert any(d.startswith(f"store {store}: template_store_ref ")
                       and f"delete template/tmpl/1/{tid}/" in d for d in details)
    for tid in (old, current):
        assert any(d.startswith(f"template {tid} (") and "one of the newest 2" in d
                   for d in details)
    text = world.run("prune", "--dry-run")
    assert f"Store {stores[0]} would get back" in text.out

    run = prune(world, tmp_path, "--json")
    assert run.code == 0, run.out + run.err
    result = json.loads(run.out)
    assert result["freed"][str(stores[1])] == 2 * size
    assert is_pruned(world, cloud, oldest, stores) and is_pruned(world, cloud, older, stores)
    assert untouched(world, cloud, old, stores) and untouched(world, cloud, current, stores)
    # Every KVM SYSTEM template but the newest two went: the install-time one too.
    gone = {r["id"] for r in world.rows("vm_template", "type = 'SYSTEM' AND hypervisor_type "
                                        "= 'KVM' AND removed IS NOT NULL")}
    assert gone >= {oldest, older} and {old, current}.isdisjoint(gone)
    (backup,) = (tmp_path / "backups").glob("prune-*.json")
    saved = json.loads(backup.read_text())
    assert saved["command"] == "prune"
    tables = {t["table"]: t for t in saved["tables"]}
    assert {r["id"] for r in tables["vm_template"]["rows"]} == gone
    assert all(r["destroyed"] == 0 for r in tables["template_store_ref"]["rows"])
    undo = world.run("repair", "--undo", str(backup), "--yes")
    assert undo.code == errors.EXIT_USAGE and "copies that are gone" in undo.err

    again = prune(world, tmp_path)
    assert again.code == 0 and "Nothing to prune" in again.out
    assert world.run("doctor").code == 0  # nothing left behind


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_what_never_goes_is_reported_with_its_reason(world, stores_root, qcow2_image, tmp_path):
    cloud = Cloud(world, qcow2_image)
    stores = list(cloud.stores.values())
    zone = cloud.zones["east"]
    named = cloud.template("4.15.0")
    overridden = cloud.template("4.16.0")
    used = cloud.template("4.17.0")
    prunable = cloud.template("4.18.0")
    for version in ("4.19.0", "4.20.0"):
        cloud.template(version)
    builtin = world.builder.template("systemvm-kvm-4.10.0", "KVM", "QCOW2", type="BUILTIN")
    world.builder.config("router.template.kvm", "systemvm-kvm-4.15.0")
    world.builder.zone_detail(zone, "router.template.lxc", "systemvm-kvm-4.16.0")
    user_vm = world.builder.system_vm(zone, "User", "KVM", used)
    # Xen: the kept templates have no Ready copy, so the older one that has stays.
    world.builder.cluster(zone, "XenServer")
    only_ready = cloud.template("4.14.0", hypervisor="XenServer", fmt="VHD", ext="vhd")
    for version in ("4.19.0", "4.20.0"):
        world.builder.template(f"systemvm-xenserver-{version}", "XenServer", "VHD")

    run = prune(world, tmp_path, "--json")
    assert run.code == 0, run.out + run.err
    reasons = {r["template_id"]: r["detail"] for r in json.loads(run.out)["records"]
               if r["status"] == "kept"}
    assert "router.template.kvm names it" in reasons[named]
    assert f"zone {zone}'s router.template.lxc names it" in reasons[overridden]
    assert "in use by VM i-2-" in reasons[used] and "(User)" in reasons[used]
    assert "the only Ready template for xenserver x86_64" in reasons[only_ready]
    assert builtin not in reasons  # only SYSTEM templates are ever considered
    for tid in (named, overridden, used, only_ready):
        assert untouched(world, cloud, tid, stores)
    assert is_pruned(world, cloud, prunable, stores)
    assert world.rows("vm_instance", "id = %s", (user_vm,))[0]["vm_template_id"] == used


@pytest.mark.parametrize("world", ["upstream-4.20.2"], indirect=True)
def test_a_template_a_volume_was_created_from_stays(world, stores_root, qcow2_image, tmp_path):
    cloud = Cloud(world, qcow2_image)
    with_volume = cloud.template("4.16.0")
    for version in ("4.19.0", "4.20.0"):
        cloud.template(version)
    world.builder.system_vm(cloud.zones["east"], "User", "KVM", None)  # its account, offering
    world.cloud.query("INSERT INTO disk_offering (id, name, disk_size) VALUES (42, 'root', 1)")
    world.cloud.query(
        "INSERT INTO volumes (account_id, domain_id, name, uuid, size, data_center_id, "
        "volume_type, template_id, created, state, disk_offering_id) "
        "VALUES (1, 1, 'ROOT-42', UUID(), 1, %s, 'ROOT', %s, NOW(), 'Ready', 42)",
        (cloud.zones["east"], with_volume))
    run = prune(world, tmp_path, "--json")
    assert run.code == 0, run.out + run.err
    reasons = {r["template_id"]: r["detail"] for r in json.loads(run.out)["records"]
               if r["status"] == "kept"}
    assert "in use by volume ROOT-42" in reasons[with_volume]


def test_consent_is_needed_without_a_terminal(world, stores_root, qcow2_image, tmp_path):
    cloud = Cloud(world, qcow2_image)
    for version in ("4.18.0", "4.19.0", "4.20.0"):
        cloud.template(version)
    before = world.state(stores_root)
    run = world.run("prune", "--backup-dir", str(tmp_path / "b"))
    assert run.code == errors.EXIT_USAGE and "needs --yes" in run.err
    assert world.state(stores_root) == before and not (tmp_path / "b").exists()


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_a_zone_in_scope_is_cleaned_and_the_rows_wait_for_the_others(
        world, stores_root, qcow2_image, tmp_path):
    cloud = Cloud(world, qcow2_image, zones=("east", "west"))
    east = [cloud.stores[("east", 1)], cloud.stores[("east", 2)]]
    west = [cloud.stores[("west", 1)], cloud.stores[("west", 2)]]
    old = cloud.template("4.18.0")
    for version in ("4.19.0", "4.20.0"):
        cloud.template(version)
    run = prune(world, tmp_path, "--zone", "east", "--json")
    assert run.code == 0, run.out + run.err
    assert not any(cloud.directory(s, old).exists() for s in east)
    assert all(cloud.directory(s, old).is_dir() for s in west)
    assert template_row(world, old)["removed"] is None  # west keeps a copy
    held = [r["detail"] for r in json.loads(run.out)["records"] if r["status"] == "held"]
    assert any(f"vm_template {old} stays registered while store {west[0]} (out of scope)" in d
               for d in held)
    assert prune(world, tmp_path).code == 0
    assert is_pruned(world, cloud, old, east + west)


def test_a_store_that_does_not_mount_keeps_its_copy_and_rows(
        world, stores_root, qcow2_image, tmp_path):
    cloud = Cloud(world, qcow2_image)
    good, bad = cloud.stores[("east", 1)], cloud.stores[("east", 2)]
    old = cloud.template("4.18.0")
    for version in ("4.19.0", "4.20.0"):
        cloud.template(version)
    parked = stores_root / "parked"
    cloud.exports[bad].rename(parked)  # the export is gone: the mount fails
    run = prune(world, tmp_path, "--json")
    assert run.code == 0, run.out + run.err
    assert not cloud.directory(good, old).exists()
    refs = {r["store_id"]: r for r in world.rows("template_store_ref", "template_id = %s", (old,))}
    assert refs[good]["destroyed"] == 1 and refs[bad]["destroyed"] == 0
    assert template_row(world, old)["removed"] is None
    held = [r["detail"] for r in json.loads(run.out)["records"] if r["status"] == "held"]
    assert any(f"copy on store {bad} stays: it could not be mounted" in d for d in held)
    parked.rename(cloud.exports[bad])
    assert prune(world, tmp_path).code == 0  # a later prune finishes it
    assert is_pruned(world, cloud, old, [good, bad])


def test_a_killed_prune_leaves_each_template_whole_and_the_rerun_converges(
        world, stores_root, qcow2_image, tmp_path):
    cloud = Cloud(world, qcow2_image)
    stores = list(cloud.stores.values())
    doomed = [cloud.template(f"4.1{n}.0") for n in range(0, 8)]
    for version in ("4.19.0", "4.20.0"):
        cloud.template(version)
    process = subprocess.Popen(
        world.command("prune", "--yes", "--backup-dir", str(tmp_path / "b")), env=world.env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not world.rows("template_store_ref", "destroyed = 1"):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    # Whatever the moment: a copy whose rows still say Ready is whole where it was (never a
    # Ready row without its files); a copy whose rows say Destroyed is gone, or on its way.
    reached = 0
    for tid in doomed:
        for store in stores:
            (ref,) = world.rows("template_store_ref", "template_id = %s AND store_id = %s",
                                (tid, store))
            if ref["destroyed"] == 0:
                assert ref["state"] == "Ready" and cloud.directory(store, tid).is_dir()
                assert (cloud.directory(store, tid) / "template.properties").is_file()
            else:
                reached += 1
                assert ref["state"] == "Destroyed"
    assert 0 < reached < len(doomed) * len(stores)  # killed in the middle
    rerun = prune(world, tmp_path)
    assert rerun.code == 0, rerun.out + rerun.err
    for tid in doomed:
        assert is_pruned(world, cloud, tid, stores)
    for export in cloud.exports.values():
        assert not (export / ".cloudstack-sysvm-seed").exists()
    assert world.leftover_mountpoints() == []


def test_a_copy_moved_aside_by_a_killed_prune_is_put_back_or_deleted(
        world, stores_root, qcow2_image, tmp_path):
    cloud = Cloud(world, qcow2_image)
    store = cloud.stores[("east", 1)]
    kept = cloud.template("4.15.0")  # router.template.kvm names it: it stays
    gone = cloud.template("4.16.0")
    for version in ("4.19.0", "4.20.0"):
        cloud.template(version)
    world.builder.config("router.template.kvm", "systemvm-kvm-4.15.0")
    trash = cloud.exports[store] / ".cloudstack-sysvm-seed" / "prune"
    trash.mkdir(parents=True)
    # Killed between the rename and the commit: its rows still name the copy.
    cloud.directory(store, kept).rename(trash / f"{kept}-999999-aaaaaaaa")
    # Killed after the commit: its rows say it is gone.
    world.cloud.query("UPDATE template_store_ref SET destroyed = 1, state = 'Destroyed' "
                      "WHERE template_id = %s AND store_id = %s", (gone, store))
    cloud.directory(store, gone).rename(trash / f"{gone}-999999-bbbbbbbb")
    run = prune(world, tmp_path)
    assert run.code == 0, run.out + run.err
    assert "put back template" in run.err and "deleted template" in run.err
    assert cloud.directory(store, kept).is_dir() and untouched(world, cloud, kept, [store])
    assert not trash.exists()


def test_doctor_reports_a_retired_templates_directory_and_prune_removes_it(
        world, stores_root, qcow2_image, tmp_path):
    cloud = Cloud(world, qcow2_image)
    store = cloud.stores[("east", 1)]
    for version in ("4.19.0", "4.20.0"):
        cloud.template(version)
    world.builder.config("router.template.kvm", "systemvm-kvm-4.20.0")
    retired = cloud.template("4.12.0", on=[store])
    world.cloud.query("UPDATE vm_template SET state = 'Inactive', removed = NOW() "
                      "WHERE id = %s", (retired,))
    world.cloud.query("UPDATE template_store_ref SET destroyed = 1 WHERE template_id = %s",
                      (retired,))
    findings = json.loads(world.run("doctor", "--json").out)
    (left,) = [f for f in findings if f["code"] == "retired-directory-left"]
    assert left["stores"] == [store] and "cloudstack-sysvm-seed prune" in left["fix"]
    run = prune(world, tmp_path)
    assert run.code == 0, run.out + run.err
    assert not cloud.directory(store, retired).exists()
    assert world.run("doctor").code == 0
    assert os.listdir(cloud.exports[store] / "template" / "tmpl" / "1")
