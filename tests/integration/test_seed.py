"""The whole flow: the CLI against a real MariaDB and bind-mounted stores, rows and files
checked exactly."""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from conftest import VIRTUAL_SIZE

from cloudstack_sysvm_seed import errors

ERAS = ["4.11", "4.15", "4.20"]


def copies(records):
    """The records of the copies, without the changes around them (action configure)."""
    return [r for r in records if r["action"] != "configure"]


def unwrapped(text):
    """The text report with its lines joined again (it wraps at 80 columns)."""
    return re.sub(r"\n\s+", " ", text)


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def build_three_zones(world):
    """east: 2 NFS stores; west: NFS + read-only NFS + S3; objects: Swift only. KVM in all."""
    b = world.builder
    east, west, objects = b.zone("east"), b.zone("west"), b.zone("objects")
    for zone in (east, west, objects):
        b.cluster(zone, "KVM")
    a1, a1_dir = world.nfs_store(east, "10.1.0.1", "/export/a1")
    a2, a2_dir = world.nfs_store(east, "10.1.0.2", "/export/a2", port=2049)
    w1, w1_dir = world.nfs_store(west, "10.2.0.1", "/export/w1")
    readonly = None
    if world.cloud.era != "4.11":  # no readonly column before 4.15
        readonly, _ = world.nfs_store(west, "10.2.0.2", "/export/ro", readonly=True)
    s3 = b.store(west, "http://s3.example.org/bucket", protocol="http", provider="S3")
    swift = b.store(objects, "http://swift.example.org/v1", protocol="http", provider="Swift")
    return dict(zones=(east, west, objects), seeded={a1: a1_dir, a2: a2_dir, w1: w1_dir},
                readonly=readonly, s3=s3, swift=swift)


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_fresh_run_registers_once_and_seeds_every_nfs_store(world, stores_root):
    layout = build_three_zones(world)
    started = world.rows("vm_template")
    run = world.run("--json")
    assert run.code == 0, run.err

    (template,) = world.rows("vm_template", "id > %s", (max(r["id"] for r in started),))
    tid, kvm = template["id"], world.kvm
    expected = {
        "unique_name": f"routing-{tid}", "name": kvm.templatename,
        "display_text": kvm.templatename, "public": 0, "featured": 0, "type": "SYSTEM",
        "hvm": 1, "bits": 64, "account_id": 1, "url": kvm.downloadurl,
        "checksum": "{MD5}" + md5(world.bundle), "enable_password": 0, "format": "QCOW2",
        "guest_os_id": 363 if world.cloud.era == "4.20" else 15, "cross_zones": 1,
        "hypervisor_type": "KVM", "state": "Active", "size": VIRTUAL_SIZE, "removed": None,
    }
    assert {k: template[k] for k in expected} == expected
    if world.cloud.era == "4.20":
        assert template["arch"] == "x86_64"
    if world.cloud.era != "4.11":
        assert template["deploy_as_is"] == 0
    (seq,) = world.cloud.query("SELECT value FROM sequence WHERE name = 'vm_template_seq'")
    assert seq["value"] == tid + 1

    zone_refs = world.rows("template_zone_ref", "template_id = %s", (tid,))
    assert sorted(r["zone_id"] for r in zone_refs) == sorted(layout["zones"])

    refs = world.rows("template_store_ref", "template_id = %s", (tid,))
    assert sorted(r["store_id"] for r in refs) == sorted(layout["seeded"])
    digest = world.image_digest()
    for ref in refs:
        filename = f"{template['uuid']}.qcow2"
        assert ref["install_path"] == f"/template/tmpl/1/{tid}/{filename}"
        assert (ref["state"], ref["download_state"], ref["download_pct"]) == (
            "Ready", "DOWNLOADED", 100)
        assert (ref["store_role"], ref["url"], ref["destroyed"], ref["is_copy"]) == (
            "Image", kvm.downloadurl, 0, 0)
        directory = layout["seeded"][ref["store_id"]] / f"template/tmpl/1/{tid}"
        assert sorted(os.listdir(directory)) == [filename, "template.properties"]
        image = directory / filename
        assert hashlib.sha256(image.read_bytes()).hexdigest() == digest
        assert (ref["size"], ref["physical_size"]) == (VIRTUAL_SIZE, image.stat().st_size)
        assert (directory / "template.properties").read_text().splitlines() == [
            f"filename={filename}", "description=SystemVM Template ( kvm )", "hvm=false",
            f"size={image.stat().st_size}", "qcow2=true", f"id={tid}", "public=true",
            f"qcow2.filename={filename}", f"uniquename=routing-{tid}",
            f"qcow2.virtualsize={VIRTUAL_SIZE}", f"virtualsize={VIRTUAL_SIZE}",
            f"qcow2.size={image.stat().st_size}",
        ]
        # Nothing of ours is left beside the template tree.
        assert not (layout["seeded"][ref["store_id"]] / ".cloudstack-sysvm-seed").exists()

    records = json.loads(run.out)
    by_store = {r["store_id"]: r for r in records if r["store_id"]}
    for store_id in layout["seeded"]:
        assert by_store[store_id]["action"] in ("register", "seed")
        assert (by_store[store_id]["status"], by_store[store_id]["template_id"]) == ("ready", tid)
        assert by_store[store_id]["hypervisor"] == "kvm"
        assert by_store[store_id]["arch"] == "x86_64"
    assert by_store[layout["s3"]]["status"] == "skipped"
    assert by_store[layout["swift"]]["detail"].startswith("Swift store")
    if layout["readonly"]:
        assert by_store[layout["readonly"]]["detail"] == "read-only store"
    assert any(r["zone"] == "objects" and r["store_id"] is None and r["status"] == "skipped"
               for r in records)
    assert world.leftover_mountpoints() == []


