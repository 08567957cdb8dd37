"""NFS secondary stores: URLs, mounting, and the template layout on a mounted store."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Iterator, Optional
from urllib.parse import urlsplit

from . import properties, runner
from .errors import CommandFailed, MountFailed, StoreError

LOG = logging.getLogger(__name__)

SYSTEM_ACCOUNT = 1
# Where our staging and set-aside directories live on a store: outside template/, so the
# SSVM's template scan never sees a half-written copy.
WORK_DIR = ".cloudstack-sysvm-seed"
UMOUNT_ATTEMPTS = 3
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class NfsUrl:
    host: str
    port: Optional[int]
    path: str

    @property
    def export(self) -> str:
        """The `host:/path` argument of mount; IPv6 hosts in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.path}"


def parse_url(url: str) -> NfsUrl:
    """Parse `nfs://host[:port]/path`.

    :raises ValueError: with a sentence that says what is wrong.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "nfs":
        raise ValueError(f"{url!r} is not an nfs:// URL")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    if not parts.path or parts.path == "/":
        raise ValueError(f"{url!r} names no export path")
    return NfsUrl(parts.hostname, port, parts.path.rstrip("/") or "/")


@dataclass(frozen=True)
class MountSettings:
    mount_command: str = "mount -t nfs"
    umount_command: str = "umount"
    runtime_dir: str = tempfile.gettempdir()
    mount_timeout: float = 60.0
    umount_timeout: float = 30.0


@contextlib.contextmanager
def mounted(url: str, settings: MountSettings, label: str) -> Iterator[str]:
    """Mount a store at a private temporary mountpoint; always unmount and remove it.

    :raises MountFailed: when the mount command fails or leaves nothing mounted.
    """
    nfs = parse_url(url)
    prefix = "sysvm-seed-" + re.sub(r"[^A-Za-z0-9_.-]", "", label) + "-"
    mountpoint = tempfile.mkdtemp(prefix=prefix, dir=settings.runtime_dir)
    try:
        _mount(nfs, mountpoint, settings, label)
        yield mountpoint
    finally:
        _unmount_and_remove(mountpoint, settings)


def _mount(nfs: NfsUrl, mountpoint: str, settings: MountSettings, label: str) -> None:
    argv = shlex.split(settings.mount_command)
    options = [f"port={nfs.port}"] if nfs.port else []
    if options:
        argv += ["-o", ",".join(options)]
    argv += [nfs.export, mountpoint]
    LOG.info("Mounting %s (%s) at %s", label, nfs.export, mountpoint)
    try:
        runner.run(argv, timeout=settings.mount_timeout)
    except CommandFailed as exc:
        raise MountFailed(
            f"Cannot mount {nfs.export} for {label}: {exc.detail}.",
            "Check that the NFS server is reachable and exports the path to this host.",
        ) from exc
    # Upstream ignored mount failures and wrote into the empty local directory instead.
    if not is_mounted(mountpoint):
        raise MountFailed(
            f"The mount command for {nfs.export} ({label}) exited 0 but nothing is mounted "
            f"at {mountpoint}.",
            "Check the mount command (--mount-command).",
        )


def _unmount_and_remove(mountpoint: str, settings: MountSettings) -> None:
    for attempt in range(1, UMOUNT_ATTEMPTS + 1):
        if not is_mounted(mountpoint):
            break
        try:
            runner.run(shlex.split(settings.umount_command) + [mountpoint],
                       timeout=settings.umount_timeout)
        except CommandFailed as exc:
            LOG.warning("Unmounting %s failed (attempt %d/%d): %s",
                        mountpoint, attempt, UMOUNT_ATTEMPTS, exc.detail)
            time.sleep(attempt)
    if is_mounted(mountpoint):
        LOG.error("%s is still mounted; unmount it by hand (umount %s)", mountpoint, mountpoint)
        return
    # rmdir, never a recursive delete: if anything is there, it is not ours to remove.
    try:
        os.rmdir(mountpoint)
    except OSError as exc:
        LOG.warning("Cannot remove mountpoint %s: %s", mountpoint, exc)


def is_mounted(path: str) -> bool:
    """True when `path` is a mount point in this process's mount table.

    os.path.ismount misses bind mounts within one filesystem, so read mountinfo.
    """
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as stream:
            return any(_mountinfo_target(line) == target for line in stream)
    except OSError:
        return os.path.ismount(path)


def _mountinfo_target(line: str) -> str:
    fields = line.split(" ")
    return _unescape(fields[4]) if len(fields) > 4 else ""


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


# --- layout on a mounted store -------------------------------------------------------------


def template_dir(root: str, template_id: int) -> str:
    return os.path.join(root, "template", "tmpl", str(SYSTEM_ACCOUNT), str(template_id))


def install_path(template_id: int, filename: str) -> str:
    # Upstream's registration writes the path with a leading slash ("/template/tmpl/%d/").
    return f"/template/tmpl/{SYSTEM_ACCOUNT}/{template_id}/{filename}"


@dataclass(frozen=True)
class StoreCopy:
    """What a store holds for one template id."""

    state: str  # "absent", "incomplete" or "seeded"
    reason: str = ""
    filename: str = ""
    physical_size: int = 0
    virtual_size: int = 0


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
        self.path = os.path.join(root, WORK_DIR, "stage", uuid.uuid4().hex)
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
        # rmdir fails on a non-empty directory, so a concurrent run's stage is left alone.
        for directory in (os.path.dirname(self.path), os.path.join(self.root, WORK_DIR)):
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


def fsync_file(stream) -> None:
    stream.flush()
    os.fsync(stream.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
