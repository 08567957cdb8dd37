"""Settings, assembled once at the edge from defaults, the environment and flags."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Mapping, Optional

from . import sources
from .plan import Scope
from .stores import MountSettings

DEFAULT_DB_PROPERTIES = "/etc/cloudstack/management/db.properties"
DEFAULT_KEY_FILE = "/etc/cloudstack/management/key"
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
    )
    return Settings(
        db_properties=args.db_properties or DEFAULT_DB_PROPERTIES,
        key_file=args.key_file or DEFAULT_KEY_FILE,
        templates_dir=args.templates_dir or sources.DEFAULT_TEMPLATES_DIR,
        mounts=mounts,
        scope=Scope(tuple(getattr(args, "zone", None) or ()),
                    tuple(getattr(args, "hypervisor", None) or ())),
        dry_run=bool(getattr(args, "dry_run", False)),
        json=bool(getattr(args, "json", False)),
        log_file=args.log_file,
    )
