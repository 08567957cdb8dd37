"""The per-store writer thread: real files, and one blocking stream standing in for a dead
NFS server (a write that never returns)."""

import tempfile
import threading
import time
from pathlib import Path

from cloudstack_sysvm_seed import copies
from cloudstack_sysvm_seed.model import Step, Store, Zone

STEP = Step("seed", Zone(1, "u", "east"), Store(7, "u", "s", 1, "nfs://h/e", "nfs", "NFS",
                                                     False), "kvm", "x86_64")


def opened(writer):
    """The writer, once its thread has checked the store and opened the stage."""
    assert writer.started.wait(5) and writer.error == "", writer.error
    return writer


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
    writer = opened(copies.CopyWriter(STEP, str(tmp_path), "a.qcow2", stall_timeout=0.3,
                                       spool_dir=str(tmp_path / "spool")))
    writer.stream.close()
    writer.stream = Blocking()
    started = time.monotonic()
    for _ in range(copies.MEMORY_CHUNKS + 5):
        writer.write(b"x")
    writer.finish()
    assert 0.3 <= time.monotonic() - started < 3
    assert writer.stalled
    assert writer.error.startswith("timeout: no progress writing to store 7 (nfs://h/e) in "
                                   "zone east for 0.3s")
    writer.write(b"more")  # ignored: the reader goes on without this store
    writer.stream.release.set()


def test_without_a_spool_a_stalled_store_stops_the_reader_only_until_the_timeout(tmp_path):
    writer = opened(copies.CopyWriter(STEP, str(tmp_path), "a.qcow2", stall_timeout=0.3))
    writer.stream.close()
    writer.stream = Blocking()
    for _ in range(copies.MEMORY_CHUNKS + 5):
        writer.write(b"x")  # the first write past the memory bound waits 0.3 s, then stalls
    assert writer.stalled and writer.settled()
    writer.stream.release.set()


class Gated:
    """A real file whose writes wait for a gate: a store slower than the reader."""

    def __init__(self, stream):
        self.stream = stream
        self.gate = threading.Event()
        self.closed = False

    def write(self, data):
        self.gate.wait()
        return self.stream.write(data)

    def fileno(self):
        return self.stream.fileno()

    def flush(self):
        self.stream.flush()

    def close(self):
        self.closed = True
        self.stream.close()


def gated_writer(tmp_path, name="a.qcow2", spool="spool", pool=None):
    tmp_path.mkdir(exist_ok=True)
    writer = opened(copies.CopyWriter(STEP, str(tmp_path), name, stall_timeout=30,
                                       spool_dir=str(tmp_path / spool), pool=pool))
    writer.stream = Gated(writer.stream)
    return writer


def test_a_slow_store_never_holds_the_reader_back_and_gets_every_byte_in_order(tmp_path):
    writer = gated_writer(tmp_path)
    chunks = [bytes([n]) * 1000 for n in range(copies.MEMORY_CHUNKS * 4)]
    writer.write(chunks[0])
    while writer.busy_since is None:  # the writer holds the first chunk, at the gate
        time.sleep(0.01)
    for chunk in chunks[1:]:
        writer.write(chunk)  # returns at once: the store has written nothing yet
    assert writer.backlog.in_memory == copies.MEMORY_CHUNKS
    assert writer.backlog.spool_end == 1000 * (len(chunks) - copies.MEMORY_CHUNKS - 1)
    writer.stream.gate.set()
    writer.finish()
    assert writer.error == ""
    (image,) = (tmp_path / ".cloudstack-sysvm-seed" / "stage").glob("*/a.qcow2")
    assert image.read_bytes() == b"".join(chunks)
    assert writer.backlog.spool is None  # closed: the unlinked spool file is gone
    assert list((tmp_path / "spool").iterdir()) == []


def assert_released_writers_write(writers, chunks):
    """Each gated writer, its gate opened, finishes without error, its stage holding
    every chunk in order."""
    for writer in writers:
        writer.stream.gate.set()
        writer.finish()
        assert writer.error == ""
        (image,) = Path(writer.root).glob(".cloudstack-sysvm-seed/stage/*/a.qcow2")
        assert image.read_bytes() == b"".join(chunks)


