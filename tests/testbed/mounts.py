"""Mount helpers for the fake NFS server tree used with the `bind-mount` stand-in.

The server tree lives on its own tmpfs: a bind mount from the same filesystem would keep
st_dev, and then os.path.ismount() and device-id checks could not tell a mounted store
from a plain directory, which real NFS mounts never look like.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import List, Union

from . import BIND_MOUNT

_OCTAL = re.compile(r"\\([0-7]{3})")


def _mountinfo() -> List[List[str]]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return [line.split(" ") for line in handle]


def _decode(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def mountinfo_points() -> List[str]:
    """Mount points listed in /proc/self/mountinfo (field 5), octal escapes decoded."""
    return [_decode(fields[4]) for fields in _mountinfo()]


def points_of_device(path: Union[Path, str]) -> List[str]:
    """Every mount point showing the filesystem `path` lives on (matched by major:minor),
    so bind mounts taken from the server tree are found wherever the tool put them."""
    st_dev = os.stat(path).st_dev
    wanted = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    return [_decode(fields[4]) for fields in _mountinfo() if fields[2] == wanted]


def is_mounted(path: Union[Path, str]) -> bool:
    return os.path.realpath(path) in mountinfo_points()


def mount_tmpfs(path: Union[Path, str], size: str = "1g") -> Path:
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    target = target.resolve()  # mountinfo lists resolved paths; callers compare with them
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target)],
        check=True,
        timeout=30,
    )
    return target


def umount(path: Union[Path, str]) -> None:
    """Unmount every mount stacked on `path` (a failed test may have mounted twice)."""
    while is_mounted(path):
        subprocess.run(["umount", str(path)], check=True, timeout=60)


def mount_command(stores_root: Union[Path, str]) -> str:
    """The mount command string the tool is configured with (shlex-quoted)."""
    return " ".join(shlex.quote(str(p)) for p in (BIND_MOUNT, "--root", stores_root))
