"""Every hypervisor's image, as upstream packages it, seeded end to end; sizes checked against
qemu-img; bad images fail their hypervisor alone and leave nothing on any store."""

from __future__ import annotations

import bz2
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tarfile

import pytest
from conftest import CLUSTERS

from cloudstack_sysvm_seed import errors

EXTENSION = {"kvm": "qcow2", "lxc": "qcow2", "xenserver": "vhd", "hyperv": "vhd",
             "vmware": "ova", "ovm3": "raw"}
QEMU_FORMAT = {"qcow2": "qcow2", "vhd": "vpc", "raw": "raw", "vmdk": "vmdk"}


@pytest.fixture
def every_format(world, all_bundle, stores_root):
    directory, meta = all_bundle
    shutil.rmtree(world.templates)
    shutil.copytree(directory, world.templates)
    world.meta = meta
    zone = world.builder.zone("east")
    for hypervisor in CLUSTERS:
        world.builder.cluster(zone, hypervisor)
    stores = dict(world.nfs_store(zone, f"10.1.0.{n}", f"/export/s{n}") for n in (1, 2))
    return world, stores


def qemu_virtual_size(path, image_format):
    out = subprocess.run(["qemu-img", "info", "--output=json", "-f", image_format, str(path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["virtual-size"]


def test_every_format_is_seeded_with_true_sizes(every_format):
    world, stores = every_format
    run = world.run("--json")
    assert run.code == 0, run.out + run.err
    records = [r for r in json.loads(run.out) if r["action"] != "configure"]
    assert {(r["hypervisor"], r["status"]) for r in records} == {
        (hv, "ready") for hv in EXTENSION}
    assert all(r["source"].startswith("bundled ") for r in records)

    templates = {t["hypervisor_type"]: t for t in world.rows("vm_template", "type = 'SYSTEM' "
                                                             "AND id >= 200")}
    assert {t["format"] for t in templates.values()} == {"QCOW2", "VHD", "OVA", "RAW"}
    for ref in world.rows("template_store_ref"):
        template = next(t for t in templates.values() if t["id"] == ref["template_id"])
        ext = template["format"].lower()
        directory = stores[ref["store_id"]] / f"template/tmpl/1/{template['id']}"
        image = directory / f"{template['uuid']}.{ext}"
        assert ref["install_path"] == f"/template/tmpl/1/{template['id']}/{image.name}"
        assert ref["physical_size"] == image.stat().st_size
        if ext == "ova":
            members = sorted(os.listdir(directory))
            assert members == sorted([image.name, "template.properties", "systemvm.ovf",
                                      "systemvm.mf", "disk1.vmdk"])
            measured = qemu_virtual_size(directory / "disk1.vmdk", "vmdk")
        else:
            assert sorted(os.listdir(directory)) == [image.name, "template.properties"]
            measured = qemu_virtual_size(image, QEMU_FORMAT[ext])
        assert ref["size"] == measured == template["size"], template["hypervisor_type"]
        props = dict(line.split("=", 1) for line in
                     (directory / "template.properties").read_text().splitlines())
        assert props[f"{ext}.filename"] == image.name and props[ext] == "true"
        assert int(props["virtualsize"]) == measured
        assert int(props["size"]) == int(props[f"{ext}.size"]) == image.stat().st_size

    again = world.run("--json")
    assert {r["action"] for r in json.loads(again.out)} == {"none"}  # no configure either


def test_kvm_and_lxc_share_one_read_of_their_file(every_format, caplog):
    world, _ = every_format
    run = world.run("--hypervisor", "kvm", "--hypervisor", "lxc")
    assert run.code == 0
    copies = [m for m in run.err.splitlines() if "Copying" in m]
    assert len(copies) == 1 and "to 4 store(s)" in copies[0]


def replace_file(world, hypervisor, data):
    """Swap a bundled file for other bytes, with metadata.ini's checksum updated to match."""
    section = next(s for s in world.meta.sections.values() if s.hypervisor == hypervisor)
    path = world.templates / section.filename
    path.write_bytes(data)
    metadata = world.templates / "metadata.ini"
    text = metadata.read_text().replace(section.checksum, hashlib.md5(data).hexdigest())
    metadata.write_text(text)
    return path


def qcow2_bytes(world):
    return bz2.decompress((world.templates / world.kvm.filename).read_bytes())


@pytest.mark.parametrize("hypervisor, damage, words", [
    ("xenserver", lambda w, raw: bz2.compress(qcow2_bytes(w)),
     "holds qcow2 data, but this hypervisor needs VHD"),
    ("xenserver", lambda w, raw: raw[: len(raw) // 2], "stream is truncated"),
    ("ovm3", lambda w, raw: lzma.compress(b"x" * 1000), "xz compression is not supported"),
    ("vmware", lambda w, raw: _ova_without_ovf(raw),
     "the first member is 'systemvm.mf', not the OVF"),
], ids=["wrong-format", "truncated-bz2", "unknown-compression", "ova-without-ovf"])
def test_a_bad_image_fails_its_hypervisor_alone(every_format, hypervisor, damage, words):
    world, stores = every_format
    section = next(s for s in world.meta.sections.values() if s.hypervisor == hypervisor)
    raw = (world.templates / section.filename).read_bytes()
    path = replace_file(world, hypervisor, damage(world, raw))
    run = world.run("--json")
    assert run.code == errors.EXIT_FAILED
    records = json.loads(run.out)
    failed = {r["hypervisor"] for r in records if r["status"] == "failed"}
    assert failed == {hypervisor}
    errors_seen = {r["error"] for r in records if r["status"] == "failed"}
    assert all(str(path) in e and words in e for e in errors_seen), errors_seen
    assert {r["status"] for r in records if r["hypervisor"] != hypervisor} == {"ready"}
    # Nothing of the failed hypervisor on any store; no stage left anywhere.
    done = {r["template_id"] for r in records if r["status"] == "ready"}
    for export in stores.values():
        assert not (export / ".cloudstack-sysvm-seed").exists()
        assert set(map(int, os.listdir(export / "template/tmpl/1"))) == done
    assert not world.rows("vm_template", "name = %s", (section.templatename,))


def _ova_without_ovf(raw: bytes) -> bytes:
    """The same tar minus its first member (the OVF): header + data rounded to 512."""
    size = tarfile.TarInfo.frombuf(raw[:512], "utf-8", "strict").size
    return raw[512 + -(-size // 512) * 512:]
