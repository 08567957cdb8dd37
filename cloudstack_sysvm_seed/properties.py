"""template.properties: the file that marks a template copy on a store as complete.

CloudStack's SSVM and SystemVmTemplateRegistration read it back (`size=`, `virtualsize=`), so
we write exactly what upstream leaves there: createtmplt.sh's four lines followed by
setup-sysvm-tmplt's eight, in that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

FILENAME = "template.properties"


@dataclass(frozen=True)
class TemplateProperties:
    template_id: int
    extension: str  # qcow2, vhd, ova, raw
    filename: str  # <uuid>.<ext>
    physical_size: int  # bytes of the image file on the store
    virtual_size: int  # disk size seen by the guest
    hypervisor_key: str  # for the description line, as setup-sysvm-tmplt passes it

    def render(self) -> str:
        ext = self.extension
        lines = [
            f"filename={self.filename}",
            f"description=SystemVM Template ( {self.hypervisor_key} )",
            "hvm=false",
            f"size={self.physical_size}",
            f"{ext}=true",
            f"id={self.template_id}",
            "public=true",
            f"{ext}.filename={self.filename}",
            f"uniquename=routing-{self.template_id}",
            f"{ext}.virtualsize={self.virtual_size}",
            f"virtualsize={self.virtual_size}",
            f"{ext}.size={self.physical_size}",
        ]
        return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, str]:
    """key=value lines as the Java reader sees them; later keys win, comments skipped."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def image_name(values: dict[str, str], extension: str) -> Optional[str]:
    return values.get(f"{extension}.filename") or values.get("filename")


def physical_size(values: dict[str, str], extension: str) -> Optional[int]:
    return _int(values.get(f"{extension}.size") or values.get("size"))


def virtual_size(values: dict[str, str], extension: str) -> Optional[int]:
    return _int(values.get("virtualsize") or values.get(f"{extension}.virtualsize"))


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text else None
    except ValueError:
        return None
