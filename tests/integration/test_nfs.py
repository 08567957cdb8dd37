"""The tool over real NFS: nfs-ganesha on 127.0.0.1, mounted through the FUSE bridge.

This kernel has no NFS client, so `--mount-command` is tests/testbed/nfs/nfs-mount, which
mounts an NFSv3 export with a FUSE bridge (mfusepy + nfs-rs); the tool still runs its own
`umount MOUNTPOINT`. Everything the tool writes crosses a real NFS server; the export
directories are read back from the server's side. See tests/testbed/nfs/.

Needs root, loop devices and the packages of this tier (nfs-ganesha, nfs-ganesha-vfs,
rpcbind, libfuse2, e2fsprogs, PyPI mfusepy and nfs-rs); when one is missing the tests FAIL
naming it, never skip.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
from testbed.nfs.harness import (
    NfsLab,
    missing_requirements,
    process_diagnostics,
    stage_files,
)

from cloudstack_sysvm_seed import errors

REPO = Path(__file__).resolve().parents[2]

BIG_MIB = 64  # random data: the copy takes a few seconds, long enough to stop the server
#: How long a run whose server died mid-copy may take before it counts as hung. The tool
#: should give up on the dead store well within this (its I/O timeout) and finish the rest;
#: raise it if the tool's default I/O timeout is longer.
HUNG_AFTER = 20.0
#: Soft mount as an operator would configure it: EIO after timeo/10 * (retrans + 1) s.
SOFT_OPTIONS = "soft,timeo=5,retrans=1"
#: The hard-mount run: a stall timeout short enough for a test (the default is 120 s).
HARD_MOUNT_ARGS: tuple = ("--stall-timeout", "4")

MEASURED: dict = {}


class ToolHung(AssertionError):
    """The run did not end in time and had to be killed."""


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _report_measurements(request):
    """Print the timings this module measured (shown even with -q)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if not MEASURED or reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_sep("-", "real NFS tier: measurements")
        for key, value in MEASURED.items():
            reporter.write_line(f"{key}: {value}")


@pytest.fixture
def nfs(tmp_path):
    """An NfsLab; at teardown every bridge, mount and server must be gone (else FAIL)."""
    problems = missing_requirements()
    if problems:
        pytest.fail("the real-NFS tier cannot run: " + "; ".join(problems), pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the real-NFS tier needs root (namespaces, FUSE mounts)", pytrace=False)
    lab = NfsLab(tmp_path / "nfs")
    yield lab
    leaks = lab.teardown()
    if leaks:
        pytest.fail("real-NFS tier left things behind: " + "; ".join(leaks)
                    + "\n" + lab.logs(), pytrace=False)


@pytest.fixture(scope="session")
def big_bundle(tmp_path_factory):
    """A qcow2 holding 64 MiB of random data, bzip2'd (two streams, made in parallel: the
    form pbzip2 writes, which the tool reads like bzip2's). Returns (bundle, sha256 of the
    image)."""
    directory = tmp_path_factory.mktemp("nfs-big")
    raw = directory / "disk.raw"
    raw.write_bytes(os.urandom(BIG_MIB << 20))
    qcow2 = directory / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
                   check=True, timeout=120)
    raw.unlink()
    image = qcow2.read_bytes()
    half = len(image) // 2
    with ThreadPoolExecutor(2) as pool:  # bz2 releases the GIL
        parts = list(pool.map(lambda p: bz2.compress(p, 1), (image[:half], image[half:])))
    bundle = directory / "disk.qcow2.bz2"
    bundle.write_bytes(b"".join(parts))
    return bundle, hashlib.sha256(image).hexdigest(), len(image)


def use_bundle(world, bundle: Path) -> None:
    """Put `bundle` in place of the KVM image and fix its checksum in metadata.ini."""
    world.bundle.write_bytes(bundle.read_bytes())
    metadata = world.templates / "metadata.ini"
    new_md5 = hashlib.md5(bundle.read_bytes()).hexdigest()
    metadata.write_text(metadata.read_text().replace(world.kvm.checksum, new_md5))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kvm_template(world):
    return world.rows("vm_template", "type = 'SYSTEM' AND name = %s",
                      (world.kvm.templatename,))


