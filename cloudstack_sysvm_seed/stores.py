"""NFS secondary stores: mounting (private mountpoints, always unmounted, a killed run's
leftovers reaped) and what is on a mounted store: copies, stages, set-aside directories."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shlex
import shutil
import socket
import tempfile
import time
import uuid
from typing import Callable, Iterator, Optional

from . import layout, properties, runner
from .errors import CommandFailed, MountFailed, StoreError
from .layout import WORK_DIR, NfsUrl, host_label, parse_url, stage_dir, stage_name, template_dir
from .model import LeftoverMount, StoreCopy
from .settings import MountSettings

LOG = logging.getLogger(__name__)

UMOUNT_ATTEMPTS = 3
_MNT_DETACH = 2  # <sys/mount.h>
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_LEFTOVER = re.compile(r"sysvm-seed-(\d+)-")  # a run's mountpoint: sysvm-seed-<pid>-<store>-


@contextlib.contextmanager
def mounted(url: str, settings: MountSettings, label: str,
            lazy: Callable[[], bool] = lambda: False,
            nfs_version: Optional[str] = None) -> Iterator[str]:
    """Mount a store at a private temporary mountpoint; always unmount and remove it.

    lazy(): asked at the end; True once a store stopped answering, so that the mount is
    detached at once (see _detach) instead of waiting on a server that is gone.

    :raises MountFailed: when the mount command fails or leaves nothing mounted.
    """
    try:
        nfs = parse_url(url)
    except ValueError as exc:
        raise MountFailed(f"Cannot mount {label}: {exc}.") from None
    # The pid in the name lets a later run tell a killed run's mount from a live one's.
    prefix = f"sysvm-seed-{os.getpid()}-" + re.sub(r"[^A-Za-z0-9_.-]", "", label) + "-"
    mountpoint = tempfile.mkdtemp(prefix=prefix, dir=settings.mountpoint_parent)
    try:
        _mount(nfs, mountpoint, settings, label, settings.nfs_version or nfs_version)
        yield mountpoint
    finally:
        _unmount_and_remove(mountpoint, settings, lazy())


def _mount(nfs: NfsUrl, mountpoint: str, settings: MountSettings, label: str,
           version: Optional[str]) -> None:
    argv = shlex.split(settings.mount_command)
    options = ([f"vers={version}"] if version else []) + (
        [f"port={nfs.port}"] if nfs.port else [])
    if options:
        argv += ["-o", ",".join(options)]
    argv += [nfs.export, mountpoint]
    LOG.info("Mounting %s (%s) at %s", label, nfs.export, mountpoint)
    try:
        runner.run(argv, timeout=settings.mount_timeout)
    except CommandFailed as exc:
        prefix = "timeout: " if exc.detail.startswith("timed out") else ""
        raise MountFailed(f"{prefix}Cannot mount {nfs.export} for {label}: {exc.detail}.",
                          _mount_hint(exc.detail, version)) from exc
    # Upstream ignored mount failures and wrote into the empty local directory instead.
    if not is_mounted(mountpoint):
        raise MountFailed(
            f"The mount command for {nfs.export} ({label}) exited 0 but nothing is mounted "
            f"at {mountpoint}.",
            "Check the mount command (--mount-command).",
        )


def _mount_hint(detail: str, version: Optional[str]) -> str:
    if "not supported" in detail.lower():  # "Protocol not supported", "...version ... not"
        tried = f"NFS version {version} was tried" if version else "the default NFS version"
        return (f"{tried} and the server refused it: set the store's nfs.version detail, "
                "secstorage.nfs.version, or --nfs-version (3, 4, 4.1 or 4.2).")
    if "timed out" in detail:
        return "The NFS server did not answer in time: check it and the network path to it."
    return "Check that the NFS server is reachable and exports the path to this host."


def _unmount_and_remove(mountpoint: str, settings: MountSettings, lazy: bool) -> None:
    if lazy:
        _detach(mountpoint)
    umount = shlex.split(settings.umount_command)
    attempts = [umount] * UMOUNT_ATTEMPTS + [umount + ["-l"]]
    for attempt, argv in enumerate(attempts, 1):
        if not is_mounted(mountpoint):
            break
        try:
            runner.run(argv + [mountpoint], timeout=settings.umount_timeout, cleanup=True)
        except CommandFailed as exc:
            LOG.warning("Unmounting %s failed (attempt %d/%d): %s",
                        mountpoint, attempt, len(attempts), exc.detail)
            time.sleep(min(attempt, 3))
    if is_mounted(mountpoint):
        LOG.error("%s is still mounted; unmount it by hand (umount %s)", mountpoint, mountpoint)
        return
    # rmdir, never a recursive delete: if anything is there, it is not ours to remove.
    try:
        os.rmdir(mountpoint)
    except OSError as exc:
        LOG.warning("Cannot remove mountpoint %s: %s", mountpoint, exc)


def _detach(mountpoint: str, why: str = "a store stopped answering") -> bool:
    """Lazily detach a mount with the umount2 system call, starting no process.

    After a store stalls, a thread of ours is stuck in write(2) with a file open on it. A
    forked child inherits that descriptor, and closing it (even close-on-exec) flushes to
    the dead server, so the child would hang before it ever ran umount.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(mountpoint), _MNT_DETACH) != 0:
        error = ctypes.get_errno()
        LOG.error("Cannot detach %s: %s", mountpoint, os.strerror(error))
        return False
    LOG.warning("Detached %s lazily (%s)", mountpoint, why)
    return True