@pytest.mark.parametrize("world", ["4.15", "4.20"], indirect=True)
def test_second_run_changes_no_row_and_no_file(world, stores_root):
    build_three_zones(world)
    assert world.run().code == 0
    before = world.state(stores_root)
    again = world.run("--json")
    assert again.code == 0, again.err
    assert world.state(stores_root) == before
    actions = {(r["action"], r["status"]) for r in json.loads(again.out) if r["hypervisor"]}
    assert actions == {("none", "ready")}
    assert world.leftover_mountpoints() == []


def test_a_store_added_later_is_seeded_under_the_same_id(world, stores_root):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    world.nfs_store(zone, "10.1.0.1", "/export/a1")
    assert world.run().code == 0
    (template,) = world.rows("vm_template", "type = 'SYSTEM' AND name = %s",
                             (world.kvm.templatename,))
    second, second_dir = world.nfs_store(zone, "10.1.0.9", "/export/new")
    run = world.run("--json")
    assert run.code == 0, run.err
    assert len(world.rows("vm_template", "name = %s", (world.kvm.templatename,))) == 1
    (ref,) = world.rows("template_store_ref", "store_id = %s", (second,))
    assert ref["template_id"] == template["id"] and ref["state"] == "Ready"
    assert (second_dir / ref["install_path"].lstrip("/")).is_file()
    actions = {r["store_id"]: r["action"] for r in json.loads(run.out)}
    assert actions[second] == "seed"


def test_copy_present_but_rows_missing_is_adopted_without_rewriting(world, stores_root):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    store, export = world.nfs_store(zone, "10.1.0.1", "/export/a1")
    assert world.run().code == 0
    (ref,) = world.rows("template_store_ref", "store_id = %s", (store,))
    world.cloud.query("DELETE FROM template_store_ref WHERE id = %s", (ref["id"],))
    world.cloud.query("DELETE FROM template_zone_ref WHERE template_id = %s",
                      (ref["template_id"],))
    image = export / ref["install_path"].lstrip("/")
    mtime = image.stat().st_mtime_ns

    run = world.run("--json")
    assert run.code == 0, run.err
    assert [r["action"] for r in copies(json.loads(run.out))] == ["adopt"]
    (new_ref,) = world.rows("template_store_ref", "store_id = %s", (store,))
    for key in ("template_id", "install_path", "size", "physical_size", "state",
                "download_state", "download_pct"):
        assert new_ref[key] == ref[key], key
    assert image.stat().st_mtime_ns == mtime
    assert len(world.rows("template_zone_ref", "template_id = %s", (ref["template_id"],))) == 1