def assert_seeded(world, store_id: int, export: Path, digest: str) -> None:
    """The store's row is Ready and the export holds exactly the image and its
    template.properties, read from the server's side."""
    (ref,) = world.rows("template_store_ref", "store_id = %s", (store_id,))
    assert (ref["state"], ref["download_state"], ref["download_pct"]) == (
        "Ready", "DOWNLOADED", 100), ref
    image = export / ref["install_path"].lstrip("/")
    assert sorted(os.listdir(image.parent)) == sorted([image.name, "template.properties"])
    assert image.stat().st_size == ref["physical_size"]
    assert sha256(image) == digest, f"{image} does not hold the image"
    props = (image.parent / "template.properties").read_text().splitlines()
    assert f"filename={image.name}" in props and f"size={image.stat().st_size}" in props


def assert_clean(world, lab: NfsLab) -> None:
    """No mountpoint, mount or bridge left once the tool is done."""
    assert world.leftover_mountpoints() == []
    live, mounted = lab.leftovers()
    assert not mounted, f"still mounted: {mounted}"
    assert not live, f"bridges still running: {[b.pid for b in live]}\n{lab.logs()}"


@dataclass
class ToolRun:
    code: Optional[int]  # None: still running at the deadline, so killed
    records: list
    err: str
    started: float
    ended: float
    diagnostics: str = ""


def run_tool(world, lab: NfsLab, mount_command: str, on_running=None,
             deadline: float = HUNG_AFTER, args: tuple = ()) -> ToolRun:
    """The CLI in its own process (so a hang can be seen, diagnosed and ended).
    `on_running(process)` is polled until it returns True."""
    argv = world.command("--json", *args, mount_command=mount_command)
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=world.env, cwd=REPO)
    try:
        while on_running is not None and not on_running(process):
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"the run ended before the test could act (exit "
                            f"{process.returncode}):\n{err}\n{lab.logs()}", pytrace=False)
            if time.monotonic() - started > 60:
                pytest.fail("the copy never started", pytrace=False)
            time.sleep(0.002)
        try:
            out, err = process.communicate(timeout=max(1.0, started + deadline
                                                       - time.monotonic()))
        except subprocess.TimeoutExpired:
            ended = time.monotonic()
            diagnostics = process_diagnostics(process.pid)
            # A hard NFS mount lets a killed process go; failing that, unmount lazily so
            # the bridges give up. Then clear what the killed tool could not unmount.
            process.kill()
            try:
                out, err = process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                lab.release_all()
                out, err = process.communicate(timeout=30)
            lab.release_all()
            return ToolRun(None, [], err, started, ended, diagnostics)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    records = json.loads(out) if out.strip() else []
    return ToolRun(process.returncode, records, err, started, time.monotonic())


# -- tests ------------------------------------------------------------------------------------


