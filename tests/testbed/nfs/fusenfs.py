#!/usr/bin/env python3
"""A small NFSv3 client mounted through FUSE: what `mount -t nfs` would give, without a
kernel NFS client (this kernel has none). Built on PyPI mfusepy (libfuse) + nfs-rs.

    fusenfs.py [--nfs-port N] [--mount-port M] [-o OPTS] HOST:/PATH MOUNTPOINT

Runs in the foreground until MOUNTPOINT is unmounted (`umount MOUNTPOINT`), then exits 0;
SIGTERM unmounts and exits too. Connects before mounting: a refused or unreachable export
exits 32 with a mount.nfs-like last line ("mount.nfs: access denied by server while
mounting HOST:/PATH") and mounts nothing.

NFS semantics kept on purpose:
- `hard` (the default, as for mount.nfs): while the server is unreachable every operation
  is retried ("server not responding, still trying") and the caller blocks; it gives up
  only when the mount is gone (umount -l, or FUSE aborted).
- `soft[,timeo=T][,retrans=R]`: an operation gives up with EIO after about
  T/10 * (R + 1) seconds without an answer (defaults timeo=600, retrans=2, as mount.nfs).
- Writes are sent synchronously (nfs-rs commits them); fsync and close report errors.

Only what the seeding tool does on a store is implemented: getattr, readdir, mkdir,
create/open/read/write/truncate/flush/fsync/release, rename, unlink, rmdir, statfs, chmod,
chown, utimens.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import stat
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

EXIT_USAGE = 1
EXIT_MOUNT_FAILURE = 32  # mount(8)'s "mount failure", which mount.nfs uses for refusals
MAX_IO = 128 * 1024  # libfuse2's ceiling with big_writes; libfuse3 uses max_pages
LOG = logging.getLogger("fusenfs")
_OCTAL = re.compile(r"\\([0-7]{3})")


def mountinfo_has(path: str, resolve: bool = True) -> bool:
    """Is `path` a mount point (in /proc/self/mountinfo)? With resolve=False the path is
    taken as given (already real): nothing under it is touched, which matters when the
    mount may hang, and inside the bridge, where a stat of its own mount would wait for
    the bridge itself."""
    target = os.path.realpath(path) if resolve else os.path.abspath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as stream:
            for line in stream:
                fields = line.split(" ")
                if len(fields) > 4 and _OCTAL.sub(
                        lambda m: chr(int(m.group(1), 8)), fields[4]) == target:
                    return True
    except OSError:
        pass
    return False


@dataclass
class MountOptions:
    nfs_port: Optional[int] = None
    mount_port: Optional[int] = None
    soft: bool = False
    timeo: float = 60.0  # seconds (mount.nfs: timeo=600 deciseconds)
    retrans: int = 2
    vers: str = "3"
    ignored: tuple = ()

    @property
    def soft_deadline(self) -> float:
        return self.timeo * (self.retrans + 1)


def parse_options(option_strings, nfs_port=None, mount_port=None) -> MountOptions:
    opts = MountOptions(nfs_port=nfs_port, mount_port=mount_port)
    ignored = []
    for text in option_strings:
        for item in filter(None, (s.strip() for s in text.split(","))):
            key, _, value = item.partition("=")
            key = key.lower()
            if key == "port":
                opts.nfs_port = int(value)
            elif key == "mountport":
                opts.mount_port = int(value)
            elif key == "soft":
                opts.soft = True
            elif key == "hard":
                opts.soft = False
            elif key == "timeo":
                opts.timeo = int(value) / 10.0
            elif key == "retrans":
                opts.retrans = int(value)
            elif key in ("vers", "nfsvers"):
                opts.vers = value
            else:
                ignored.append(item)
    opts.ignored = tuple(ignored)
    if opts.vers not in ("3",):
        raise ValueError(f"NFS version {opts.vers} is not supported by this bridge (use 3)")
    return opts


def split_source(source: str):
    host, sep, path = source.rpartition(":")
    if not sep or not host or not path.startswith("/"):
        raise ValueError(f"remote share not in 'host:dir' format: {source}")
    return host.strip("[]"), path


def _is_unreachable(exc: BaseException) -> bool:
    """No answer from the server: the connection failed or an RPC timed out. An uncertain
    outcome (the connection died with the request in flight) counts too: the kernel's
    client retransmits those the same way."""
    import nfs_rs

    return isinstance(exc, (nfs_rs.NfsConnectionError, nfs_rs.NfsTimeoutError,
                            nfs_rs.NfsRetryableError, nfs_rs.NfsClientClosedError,
                            nfs_rs.NfsUncertainOutcomeError, ConnectionError, TimeoutError))


_ERRNO_BY_CLASS = (
    ("NfsNotFoundError", errno.ENOENT),
    ("NfsAlreadyExistsError", errno.EEXIST),
    ("NfsPermissionError", errno.EACCES),
    ("NfsIsADirectoryError", errno.EISDIR),
    ("NfsNotADirectoryError", errno.ENOTDIR),
    ("NfsUnsupportedError", errno.EOPNOTSUPP),
    ("NfsInvalidInputError", errno.EINVAL),
)
_ERRNO_BY_CODE = {
    "NFS3ERR_PERM": errno.EPERM, "NFS3ERR_NOENT": errno.ENOENT, "NFS3ERR_IO": errno.EIO,
    "NFS3ERR_NXIO": errno.ENXIO, "NFS3ERR_ACCES": errno.EACCES, "NFS3ERR_EXIST": errno.EEXIST,
    "NFS3ERR_XDEV": errno.EXDEV, "NFS3ERR_NODEV": errno.ENODEV,
    "NFS3ERR_NOTDIR": errno.ENOTDIR, "NFS3ERR_ISDIR": errno.EISDIR,
    "NFS3ERR_INVAL": errno.EINVAL, "NFS3ERR_FBIG": errno.EFBIG, "NFS3ERR_NOSPC": errno.ENOSPC,
    "NFS3ERR_ROFS": errno.EROFS, "NFS3ERR_MLINK": errno.EMLINK,
    "NFS3ERR_NAMETOOLONG": errno.ENAMETOOLONG, "NFS3ERR_NOTEMPTY": errno.ENOTEMPTY,
    "NFS3ERR_DQUOT": errno.EDQUOT, "NFS3ERR_STALE": errno.ESTALE,
    "NFS3ERR_NOTSUPP": errno.EOPNOTSUPP,
}



def to_errno(exc: BaseException) -> int:
    code_name = getattr(exc, "code_name", None)
    if code_name in _ERRNO_BY_CODE:
        return _ERRNO_BY_CODE[code_name]
    names = {c.__name__ for c in type(exc).__mro__}
    for name, number in _ERRNO_BY_CLASS:
        if name in names:
            return number
    number = getattr(exc, "errno", None)
    if isinstance(number, int) and number > 0:
        return number
    return errno.EIO


class Handle:
    """An open file; sequential writes gather in `pending` (write-behind, like the kernel's
    NFS client) and go out in large WRITEs when it is full and before anything else."""

    def __init__(self, path: str, mode: str, file):
        self.path = path
        self.mode = mode
        self.file = file
        self.pending = bytearray()
        self.pending_offset = 0
        self.error = 0  # a write-behind failure: reported by every later write/flush/fsync


def caller_killed(pid: int) -> bool:
    """True when process `pid` is gone or has SIGKILL pending: a hard NFS mount lets a
    killed process go (TASK_KILLABLE), so the bridge gives its request up as well."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as stream:
            for line in stream:
                if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & (
                        1 << (9 - 1)):
                    return True
    except (OSError, ValueError):
        return True
    return False