def test_many_lagging_stores_share_one_memory_budget(tmp_path):
    """16 stores that all lag: together they hold the pass's budget in memory, not 16 times
    a single store's, and each still gets every byte."""
    count = 16
    share = copies.memory_share(count)
    assert share * count <= copies.PASS_MEMORY_CHUNKS < copies.MEMORY_CHUNKS * count
    writers = []
    for n in range(count):
        root = tmp_path / f"s{n}"
        root.mkdir()
        writer = opened(copies.CopyWriter(STEP, str(root), "a.qcow2", stall_timeout=30,
                                          spool_dir=str(tmp_path / "spool"),
                                          memory_chunks=share))
        writer.stream = Gated(writer.stream)
        writers.append(writer)
    chunks = [bytes([n]) * 1000 for n in range(copies.MEMORY_CHUNKS * 2)]
    for chunk in chunks:
        for writer in writers:
            writer.write(chunk)
    assert sum(writer.backlog.in_memory for writer in writers) <= copies.PASS_MEMORY_CHUNKS
    assert all(writer.backlog.spilled for writer in writers)
    assert_released_writers_write(writers, chunks)


def test_the_memory_share_keeps_two_chunks_each_however_many_stores():
    assert [copies.memory_share(n) for n in (0, 1, 4, 5, 16, 40)] == [8, 8, 8, 6, 2, 2]


def test_the_backlog_keeps_members_and_data_in_order_across_the_spill():
    backlog = copies.Backlog(None)
    spooled = copies.Backlog(tempfile.gettempdir())
    operations = [("image", b"a"), ("open", "disk.vmdk")] + [
        ("member", bytes([n])) for n in range(copies.MEMORY_CHUNKS * 3)] + [
        ("close", None), ("image", b"z"), ("finish", None)]
    for kind, data in operations:
        assert spooled.put(kind, data)
    assert [spooled.get() for _ in operations] == operations
    assert spooled.spool_end == 0  # caught up: the spool was truncated
    spooled.close()
    for _ in range(copies.MEMORY_CHUNKS):
        assert backlog.put("member", b"m")
    assert not backlog.put("member", b"!", timeout=0.05)  # no spool: full means wait


def test_no_spill_when_the_spool_disk_is_short(tmp_path, monkeypatch):
    monkeypatch.setattr(copies, "SPOOL_RESERVE", 1 << 62)
    backlog = copies.Backlog(str(tmp_path))
    for _ in range(copies.MEMORY_CHUNKS):
        assert backlog.put("image", b"x")
    assert not backlog.put("image", b"x", timeout=0.05)
    assert backlog.spool is None


def test_copies_are_settled_soonest_first(tmp_path):
    pool = copies.WriterPool()  # one run's writers
    slow = gated_writer(tmp_path / "slow", pool=pool)
    fast = gated_writer(tmp_path / "fast", pool=pool)
    fast.stream.gate.set()
    for writer in (slow, fast):
        writer.write(b"data")
        writer.end()
    fast.finished.wait(5)
    assert list(pool.as_finished([slow, fast], wait=False)) == [fast]
    slow.stream.gate.set()
    assert list(pool.as_finished([slow])) == [slow]
    assert slow.error == fast.error == ""


def test_a_failure_removes_the_stage(tmp_path):
    writer = opened(copies.CopyWriter(STEP, str(tmp_path), "a.qcow2", stall_timeout=5))
    writer.write(b"x" * 100)
    writer.fail("checksum mismatch")
    assert writer.error == "checksum mismatch" and list(tmp_path.iterdir()) == []


def test_a_store_without_room_is_named_when_checked_and_gets_no_stage(tmp_path):
    full = copies.CopyWriter(STEP, str(tmp_path), "a.qcow2", needed=1 << 60)
    full.pool.wait_started([full])
    assert full.error.startswith("store 7 (nfs://h/e) has ") and "needs about" in full.error
    assert full.stage is None and list(tmp_path.iterdir()) == []


def test_the_pass_waits_for_a_store_slow_to_answer_only_the_grace_period(tmp_path,
                                                                        monkeypatch):
    answer = threading.Event()
    check = copies.stores.check_writable
    monkeypatch.setattr(copies.stores, "check_writable",
                        lambda root, label: answer.wait() and check(root, label))
    writer = copies.CopyWriter(STEP, str(tmp_path), "a.qcow2", stall_timeout=30)
    started_at = time.monotonic()
    writer.pool.wait_started([writer], timeout=0.2)
    assert time.monotonic() - started_at >= 0.2
    assert not writer.started.is_set() and writer.error == ""
    writer.write(b"early")  # kept until the store answers
    answer.set()
    writer.finish()
    assert writer.error == ""
    (image,) = (tmp_path / ".cloudstack-sysvm-seed" / "stage").glob("*/a.qcow2")
    assert image.read_bytes() == b"early"