def nfs_mount(lab: NfsLab, source: str, mountpoint: Path):
    argv = shlex.split(lab.mount_command()) + [source, str(mountpoint)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_the_mount_command_itself_round_trip_failures_and_throughput(nfs, tmp_path):
    """nfs-mount + bridge alone: what the tool relies on, and the bridge's own speed."""
    server = nfs.server("ganesha")
    export = server.add_export("/export/x")
    server.start()
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    done = nfs_mount(nfs, "127.0.0.1:/export/x", mnt)
    assert done.returncode == 0, done.stderr + nfs.logs()
    (bridge,) = nfs.bridges()
    assert bridge.alive and bridge.mounted
    data = os.urandom(BIG_MIB << 20)
    (mnt / "d" / "e").mkdir(parents=True)
    started = time.monotonic()
    with open(mnt / "d" / "e" / "img", "xb") as stream:
        for offset in range(0, len(data), 1 << 20):
            stream.write(data[offset:offset + (1 << 20)])
        stream.flush()
        os.fsync(stream.fileno())
    wrote = time.monotonic() - started
    with pytest.raises(FileExistsError):
        open(mnt / "d" / "e" / "img", "xb")
    started = time.monotonic()
    assert (mnt / "d" / "e" / "img").read_bytes() == data
    read = time.monotonic() - started
    os.rename(mnt / "d" / "e", mnt / "d" / "f")
    assert os.listdir(mnt / "d") == ["f"]
    assert sha256(export / "d" / "f" / "img") == hashlib.sha256(data).hexdigest()
    (mnt / "d" / "f" / "p").write_text("k=v\n")
    os.chmod(mnt / "d" / "f" / "p", 0o644)
    assert (export / "d" / "f" / "p").read_text() == "k=v\n"
    assert os.statvfs(mnt).f_blocks > 0
    for name in ("img", "p"):
        os.unlink(mnt / "d" / "f" / name)
    os.rmdir(mnt / "d" / "f")
    os.rmdir(mnt / "d")
    assert os.listdir(export) == []
    subprocess.run(["umount", str(mnt)], check=True, timeout=30)
    live, mounted = nfs.leftovers()
    assert not live and not mounted, "the bridge did not exit after umount"
    MEASURED["bridge alone, 64 MiB in 1 MiB writes + fsync"] = (
        f"write {len(data) / wrote / 1e6:.0f} MB/s, read {len(data) / read / 1e6:.0f} MB/s")

    refused = nfs_mount(nfs, "127.0.0.1:/export/nope", mnt)
    assert refused.returncode == 32
    assert refused.stderr.strip() == (
        "mount.nfs: access denied by server while mounting 127.0.0.1:/export/nope")
    server.stop_nfs()
    down = nfs_mount(nfs, "127.0.0.1:/export/x", mnt)
    assert down.returncode == 32
    assert "mount.nfs: Connection refused while mounting 127.0.0.1:/export/x" in down.stderr
    live, mounted = nfs.leftovers(wait=0)
    assert not live and not mounted  # a failed mount leaves no process behind


def test_fresh_seed_of_three_stores_in_two_zones_over_real_nfs(world, nfs, big_bundle):
    bundle, digest, image_size = big_bundle
    use_bundle(world, bundle)
    server = nfs.server("ganesha")
    exports = {name: server.add_export(f"/export/{name}") for name in ("e1", "e2", "w1")}
    started = time.monotonic()
    server.start()
    MEASURED["server start (rpcbind + ganesha serving)"] = (
        f"{time.monotonic() - started:.3f}s (rpcbind {server.timings.rpcbind:.3f}s, "
        f"ganesha {server.timings.ganesha[0]:.3f}s)")
    b = world.builder
    east, west = b.zone("east"), b.zone("west")
    b.cluster(east, "KVM")
    b.cluster(west, "KVM")
    stores = {
        b.store(east, nfs.url(server, "/export/e1")): exports["e1"],
        b.store(east, nfs.url(server, "/export/e2")): exports["e2"],
        b.store(west, nfs.url(server, "/export/w1")): exports["w1"],
    }

    started = time.monotonic()
    run = world.run("--json", mount_command=nfs.mount_command())
    seconds = time.monotonic() - started
    assert run.code == 0, run.out + run.err + nfs.logs()

    records = {r["store_id"]: r for r in json.loads(run.out)}
    (template,) = kvm_template(world)
    for store_id, export in stores.items():
        assert records[store_id]["status"] == "ready", records[store_id]
        assert records[store_id]["template_id"] == template["id"]
        assert_seeded(world, store_id, export, digest)
        assert not (export / ".cloudstack-sysvm-seed").exists()
    assert sorted(r["zone_id"] for r in world.rows("template_zone_ref")) == sorted([east, west])
    assert_clean(world, nfs)
    mounts = nfs.mount_times()
    assert len(mounts) == 3
    MEASURED["mount through nfs-mount (bridge up, in mountinfo)"] = (
        f"{min(mounts):.3f}-{max(mounts):.3f}s over {len(mounts)} mounts")
    MEASURED["fresh seed of 3 stores"] = (
        f"{seconds:.2f}s for 3 x {image_size / 1e6:.1f} MB = "
        f"{3 * image_size / seconds / 1e6:.1f} MB/s written through the bridges "
        f"(whole run: decompress once, write 3 copies, rows)")

    # A second run reads everything back over NFS and changes nothing.
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns)
              for e in stores.values() for p in e.rglob("*")}
    again = world.run("--json", mount_command=nfs.mount_command())
    assert again.code == 0, again.out + again.err
    assert {(r["action"], r["status"]) for r in json.loads(again.out)} == {("none", "ready")}
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns)
            for e in stores.values() for p in e.rglob("*")} == before
    assert_clean(world, nfs)