def leftovers(runtime_dir: str) -> list[LeftoverMount]:
    """The mountpoints in `runtime_dir` that runs no longer alive left (SIGKILL and power
    loss skip every cleanup), and what is still mounted on each; nothing is touched. A
    mountpoint carries its run's pid: one whose pid lives (even reused) is not listed."""
    found = []
    for name in sorted(os.listdir(runtime_dir)):
        match = _LEFTOVER.match(name)
        if match and not alive(int(match.group(1))):
            path = os.path.join(runtime_dir, name)
            try:
                source = mount_source(path) or ""
            except OSError:
                source = ""
            found.append(LeftoverMount(path, int(match.group(1)), source))
    return found


def reap_leftovers(runtime_dir: str) -> int:
    """Detach and remove the mountpoints that dead runs left in `runtime_dir` (see
    leftovers); returns how many."""
    reaped = 0
    for leftover in leftovers(runtime_dir):
        path = leftover.path
        why = f"left by run {leftover.pid}, which was killed"
        while is_mounted(path) and _detach(path, why):
            pass  # stacked mounts come off one at a time
        try:
            os.rmdir(path)  # never a recursive delete: what is left there is not ours
            reaped += 1
        except OSError as exc:
            LOG.warning("Cannot remove %s (%s): %s", path, why, exc.strerror)
    return reaped


def stage_runs(names: list[str]) -> dict[str, bool]:
    """For the stages this host's runs named: whether each run is still alive."""
    here = host_label(socket.gethostname())
    runs = {}
    for name in names:
        owner = layout.stage_owner(name)
        if owner is not None and owner[0] == here:
            runs[name] = alive(owner[1])
    return runs


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    return True


def is_mounted(path: str) -> bool:
    """True when `path` is a mount point in this process's mount table.

    os.path.ismount misses bind mounts within one filesystem, so read mountinfo; and never
    stat the path itself, which blocks for as long as a dead NFS server does.
    """
    try:
        return mount_source(path) is not None
    except OSError:
        return os.path.ismount(path)


def mount_source(path: str) -> Optional[str]:
    """What is mounted at `path` (`host:/export` for NFS), from mountinfo; None if nothing.
    With stacked mounts the last line, the one on top, wins.

    :raises OSError: when mountinfo cannot be read.
    """
    target = _resolved(path)
    source = None
    with open("/proc/self/mountinfo", encoding="utf-8") as stream:
        for line in stream:
            if _mountinfo_target(line) == target:
                after = line.rstrip("\n").split(" - ", 1)[1].split(" ")
                source = _unescape(after[1]) if len(after) > 1 else ""
    return source


def _resolved(path: str) -> str:
    """The path with its parent resolved (symlinks, ..), without touching the last part."""
    absolute = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))


def _mountinfo_target(line: str) -> str:
    fields = line.split(" ")
    return _unescape(fields[4]) if len(fields) > 4 else ""


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


# --- what is on a mounted store --------------------------------------------------------------


def probe(root: str, template_id: int, extension: str) -> StoreCopy:
    """Seeded means: template.properties exists, and the image it names has the size it records."""
    directory = template_dir(root, template_id)
    if not os.path.isdir(directory):
        return StoreCopy("absent")
    try:
        with open(os.path.join(directory, properties.FILENAME), encoding="utf-8") as stream:
            values = properties.parse(stream.read())
    except FileNotFoundError:
        return StoreCopy("incomplete", "no template.properties")
    except (OSError, UnicodeDecodeError) as exc:
        return StoreCopy("incomplete", f"unreadable template.properties: {exc}")
    name = properties.image_name(values, extension)
    recorded = properties.physical_size(values, extension)
    if not name or recorded is None:
        return StoreCopy("incomplete", "template.properties names no image or size")
    try:
        actual = os.stat(os.path.join(directory, os.path.basename(name))).st_size
    except OSError:
        return StoreCopy("incomplete", f"{name} named in template.properties is missing")
    if actual != recorded:
        return StoreCopy("incomplete", f"{name} has {actual} bytes, template.properties says "
                                       f"{recorded}")
    virtual = properties.virtual_size(values, extension) or recorded
    return StoreCopy("seeded", "", os.path.basename(name), recorded, virtual)


