"""The CloudStack settings this tool writes, as CloudStack's own ConfigKeys define them, so a
missing `configuration` row is inserted exactly as a management server would create it.

Where the facts come from (apache/cloudstack):
- `router.template.<hv>`: `VirtualNetworkApplianceManager.RouterTemplateXen`, `...Kvm`,
  `...Vmware`, `...HyperV`, `...Lxc`, `...Ovm3`: ConfigKey<String>, category "Advanced",
  default "SystemVM Template (<label>)", description "Name of the default router template
  on <name>.", dynamic, Scope.Zone. Every upstream schema carries these rows with component
  "NetworkManager" (create-schema and the upgrade scripts), so a missing one gets the same.
- `minreq.sysvmtemplate.version`: `NetworkOrchestrationService.MinVRVersion`: category
  "Advanced", default "4.10.0", description "What version should the Virtual Routers
  report", dynamic, Scope.Zone; ConfigDepot inserts it at first start with component
  `NetworkOrchestrator.getConfigComponentName()` = "NetworkOrchestrationService".
- `ConfigKey.Scope` in 4.22 is a bitmask stored in a BIGINT `configuration.scope` (Global 1,
  Zone 2, Cluster 4, StoragePool 8, ManagementServer 16, ImageStore 32, Domain 64, Account
  128); older schemas store the scope's name.
Both keys are Zone-scoped, which is why zone overrides of them live in data_center_details.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from . import hypervisors

ZONE_SCOPE_NAME = "Zone"
ZONE_SCOPE_BIT = 2
MINREQ = "minreq.sysvmtemplate.version"


@dataclass(frozen=True)
class ConfigKey:
    name: str
    category: str
    component: str
    default: str
    description: str
    dynamic: bool = True
    scope: str = ZONE_SCOPE_NAME
    scope_bit: int = ZONE_SCOPE_BIT


# Upstream's spelling of each hypervisor in the default value and the description.
_ROUTER_LABELS = {
    "xenserver": ("XenServer", "Xenserver"),
    "kvm": ("KVM", "KVM"),
    "vmware": ("vSphere", "Vmware"),
    "hyperv": ("HyperV", "Hyperv"),
    "lxc": ("LXC", "LXC"),
    "ovm3": ("Ovm3", "Ovm3"),
}


def _router_key(key: str) -> ConfigKey:
    label, named = _ROUTER_LABELS[key]
    return ConfigKey(f"router.template.{key}", "Advanced", "NetworkManager",
                     f"SystemVM Template ({label})",
                     f"Name of the default router template on {named}.")


KEYS = {
    **{k.name: k for k in (_router_key(hv.key) for hv in hypervisors.HYPERVISORS)},
    MINREQ: ConfigKey(MINREQ, "Advanced", "NetworkOrchestrationService", "4.10.0",
                      "What version should the Virtual Routers report"),
}


def lookup(name: str) -> Optional[ConfigKey]:
    return KEYS.get(name)