def test_a_spool_that_cannot_be_made_means_waiting_not_failing(tmp_path, caplog):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    backlog = copies.Backlog(str(not_a_directory / "spool"))
    for _ in range(copies.MEMORY_CHUNKS):
        assert backlog.put("image", b"x")
    assert not backlog.put("image", b"x", timeout=0.05)  # waited for room, found none
    assert "Cannot spill a store's backlog to" in caplog.text
    assert [backlog.get() for _ in range(copies.MEMORY_CHUNKS)] == [("image", b"x")] * 8


def test_stores_keeping_up_share_one_allowance_instead_of_spilling(tmp_path):
    """Stores that write, only some chunks behind (threads short of a core), hold chunks
    beyond their share out of one allowance for the pass, each chunk counted once however
    many hold it; past the allowance they spill, and every byte arrives in order."""
    pool = copies.WriterPool()
    writers = []
    for n in range(4):
        writer = gated_writer(tmp_path / f"s{n}", pool=pool)
        writer.backlog.memory_chunks = 2
        writer.stream.gate.set()
        writers.append(writer)
    chunks = [bytes([n]) * 1000 for n in range(2 + 2 + copies.SHARED_CHUNKS + 5)]
    for writer in writers:
        writer.write(chunks[0])
    for writer in writers:
        while writer.wrote_at is None:  # it has written: it keeps up
            time.sleep(0.01)
        writer.stream.gate.clear()
        writer.write(chunks[1])
        while writer.busy_since is None:  # it holds the second chunk, at the gate
            time.sleep(0.01)
    for chunk in chunks[2:]:
        for writer in writers:
            writer.write(chunk)
    assert len(pool.shared) == copies.SHARED_CHUNKS  # one count for four stores
    for writer in writers:
        assert (writer.backlog.in_memory, writer.backlog.in_shared) == (2, copies.SHARED_CHUNKS)
        assert writer.backlog.spool_end == 5 * 1000
    assert_released_writers_write(writers, chunks)
    assert len(pool.shared) == 0


def test_a_backlog_with_something_spilled_takes_no_shared_chunk(tmp_path):
    shared = copies.SharedChunks(2)
    backlog = copies.Backlog(str(tmp_path), memory_chunks=1, shared=shared)
    chunks = [bytes([n]) * 10 for n in range(6)]
    assert backlog.put("image", chunks[0], keeping_up=True)  # its own share
    assert backlog.put("image", chunks[1], keeping_up=True)  # shared
    assert backlog.put("image", chunks[2], keeping_up=True)  # shared
    assert backlog.put("image", chunks[3], keeping_up=True)  # allowance spent: spilled
    assert (backlog.in_memory, backlog.in_shared, backlog.spool_end) == (1, 2, 10)
    assert backlog.get() == ("image", chunks[0])
    assert backlog.get() == ("image", chunks[1])  # a shared chunk back: the allowance has room
    assert len(shared) == 1
    assert backlog.put("image", chunks[4], keeping_up=True)  # own share again
    assert backlog.put("image", chunks[5], keeping_up=True)  # behind its spool: spilled too
    assert (backlog.in_shared, backlog.spool_end) == (1, 20)
    assert [backlog.get() for _ in range(4)] == [("image", c) for c in chunks[2:]]
    assert len(shared) == 0 and backlog.spool_end == 0
    backlog.close()


def test_a_store_not_keeping_up_gets_no_shared_chunk_and_a_dropped_backlog_gives_them_back():
    shared = copies.SharedChunks(4)
    backlog = copies.Backlog(None, memory_chunks=1, shared=shared)
    assert backlog.put("image", b"a")
    assert not backlog.put("image", b"b", timeout=0.05)  # not keeping up: no allowance
    assert backlog.put("image", b"b", keeping_up=True)
    assert backlog.put("member", b"c", keeping_up=True)
    assert len(shared) == 2
    backlog.drop()
    assert len(shared) == 0 and backlog.in_shared == 0


def test_a_spool_disk_found_short_is_not_written_on_the_next_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(copies, "SPOOL_RESERVE", 1 << 62)
    backlog = copies.Backlog(str(tmp_path))
    for _ in range(copies.MEMORY_CHUNKS):
        assert backlog.put("image", b"x")
    for _ in range(3):
        assert not backlog.put("image", b"x", timeout=0.02)
    assert backlog.spool is None and backlog.spilled == 0