def _rel(path: str) -> str:
    """FUSE path (/a/b) -> path relative to the export (a/b, or '' for the root)."""
    return path.lstrip("/")


def build_operations(client_factory: Callable, opts: MountOptions, mountpoint: str):
    """`mountpoint` must be the real path (resolved before mounting)."""
    import mfusepy

    class NfsBridge(mfusepy.Operations):
        use_ns = True

        def __init__(self):
            self.client = client_factory()
            self.handles: Dict[int, Handle] = {}
            self.next_fh = 1
            self.write_behind = max(MAX_IO, min(self.client.io_limits.max_write, 4 << 20))

        # -- retry policy: hard / soft ----------------------------------------------------

        def _call(self, what: str, fn: Callable):
            started = time.monotonic()
            warned = False
            delay = 0.05
            while True:
                try:
                    result = fn()
                    if warned:
                        LOG.warning("nfs: server %s OK (%s)", SOURCE, what)
                    return result
                except Exception as exc:  # noqa: BLE001 - classified below
                    if not _is_unreachable(exc):
                        LOG.debug("%s: %s: %r", what, type(exc).__name__, exc)
                        raise mfusepy.FuseOSError(to_errno(exc)) from None
                    waited = time.monotonic() - started
                    if opts.soft and waited >= opts.soft_deadline:
                        LOG.error("nfs: server %s not responding, timed out (%s after %.1fs)",
                                  SOURCE, what, waited)
                        raise mfusepy.FuseOSError(errno.EIO) from None
                    if not mountinfo_has(mountpoint, resolve=False):
                        LOG.error("nfs: %s is no longer mounted; giving up %s", mountpoint,
                                  what)
                        raise mfusepy.FuseOSError(errno.EIO) from None
                    caller = mfusepy.fuse_get_context()[2]
                    if caller_killed(caller):
                        LOG.error("nfs: process %d was killed; giving up %s", caller, what)
                        raise mfusepy.FuseOSError(errno.EINTR) from None
                    if not warned:
                        LOG.warning("nfs: server %s not responding, %s (%s: %s)", SOURCE,
                                    f"timed out after {opts.soft_deadline:g}s"
                                    if opts.soft else "still trying", what, exc)
                        warned = True
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)

        def _file(self, fh: int) -> Handle:
            try:
                return self.handles[fh]
            except KeyError:
                raise mfusepy.FuseOSError(errno.EBADF) from None

        def _new_handle(self, path: str, mode: str, file) -> int:
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = Handle(path, mode, file)
            return fh

        def _send(self, handle: Handle) -> None:
            """Write out what `handle` holds back; errors surface in the current call and
            stick to the handle (the data is dropped, as the kernel's client does)."""
            if handle.error:
                raise mfusepy.FuseOSError(handle.error)
            if handle.pending:
                data, offset = bytes(handle.pending), handle.pending_offset
                handle.pending.clear()
                try:
                    self._call("write", lambda: handle.file.write_at(data, offset))
                except OSError as exc:
                    handle.error = exc.errno or errno.EIO
                    raise

        def _send_all(self) -> None:
            # One thread, few open files: before any other operation, everything is out,
            # so sizes, renames and reads see every byte written so far. A failure here is
            # kept for that file's own write/flush/fsync, not blamed on this operation.
            for handle in list(self.handles.values()):
                if handle.pending:
                    try:
                        self._send(handle)
                    except OSError:
                        pass

        # -- metadata ---------------------------------------------------------------------

        def getattr(self, path, fh=None):
            self._send_all()
            info = self._call("getattr", lambda: self.client.stat(_rel(path)))
            kind = {"directory": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(
                getattr(info.type, "value", str(info.type)), stat.S_IFREG)
            return {
                "st_mode": kind | (info.mode & 0o7777), "st_nlink": info.nlink,
                "st_uid": info.uid, "st_gid": info.gid, "st_size": info.size,
                "st_blocks": (info.used + 511) // 512, "st_ino": info.fileid,
                "st_atime": info.atime, "st_mtime": info.mtime, "st_ctime": info.ctime,
            }

        def readdir(self, path, fh):
            self._send_all()
            names = self._call("readdir", lambda: self.client.listdir(_rel(path)))
            return [".", ".."] + [n for n in names if n not in (".", "..")]

        def statfs(self, path):
            fs = self._call("statfs", lambda: self.client.fs_stat())
            block = 4096
            return {
                "f_bsize": block, "f_frsize": block, "f_namemax": 255,
                "f_blocks": fs.total_bytes // block, "f_bfree": fs.free_bytes // block,
                "f_bavail": fs.available_bytes // block, "f_files": fs.total_files,
                "f_ffree": fs.free_files, "f_favail": fs.available_files,
            }

        def chmod(self, path, mode):
            self._send_all()
            self._call("chmod", lambda: self.client.chmod(_rel(path), mode & 0o7777))
            return 0

        def chown(self, path, uid, gid):
            self._send_all()
            self._call("chown", lambda: self.client.chown(_rel(path), uid, gid))
            return 0

        def utimens(self, path, times=None):
            self._send_all()
            now = time.time_ns()
            atime, mtime = times if times else (now, now)
            self._call("utimens", lambda: self.client.utime(_rel(path), ns=(atime, mtime)))
            return 0

        # -- namespace --------------------------------------------------------------------

        def mkdir(self, path, mode):
            self._send_all()
            self._call("mkdir", lambda: self.client.mkdir(_rel(path), mode & 0o7777))
            return 0

        def rmdir(self, path):
            self._send_all()
            self._call("rmdir", lambda: self.client.rmdir(_rel(path)))
            return 0

        def unlink(self, path):
            self._send_all()
            self._call("unlink", lambda: self.client.unlink(_rel(path)))
            return 0

        def rename(self, old, new):
            self._send_all()
            self._call("rename", lambda: self.client.rename(_rel(old), _rel(new)))
            for handle in self.handles.values():
                if handle.path == old or handle.path.startswith(old + "/"):
                    handle.path = new + handle.path[len(old):]
            return 0

        # -- files ------------------------------------------------------------------------

        def create(self, path, mode, fi=None):
            self._send_all()
            rel = _rel(path)
            # The kernel already refused O_EXCL on an existing name (it looked it up).
            file = self._call("create", lambda: self.client.open(rel, "w+b"))
            try:
                self._call("chmod", lambda: self.client.chmod(rel, mode & 0o7777))
            except Exception:
                file.close()
                raise
            return self._new_handle(path, "w+b", file)

        def open(self, path, flags):
            self._send_all()
            access = flags & os.O_ACCMODE
            mode = "rb" if access == os.O_RDONLY else "r+b"
            file = self._call("open", lambda: self.client.open(_rel(path), mode))
            if flags & os.O_TRUNC and access != os.O_RDONLY:
                self._call("truncate", lambda: file.truncate(0))
            return self._new_handle(path, mode, file)

        def read(self, path, size, offset, fh):
            self._send_all()
            handle = self._file(fh)
            return self._call("read", lambda: handle.file.read_at(offset, size))

        def write(self, path, data, offset, fh):
            handle = self._file(fh)
            if handle.error:
                raise mfusepy.FuseOSError(handle.error)
            end = handle.pending_offset + len(handle.pending)
            if handle.pending and (offset != end
                                   or len(handle.pending) + len(data) > self.write_behind):
                self._send(handle)
            if not handle.pending:
                handle.pending_offset = offset
            handle.pending += data
            if len(handle.pending) >= self.write_behind:
                self._send(handle)
            return len(data)

        def truncate(self, path, length, fh=None):
            self._send_all()
            if fh is not None and fh in self.handles:
                handle = self.handles[fh]
                self._call("truncate", lambda: handle.file.truncate(length))
            else:
                self._call("truncate", lambda: self.client.truncate(_rel(path), length))
            return 0

        def flush(self, path, fh):
            handle = self._file(fh)
            self._send(handle)
            self._call("flush", lambda: handle.file.flush())
            return 0

        def fsync(self, path, datasync, fh):
            return self.flush(path, fh)

        def release(self, path, fh):
            handle = self.handles.pop(fh, None)
            if handle is not None:
                try:
                    if handle.pending:
                        self._send(handle)  # normally done by flush (close) already
                    handle.file.close()
                except Exception as exc:  # noqa: BLE001 - nobody sees release errors
                    LOG.warning("closing %s: %r", handle.path, exc)
            return 0

        def destroy(self, path):
            try:
                self.client.close()
            except Exception as exc:  # noqa: BLE001
                LOG.debug("closing the NFS client: %r", exc)

    return NfsBridge()


SOURCE = "?"


def main(argv=None) -> int:
    global SOURCE
    parser = argparse.ArgumentParser(prog="fusenfs", description=__doc__.splitlines()[0])
    parser.add_argument("--nfs-port", type=int)
    parser.add_argument("--mount-port", type=int)
    parser.add_argument("-o", dest="options", action="append", default=[])
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("source", help="HOST:/PATH")
    parser.add_argument("mountpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s fusenfs[{os.getpid()}] %(levelname)s %(message)s")
    SOURCE = args.source
    try:
        host, path = split_source(args.source)
        opts = parse_options(args.options, args.nfs_port, args.mount_port)
    except ValueError as exc:
        print(f"mount.nfs: {exc}", file=sys.stderr, flush=True)
        return EXIT_MOUNT_FAILURE
    if opts.ignored:
        LOG.info("ignoring mount options: %s", ",".join(opts.ignored))
    if not os.path.isdir(args.mountpoint):
        print(f"mount.nfs: mount point {args.mountpoint} does not exist", file=sys.stderr,
              flush=True)
        return EXIT_MOUNT_FAILURE

    import nfs_rs

    url = f"nfs://{host}{path}?version=3"
    # Short RPC timeouts: the retry loop above them decides when to give up (soft), and
    # between tries notices a killed caller or a vanished mount.
    kwargs = dict(nfs_port=opts.nfs_port, mount_port=opts.mount_port, connect_timeout=3,
                  operation_timeout=max(0.2, min(opts.timeo, 3.0)))

    def connect():
        return nfs_rs.Client.connect(url, **kwargs)

    started = time.monotonic()
    try:
        probe = connect()
        probe.stat("")
        probe.close()
    except nfs_rs.NfsMountError as exc:
        LOG.error("MOUNT of %s refused: %r", args.source, exc)
        print(f"mount.nfs: access denied by server while mounting {args.source}",
              file=sys.stderr, flush=True)
        return EXIT_MOUNT_FAILURE
    except Exception as exc:  # noqa: BLE001 - every other reason, as mount.nfs words it
        LOG.error("cannot reach %s: %r", args.source, exc)
        reason = ("Connection refused" if isinstance(exc, (ConnectionError,
                                                           nfs_rs.NfsConnectionError,
                                                           nfs_rs.NfsRetryableError))
                  else "Connection timed out" if isinstance(exc, TimeoutError)
                  else str(exc))
        print(f"mount.nfs: {reason} while mounting {args.source}", file=sys.stderr,
              flush=True)
        return EXIT_MOUNT_FAILURE
    LOG.info("NFSv3 %s reachable in %.3fs; mounting on %s (%s)", args.source,
             time.monotonic() - started, args.mountpoint,
             f"soft, gives up after {opts.soft_deadline:g}s" if opts.soft else "hard")

    import mfusepy

    operations = build_operations(connect, opts, os.path.realpath(args.mountpoint))
    fuse_kwargs = dict(foreground=True, nothreads=True, fsname=args.source, subtype="nfs",
                       max_read=MAX_IO, max_write=MAX_IO)
    if mfusepy.fuse_version_major == 2:
        fuse_kwargs["big_writes"] = True
    try:
        mfusepy.FUSE(operations, args.mountpoint, **fuse_kwargs)
    except RuntimeError as exc:
        print(f"mount.nfs: FUSE mount on {args.mountpoint} failed: {exc}", file=sys.stderr,
              flush=True)
        return EXIT_MOUNT_FAILURE
    LOG.info("%s unmounted; exiting", args.mountpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