def test_an_export_the_server_does_not_have_fails_that_store_then_converges(world, nfs):
    server = nfs.server("ganesha")
    a1 = server.add_export("/export/a1")
    a2 = server.add_export("/export/a2")
    server.start()
    b = world.builder
    zone = b.zone("east")
    b.cluster(zone, "KVM")
    good1 = b.store(zone, nfs.url(server, "/export/a1"))
    good2 = b.store(zone, nfs.url(server, "/export/a2"))
    missing = b.store(zone, nfs.url(server, "/export/gone"))

    run = world.run("--json", mount_command=nfs.mount_command())
    assert run.code == errors.EXIT_FAILED, run.out + run.err
    records = {r["store_id"]: r for r in json.loads(run.out)}
    assert records[good1]["status"] == records[good2]["status"] == "ready"
    assert records[missing]["status"] == "failed"
    # The zone lacks a copy on one store: what CloudStack reads waits for it.
    assert {r["status"] for r in json.loads(run.out) if r["action"] == "configure"} == {"held"}
    error = records[missing]["error"]
    assert f"Cannot mount 127.0.0.1:/export/gone for store {missing}" in error, error
    assert "access denied by server while mounting 127.0.0.1:/export/gone" in error, error
    assert sorted(r["store_id"] for r in world.rows("template_store_ref")) == [good1, good2]
    assert_clean(world, nfs)

    # The admin adds the export (ganesha restarts with it); the rerun seeds only that store.
    gone = server.add_export("/export/gone")
    again = world.run("--json", mount_command=nfs.mount_command())
    assert again.code == 0, again.out + again.err + nfs.logs()
    actions = {r["store_id"]: (r["action"], r["status"]) for r in json.loads(again.out)
               if r["action"] != "configure"}
    assert actions == {good1: ("none", "ready"), good2: ("none", "ready"),
                       missing: ("seed", "ready")}
    # Now every store has it: the settings held back follow.
    assert world.cloud.query("SELECT value FROM configuration WHERE name = "
                             "'router.template.kvm'")[0]["value"] == world.kvm.templatename
    digest = world.image_digest()
    for store_id, export in ((good1, a1), (good2, a2), (missing, gone)):
        assert_seeded(world, store_id, export, digest)
    assert_clean(world, nfs)


def _two_servers_one_zone(world, nfs):
    """Store `kept` on server A, store `lost` on server B (URL with B's port)."""
    a, b_server = nfs.server("a"), nfs.server("b")
    kept_dir = a.add_export("/export/kept")
    lost_dir = b_server.add_export("/export/lost")
    a.start()
    b_server.start()
    b = world.builder
    zone = b.zone("east")
    b.cluster(zone, "KVM")
    kept = b.store(zone, nfs.url(a, "/export/kept"))
    lost = b.store(zone, nfs.url(b_server, "/export/lost"))
    return b_server, (kept, kept_dir), (lost, lost_dir)


def _server_stopped_mid_copy(world, nfs, big_bundle, options: str, args: tuple = ()):
    """Stop B's ganesha as soon as the tool's stage file shows on B's export; the run must
    end with B's store failed (no rows) and A's seeded; after B is back a rerun converges."""
    bundle, digest, _ = big_bundle
    use_bundle(world, bundle)
    b_server, (kept, kept_dir), (lost, lost_dir) = _two_servers_one_zone(world, nfs)
    stopped = {}

    def stop_when_copying(process):
        if not stage_files(lost_dir):
            return False
        started = time.monotonic()
        b_server.stop_nfs()
        stopped["at"] = time.monotonic()
        stopped["stop took"] = stopped["at"] - started
        return True

    run = run_tool(world, nfs, nfs.mount_command(options), on_running=stop_when_copying,
                   args=args)
    after_stop = run.ended - stopped["at"]
    if run.code is None:
        raise ToolHung(
            f"the run hung: still running {HUNG_AFTER:g}s after start, "
            f"{after_stop:.1f}s after the NFS server of store {lost} was stopped mid-copy "
            f"(mount options: {options or 'none, i.e. hard'}); killed.\n"
            f"Where the tool was blocked:\n{run.diagnostics}\n--- tool stderr:\n"
            f"{run.err[-3000:]}\n{nfs.logs(1500)}")
    MEASURED[f"server stopped mid-copy ({options or 'hard'})"] = (
        f"run ended {after_stop:.1f}s after the stop (stop took {stopped['stop took']:.3f}s),"
        f" exit {run.code}")
    assert run.code == errors.EXIT_FAILED, run.err
    by_store = {r["store_id"]: r for r in run.records}
    assert by_store[lost]["status"] == "failed", by_store[lost]
    assert f"store {lost} ({nfs.url(b_server, '/export/lost')})" in by_store[lost]["error"], (
        by_store[lost])
    MEASURED[f"error for the stopped store ({options or 'hard'})"] = by_store[lost]["error"]
    assert by_store[kept]["status"] == "ready", by_store[kept]
    assert [r["store_id"] for r in world.rows("template_store_ref")] == [kept]
    assert_seeded(world, kept, kept_dir, digest)
    assert_clean(world, nfs)

    b_server.start_nfs()
    rerun = run_tool(world, nfs, nfs.mount_command(options), args=args)
    assert rerun.code == 0, f"{rerun.err}\n{rerun.diagnostics}\n{nfs.logs(1500)}"
    actions = {r["store_id"]: (r["action"], r["status"]) for r in rerun.records
               if r["action"] != "configure"}
    assert actions == {kept: ("none", "ready"), lost: ("seed", "ready")}
    assert_seeded(world, kept, kept_dir, digest)
    assert_seeded(world, lost, lost_dir, digest)
    assert_clean(world, nfs)
    leftover_stage = stage_files(lost_dir)
    MEASURED[f"stage files left on the stopped store after the rerun ({options or 'hard'})"] = (
        len(leftover_stage))