class Stage:
    """A hidden directory on the store where one template copy is written before publishing.

    Publishing is a rename into template/tmpl/1/<id>/, so the SSVM and later runs see either
    a complete copy or none.
    """

    def __init__(self, root: str):
        self.root = root
        name = stage_name(socket.gethostname(), os.getpid(), uuid.uuid4().hex)
        self.path = os.path.join(stage_dir(root), name)
        self.published_to: Optional[str] = None
        os.makedirs(self.path, mode=0o755)

    def open_image(self, filename: str):
        return open(os.path.join(self.path, filename), "xb")

    def write_properties(self, props: properties.TemplateProperties) -> None:
        path = os.path.join(self.path, properties.FILENAME)
        with open(path, "x", encoding="utf-8") as stream:
            stream.write(props.render())
            stream.flush()
            os.fsync(stream.fileno())

    def publish(self, template_id: int) -> str:
        """Rename the stage to template/tmpl/1/<id>; an existing directory is set aside first.

        :raises StoreError: when the rename fails.
        """
        target = template_dir(self.root, template_id)
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if os.path.lexists(target):
            set_aside(self.root, target)
        try:
            os.rename(self.path, target)
        except OSError as exc:
            raise StoreError(f"Cannot publish {self.path} as {target}: {exc}.") from exc
        _fsync_dir(os.path.dirname(target))
        self.published_to = target
        self._remove_empty_work_dirs()
        return target

    def unpublish(self) -> None:
        """Undo publish (the database refused the rows): remove what we renamed into place."""
        if self.published_to:
            shutil.rmtree(self.published_to, ignore_errors=True)
            self.published_to = None

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._remove_empty_work_dirs()

    def _remove_empty_work_dirs(self) -> None:
        _prune_work_dirs(self.root)


def sweep_stages(root: str) -> int:
    """Remove every stage on a store, and the probe files of killed runs (check_writable);
    only call this while holding the registration lock. Returns the stages removed."""
    try:
        probes = [n for n in os.listdir(root) if n.startswith(PROBE_PREFIX)]
    except OSError:
        probes = []  # a store that cannot be listed: its writer's check will name it
    for name in probes:
        try:
            os.remove(os.path.join(root, name))
        except OSError:
            pass  # gone already, or not removable: a 5-byte file harms nothing
    parent = stage_dir(root)
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return 0
    for name in names:
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    _prune_work_dirs(root)
    return len(names)


def _prune_work_dirs(root: str, part: str = "stage") -> None:
    """Remove our stage/ (or prune/) and work directories once empty. rmdir fails on a
    non-empty one, so another stage, or set-aside copies, keep them."""
    for directory in (os.path.join(root, WORK_DIR, part), os.path.join(root, WORK_DIR)):
        try:
            os.rmdir(directory)
        except OSError:
            return


