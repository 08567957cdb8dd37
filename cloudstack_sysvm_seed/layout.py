"""How a secondary store is addressed and laid out: `nfs://` URLs, template/tmpl/1/<id>/,
install paths as CloudStack records them, and our own work directory. Pure: paths only."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

SYSTEM_ACCOUNT = 1
# Where our staging and set-aside directories live on a store: outside template/, so the
# SSVM's template scan never sees a half-written copy.
WORK_DIR = ".cloudstack-sysvm-seed"


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


def template_dir(root: str, template_id: int) -> str:
    return os.path.join(root, "template", "tmpl", str(SYSTEM_ACCOUNT), str(template_id))


def install_path(template_id: int, filename: str) -> str:
    # Upstream's registration writes the path with a leading slash ("/template/tmpl/%d/").
    return f"/template/tmpl/{SYSTEM_ACCOUNT}/{template_id}/{filename}"


def same_install_path(recorded: Optional[str], expected: str) -> bool:
    # The SSVM records paths without the leading slash, registration with it: both work.
    return (recorded or "").lstrip("/") == expected.lstrip("/")


def stage_dir(root: str) -> str:
    return os.path.join(root, WORK_DIR, "stage")


# A stage's name says whose it is: the host and pid of the run writing it (a store is shared
# by every management server), so that doctor can tell a dead run's stage at once.
_STAGE_NAME = re.compile(r"^(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{32}$")


def host_label(host: str) -> str:
    """A host name as a stage name carries it (no path separators, never empty)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", host) or "host"


def stage_name(host: str, pid: int, token: str) -> str:
    return f"{host_label(host)}-{pid}-{token}"


def stage_owner(name: str) -> Optional[tuple[str, int]]:
    """(host, pid) of the run a stage is named for; None for a name without them (the
    stages of earlier versions)."""
    match = _STAGE_NAME.match(name)
    return (match.group("host"), int(match.group("pid"))) if match else None