def test_a_paused_server_holds_back_its_own_store_only(world, nfs, big_bundle):
    """Freeze B's ganesha (SIGSTOP) as the copy reaches B, on a default hard mount: B's
    writes wait, yet A's copy is read, written, published and Ready while B is frozen. When
    B resumes, its backlog (spilled to local disk, not held in memory) is written, and B
    ends Ready with the same bytes."""
    bundle, digest, _ = big_bundle
    use_bundle(world, bundle)
    b_server, (kept, kept_dir), (slow, slow_dir) = _two_servers_one_zone(world, nfs)
    seen: dict = {}

    def pause_until_the_other_is_ready(process):
        if "paused" not in seen:
            if stage_files(slow_dir):
                b_server.pause_nfs()
                seen["paused"] = time.monotonic()
            return False
        time.sleep(0.05)
        waited = time.monotonic() - seen["paused"]
        ready = world.rows("template_store_ref", "store_id = %s AND state = 'Ready'", (kept,))
        if ready or waited > 30 or process.poll() is not None:
            seen["kept ready after"] = round(waited, 1) if ready else None
            seen["where"] = "" if ready else process_diagnostics(process.pid)
            b_server.resume_nfs()
            return True
        return False

    run = run_tool(world, nfs, nfs.mount_command(), on_running=pause_until_the_other_is_ready,
                   deadline=90)
    MEASURED["store A Ready while B's server was frozen, after"] = f"{seen['kept ready after']}s"
    assert seen["kept ready after"] is not None, (
        f"store {kept} was not Ready 30 s after store {slow}'s server froze; the tool was "
        f"at:\n{seen['where']}\n--- tool stderr:\n{run.err}")
    assert run.code == 0, f"{run.err}\n{run.diagnostics}\n{nfs.logs(1500)}"
    assert_seeded(world, kept, kept_dir, digest)
    assert_seeded(world, slow, slow_dir, digest)
    assert_clean(world, nfs)


def test_server_stopped_mid_copy_on_a_soft_mount_fails_that_store_only(world, nfs,
                                                                      big_bundle):
    """Mount options `soft,timeo=5,retrans=1` (an operator's choice): the dead server's
    I/O fails with EIO within about a second, as the kernel's soft mounts do."""
    _server_stopped_mid_copy(world, nfs, big_bundle, SOFT_OPTIONS)


def test_server_stopped_mid_copy_on_a_default_hard_mount_is_failed_by_the_stall_timeout(
        world, nfs, big_bundle):
    """Plain `mount -t nfs` (hard, the default in production): I/O to a dead server blocks
    until it comes back, so only the tool's stall timeout can end that store's copy; the
    other store finishes and the dead one is detached lazily. On a hung run the failure shows
    where the tool was blocked (kernel stack, fd, py-spy if installed)."""
    _server_stopped_mid_copy(world, nfs, big_bundle, "", HARD_MOUNT_ARGS)
