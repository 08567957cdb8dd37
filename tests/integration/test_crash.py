"""SIGKILL at many points of a run, then a rerun: the end state is exactly that of a run
never interrupted (no orphan row, no partial directory, no stale stage)."""

from __future__ import annotations

import bz2
import hashlib
import os
import signal
import subprocess
import time

import pytest
from testbed import mounts

# Where to kill: ("start", s) s after launch; ("mounted", s) s after the first mount shows;
# ("copying", s) s after the first stage file appears (the copy lasts about a second).
KILL_POINTS = [("start", 0.05), ("start", 0.3), ("mounted", 0.0), ("copying", 0.0),
               ("copying", 0.1), ("copying", 0.25), ("copying", 0.4), ("copying", 0.6),
               ("copying", 0.8), ("copying", 1.0), ("copying", 1.3), ("copying", 1.7),
               ("copying", 2.5)]


def wait_for(condition, limit=60.0):
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.002)


@pytest.mark.parametrize("phase, delay", KILL_POINTS, ids=[f"{p}+{d}" for p, d in KILL_POINTS])
def test_a_killed_run_converges_on_rerun(world, stores_root, slow_bundle, phase, delay):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    exports = [world.nfs_store(zone, f"10.1.0.{n}", f"/export/s{n}")[1] for n in (1, 2)]
    world.use_bundle(slow_bundle)

    process = subprocess.Popen(world.command(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=world.env)
    if phase == "mounted":
        wait_for(lambda: any(str(world.runtime) in p for p in mounts.mountinfo_points())
                 or process.poll() is not None)
    elif phase == "copying":
        wait_for(lambda: any((e / ".cloudstack-sysvm-seed" / "stage").is_dir()
                             and any(os.scandir(e / ".cloudstack-sysvm-seed" / "stage"))
                             for e in exports) or process.poll() is not None)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    # A killed run cannot unmount; the next run detaches and removes what it left. A mount
    # command the killed run had started may still finish after the kill: wait for that.
    time.sleep(0.5)

    rerun = world.run("--json")
    assert rerun.code == 0, rerun.err
    assert world.leftover_mountpoints() == []
    assert [p for p in mounts.mountinfo_points() if str(world.runtime) in p] == []
    expected_image = hashlib.sha256(bz2.decompress(slow_bundle.read_bytes())).hexdigest()
    (template,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    assert (template["state"], template["removed"]) == ("Active", None)
    assert template["unique_name"] == f"routing-{template['id']}"
    refs = world.rows("template_store_ref")
    assert len(refs) == 2 and {r["template_id"] for r in refs} == {template["id"]}
    assert {(r["state"], r["download_state"], r["download_pct"]) for r in refs} == {
        ("Ready", "DOWNLOADED", 100)}
    assert len(world.rows("template_zone_ref", "template_id = %s", (template["id"],))) == 1
    for export in exports:
        assert sorted(os.listdir(export)) == ["template"]  # no stage, nothing set aside
        assert os.listdir(export / "template/tmpl/1") == [str(template["id"])]
    for ref in refs:
        export = exports[0] if ref["store_id"] == min(r["store_id"] for r in refs) else exports[1]
        image = export / ref["install_path"].lstrip("/")
        assert hashlib.sha256(image.read_bytes()).hexdigest() == expected_image
        assert ref["physical_size"] == image.stat().st_size
        names = sorted(os.listdir(image.parent))
        assert names == sorted([image.name, "template.properties"])
    (seq,) = world.cloud.query("SELECT value FROM sequence WHERE name = 'vm_template_seq'")
    assert seq["value"] == template["id"] + 1
