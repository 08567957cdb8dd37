"""Ctrl-C and SIGTERM in the middle of a copy: stages removed, no rows, stores unmounted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from testbed.nfs.harness import stage_files
from testbed.processes import still_running


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
    while not any(stage_files(e) for e in exports):
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


# A mount command that forks a helper, as mount(8) forks mount.nfs, and hangs with it;
# each call records both pids in $PIDS.
HANGING_MOUNT = """#!/bin/sh
sleep 120 &
echo "$$ $!" > "$PIDS/$$"
wait
"""


def hanging_mount(tmp_path):
    script = tmp_path / "hanging-mount"
    script.write_text(HANGING_MOUNT)
    script.chmod(0o755)
    pids = tmp_path / "pids"
    pids.mkdir()
    return str(script), pids


def mount_pids(pids):
    return [int(p) for f in pids.iterdir() for p in f.read_text().split()]


def test_a_mount_timeout_kills_the_mount_command_and_what_it_forked(world, stores_root,
                                                                    tmp_path):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    world.nfs_store(zone, "10.1.0.1", "/export/s1")
    script, pids = hanging_mount(tmp_path)
    process = subprocess.Popen(world.command("--json", "--mount-timeout", "1",
                                             mount_command=script),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(world.env, PIDS=str(pids)))
    out, err = process.communicate(timeout=60)  # the helper holds the pipes for 120 s
    assert process.returncode == 1, err
    assert "timeout: Cannot mount 10.1.0.1:/export/s1 for store 1" in err
    assert len(mount_pids(pids)) == 2
    assert still_running(mount_pids(pids)) == []
    assert world.leftover_mountpoints() == []


def test_ctrl_c_while_mounting_says_interrupted_once_and_leaves_nothing(world, stores_root,
                                                                       tmp_path):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    for n in (1, 2, 3):
        world.nfs_store(zone, f"10.1.0.{n}", f"/export/s{n}")
    script, pids = hanging_mount(tmp_path)
    # As a shell starts a job: a process group of its own, which Ctrl-C signals whole.
    process = subprocess.Popen(world.command("--json", mount_command=script),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=dict(world.env, PIDS=str(pids)))
    deadline = time.monotonic() + 30
    while len(list(pids.iterdir())) < 3:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the mounts never started"
        time.sleep(0.02)
    time.sleep(0.1)  # each pid file is written whole
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=30)

    assert process.returncode == 130, err
    assert err.count("interrupted") == 1, err
    assert json.loads(out) == {"error": "interrupted; partial work was undone.",
                               "exit_code": 130, "hint": None}
    assert "Cannot mount" not in err and "exit code" not in err, err
    assert still_running(mount_pids(pids)) == []
    assert world.leftover_mountpoints() == []
    assert world.rows("template_store_ref") == []