def set_aside(root: str, directory: str) -> str:
    """Move an incomplete copy out of the template tree instead of deleting someone's data."""
    aside = os.path.join(root, WORK_DIR, "aside")
    os.makedirs(aside, mode=0o755, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = f"{os.path.basename(directory)}-{stamp}-{uuid.uuid4().hex[:8]}"
    destination = os.path.join(aside, name)
    os.rename(directory, destination)
    LOG.warning("Moved incomplete copy %s aside to %s", directory, destination)
    return destination


PROBE_PREFIX = ".cloudstack-sysvm-seed-probe-"


def check_writable(root: str, label: str) -> None:
    """Create, sync and remove a small file, so a store that refuses writes is named before
    gigabytes are copied (root squash, read-only export, id mapping).

    :raises StoreError: with the cause and the likely fix.
    """
    try:
        try:
            owner = _probe_owner(root)
        except FileNotFoundError:
            # `check` probes without the lock, so a run holding it may have just swept the
            # file as a killed run's (sweep_stages): once more.
            owner = _probe_owner(root)
    except OSError as exc:
        raise StoreError(f"{label} cannot be written: {exc.strerror}.", _write_hint(exc)) from exc
    if os.geteuid() == 0 and owner != 0:
        raise StoreError(
            f"{label} stores files written by root as uid {owner}.",
            "The export squashes root (root_squash) or NFSv4 id mapping maps root to nobody: "
            "export it with no_root_squash to this host, or fix the idmapd Domain.")


def _probe_owner(root: str) -> int:
    """Write, sync and remove a probe file on `root`; the owner the store gave it."""
    path = os.path.join(root, PROBE_PREFIX + uuid.uuid4().hex)
    with open(path, "xb") as stream:
        stream.write(b"probe")
        fsync_file(stream)
    owner = os.stat(path).st_uid
    os.remove(path)
    return owner


def _write_hint(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ("Export it read-write with no_root_squash to this management server; check "
                "SELinux/AppArmor denials too.")
    if exc.errno == errno.EROFS:
        return "The export or the mount is read-only: export it rw, or mark the store read-only."
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "The store is full: free space on it."
    return "Check the NFS server and the export."


def free_bytes(root: str) -> int:
    info = os.statvfs(root)
    return info.f_bavail * info.f_frsize


def fsync_file(stream) -> None:
    stream.flush()
    os.fsync(stream.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- a full survey of a store (doctor) -------------------------------------------------------


def template_ids_on(root: str) -> list[int]:
    """The numeric directories under template/tmpl/1/: the template ids the store holds."""
    base = os.path.dirname(template_dir(root, 0))
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    return sorted(int(name) for name in names
                  if name.isdigit() and os.path.isdir(os.path.join(base, name)))


def stages_on(root: str) -> list[tuple[str, float]]:
    """Our stage directories on a store, each with the newest mtime in it (a copy being
    written keeps it fresh)."""
    base = stage_dir(root)
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        path = os.path.join(base, name)
        newest = os.lstat(path).st_mtime
        for directory, _, files in os.walk(path):
            for entry in files:
                try:
                    newest = max(newest, os.lstat(os.path.join(directory, entry)).st_mtime)
                except FileNotFoundError:
                    continue
        found.append((name, newest))
    return found


def contents(root: str, template_id: int) -> tuple[int, str]:
    """Bytes under template/tmpl/1/<id>, and why it holds more than a template copy (a
    subdirectory, a link, a special file: not ours to delete), or ""."""
    directory = template_dir(root, template_id)
    size, why = 0, ""
    for entry in os.scandir(directory):
        if entry.is_symlink():
            why = why or f"a link {entry.name}"
        elif entry.is_dir(follow_symlinks=False):
            why = why or f"a subdirectory {entry.name}/"
        elif not entry.is_file(follow_symlinks=False):
            why = why or f"a special file {entry.name}"
        else:
            size += entry.stat(follow_symlinks=False).st_size
    return size, why


# --- a copy being deleted (prune) --------------------------------------------------------------
# Out of the template tree in one rename, then deleted: a deletion cut short leaves no half
# copy where the SSVM looks; what a killed prune leaves in prune/ the next one finishes.


def check_only_a_copy(root: str, template_id: int) -> None:
    """:raises StoreError: when template/tmpl/1/<id> holds more than a template copy."""
    _, why = contents(root, template_id)
    if why:
        raise StoreError(f"{template_dir(root, template_id)} holds {why}: not only a "
                         "template copy, so it is not deleted.",
                         "Look at it and move it off by hand; then rerun.")


def trash_copy(root: str, template_id: int) -> str:
    """Move a copy out of the template tree (a rename, atomic); returns where it went.

    :raises StoreError: when the directory holds more than a copy, or cannot be moved.
    """
    source = template_dir(root, template_id)
    check_only_a_copy(root, template_id)
    trash = os.path.join(root, WORK_DIR, "prune")
    os.makedirs(trash, mode=0o755, exist_ok=True)
    target = os.path.join(trash, f"{template_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(source, target)
    except OSError as exc:
        raise StoreError(f"Cannot move {source} aside to delete it: {exc.strerror}.") from exc
    return target


def untrash(root: str, trashed: str, template_id: int) -> None:
    """Put a copy back where it was (its rows still name it)."""
    os.rename(trashed, template_dir(root, template_id))
    _prune_work_dirs(root, "prune")


def empty_trash(root: str, trashed: str) -> None:
    shutil.rmtree(trashed)
    _prune_work_dirs(root, "prune")


def trashed_on(root: str) -> list[tuple[int, str]]:
    """(template id, path) of the copies a prune moved aside and did not finish deleting."""
    base = os.path.join(root, WORK_DIR, "prune")
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    return [(int(name.split("-", 1)[0]), os.path.join(base, name))
            for name in names if name.split("-", 1)[0].isdigit()]


def remove_stage(root: str, name: str) -> None:
    """Delete one leftover stage (our own partial copy) and our work dirs once empty."""
    base = stage_dir(root)
    path = os.path.join(base, name)
    if os.path.dirname(os.path.normpath(path)) != base or name in ("", ".", ".."):
        raise ValueError(f"{name!r} is not a stage directory")
    shutil.rmtree(path)
    _prune_work_dirs(root)
