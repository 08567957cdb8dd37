"""Settings, assembled once at the edge from defaults, the environment and flags; the
modules that use them (stores, sources, images, copies) take them from here."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Mapping, Optional

from .dbprops import DEFAULT_KEY_FILE
from .model import Scope

DEFAULT_DB_PROPERTIES = "/etc/cloudstack/management/db.properties"
DEFAULT_TEMPLATES_DIR = "/usr/share/cloudstack-management/templates/systemvm"
DEFAULT_CACHE_DIR = "/var/cache/cloudstack-sysvm-seed"
DEFAULT_BACKUP_DIR = "/var/lib/cloudstack-sysvm-seed/backups"
DEFAULT_MOUNT_COMMAND = "mount -t nfs"
DEFAULT_UMOUNT_COMMAND = "umount"
DEFAULT_MAX_IMAGE_SIZE = 64 << 30  # a system VM image is a few GiB; more is a bomb
DEFAULT_STALL_TIMEOUT = 120.0
DEFAULT_LOCK_TIMEOUT = 1200.0  # upstream's registration waits 20 minutes
ENV_MOUNT_COMMAND = "CLOUDSTACK_SYSVM_SEED_MOUNT_COMMAND"
ENV_UMOUNT_COMMAND = "CLOUDSTACK_SYSVM_SEED_UMOUNT_COMMAND"


@dataclass(frozen=True)
class MountSettings:
    mount_command: str = DEFAULT_MOUNT_COMMAND
    umount_command: str = DEFAULT_UMOUNT_COMMAND
    runtime_dir: str = ""  # where private mountpoints are made; "" = the system's temp dir
    mount_timeout: float = 60.0
    umount_timeout: float = 30.0
    nfs_version: Optional[str] = None  # --nfs-version: wins over the database's values

    @property
    def mountpoint_parent(self) -> str:
        return self.runtime_dir or tempfile.gettempdir()


@dataclass(frozen=True)
class DownloadSettings:
    cache_dir: str = DEFAULT_CACHE_DIR
    repository: Optional[str] = None  # --download-repository
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    attempts: int = 5
    backoff: float = 1.0  # seconds before the first retry; doubles, at most 30 s


@dataclass(frozen=True)
class Settings:
    db_properties: str
    key_file: str
    templates_dir: str
    mounts: MountSettings
    scope: Scope
    downloads: DownloadSettings = field(default_factory=DownloadSettings)
    allow_unverified: bool = False
    allow_downgrade: bool = False
    max_image_size: int = DEFAULT_MAX_IMAGE_SIZE
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    jobs: int = 1  # stores mounted at once
    dry_run: bool = False
    json: bool = False
    log_file: Optional[str] = None


def from_args(args, environ: Mapping[str, str]) -> Settings:
    """Flags win over the environment, which wins over the defaults."""

    def option(name: str):
        return getattr(args, name, None)  # each command has only some of the options

    mounts = MountSettings(
        mount_command=option("mount_command") or environ.get(ENV_MOUNT_COMMAND)
        or DEFAULT_MOUNT_COMMAND,
        umount_command=option("umount_command") or environ.get(ENV_UMOUNT_COMMAND)
        or DEFAULT_UMOUNT_COMMAND,
        runtime_dir=environ.get("TMPDIR", ""),
        mount_timeout=float(option("mount_timeout") or 60.0),
        nfs_version=option("nfs_version"),
    )
    return Settings(
        db_properties=option("db_properties") or DEFAULT_DB_PROPERTIES,
        key_file=option("key_file") or DEFAULT_KEY_FILE,
        templates_dir=option("templates_dir") or DEFAULT_TEMPLATES_DIR,
        mounts=mounts,
        scope=Scope(tuple(option("zone") or ()), tuple(option("hypervisor") or ()),
                    tuple(s for s in [option("store_id")] if s is not None)),
        downloads=DownloadSettings(
            cache_dir=option("cache_dir") or DEFAULT_CACHE_DIR,
            repository=option("download_repository"),
            attempts=max(1, option("download_attempts") or 5),
        ),
        allow_unverified=bool(option("allow_unverified")),
        allow_downgrade=bool(option("allow_downgrade")),
        max_image_size=_gib(option("max_image_size")),
        lock_timeout=float(option("lock_timeout") or DEFAULT_LOCK_TIMEOUT),
        stall_timeout=float(option("stall_timeout") or DEFAULT_STALL_TIMEOUT),
        jobs=option("jobs") or default_jobs(),
        dry_run=bool(option("dry_run")),
        json=bool(option("json")),
        log_file=option("log_file"),
    )


def _gib(value: Optional[float]) -> int:
    return int(value * (1 << 30)) if value else DEFAULT_MAX_IMAGE_SIZE


def default_jobs() -> int:
    """Stores mounted and probed at once: mounting waits on the network, so a few per core."""
    return min(16, 4 * (os.cpu_count() or 1))