def test_an_incomplete_copy_is_set_aside_and_seeded_again(world, stores_root):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    store, export = world.nfs_store(zone, "10.1.0.1", "/export/a1")
    assert world.run().code == 0
    (ref,) = world.rows("template_store_ref", "store_id = %s", (store,))
    image = export / ref["install_path"].lstrip("/")
    with open(image, "r+b") as f:
        f.truncate(1000)  # what a crashed upstream copy leaves

    run = world.run("--json")
    assert run.code == 0, run.err
    (record,) = json.loads(run.out)
    assert record["action"] == "seed" and "set aside" in record["detail"]
    (new_ref,) = world.rows("template_store_ref", "store_id = %s", (store,))
    assert new_ref["id"] == ref["id"] and new_ref["state"] == "Ready"
    fresh = export / new_ref["install_path"].lstrip("/")
    assert hashlib.sha256(fresh.read_bytes()).hexdigest() == world.image_digest()
    (aside,) = os.listdir(export / ".cloudstack-sysvm-seed" / "aside")
    kept = export / ".cloudstack-sysvm-seed" / "aside" / aside / image.name
    assert kept.stat().st_size == 1000  # the operator's bytes are kept, not deleted


def test_an_existing_registration_is_reused_never_duplicated(world, stores_root):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    store, export = world.nfs_store(zone, "10.1.0.1", "/export/a1")
    tid = world.builder.template(world.kvm.templatename, "KVM", "QCOW2", state="Inactive")
    world.builder.template(world.kvm.templatename, "KVM", "QCOW2", type="USER", account_id=2)
    run = world.run()
    assert run.code == 0, run.err
    systems = world.rows("vm_template", "type = 'SYSTEM' AND name = %s",
                         (world.kvm.templatename,))
    assert [t["id"] for t in systems] == [tid]
    assert (systems[0]["state"], systems[0]["size"]) == ("Active", VIRTUAL_SIZE)
    (ref,) = world.rows("template_store_ref", "store_id = %s", (store,))
    assert ref["template_id"] == tid
    assert (export / ref["install_path"].lstrip("/")).is_file()
    assert len(world.rows("template_zone_ref", "template_id = %s", (tid,))) == 1


def zone_with_one_store(world):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    return world.nfs_store(zone, "10.1.0.1", "/export/a1")


def test_a_corrupt_bundle_changes_nothing_and_is_named(world, stores_root):
    store, export = zone_with_one_store(world)
    data = bytearray(world.bundle.read_bytes())
    data[-20] ^= 0xFF
    world.bundle.write_bytes(bytes(data))
    before = world.state(stores_root)
    run = world.run()
    assert run.code == errors.EXIT_FAILED
    assert world.state(stores_root) == before
    assert str(world.bundle) in run.out
    assert not (export / ".cloudstack-sysvm-seed").exists()


@pytest.mark.parametrize("large", [False, True], ids=["in-process bz2", "lbzip2"])
def test_a_damaged_byte_is_reported_as_the_checksum_mismatch_it_is(world, stores_root,
                                                                  slow_bundle, large):
    """The decoder's complaint ("block CRC mismatch") is not the cause: the file differs
    from what metadata.ini says it is, and the report says so with both digests."""
    store, export = zone_with_one_store(world)
    if large:
        world.use_bundle(slow_bundle)
    expected = md5(world.bundle)
    data = bytearray(world.bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    world.bundle.write_bytes(bytes(data))
    run = world.run("--json")
    assert run.code == errors.EXIT_FAILED
    (record,) = copies(json.loads(run.out))
    assert record["error"].startswith(
        f"Checksum mismatch for {world.bundle} (MD5):\n  expected {expected}\n"
        f"  actual   {md5(world.bundle)}\n  (and decoding it failed: corrupt ")
    assert "The file is corrupt or was modified; reinstall" in record["error"]
    assert world.rows("template_store_ref") == []
    assert not (export / ".cloudstack-sysvm-seed").exists()


def test_a_killed_decompressor_is_named_not_the_file(world, stores_root, slow_bundle,
                                                    tmp_path, monkeypatch):
    """The real lbzip2, SIGKILLed as the OOM killer does, as soon as it runs."""
    zone_with_one_store(world)
    world.use_bundle(slow_bundle)
    real = shutil.which("lbzip2")
    assert real, "lbzip2 is missing: scripts/setup installs it"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "lbzip2").write_text(f'#!/bin/sh\n( kill -KILL $$ ) &\nexec {real} "$@"\n')
    (bindir / "lbzip2").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    run = world.run("--json")
    assert run.code == errors.EXIT_FAILED
    (record,) = copies(json.loads(run.out))
    assert record["error"].startswith(f"Decompressing {world.bundle} failed: lbzip2 was "
                                      "killed by SIGKILL (out of memory?). The file is not "
                                      "known to be damaged.")
    assert "corrupt" not in record["error"] and "reinstall" not in record["error"]
    assert world.rows("template_store_ref") == []


