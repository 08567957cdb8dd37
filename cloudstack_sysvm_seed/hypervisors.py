"""What CloudStack expects of each hypervisor's system VM template.

Values from upstream SystemVmTemplateRegistration (4.16 to 4.22): the hypervisor name as stored
in the database, the image format and file extension, the guest OS id 4.16 registers, and the
metadata.ini section name, which is also the `router.template.<key>` suffix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

DEFAULT_ARCH = "x86_64"
ARCHES = ("x86_64", "aarch64")


@dataclass(frozen=True)
class Hypervisor:
    key: str  # metadata.ini section and router.template.<key>, lower case
    db_name: str  # cluster.hypervisor_type / vm_template.hypervisor_type
    image_format: str  # vm_template.format
    guest_os_id: int  # 4.16's fixed id; 4.20+ metadata may name a guest OS instead

    @property
    def extension(self) -> str:
        """File extension on the store: the lower-case format, as setup-sysvm-tmplt uses."""
        return self.image_format.lower()

    @property
    def config_key(self) -> str:
        return f"router.template.{self.key}"


HYPERVISORS = (
    Hypervisor("kvm", "KVM", "QCOW2", 15),
    Hypervisor("lxc", "LXC", "QCOW2", 15),
    Hypervisor("xenserver", "XenServer", "VHD", 99),
    Hypervisor("hyperv", "Hyperv", "VHD", 15),
    Hypervisor("vmware", "VMware", "OVA", 99),
    Hypervisor("ovm3", "Ovm3", "RAW", 183),
)

# Hypervisor types that exist in cluster rows but never get a system VM template.
NO_TEMPLATE = frozenset({"External", "Simulator", "BareMetal", "None", "Any"})

_BY_KEY = {hv.key: hv for hv in HYPERVISORS}
_BY_DB_NAME = {hv.db_name.lower(): hv for hv in HYPERVISORS}


def by_key(key: str) -> Optional[Hypervisor]:
    return _BY_KEY.get(key.lower())


def by_db_name(name: str) -> Optional[Hypervisor]:
    """Look up a hypervisor by its database spelling, case-insensitively (`KVM`, `Hyperv`)."""
    return _BY_DB_NAME.get(name.lower())


def lookup(name: str) -> Optional[Hypervisor]:
    """Accept either spelling an operator may type: `kvm`, `KVM`, `XenServer`, `xenserver`."""
    return by_key(name) or by_db_name(name)
