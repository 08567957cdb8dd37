"""A template copy being written to one store, by a thread of its own.

The single pass over a source hands every chunk to each store's writer and goes on. What a
writer has not written yet waits in its backlog: a few chunks in memory, the rest spilled to
an unlinked file on local disk. So a slow store never slows the pass, nor the other stores,
and memory stays bounded whatever the lag. (When local disk is short the backlog stops
spilling and the pass waits for that store instead.)

Every store gets the same chunk objects, so a chunk that several backlogs hold costs its
memory once. A store that is keeping up (it wrote a chunk within PROGRESS_WINDOW and has
nothing spilled) and is only a few chunks behind, as threads are when many stores share a
few cores, may hold chunks beyond its own share out of one allowance for the pass
(SHARED_CHUNKS, each chunk counted once however many stores hold it), instead of spilling
what it will write a moment later: on a busy machine spilling is work the stores' copies
then wait for.

A store that stops making progress (a dead NFS server on a hard mount blocks write(2) for
good) is declared stalled after `stall_timeout` and abandoned, so the run can go on.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import tempfile
import threading
import time
from typing import Iterable, Iterator, NamedTuple, Optional

from . import progress, stores
from .errors import SeedError, StoreFull
from .model import Step
from .settings import DEFAULT_STALL_TIMEOUT

LOG = logging.getLogger(__name__)

MEMORY_CHUNKS = 8  # of up to 1 MiB: the most a backlog holds in memory before it spills
PASS_MEMORY_CHUNKS = 32  # about the most the backlogs of one pass hold in memory together
SHARED_CHUNKS = 16  # beyond those, what stores keeping up may hold of one pass, counted once
PROGRESS_WINDOW = 1.0  # seconds: a store that wrote a chunk this recently is keeping up
ROOM_RECHECK = 1.0  # seconds before a spool disk found short is looked at again
SPOOL_RESERVE = 1 << 30  # spill only while the spool's file system keeps this much free
START_GRACE = 5.0  # how long the pass waits for every store to be checked before it begins
_DATA = ("image", "member")  # operations that carry image bytes


class CopyWriter:
    """A Sink (see images.Sink) for one store; failures here stay here.

    Everything that touches the store happens in the writer's thread, from the first check
    on, so a store that hangs at any point is caught by the stall timeout.
    """

    def __init__(self, step: Step, root: str, filename: str, needed: int = 0,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT,
                 spool_dir: Optional[str] = None, memory_chunks: int = MEMORY_CHUNKS,
                 pool: Optional[WriterPool] = None):
        self.pool = pool or WriterPool()  # a lone writer is a pool of its own
        self.step = step
        self.root = root
        self.filename = filename
        self.needed = needed  # bytes the copy will take, about
        self.stall_timeout = stall_timeout
        self.error = ""
        self.stalled = False
        self.stage: Optional[stores.Stage] = None
        self.stream = None
        self.member = None
        self.started = threading.Event()  # the store was checked: stage made, or an error
        self.finished = threading.Event()
        self.busy_since: Optional[float] = None  # when the operation under way began
        self.wrote_at: Optional[float] = None  # when a chunk of data was last written
        self.backlog = Backlog(spool_dir, memory_chunks, self.pool.shared)
        self.backlog.put("start", None)
        self.thread = threading.Thread(target=self._work, daemon=True,
                                       name=f"store-{step.store.id}")
        self.thread.start()

    # --- the Sink, called by the reading thread -------------------------------------------

    def write(self, chunk: bytes) -> None:
        self._send("image", chunk)

    def open_member(self, name: str) -> None:
        self._send("open", name)

    def write_member(self, chunk: bytes) -> None:
        self._send("member", chunk)

    def close_member(self) -> None:
        self._send("close", None)

    def end(self) -> None:
        """No more data: flush and sync once the backlog is written (see as_finished)."""
        self._send("finish", None)

    def finish(self) -> None:
        """end(), then wait for the writer's thread to be done; afterwards `error` says
        whether the copy is whole."""
        self.end()
        for _ in self.pool.as_finished([self]):
            pass
        self.thread.join(self.stall_timeout)

    def settled(self) -> bool:
        """The copy is whole or given up; declares a stall when an operation hangs."""
        if self.finished.is_set() or self.error:
            return True
        started = self.busy_since
        if started is not None and time.monotonic() - started > self.stall_timeout:
            self._stall()
            return True
        return False

    def fail(self, message: str) -> None:
        """Give up on this copy and remove its stage (unless the store no longer answers)."""
        if not self.error:
            self.error = message
        self.backlog.drop()
        if self.stalled:
            return  # touching the store would block too; the next run sweeps the stage
        self.backlog.put("stop", None)
        self.thread.join(self.stall_timeout)
        if self.thread.is_alive():
            self._stall()
            return
        for stream in (self.stream, self.member):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self.stage is not None:
            self.stage.discard()

    def _send(self, kind: str, data) -> None:
        if self.settled():
            return  # failed or stalled: the reader goes on without this store
        if not self.backlog.put(kind, data, self.stall_timeout, self.keeping_up()):
            self._stall()

    def keeping_up(self) -> bool:
        """The store wrote a chunk within PROGRESS_WINDOW: it is writing, not stuck."""
        wrote = self.wrote_at
        return wrote is not None and time.monotonic() - wrote < PROGRESS_WINDOW

    def _stall(self) -> None:
        self.stalled = True
        store, zone = self.step.store, self.step.zone
        self.error = (f"timeout: no progress writing to store {store.id} ({store.url}) in zone "
                      f"{zone.name if zone else '-'} for {self.stall_timeout:g}s; the NFS "
                      "server may be down or overloaded. Other stores go on.")
        LOG.warning("%s", self.error)  # at ERROR in the report's list, at the end
        self.backlog.drop()

    # --- the writing thread -----------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                kind, data = self.backlog.get()
                if kind == "stop":
                    return
                if not self.error:  # after an error, only drain
                    self._attempt(kind, data)
                if kind == "finish":
                    if self.backlog.spilled:
                        LOG.info("Store %d lagged behind the source: %d MiB waited on local "
                                 "disk", self.step.store.id, self.backlog.spilled >> 20)
                    self.backlog.close()
                    self.finished.set()
                    self.pool.notify()
                    return
        finally:
            self.backlog.close()

    def _attempt(self, kind: str, data) -> None:
        self.busy_since = time.monotonic()
        try:
            self._do(kind, data)
            if kind in _DATA:
                self.wrote_at = time.monotonic()
        except (OSError, SeedError) as exc:
            self.error = (store_error(exc, self.step) if isinstance(exc, OSError)
                          else str(exc))
            self.pool.notify()
        finally:
            self.busy_since = None
            if kind == "start":
                self.started.set()
                self.pool.notify()

    def _do(self, kind: str, data) -> None:
        if kind == "start":
            self._start()
        elif kind == "image":
            self.stream.write(data)
        elif kind == "open":
            self.member = self.stage.open_image(data)
        elif kind == "member":
            self.member.write(data)
        elif kind == "close":
            _close(self.member)
        elif kind == "finish":
            _close(self.stream)

    def _start(self) -> None:
        """The store must take a probe file and have room; then the stage is made."""
        store = self.step.store
        label = f"store {store.id} ({store.url})"
        stores.check_writable(self.root, label)
        free = stores.free_bytes(self.root)
        if free < self.needed:
            raise StoreFull(f"{label} has {free} bytes free; the image needs about "
                            f"{self.needed}.", "Free space on the store (or add another store "
                            "to the zone) and rerun.")
        self.stage = stores.Stage(self.root)
        self.stream = self.stage.open_image(self.filename)


def memory_share(writers: int) -> int:
    """Chunks each of a pass's `writers` may hold in memory: MEMORY_CHUNKS, and fewer when
    many stores share the pass, so that however many lag, memory stays near
    PASS_MEMORY_CHUNKS (each keeps 2, so that writing one overlaps receiving the next)."""
    return max(2, min(MEMORY_CHUNKS, PASS_MEMORY_CHUNKS // max(1, writers)))


class WriterPool:
    """The writers of one run, and the condition each one signals when its copy is whole or
    given up, so that the reading thread sleeps until there is something to publish; and
    the allowance its stores that keep up share (see SharedChunks)."""

    def __init__(self, shared_chunks: int = SHARED_CHUNKS):
        self.settled = threading.Condition()
        self.shared = SharedChunks(shared_chunks)

    def notify(self) -> None:
        with self.settled:
            self.settled.notify_all()

    def wait_started(self, writers: Iterable[CopyWriter], timeout: float = START_GRACE) -> None:
        """Until each writer has checked its store (or `timeout`), so that stores refusing
        the copy are named before the pass, while a store slow to answer does not hold it
        back."""
        deadline = time.monotonic() + timeout
        with self.settled:
            while not all(writer.started.is_set() or writer.settled() for writer in writers):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.settled.wait(left)

    def as_finished(self, writers: Iterable[CopyWriter], wait: bool = True,
                    poll: float = 1.0) -> Iterator[CopyWriter]:
        """Each writer once its copy is whole or given up (a failed copy's stage is removed
        first), soonest first, so a fast store's copy is published while a slow one writes.
        Without `wait`, only the writers settled already."""
        pending = list(writers)
        reported = time.monotonic()
        while pending:
            with self.settled:
                done = [writer for writer in pending if writer.settled()]
                if not done and wait:
                    self.settled.wait(poll)  # woken by a writer; the timeout catches stalls
                    if time.monotonic() - reported >= progress.INTERVAL:
                        reported = time.monotonic()
                        _report_lagging(pending)
                    continue
            for writer in done:
                pending.remove(writer)
                if writer.error:
                    writer.fail(writer.error)
                yield writer
            if not wait:
                return


def _report_lagging(writers: list[CopyWriter]) -> None:
    for writer in writers:
        store = writer.step.store
        LOG.info("Still writing to store %d (%s): %d MiB to go", store.id, store.url,
                 writer.backlog.pending >> 20)


class SharedChunks:
    """Chunks that backlogs hold in memory beyond their own share, at most `limit` of them:
    a chunk counts once however many backlogs hold it (the reader hands every store the
    same object), and leaves the count when the last of them has taken it out."""

    def __init__(self, limit: int = SHARED_CHUNKS):
        self.limit = limit
        self.lock = threading.Lock()
        self.held: dict[int, list] = {}  # id(chunk) -> [chunk, backlogs holding it]

    def take(self, chunk: bytes) -> bool:
        """Count one more backlog holding `chunk`; False when that needs a chunk more than
        the limit."""
        with self.lock:
            entry = self.held.get(id(chunk))
            if entry is None:
                if len(self.held) >= self.limit:
                    return False
                self.held[id(chunk)] = [chunk, 1]  # the reference keeps the id unique
            else:
                entry[1] += 1
            return True

    def release(self, chunk: bytes) -> None:
        with self.lock:
            entry = self.held[id(chunk)]
            entry[1] -= 1
            if not entry[1]:
                del self.held[id(chunk)]

    def __len__(self) -> int:
        return len(self.held)


class _Spooled(NamedTuple):
    offset: int
    length: int


class _Shared(NamedTuple):
    chunk: bytes  # held beyond the backlog's share, counted in its pass's SharedChunks


class Backlog:
    """Operations handed to a writer and not yet done, in order: up to `memory_chunks` of
    data in memory (more out of `shared` while the writer keeps up), the rest in an
    unlinked file in `spool_dir`, which no crash can leave behind."""

    def __init__(self, spool_dir: Optional[str], memory_chunks: int = MEMORY_CHUNKS,
                 shared: Optional[SharedChunks] = None):
        self.spool_dir = spool_dir
        self.memory_chunks = memory_chunks
        self.shared = shared
        self.items: collections.deque = collections.deque()
        self.in_memory = 0  # data operations held in memory, out of memory_chunks
        self.in_shared = 0  # data operations held in memory beyond them, out of `shared`
        self.pending = 0  # bytes not yet handed to the writer
        self.spool = None  # an unlinked file, opened on the first spill
        self.spool_end = 0
        self.spilled = 0  # bytes that went through the spool, in all
        self.room_checked_at = -1  # spool_end when free space was last checked
        self.room_checked_time = 0.0  # and when
        self.room = True  # what that check found
        self.changed = threading.Condition()

    def put(self, kind: str, data, timeout: float = 0, keeping_up: bool = False) -> bool:
        """Queue an operation; False when it found no room within `timeout`. `keeping_up`:
        the writer is writing, a few chunks behind (see SharedChunks)."""
        with self.changed:
            if kind in _DATA and self.in_memory >= self.memory_chunks:
                if self._share(data, keeping_up):
                    self.items.append((kind, _Shared(data)))
                    self.in_shared += 1
                    self.pending += len(data)
                    self.changed.notify_all()
                    return True
                if self._spill(kind, data):
                    return True
                if not self.changed.wait_for(lambda: self.in_memory < self.memory_chunks,
                                             timeout):
                    return False
            self.items.append((kind, data))
            if kind in _DATA:
                self.in_memory += 1
                self.pending += len(data)
            self.changed.notify_all()
            return True

    def get(self):
        """The next operation, waiting for one; spilled data is read back here."""
        with self.changed:
            self.changed.wait_for(lambda: self.items)
            kind, data = self.items.popleft()
            if isinstance(data, _Spooled):
                data = os.pread(self.spool.fileno(), data.length, data.offset)
            elif isinstance(data, _Shared):
                data = data.chunk
                self.in_shared -= 1
                self.shared.release(data)
            elif kind in _DATA:
                self.in_memory -= 1
            if kind in _DATA:
                self.pending -= len(data)
            if not self.items and self.spool_end:
                self.spool.truncate(0)  # caught up: give the disk space back
                self.spool_end, self.room_checked_at = 0, -1
            self.changed.notify_all()
            return kind, data

    def drop(self) -> None:
        """Forget everything not yet done (the copy is given up)."""
        with self.changed:
            for _, data in self.items:
                if isinstance(data, _Shared):
                    self.shared.release(data.chunk)
            self.items.clear()
            self.in_memory = self.in_shared = self.pending = 0
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            if self.spool is not None:
                self.spool.close()
                self.spool, self.spool_end = None, 0

    def _share(self, data: bytes, keeping_up: bool) -> bool:
        """Hold `data` beyond the share, out of the pass's allowance: only for a writer that
        keeps up and has nothing spilled (a store behind by more is slow: it spills)."""
        return (keeping_up and self.shared is not None and not self.spool_end
                and self.shared.take(data))

    def _spill(self, kind: str, data: bytes) -> bool:
        if not self.spool_dir or not self._room_on_disk():
            return False
        try:
            if self.spool is None:
                os.makedirs(self.spool_dir, mode=0o700, exist_ok=True)
                self.spool = tempfile.TemporaryFile(dir=self.spool_dir)
            os.pwrite(self.spool.fileno(), data, self.spool_end)
        except OSError as exc:
            LOG.warning("Cannot spill a store's backlog to %s (%s); the copy to every store "
                        "now goes at the pace of the slowest.", self.spool_dir, exc.strerror)
            self.spool_dir = None
            return False
        self.items.append((kind, _Spooled(self.spool_end, len(data))))
        self.spool_end += len(data)
        self.spilled += len(data)
        self.pending += len(data)
        self.changed.notify_all()
        return True

    def _room_on_disk(self) -> bool:
        # statvfs every 64 MiB of spool, not every chunk; once short, every ROOM_RECHECK
        # seconds (the spool does not grow meanwhile), and no spilling in between.
        if self.room_checked_at >= 0:
            if self.room and self.spool_end - self.room_checked_at < (64 << 20):
                return True
            if not self.room and time.monotonic() - self.room_checked_time < ROOM_RECHECK:
                return False
        self.room_checked_at, self.room_checked_time = self.spool_end, time.monotonic()
        try:
            self.room = stores.free_bytes(self.spool_dir) >= SPOOL_RESERVE
        except OSError:
            self.room = True  # not there yet: makedirs will say
        return self.room


def _close(stream: Optional[object]) -> None:
    if stream is not None and not stream.closed:
        stores.fsync_file(stream)
        stream.close()


def store_error(exc: OSError, step: Step) -> str:
    """An OSError on a store, as a sentence that names the store and the next step."""
    where = f"store {step.store.id} ({step.store.url})"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{where} is full: {exc.strerror}. Free space on it and rerun."
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"{where} refused the write: {exc.strerror}. Export it with no_root_squash "
                "to this management server.")
    if exc.errno == errno.EROFS:
        return f"{where} is read-only: {exc.strerror}."
    if exc.errno in (errno.EIO, errno.ETIMEDOUT, errno.ESTALE):
        return (f"{where}: {exc.strerror}; the NFS server may have gone away or the export "
                "changed. Check the server and rerun.")
    return f"{where}: {exc.strerror or exc}"