def test_checksum_mismatch_message_has_algorithm_expected_and_actual(world, stores_root):
    zone_with_one_store(world)
    metadata = world.templates / "metadata.ini"
    wrong = "0" * 32
    metadata.write_text(metadata.read_text().replace(world.kvm.checksum, wrong))
    run = world.run()
    assert run.code == errors.EXIT_FAILED
    out = unwrapped(run.out)
    assert f"Checksum mismatch for {world.bundle} (MD5)" in out
    assert f"expected {wrong}" in out and f"actual   {md5(world.bundle)}" in out
    assert world.rows("template_store_ref") == []


def test_missing_bundled_file_is_reported_as_missing(world, stores_root):
    zone_with_one_store(world)
    world.bundle.unlink()
    templates_before = world.rows("vm_template")
    run = world.run("--json", "--download-attempts", "1")
    assert run.code == errors.EXIT_FAILED
    (record,) = copies(json.loads(run.out))
    assert record["status"] == "failed"
    assert record["error"].startswith(f"{world.bundle} is missing, and downloading ")
    assert "checksum" not in record["error"].lower()
    assert world.rows("vm_template") == templates_before

    metadata = world.templates / "metadata.ini"
    metadata.write_text(metadata.read_text().replace(world.kvm.downloadurl, ""))
    (record,) = copies(json.loads(world.run("--json").out))
    assert record["error"] == (f"{world.bundle} is missing (metadata.ini [{world.kvm.name}] "
                               "names it) and there is no downloadurl: put the file there, or "
                               "pass --download-repository")


def test_a_failing_mount_fails_that_store_only(world, stores_root):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    good, good_dir = world.nfs_store(zone, "10.1.0.1", "/export/a1")
    bad = world.builder.store(zone, "nfs://10.1.0.66/export/gone")
    run = world.run("--json")
    assert run.code == errors.EXIT_FAILED
    records = {r["store_id"]: r for r in json.loads(run.out)}
    assert records[good]["status"] == "ready"
    assert records[bad]["status"] == "failed"
    assert "Cannot mount 10.1.0.66:/export/gone for store" in records[bad]["error"]
    assert "access denied" in records[bad]["error"]
    assert [r["store_id"] for r in world.rows("template_store_ref")] == [good]
    assert world.leftover_mountpoints() == []


def test_a_mount_command_that_mounts_nothing_writes_nothing(world, stores_root, tmp_path):
    zone_with_one_store(world)
    run = world.run("--json", mount_command="true")
    assert run.code == errors.EXIT_FAILED
    (record,) = copies(json.loads(run.out))
    assert "exited 0 but nothing is mounted" in record["error"]
    assert world.rows("template_store_ref") == []
    assert world.leftover_mountpoints() == []  # the local directory was not written


def test_a_store_url_that_is_not_nfs_stops_before_any_change(world, stores_root):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    world.nfs_store(zone, "10.1.0.1", "/export/a1")
    world.builder.store(zone, "cifs://10.1.0.2/share")
    before = world.state(stores_root)
    run = world.run()
    assert run.code == errors.EXIT_STORE
    assert "is an NFS store, but 'cifs://10.1.0.2/share' is not an nfs:// URL" in run.err
    assert world.state(stores_root) == before


def test_dry_run_prints_the_plan_and_changes_nothing(world, stores_root):
    build_three_zones(world)
    before = world.state(stores_root)
    run = world.run("--dry-run")
    assert run.code == 0, run.err
    assert run.out.startswith("Dry run: nothing was changed.")
    assert "register" in run.out and "planned" in run.out
    assert world.state(stores_root) == before
    assert world.leftover_mountpoints() == []


