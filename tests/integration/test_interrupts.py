"""Ctrl-C and SIGTERM in the middle of a copy: stages removed, no rows, stores unmounted."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest


def stage_files(exports):
    found = []
    for export in exports:
        for directory, _, names in os.walk(export / ".cloudstack-sysvm-seed" / "stage"):
            found.extend(os.path.join(directory, n) for n in names)
    return found


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_during_copy_undoes_everything(world, stores_root, slow_bundle, signum,
                                                 code):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    exports = [world.nfs_store(zone, f"10.1.0.{n}", f"/export/s{n}")[1] for n in (1, 2)]
    world.use_bundle(slow_bundle)
    templates_before = world.rows("vm_template")

    process = subprocess.Popen(world.command(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=world.env)
    deadline = time.monotonic() + 60
    while not stage_files(exports):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the copy never started"
        time.sleep(0.002)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)

    assert process.returncode == code, err
    assert "partial work was undone" in err
    for export in exports:
        # No stage, no template directory.
        assert os.listdir(export) == [], (export, list(os.walk(export)), err)
    assert world.rows("vm_template") == templates_before
    assert world.rows("template_store_ref") == []
    assert world.leftover_mountpoints() == []
