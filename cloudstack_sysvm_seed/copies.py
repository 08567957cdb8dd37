"""A template copy being written to one store, by a thread of its own.

The single pass over a source hands every chunk to each store's writer through a small
bounded queue. A slow store then holds back the others only by the queue's depth, and a
store that stops making progress (a dead NFS server on a hard mount blocks write(2) for
good) is declared stalled after `stall_timeout` and abandoned, so the run can go on.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
from typing import Optional

from . import stores
from .plan import Step

LOG = logging.getLogger(__name__)

QUEUE_CHUNKS = 8  # of 1 MiB: what a writer may lag behind the reader
DEFAULT_STALL_TIMEOUT = 120.0
_STOP = ("stop", None)


class CopyWriter:
    """A Sink (see images.Sink) for one store; failures here stay here."""

    def __init__(self, step: Step, root: str, filename: str,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT):
        self.step = step
        self.filename = filename
        self.stall_timeout = stall_timeout
        self.error = ""
        self.stalled = False
        self.member = None
        self.finished = threading.Event()
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self.thread = threading.Thread(target=self._work, daemon=True,
                                       name=f"store-{step.store.id}")
        self.stage = stores.Stage(root)
        try:
            self.stream = self.stage.open_image(filename)
            self.thread.start()
        except BaseException:  # Ctrl-C included: no stage may outlive a failed start
            self.stage.discard()
            raise

    # --- the Sink, called by the reading thread -------------------------------------------

    def write(self, chunk: bytes) -> None:
        self._send(("image", chunk))

    def open_member(self, name: str) -> None:
        self._send(("open", name))

    def write_member(self, chunk: bytes) -> None:
        self._send(("member", chunk))

    def close_member(self) -> None:
        self._send(("close", None))

    def finish(self) -> None:
        """Flush and sync everything; afterwards `error` says whether the copy is whole."""
        if not self.error:
            self._send(("finish", None))
        if not self.error and not self.finished.wait(self.stall_timeout):
            self._stall()
        if self.error:
            self.fail(self.error)

    def fail(self, message: str) -> None:
        """Give up on this copy and remove its stage (unless the store no longer answers)."""
        if not self.error:
            self.error = message
        if self.stalled:
            return  # touching the store would block too; the next run sweeps the stage
        try:
            self.queue.put(_STOP, timeout=self.stall_timeout)
        except queue.Full:
            pass
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
        self.stage.discard()

    def _send(self, operation) -> None:
        if self.error:
            return
        try:
            self.queue.put(operation, timeout=self.stall_timeout)
        except queue.Full:
            self._stall()

    def _stall(self) -> None:
        self.stalled = True
        store, zone = self.step.store, self.step.zone
        self.error = (f"timeout: no progress writing to store {store.id} ({store.url}) in zone "
                      f"{zone.name if zone else '-'} for {self.stall_timeout:g}s; the NFS "
                      "server may be down or overloaded. Other stores go on.")
        LOG.error("%s", self.error)

    # --- the writing thread -----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            kind, data = self.queue.get()
            if kind == "stop":
                return
            if not self.error:  # after an error, only drain
                try:
                    self._do(kind, data)
                except OSError as exc:
                    self.error = store_error(exc, self.step)
            if kind == "finish":
                self.finished.set()
                return

    def _do(self, kind: str, data) -> None:
        if kind == "image":
            self.stream.write(data)
        elif kind == "open":
            self.member = self.stage.open_image(data)
        elif kind == "member":
            self.member.write(data)
        elif kind == "close":
            _close(self.member)
        elif kind == "finish":
            _close(self.stream)


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