def test_a_hypervisor_without_its_file_fails_alone_and_kvm_completes(world, stores_root):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    world.builder.cluster(zone, "XenServer")  # the KVM-only bundle has no xen file
    store, _ = world.nfs_store(zone, "10.1.0.1", "/export/a1")
    run = world.run("--json", "--download-attempts", "1")
    assert run.code == errors.EXIT_FAILED
    records = {r["hypervisor"]: r for r in copies(json.loads(run.out))}
    assert "xen.vhd.bz2 is missing, and downloading" in records["xenserver"]["error"]
    assert "Connection refused" in records["xenserver"]["error"]
    assert records["kvm"]["status"] == "ready"
    assert [r["store_id"] for r in world.rows("template_store_ref")] == [store]


def test_scope_by_zone_and_hypervisor(world, stores_root):
    layout = build_three_zones(world)
    west_store = max(layout["seeded"])  # stores were made east, east, west
    run = world.run("--zone", "west", "--hypervisor", "kvm", "--json")
    assert run.code == 0, run.err
    assert [r["store_id"] for r in world.rows("template_store_ref")] == [west_store]
    assert {r["zone"] for r in json.loads(run.out) if r["action"] != "configure"} == {"west"}
    assert world.run("--zone", "nowhere").code == errors.EXIT_USAGE


def test_mount_command_from_the_environment(world, stores_root, monkeypatch):
    zone_with_one_store(world)
    monkeypatch.setenv("CLOUDSTACK_SYSVM_SEED_MOUNT_COMMAND", world.mount_command)
    world.capsys.readouterr()
    from cloudstack_sysvm_seed import cli
    code = cli.main(["--db-properties", str(world.cloud.db_properties),
                     "--templates-dir", str(world.templates)])
    assert code == 0
    assert len(world.rows("template_store_ref")) == 1


def test_a_read_only_store_is_named_before_any_copy(world, stores_root):
    store, export = zone_with_one_store(world)
    run = world.run("--json", mount_command=world.mount_command + " --read-only")
    assert run.code == errors.EXIT_FAILED
    (record,) = copies(json.loads(run.out))
    assert record["error"].startswith(f"store {store} (nfs://10.1.0.1/export/a1) cannot be "
                                      "written: Read-only file system.")
    assert "export it rw" in record["error"]
    assert world.rows("template_store_ref") == [] and world.rows(
        "vm_template", "name = %s", (world.kvm.templatename,)) == []
    assert os.listdir(export) == []


def small_store(world, size):
    """A store on a tmpfs of `size` bytes, mounted over its export directory."""
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    store, export = world.nfs_store(zone, "10.1.0.1", "/export/small")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(export)],
                   check=True)
    return export


def run_on_small_store(world, size):
    export = small_store(world, size)
    try:
        run = world.run("--json")
        left = [str(p.relative_to(export)) for p in export.rglob("*")]
    finally:
        subprocess.run(["umount", str(export)], check=True)
    assert run.code == errors.EXIT_FAILED
    assert world.rows("template_store_ref") == []
    assert left == [], run.out  # no stage, no template directory
    return copies(json.loads(run.out))[0]["error"]


def incompressible_bundle(world, tmp_path, size):
    """Replace the KVM bundle with a qcow2 of random data (metadata.ini updated)."""
    raw, qcow2 = tmp_path / "random.raw", tmp_path / "random.qcow2"
    raw.write_bytes(os.urandom(size))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
                   check=True)
    compressed = tmp_path / "random.qcow2.bz2"
    compressed.write_bytes(bz2.compress(qcow2.read_bytes()))
    world.use_bundle(compressed)


