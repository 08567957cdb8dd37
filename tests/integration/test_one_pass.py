"""The data path, measured on the real process: each source file is read once however many
stores of however many zones it goes to; a rerun with nothing to do reads no image and
mounts each store once; `--jobs` bounds how many stores mount at once. Reads are counted
exactly, per file, by strace (tests/testbed/trace.py)."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import CLUSTERS
from testbed import trace

# What a run may read of a source beyond the file itself: the 8-byte peek at its magic that
# sizes the copy before the pass (and a gzip's 4-byte length). A second pass is megabytes.
PEEK = 16
IMAGE_SUFFIXES = (".qcow2", ".vhd", ".ova", ".raw", ".ovf", ".vmdk", ".mf")


@pytest.fixture(autouse=True)
def strace_installed():
    assert trace.available(), "strace is missing: scripts/setup installs it"


class MountLog:
    """A mount command that records each call and how many calls run at once, then mounts
    with the test bed's own command."""

    def __init__(self, directory: Path, mount_command: str, delay: float = 0.0):
        self.directory = directory
        directory.mkdir()
        self.command = str(directory / "mount")
        log = shlex.quote(str(directory))
        Path(self.command).write_text(
            "#!/bin/sh\n"
            f'echo "$@" >> {log}/calls\n'
            f'touch {log}/running.$$\n'
            f"ls {log} | grep -c '^running' >> {log}/at-once\n"
            f"sleep {delay:g}\n"
            f"rm {log}/running.$$\n"
            f'exec {mount_command} "$@"\n')
        Path(self.command).chmod(0o755)

    def exports(self) -> list[str]:
        """HOST:/PATH of each call, in call order (the argument before the mountpoint)."""
        calls = (self.directory / "calls").read_text().splitlines()
        return [call.split()[-2] for call in calls]

    def most_at_once(self) -> int:
        return max(int(n) for n in (self.directory / "at-once").read_text().split())


def zones_with_stores(world, clusters, zones=2, stores=2) -> list[str]:
    """`zones` zones with a cluster of each hypervisor and `stores` NFS stores each; returns
    the exports as the mount command is given them."""
    exports = []
    for z in range(1, zones + 1):
        zone = world.builder.zone(f"zone-{z}")
        for hypervisor in clusters:
            world.builder.cluster(zone, hypervisor)
        for s in range(1, stores + 1):
            world.nfs_store(zone, f"10.{z}.0.{s}", f"/export/s{s}")
            exports.append(f"10.{z}.0.{s}:/export/s{s}")
    return exports


def traced_run(world, tmp_path: Path, *args, mount_command: str):
    """The CLI in its own process under strace: (exit code, JSON records, stderr, reads)."""
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()  # one traced run per test
    done = trace.run(world.command("--json", *args, mount_command=mount_command), trace_dir,
                     env=world.env, capture_output=True, text=True, timeout=600)
    records = json.loads(done.stdout) if done.stdout.strip() else []
    return done.returncode, records, done.stderr, trace.reads(trace_dir)


def bundled_files(templates: Path) -> list[Path]:
    return [p for p in templates.iterdir() if p.is_file() and p.name != "metadata.ini"]


def test_each_source_is_read_once_for_every_store_of_every_zone(world, all_bundle, tmp_path):
    """Six hypervisors (five files: KVM and LXC share one) to 2 zones x 2 stores: 24 copies,
    and each file read once, from its first byte to its last."""
    directory, world.meta = all_bundle
    shutil.rmtree(world.templates)
    shutil.copytree(directory, world.templates)
    exports = zones_with_stores(world, CLUSTERS)
    mounts = MountLog(tmp_path / "mounts", world.mount_command)

    code, records, err, reads = traced_run(world, tmp_path, mount_command=mounts.command)

    assert code == 0, err
    copies = [r for r in records if r["action"] != "configure"]
    assert len(copies) == len(CLUSTERS) * len(exports)
    assert {r["status"] for r in copies} == {"ready"}
    sources = bundled_files(world.templates)
    assert len(sources) == 5
    for source in sources:
        size = source.stat().st_size
        read = reads.of(source)
        assert size <= read <= size + PEEK, (
            f"{source.name}: {read} bytes read of a {size}-byte file")
        assert str(source.resolve()) not in reads.mapped
    assert sorted(mounts.exports()) == sorted(exports)  # each store mounted once


def test_a_large_bzip2_source_is_read_once_through_lbzip2(world, slow_bundle, tmp_path):
    """The parallel decoder's path: the file is read once, by the hashing reader, and
    reaches lbzip2 only through a pipe."""
    world.use_bundle(slow_bundle)
    zones_with_stores(world, ("KVM",), zones=2, stores=2)

    code, records, err, reads = traced_run(world, tmp_path, "--debug",
                                           mount_command=world.mount_command)

    assert code == 0, err
    assert "lbzip2 -d -c" in err  # the runner's "Streaming through: <path> -d -c -n N"
    assert [r["status"] for r in records if r["action"] != "configure"] == ["ready"] * 4
    size = world.bundle.stat().st_size
    assert size <= reads.of(world.bundle) <= size + PEEK
    assert reads.pipes >= size  # lbzip2 read the compressed stream from the pipe


def test_a_rerun_with_nothing_to_do_reads_no_image_and_mounts_each_store_once(world,
                                                                              tmp_path):
    exports = zones_with_stores(world, ("KVM", "LXC"))
    assert world.run().code == 0
    mounts = MountLog(tmp_path / "mounts", world.mount_command)

    code, records, err, reads = traced_run(world, tmp_path, mount_command=mounts.command)

    assert code == 0, err
    assert {(r["action"], r["status"]) for r in records} == {("none", "ready")}
    for source in bundled_files(world.templates):
        assert reads.of(source) == 0, f"{source.name} was read"
    on_stores = reads.under(world.runtime)  # the stores, at the run's mountpoints
    images = [p for p in on_stores if p.endswith(IMAGE_SUFFIXES)]
    assert images == [], f"image files read on a no-op rerun: {images}"
    properties = [p for p in on_stores if p.endswith("/template.properties")]
    # Each store's copy of each template (KVM and LXC are two templates) was looked at.
    assert len(properties) == 2 * len(exports)
    assert sorted(mounts.exports()) == sorted(exports)


@pytest.mark.parametrize("jobs", [1, 3])
def test_jobs_bounds_how_many_stores_mount_at_once(world, tmp_path, jobs):
    exports = zones_with_stores(world, ("KVM",), zones=1, stores=5)
    mounts = MountLog(tmp_path / "mounts", world.mount_command, delay=0.3)

    run = world.run("--jobs", str(jobs), mount_command=mounts.command)

    assert run.code == 0, run.err
    assert mounts.most_at_once() == jobs
    assert sorted(mounts.exports()) == sorted(exports)
