"""Settings, assembled once at the edge from defaults, the environment and flags."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Mapping, Optional

from . import copies, dbprops, images, sources
from .plan import Scope
from .stores import MountSettings

DEFAULT_DB_PROPERTIES = "/etc/cloudstack/management/db.properties"
DEFAULT_MOUNT_COMMAND = "mount -t nfs"
DEFAULT_UMOUNT_COMMAND = "umount"
ENV_MOUNT_COMMAND = "CLOUDSTACK_SYSVM_SEED_MOUNT_COMMAND"
ENV_UMOUNT_COMMAND = "CLOUDSTACK_SYSVM_SEED_UMOUNT_COMMAND"


@dataclass(frozen=True)
class Settings:
    db_properties: str
    key_file: str
    templates_dir: str
    mounts: MountSettings
    scope: Scope
    downloads: sources.DownloadSettings = sources.DownloadSettings()
    allow_unverified: bool = False
    max_image_size: int = images.DEFAULT_MAX_IMAGE_SIZE
    lock_timeout: float = 1200.0  # upstream's registration waits 20 minutes
    stall_timeout: float = copies.DEFAULT_STALL_TIMEOUT
    jobs: int = 1  # stores mounted at once
    dry_run: bool = False
    json: bool = False
    log_file: Optional[str] = None


def from_args(args, environ: Mapping[str, str]) -> Settings:
    """Flags win over the environment, which wins over the defaults."""
    mounts = MountSettings(
        mount_command=args.mount_command or environ.get(ENV_MOUNT_COMMAND)
        or DEFAULT_MOUNT_COMMAND,
        umount_command=args.umount_command or environ.get(ENV_UMOUNT_COMMAND)
        or DEFAULT_UMOUNT_COMMAND,
        runtime_dir=tempfile.gettempdir(),
        mount_timeout=float(getattr(args, "mount_timeout", None) or 60.0),
        nfs_version=getattr(args, "nfs_version", None),
    )
    return Settings(
        db_properties=args.db_properties or DEFAULT_DB_PROPERTIES,
        key_file=args.key_file or dbprops.DEFAULT_KEY_FILE,
        templates_dir=args.templates_dir or sources.DEFAULT_TEMPLATES_DIR,
        mounts=mounts,
        scope=Scope(tuple(getattr(args, "zone", None) or ()),
                    tuple(getattr(args, "hypervisor", None) or ()),
                    tuple(s for s in [getattr(args, "store_id", None)] if s is not None)),
        downloads=sources.DownloadSettings(
            cache_dir=getattr(args, "cache_dir", None) or sources.DEFAULT_CACHE_DIR,
            repository=getattr(args, "download_repository", None),
            attempts=max(1, getattr(args, "download_attempts", None) or 5),
        ),
        allow_unverified=bool(getattr(args, "allow_unverified", False)),
        max_image_size=_gib(getattr(args, "max_image_size", None)),
        lock_timeout=float(getattr(args, "lock_timeout", None) or 1200.0),
        stall_timeout=float(getattr(args, "stall_timeout", None)
                            or copies.DEFAULT_STALL_TIMEOUT),
        jobs=getattr(args, "jobs", None) or default_jobs(),
        dry_run=bool(getattr(args, "dry_run", False)),
        json=bool(getattr(args, "json", False)),
        log_file=args.log_file,
    )


def _gib(value: Optional[float]) -> int:
    return int(value * (1 << 30)) if value else images.DEFAULT_MAX_IMAGE_SIZE


def default_jobs() -> int:
    """Stores mounted and probed at once: mounting waits on the network, so a few per core."""
    return min(16, 4 * (os.cpu_count() or 1))