def test_a_store_without_room_is_refused_before_copying(world, stores_root, tmp_path):
    incompressible_bundle(world, tmp_path, 256 << 10)
    # Our estimate for a bzip2 source is four times its size; give a quarter of that.
    error = run_on_small_store(world, world.bundle.stat().st_size // 4096 * 4096)
    assert "bytes free; the image needs about" in error


def test_a_store_that_fills_up_mid_copy_is_named_and_cleaned(world, stores_root):
    image_size = len(bz2.decompress(world.bundle.read_bytes()))
    estimate = 4 * world.bundle.stat().st_size
    assert estimate < image_size // 2  # the tiny test image compresses far better than 4:1
    error = run_on_small_store(world, (estimate + image_size) // 2 // 4096 * 4096)
    assert "is full: No space left on device" in error


RECORDER = """import json, os, sys
with open(sys.argv[1], "a") as log:
    log.write(json.dumps(sys.argv[2:]) + "\\n")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def test_nfs_version_per_store_global_and_flag(world, stores_root, tmp_path):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    first, _ = world.nfs_store(zone, "10.1.0.1", "/export/a1")
    second, _ = world.nfs_store(zone, "10.1.0.2", "/export/a2")
    world.builder.store_detail(first, "nfs.version", "4.1")
    world.builder.config("secstorage.nfs.version", "3")
    recorder, log = tmp_path / "recorder.py", tmp_path / "mounts.log"
    recorder.write_text(RECORDER)
    command = f"{sys.executable} {recorder} {log} {world.mount_command}"

    def options():
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        log.unlink()
        return {call[-2]: call[call.index("-o") + 1] for call in calls}

    assert world.run("--dry-run", mount_command=command).code == 0
    assert options() == {"10.1.0.1:/export/a1": "vers=4.1", "10.1.0.2:/export/a2": "vers=3"}
    assert world.run("--dry-run", "--nfs-version", "4.2", mount_command=command).code == 0
    assert set(options().values()) == {"vers=4.2"}


def test_an_unsupported_nfs_version_is_named_with_a_hint(world, stores_root):
    store, _ = zone_with_one_store(world)
    world.builder.store_detail(store, "nfs.version", "4.1")
    refusing = "sh -c 'echo mount.nfs: Protocol not supported >&2; exit 32' sh"
    run = world.run("--json", mount_command=refusing)
    assert run.code == errors.EXIT_FAILED
    (record,) = copies(json.loads(run.out))
    assert "Protocol not supported" in record["error"]
    assert "NFS version 4.1 was tried and the server refused it" in record["error"]


def test_a_hung_mount_times_out_and_the_other_stores_finish(world, stores_root, tmp_path):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    good, _ = world.nfs_store(zone, "10.1.0.1", "/export/a1")
    hung, _ = world.nfs_store(zone, "10.1.0.99", "/export/hangs")
    # A mount command that never returns for the second server, as mount.nfs on a black hole.
    script = tmp_path / "mount-or-hang"
    script.write_text(f"#!/bin/sh\ncase \"$*\" in *10.1.0.99*) exec sleep 60;; esac\n"
                      f"exec {world.mount_command} \"$@\"\n")
    script.chmod(0o755)
    started = time.monotonic()
    run = world.run("--json", "--mount-timeout", "1", mount_command=str(script))
    assert time.monotonic() - started < 20
    assert run.code == errors.EXIT_FAILED
    records = {r["store_id"]: r for r in json.loads(run.out) if r["store_id"]}
    assert records[good]["status"] == "ready"
    assert records[hung]["error"].startswith("timeout: Cannot mount 10.1.0.99:/export/hangs "
                                             f"for store {hung}: timed out after 1s.")
    assert records[hung]["zone"] == "east" and records[hung]["store_url"].endswith("/hangs")
    assert world.leftover_mountpoints() == []


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_store_failure_is_logged_at_error_in_the_same_words_everywhere(world, stores_root,
                                                                         tmp_path, as_json):
    store, _ = zone_with_one_store(world)
    gone = world.builder.store(world.rows("data_center")[0]["id"], "nfs://10.1.0.9/export/gone")
    log = tmp_path / "seed.log"
    run = world.run("--log-file", str(log), *(["--json"] if as_json else []))
    assert run.code == errors.EXIT_FAILED
    prefix = "cloudstack-sysvm-seed: ERROR: "
    on_stderr = [line[len(prefix):] for line in run.err.splitlines() if line.startswith(prefix)]
    in_log = [line.split(" ERROR ", 1)[1].split(": ", 1)[1]
              for line in log.read_text().splitlines() if " ERROR " in line]
    assert on_stderr == in_log == [
        f"Failed for kvm x86_64 on store {gone} (nfs://10.1.0.9/export/gone) in zone east: "
        f"Cannot mount 10.1.0.9:/export/gone for store {gone}: exit code 32: mount.nfs: access "
        "denied by server while mounting 10.1.0.9:/export/gone. Check that the NFS server is "
        "reachable and exports the path to this host."]
    assert "Done: copies 1 ready, 1 failed; stores 1 ready, 1 failed;" in log.read_text()
