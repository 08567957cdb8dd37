"""The per-store writer thread: real files, and one blocking stream standing in for a dead
NFS server (a write that never returns)."""

import threading
import time

from cloudstack_sysvm_seed import copies, plan
from cloudstack_sysvm_seed.catalog import Store, Zone

STEP = plan.Step("seed", Zone(1, "u", "east"), Store(7, "u", "s", 1, "nfs://h/e", "nfs", "NFS",
                                                     False), "kvm", "x86_64")


def test_a_copy_is_written_synced_and_closed(tmp_path):
    writer = copies.CopyWriter(STEP, str(tmp_path), "a.qcow2", stall_timeout=5)
    for _ in range(30):
        writer.write(b"x" * 1000)
    writer.open_member("disk.vmdk")
    writer.write_member(b"vmdk")
    writer.close_member()
    writer.finish()
    assert writer.error == "" and not writer.thread.is_alive()
    assert (tmp_path / ".cloudstack-sysvm-seed" / "stage").exists()
    (stage,) = (tmp_path / ".cloudstack-sysvm-seed" / "stage").iterdir()
    assert (stage / "a.qcow2").stat().st_size == 30000
    assert (stage / "disk.vmdk").read_bytes() == b"vmdk"


class Blocking:
    """A stream whose write blocks until released, as write(2) on a dead hard mount."""

    def __init__(self):
        self.release = threading.Event()
        self.closed = False

    def write(self, data):
        self.release.wait()

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_a_stalled_store_is_abandoned_and_named(tmp_path):
    writer = copies.CopyWriter(STEP, str(tmp_path), "a.qcow2", stall_timeout=0.3)
    writer.stream.close()
    writer.stream = Blocking()
    started = time.monotonic()
    for _ in range(copies.QUEUE_CHUNKS + 5):
        writer.write(b"x")
    writer.finish()
    assert 0.3 <= time.monotonic() - started < 3
    assert writer.stalled
    assert writer.error.startswith("timeout: no progress writing to store 7 (nfs://h/e) in "
                                   "zone east for 0.3s")
    writer.write(b"more")  # ignored: the reader goes on without this store
    writer.stream.release.set()


def test_a_failure_removes_the_stage(tmp_path):
    writer = copies.CopyWriter(STEP, str(tmp_path), "a.qcow2", stall_timeout=5)
    writer.write(b"x" * 100)
    writer.fail("checksum mismatch")
    assert writer.error == "checksum mismatch" and list(tmp_path.iterdir()) == []
