"""`doctor` and `repair` against a real MariaDB and bind-mounted stores: every broken state is
built for real (rows and files), then doctor's findings, repair's end state (doctor exits 0)
and undo's exact restoration of the rows are checked."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import VIRTUAL_SIZE, place_copy
from testbed import images as testbed_images

from cloudstack_sysvm_seed import errors, images

XEN_NAME = "systemvm-xenserver-4.5"
TABLES = ("vm_template", "template_zone_ref", "template_store_ref", "configuration",
          "data_center_details", "vm_instance")


@pytest.fixture(scope="session")
def vhd_image(tmp_path_factory):
    """A small dynamic VHD, the image a XenServer store copy holds, and its virtual size."""
    path = tmp_path_factory.mktemp("vhd") / "systemvm.vhd"
    testbed_images.make_vhd(path, 32 << 20)
    with open(path, "rb") as stream:
        stream.seek(-512, os.SEEK_END)
        virtual = images.vhd_virtual_size(stream.read(), str(path))
    return path, virtual


@pytest.fixture(scope="session")
def qcow2_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("qcow2") / "systemvm.qcow2"
    testbed_images.make_qcow2(path, VIRTUAL_SIZE)
    return path, VIRTUAL_SIZE


def all_rows(world):
    keys = {"configuration": "name"}
    return {t: world.cloud.query(f"SELECT * FROM {t} ORDER BY {keys.get(t, 'id')}")
            for t in TABLES}


def doctor(world):
    run = world.run("doctor", "--json")
    assert run.code in (0, errors.EXIT_FAILED), run.err
    return run, json.loads(run.out)


def codes(findings):
    return sorted(f["code"] for f in findings)


def repair(world, tmp_path, *extra):
    run = world.run("repair", "--yes", "--backup-dir", str(tmp_path / "backups"), *extra)
    backups = sorted((tmp_path / "backups").glob("repair-*.json")) if (
        tmp_path / "backups").exists() else []
    return run, backups


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the seeds' example ---------------------------------------------------------------------


def build_seeds_example(world, vhd_image):
    """Three zones, each with one NFS store holding its own per-zone XenServer template
    (634, 635, 636, cross_zones=0), its zone ref, its SSVM and CPVM."""
    b = world.builder
    image, virtual = vhd_image
    layout = {"zones": [], "stores": [], "exports": [], "templates": [], "vms": []}
    for n in (1, 2, 3):
        zone = b.zone(f"zone{n}")
        b.cluster(zone, "XenServer")
        store, export = world.nfs_store(zone, f"10.{n}.0.1", f"/export/secondary{n}")
        tid = b.template(XEN_NAME, "XenServer", "VHD", id=633 + n, cross_zones=0, size=virtual)
        b.zone_ref(tid, zone)
        path, physical = place_copy(export, tid, image, virtual, "vhd", "xenserver")
        b.store_ref(tid, store, path, size=virtual, physical_size=physical)
        for kind in ("SecondaryStorageVm", "ConsoleProxy"):
            layout["vms"].append(b.system_vm(zone, kind, "XenServer", tid))
        for key, value in (("zones", zone), ("stores", store), ("exports", export),
                           ("templates", tid)):
            layout[key].append(value)
    b.config("router.template.xenserver", XEN_NAME)
    return layout


def test_seeds_example_doctor_repair_undo(world, stores_root, vhd_image, tmp_path):
    layout = build_seeds_example(world, vhd_image)
    z1, z2, z3 = layout["zones"]
    s1, s2, s3 = layout["stores"]

    run, findings = doctor(world)
    assert run.code == errors.EXIT_FAILED
    assert codes(findings) == sorted([
        "duplicate-zone-templates", "store-missing-template", "store-missing-template",
        "missing-zone-ref", "missing-zone-ref", "system-vms-on-old-template",
        "system-vms-on-old-template"])
    (duplicate,) = [f for f in findings if f["code"] == "duplicate-zone-templates"]
    assert duplicate["rows"] == [{"table": "vm_template", "id": t} for t in (634, 635, 636)]
    assert (duplicate["zones"], duplicate["stores"]) == ([z1, z2, z3], [s1, s2, s3])
    assert "Keep template 636" in duplicate["fix"]
    assert (duplicate["hypervisor"], duplicate["arch"]) == ("xenserver", "x86_64")
    missing = sorted((f["zones"], f["stores"]) for f in findings
                     if f["code"] == "store-missing-template")
    assert missing == [([z1], [s1]), ([z2], [s2])]
    vms = [f for f in findings if f["code"] == "system-vms-on-old-template"]
    assert sorted(f["zones"][0] for f in vms) == [z1, z2]
    assert all("destroy it" in f["fix"] for f in vms)
    text = world.run("doctor")
    assert text.code == errors.EXIT_FAILED and "[duplicate-zone-templates]" in text.out
    assert world.leftover_mountpoints() == []

    # The dry run prints the plan and changes nothing.
    before = all_rows(world)
    files_before = world.state(stores_root)[1]
    dry = world.run("repair", "--dry-run")
    assert dry.code == 0, dry.err
    assert dry.out.startswith("Dry run: nothing was changed.")
    assert "copy template 636 to store" in dry.out
    assert all_rows(world) == before and world.state(stores_root)[1] == files_before
    # Without a terminal and without --yes it refuses, before any change.
    refused = world.run("repair")
    assert refused.code == errors.EXIT_USAGE and "--yes" in refused.err
    assert all_rows(world) == before

    run, (backup,) = repair(world, tmp_path)
    assert run.code == 0, run.out + run.err
    assert "failed" not in run.out
    templates = {t["id"]: t for t in world.rows("vm_template", "id IN (634, 635, 636)")}
    assert (templates[636]["cross_zones"], templates[636]["state"],
            templates[636]["removed"]) == (1, "Active", None)
    for tid in (634, 635):
        assert templates[tid]["state"] == "Inactive" and templates[tid]["removed"] is not None
    refs = world.rows("template_store_ref", "template_id = 636 AND destroyed = 0")
    assert sorted(r["store_id"] for r in refs) == [s1, s2, s3]
    (original,) = [r for r in refs if r["store_id"] == s3]
    source = layout["exports"][2] / original["install_path"].lstrip("/")
    for ref, export in zip(sorted(refs, key=lambda r: r["store_id"]), layout["exports"]):
        assert (ref["state"], ref["download_state"], ref["download_pct"]) == (
            "Ready", "DOWNLOADED", 100)
        image = export / ref["install_path"].lstrip("/")
        assert digest(image) == digest(source)
        assert (ref["size"], ref["physical_size"]) == (vhd_image[1], image.stat().st_size)
    # The duplicates' files stay where they were.
    for tid, export in zip((634, 635), layout["exports"]):
        assert (export / f"template/tmpl/1/{tid}/template.properties").is_file()
    zone_refs = world.rows("template_zone_ref", "template_id = 636")
    assert sorted(r["zone_id"] for r in zone_refs) == [z1, z2, z3]
    vms = world.rows("vm_instance", f"id IN ({', '.join(map(str, layout['vms']))})")
    assert {vm["vm_template_id"] for vm in vms} == {636}
    run, findings = doctor(world)
    assert (run.code, findings) == (0, []), run.out
    assert world.run("doctor").out.strip() == "Healthy: no findings."
    assert world.leftover_mountpoints() == []

    # Undo puts every row back exactly.
    undone = world.run("repair", "--undo", str(backup), "--yes")
    assert undone.code == 0, undone.err
    assert all_rows(world) == before
    # The copies repair wrote are kept, and doctor says so: the mess is back, with complete
    # copies of 636 that a repair records instead of copying again.
    assert "Copies repair wrote are kept" in undone.out
    _, findings = doctor(world)
    assert "duplicate-zone-templates" in codes(findings)
    missing = [f for f in findings if f["code"] == "store-missing-template"]
    assert len(missing) == 2
    assert all(f["message"].endswith("a complete copy is on the store.") for f in missing)
    run, _ = repair(world, tmp_path, "--json")
    assert run.code == 0, run.out
    report = json.loads(run.out)
    assert not [r for r in report["results"] if r["action"].startswith("copy ")]
    assert doctor(world)[1] == []


@pytest.mark.parametrize("world", ["4.11", "4.15"], indirect=True)
def test_seeds_example_on_older_schemas(world, stores_root, vhd_image, tmp_path):
    layout = build_seeds_example(world, vhd_image)
    before = all_rows(world)
    assert "duplicate-zone-templates" in codes(doctor(world)[1])
    run, (backup,) = repair(world, tmp_path)
    assert run.code == 0, run.out + run.err
    assert doctor(world)[1] == []
    refs = world.rows("template_store_ref", "template_id = 636")
    assert sorted(r["store_id"] for r in refs) == sorted(layout["stores"])
    assert world.run("repair", "--undo", str(backup), "--yes").code == 0
    assert all_rows(world) == before


def test_survivor_is_the_one_with_most_copies(world, stores_root, vhd_image, tmp_path):
    """634 is on two stores, 636 on one: keep 634 and copy it once, not 636 twice."""
    layout = build_seeds_example(world, vhd_image)
    image, virtual = vhd_image
    second, export = world.nfs_store(layout["zones"][0], "10.1.0.2", "/export/more")
    path, physical = place_copy(export, 634, image, virtual, "vhd", "xenserver")
    world.builder.store_ref(634, second, path, size=virtual, physical_size=physical)
    (duplicate,) = [f for f in doctor(world)[1] if f["code"] == "duplicate-zone-templates"]
    assert "Keep template 634" in duplicate["fix"]
    run, _ = repair(world, tmp_path, "--json")
    assert run.code == 0, run.out + run.err
    copies = [r["action"] for r in json.loads(run.out)["results"]
              if r["action"].startswith("copy ")]
    assert sorted(copies) == [f"copy template 634 to store {s} from the copy on store "
                              f"{layout['stores'][0]}" for s in layout["stores"][1:]]
    states = {t["id"]: (t["state"], t["cross_zones"], t["removed"] is None)
              for t in world.rows("vm_template", "id IN (634, 635, 636)")}
    assert states == {634: ("Active", 1, True), 635: ("Inactive", 0, False),
                      636: ("Inactive", 0, False)}
    assert world.cloud.query("SELECT value FROM configuration WHERE name = %s",
                             ("router.template.xenserver",)) == [{"value": XEN_NAME}]
    assert doctor(world)[1] == []


# --- one broken state per finding, on a zone seeded by the tool itself ------------------------


@pytest.fixture
def seeded(world, stores_root):
    """Zone east (KVM) with two NFS stores, seeded by `seed`; doctor finds nothing."""
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    first, first_dir = world.nfs_store(zone, "10.1.0.1", "/export/a1")
    second, second_dir = world.nfs_store(zone, "10.1.0.2", "/export/a2")
    assert world.run().code == 0
    (template,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    refs = {r["store_id"]: r for r in world.rows("template_store_ref",
                                                  "template_id = %s", (template["id"],))}
    run, findings = doctor(world)
    assert (run.code, findings) == (0, []), run.out
    return dict(zone=zone, template=template, stores=(first, second),
                exports={first: first_dir, second: second_dir}, refs=refs)


def repaired_and_undone(world, tmp_path, expect_code=0):
    """Repair (doctor then finds nothing), undo (every row exactly as before)."""
    before = all_rows(world)
    run, backups = repair(world, tmp_path)
    assert run.code == expect_code, run.out + run.err
    after = doctor(world)[1]
    if expect_code == 0:
        assert after == [], after
    if backups:
        undone = world.run("repair", "--undo", str(backups[-1]), "--yes")
        assert undone.code == 0, undone.err
        assert all_rows(world) == before
    assert world.leftover_mountpoints() == []
    return run, after


def only(findings, code):
    assert codes(findings) == [code], findings
    return findings[0]


def test_missing_zone_ref(world, seeded, tmp_path):
    tid = seeded["template"]["id"]
    world.cloud.query("DELETE FROM template_zone_ref WHERE template_id = %s", (tid,))
    finding = only(doctor(world)[1], "missing-zone-ref")
    assert finding["zones"] == [seeded["zone"]]
    assert finding["rows"] == [{"table": "vm_template", "id": tid}]
    repaired_and_undone(world, tmp_path)


def test_store_missing_template_is_copied_from_the_bundled_file(world, seeded, tmp_path):
    third, third_dir = world.nfs_store(seeded["zone"], "10.1.0.3", "/export/a3")
    finding = only(doctor(world)[1], "store-missing-template")
    assert (finding["stores"], finding["zones"]) == ([third], [seeded["zone"]])
    run, _ = repair(world, tmp_path, "--json")
    assert run.code == 0, run.out + run.err
    (result,) = json.loads(run.out)["results"]
    assert result == {"action": f"copy template {seeded['template']['id']} to store {third} "
                                "from the bundled file", "status": "done", "detail": None}
    (ref,) = world.rows("template_store_ref", "store_id = %s", (third,))
    image = third_dir / ref["install_path"].lstrip("/")
    assert hashlib.sha256(image.read_bytes()).hexdigest() == world.image_digest()
    assert doctor(world)[1] == []


def test_store_missing_template_without_a_source_is_left(world, stores_root, tmp_path):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    store, _ = world.nfs_store(zone, "10.1.0.1", "/export/a1")
    tid = world.builder.template("systemvm-kvm-custom", "KVM", "QCOW2", size=VIRTUAL_SIZE)
    world.builder.zone_ref(tid, zone)
    world.builder.config("router.template.kvm", "systemvm-kvm-custom")
    finding = only(doctor(world)[1], "store-missing-template")
    assert "no complete copy" in finding["message"]
    before = world.state(stores_root)
    run, backups = repair(world, tmp_path)
    assert run.code == errors.EXIT_FAILED
    assert backups == []  # nothing to change, so nothing backed up
    assert "no source for template" in run.out
    assert world.state(stores_root) == before


def test_store_ref_not_ready_with_complete_files_is_recorded(world, seeded, tmp_path):
    store = seeded["stores"][0]
    ref = seeded["refs"][store]
    world.cloud.query(
        "UPDATE template_store_ref SET state = 'Creating', download_state = 'DOWNLOAD_ERROR', "
        "download_pct = 0, error_str = 'Connection refused', "
        "last_updated = '2020-01-01 00:00:00' WHERE id = %s", (ref["id"],))
    finding = only(doctor(world)[1], "store-ref-not-ready")
    assert "Creating/DOWNLOAD_ERROR" in finding["message"]
    assert "Connection refused" in finding["message"]
    assert finding["rows"] == [{"table": "template_store_ref", "id": ref["id"]}]
    image = seeded["exports"][store] / ref["install_path"].lstrip("/")
    mtime = image.stat().st_mtime_ns
    repaired_and_undone(world, tmp_path)
    assert image.stat().st_mtime_ns == mtime  # recorded, not rewritten


def test_store_ref_not_ready_without_files_is_copied_again(world, seeded, tmp_path):
    store = seeded["stores"][1]
    ref = seeded["refs"][store]
    tid = seeded["template"]["id"]
    shutil.rmtree(seeded["exports"][store] / "template" / "tmpl" / "1" / str(tid))
    world.cloud.query(
        "UPDATE template_store_ref SET state = 'Allocated', download_state = 'NOT_DOWNLOADED', "
        "download_pct = 0 WHERE id = %s", (ref["id"],))
    only(doctor(world)[1], "store-ref-not-ready")
    run, _ = repair(world, tmp_path)
    assert run.code == 0, run.out + run.err
    (fixed,) = world.rows("template_store_ref", "store_id = %s", (store,))
    assert fixed["id"] == ref["id"] and fixed["state"] == "Ready"
    image = seeded["exports"][store] / fixed["install_path"].lstrip("/")
    assert hashlib.sha256(image.read_bytes()).hexdigest() == world.image_digest()
    assert doctor(world)[1] == []


def test_a_download_in_progress_is_left_alone_while_recent(world, seeded, tmp_path):
    ref = seeded["refs"][seeded["stores"][0]]
    world.cloud.query(
        "UPDATE template_store_ref SET state = 'Creating', download_state = "
        "'DOWNLOAD_IN_PROGRESS', download_pct = 40, last_updated = %s WHERE id = %s",
        (datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None), ref["id"]))
    only(doctor(world)[1], "store-ref-not-ready")
    run, backups = repair(world, tmp_path)
    assert run.code == errors.EXIT_FAILED and backups == []
    assert "a download was reported in progress" in run.out
    (still,) = world.rows("template_store_ref", "id = %s", (ref["id"],))
    assert still["download_state"] == "DOWNLOAD_IN_PROGRESS"


def test_install_path_mismatch_is_pointed_at_the_files(world, seeded, tmp_path):
    ref = seeded["refs"][seeded["stores"][0]]
    world.cloud.query("UPDATE template_store_ref SET install_path = %s WHERE id = %s",
                      (f"template/tmpl/1/{ref['template_id']}/elsewhere.qcow2", ref["id"]))
    finding = only(doctor(world)[1], "install-path-mismatch")
    assert "elsewhere.qcow2" in finding["message"]
    repaired_and_undone(world, tmp_path)
    world.cloud.query("UPDATE template_store_ref SET install_path = %s, size = size + 1 "
                      "WHERE id = %s", (ref["install_path"], ref["id"]))
    assert "template.properties says" in only(doctor(world)[1], "install-path-mismatch")[
        "message"]
    repaired_and_undone(world, tmp_path)


def test_missing_template_properties_is_a_mismatch_copied_again(world, seeded, tmp_path):
    store = seeded["stores"][0]
    ref = seeded["refs"][store]
    export = seeded["exports"][store]
    image = export / ref["install_path"].lstrip("/")
    (image.parent / "template.properties").unlink()
    finding = only(doctor(world)[1], "install-path-mismatch")
    assert "incomplete (no template.properties)" in finding["message"]
    run, _ = repair(world, tmp_path)
    assert run.code == 0, run.out + run.err
    (fixed,) = world.rows("template_store_ref", "store_id = %s", (store,))
    assert fixed["id"] == ref["id"]
    assert (export / fixed["install_path"].lstrip("/")).is_file()
    # The incomplete copy was set aside, not deleted.
    (aside,) = os.listdir(export / ".cloudstack-sysvm-seed" / "aside")
    assert (export / ".cloudstack-sysvm-seed" / "aside" / aside / image.name).is_file()
    assert doctor(world)[1] == []


def test_size_zero(world, seeded, tmp_path):
    tid = seeded["template"]["id"]
    ref = seeded["refs"][seeded["stores"][1]]
    world.cloud.query("UPDATE vm_template SET size = 0 WHERE id = %s", (tid,))
    world.cloud.query("UPDATE template_store_ref SET size = NULL, physical_size = 0 "
                      "WHERE id = %s", (ref["id"],))
    findings = doctor(world)[1]
    assert codes(findings) == ["size-zero", "size-zero"]
    assert sorted(f["rows"][0]["table"] for f in findings) == [
        "template_store_ref", "vm_template"]
    repaired_and_undone(world, tmp_path)


def test_duplicate_store_ref(world, seeded, tmp_path):
    store = seeded["stores"][0]
    ref = seeded["refs"][store]
    extra = world.builder.store_ref(ref["template_id"], store, ref["install_path"],
                                    state="Allocated", download_state="NOT_DOWNLOADED", pct=0)
    finding = only(doctor(world)[1], "duplicate-store-ref")
    assert finding["rows"] == [{"table": "template_store_ref", "id": i}
                               for i in (ref["id"], extra)]
    assert f"Keep {ref['id']}" in finding["fix"]
    before = all_rows(world)
    run, (backup,) = repair(world, tmp_path)
    assert run.code == 0, run.out + run.err
    (dropped,) = world.rows("template_store_ref", "id = %s", (extra,))
    assert dropped["destroyed"] == 1
    assert doctor(world)[1] == []
    assert world.run("repair", "--undo", str(backup), "--yes").code == 0
    assert all_rows(world) == before


def test_router_template_mismatch(world, seeded, tmp_path):
    world.builder.config("router.template.kvm", "SystemVM Template (KVM)")
    override = world.builder.zone_detail(seeded["zone"], "router.template.kvm", "old-one")
    finding = only(doctor(world)[1], "router-template-mismatch")
    assert finding["rows"] == [{"table": "configuration", "id": "router.template.kvm"},
                               {"table": "data_center_details", "id": override}]
    assert world.kvm.templatename in finding["fix"]
    repaired_and_undone(world, tmp_path)


def test_system_vms_on_old_template(world, seeded, tmp_path):
    zone = seeded["zone"]
    ssvm = world.builder.system_vm(zone, "SecondaryStorageVm", "KVM", 3)
    router = world.builder.system_vm(zone, "DomainRouter", "KVM", 3)
    user = world.builder.system_vm(zone, "User", "KVM", 3)
    finding = only(doctor(world)[1], "system-vms-on-old-template")
    assert finding["rows"] == [{"table": "vm_instance", "id": i} for i in (ssvm, router)]
    assert "restart its network or VPC with cleanup=true" in finding["fix"]
    before = all_rows(world)
    run, (backup,) = repair(world, tmp_path)
    assert run.code == 0, run.out + run.err
    on = {r["id"]: r["vm_template_id"] for r in world.rows("vm_instance")}
    assert on == {ssvm: seeded["template"]["id"], router: seeded["template"]["id"], user: 3}
    assert doctor(world)[1] == []
    assert world.run("repair", "--undo", str(backup), "--yes").code == 0
    assert all_rows(world) == before


def test_orphan_directory_is_reported_and_left(world, seeded, tmp_path):
    store = seeded["stores"][1]
    orphan = seeded["exports"][store] / "template" / "tmpl" / "1" / "999"
    orphan.mkdir()
    (orphan / "disk.qcow2").write_bytes(b"someone's data")
    finding = only(doctor(world)[1], "orphan-directory")
    assert (finding["stores"], finding["rows"]) == ([store], [])
    assert "template/tmpl/1/999" in finding["message"]
    run, backups = repair(world, tmp_path)
    assert run.code == errors.EXIT_FAILED and backups == []
    assert "repair neither deletes nor adopts" in run.out
    assert (orphan / "disk.qcow2").read_bytes() == b"someone's data"


def test_stale_staging_is_removed_and_a_fresh_stage_kept(world, seeded, tmp_path):
    export = seeded["exports"][seeded["stores"][0]]
    stage = export / ".cloudstack-sysvm-seed" / "stage"
    for name in ("old", "fresh"):
        (stage / name).mkdir(parents=True)
        (stage / name / "x.qcow2").write_bytes(b"partial")
    long_ago = time.time() - 2 * 86400
    for path in (stage / "old", stage / "old" / "x.qcow2"):
        os.utime(path, (long_ago, long_ago))
    finding = only(doctor(world)[1], "stale-staging")
    assert "old" in finding["message"] and "fresh" not in finding["message"]
    run, backups = repair(world, tmp_path)
    assert run.code == 0, run.out + run.err
    assert backups == []  # no row changes
    assert sorted(os.listdir(stage)) == ["fresh"]
    assert doctor(world)[1] == []


def test_store_unreachable(world, seeded, tmp_path):
    gone = world.builder.store(seeded["zone"], "nfs://10.1.0.66/export/gone")
    finding = only(doctor(world)[1], "store-unreachable")
    assert finding["stores"] == [gone] and "Cannot mount" in finding["message"]
    assert world.leftover_mountpoints() == []


# --- what a run left: told at once when the run is dead, left alone while it lives ---------


def start_copying(world, slow_bundle):
    """A seed run in its own process, returned once it is writing its stages."""
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    exports = [world.nfs_store(zone, f"10.1.0.{n}", f"/export/s{n}")[1] for n in (1, 2)]
    world.use_bundle(slow_bundle)
    process = subprocess.Popen(world.command(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=world.env)
    stages = [e / ".cloudstack-sysvm-seed" / "stage" for e in exports]
    deadline = time.monotonic() + 60
    while not all(s.is_dir() and any(os.scandir(s)) for s in stages):
        assert process.poll() is None and time.monotonic() < deadline, "no copy started"
        time.sleep(0.002)
    return process, exports, stages


def test_a_killed_runs_stages_and_mounts_are_findings_at_once(world, stores_root, slow_bundle):
    process, exports, stages = start_copying(world, slow_bundle)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    left = world.leftover_mountpoints()
    assert len(left) == 2  # a killed run unmounts nothing

    run, findings = doctor(world)
    stale = [f for f in findings if f["code"] == "stale-staging"]
    assert len(stale) == 2  # a minute old at most, and found at once: the run is dead
    assert all(f"(run {process.pid} on this host is no longer running)" in f["message"]
               for f in stale)
    mounts_left = [f for f in findings if f["code"] == "stale-mount"]
    assert sorted(f["message"].split()[0] for f in mounts_left) == [
        str(world.runtime / name) for name in left]
    assert all(f"left by run {process.pid}, which is no longer running: " in f["message"]
               and f["message"].endswith(" is still mounted there.") for f in mounts_left)
    assert all("`cloudstack-sysvm-seed seed`" in f["fix"] for f in mounts_left)
    # doctor changes nothing: the mounts and the stages are still there.
    assert world.leftover_mountpoints() == left and all(any(os.scandir(s)) for s in stages)
    text = world.run("doctor").out
    assert "  run: cloudstack-sysvm-seed seed" in text
    assert "  run: cloudstack-sysvm-seed repair" in text  # the stages: seed sweeps only where
    assert "None" not in text                              # it writes, repair everywhere

    assert world.run().code == 0  # seeding detaches the mounts and sweeps the stages
    assert world.leftover_mountpoints() == []
    assert doctor(world)[1] == []


def test_a_live_runs_stages_are_named_in_progress_and_left_alone(world, stores_root,
                                                                slow_bundle):
    process, exports, stages = start_copying(world, slow_bundle)
    process.send_signal(signal.SIGSTOP)  # alive, but writing nothing while doctor looks
    try:
        run = world.run("doctor")
        assert "stale-staging" not in run.out and "stale-mount" not in run.out
        busy = run.out.split("In progress (left alone):\n", 1)[1].splitlines()
        assert len(busy) == 2
        assert all(f"is being written by run {process.pid} on this host; left alone." in line
                   for line in busy)
    finally:
        process.send_signal(signal.SIGCONT)
    assert process.wait(timeout=120) == 0
    assert world.leftover_mountpoints() == []
