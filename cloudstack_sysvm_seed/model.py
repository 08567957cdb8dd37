"""The domain records every command shares, as plain frozen data (no I/O):

- what the database and the stores hold: zones, stores, templates, store refs, zone
  overrides, system VMs, and what a mounted store holds (store copies, surveys);
- the `Snapshot` of all that a plan is made from;
- the changes a plan is made of, and the `Plan` itself: the copies to write per template
  (`TemplateWork`) and every other line of the plan (`Step`), each row change in it carried
  by a change record.

Seed, install, check, doctor and repair all plan with these records, and apply carries out
any such plan.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Optional, Union

from . import layout, versions

if TYPE_CHECKING:  # metadata imports nothing of ours that imports this
    from .metadata import TemplateSpec

READY_DOWNLOAD_STATES = ("DOWNLOADED", "BYPASSED")
STALE_AFTER = 3600.0  # seconds: an older stage, or a download "in progress", is abandoned
# Seconds: an unfinished template_store_ref (Allocated, Creating, DOWNLOAD_IN_PROGRESS) updated
# within this long is someone else's copy in progress (watch leaves the store alone); an
# older one counts as failed and is seeded over.
BUSY_AFTER = 1800.0
UNFINISHED_STATES = ("Allocated", "Creating")
UNFINISHED_DOWNLOAD_STATES = ("DOWNLOAD_IN_PROGRESS",)


# --- what the database holds -----------------------------------------------------------------


@dataclass(frozen=True)
class Zone:
    id: int
    uuid: str
    name: str


@dataclass(frozen=True)
class Store:
    id: int
    uuid: str
    name: str
    zone_id: Optional[int]  # None for a region-wide store
    url: str
    protocol: str
    provider: str
    readonly: bool
    nfs_version: Optional[str] = None  # image_store_details, else secstorage.nfs.version

    @property
    def usable(self) -> bool:
        """Where system VM templates must be: a zone's writable NFS store."""
        return self.zone_id is not None and self.protocol == "nfs" and not self.readonly


@dataclass(frozen=True)
class Template:
    """A non-removed SYSTEM template (vm_template row)."""

    id: int
    name: str
    hypervisor: str  # database spelling, e.g. KVM
    arch: str
    state: Optional[str]  # None on schemas without the column
    size: Optional[int]
    uuid: Optional[str]
    cross_zones: bool = True
    image_format: str = ""
    url: str = ""

    @property
    def active(self) -> bool:
        return self.state in (None, "Active")

    @property
    def label(self) -> str:
        return f"{self.id} ({self.name})"

    @property
    def version(self) -> Optional[versions.Version]:
        return versions.parse(self.name)


@dataclass(frozen=True)
class StoreRef:
    id: int
    template_id: int
    store_id: int
    state: str
    download_state: Optional[str]
    download_pct: Optional[int]
    install_path: Optional[str]
    size: Optional[int]
    physical_size: Optional[int]
    error_str: Optional[str] = None
    last_updated: Optional[datetime.datetime] = None

    @property
    def ready(self) -> bool:
        """As CloudStack counts a copy usable (findSystemVMReadyTemplates)."""
        return self.state == "Ready" and self.download_state in READY_DOWNLOAD_STATES


@dataclass(frozen=True)
class StoreNeed:
    """A usable NFS image store that lacks a Ready copy of a template its zone needs (what
    `watch` asks each interval, catalog.store_needs), with the unfinished template_store_ref
    row for that pair that was updated last, if any: someone may be writing it."""

    store_id: int
    store_url: str
    zone_id: int
    hypervisor: str  # database spelling
    arch: str
    template_id: int
    template_name: str
    named_by: str  # the setting naming it ("router.template.kvm", zone's or global), or ""
    zone_override: bool = False  # named by the zone's value of that setting
    ref_id: Optional[int] = None  # the unfinished row, if any
    ref_state: str = ""  # its state/download_state, e.g. "Creating/DOWNLOAD_IN_PROGRESS"
    ref_age: Optional[float] = None  # seconds since it was last updated

    def busy(self, after: float = BUSY_AFTER) -> bool:
        """Someone else (the management server, the SSVM) is writing this copy now."""
        return self.ref_id is not None and self.ref_age is not None and self.ref_age < after

    @property
    def why(self) -> str:
        """Why the zone needs the template, in the report's words."""
        if not self.named_by:
            return f"the newest SYSTEM template for {self.hypervisor} {self.arch}"
        scope = f"zone {self.zone_id}'s" if self.zone_override else "the global"
        return f"named by {scope} {self.named_by}"

    def describe(self) -> str:
        return f"template {self.template_id} ({self.template_name}, {self.why})"


@dataclass(frozen=True)
class Override:
    """A zone's value of a setting (data_center_details)."""

    id: int
    zone_id: int
    name: str
    value: Optional[str]


@dataclass(frozen=True)
class SystemVm:
    """A non-removed vm_instance of any type but User, with the arch of its host."""

    id: int
    name: str
    type: str
    zone_id: int
    hypervisor: Optional[str]  # database spelling
    arch: str
    template_id: Optional[int]


# --- what a mounted store holds --------------------------------------------------------------


@dataclass(frozen=True)
class StoreCopy:
    """What a store holds for one template id."""

    state: str  # "absent", "incomplete" or "seeded"
    reason: str = ""
    filename: str = ""
    physical_size: int = 0
    virtual_size: int = 0

    @property
    def seeded(self) -> bool:
        return self.state == "seeded"


ABSENT = StoreCopy("absent")


@dataclass(frozen=True)
class StoreSurvey:
    """What one mounted store was seen to hold, or why it could not be looked into."""

    store_id: int
    error: str = ""  # the store could not be mounted or read
    directories: tuple[int, ...] = ()  # template/tmpl/1/<id> directories (full surveys)
    copies: Mapping[int, StoreCopy] = field(default_factory=dict)  # probed, by template id
    stages: tuple[tuple[str, float], ...] = ()  # (name, age in seconds) of our stages
    # Full surveys: bytes under each template directory, and why one holds more than a
    # template copy (a subdirectory, a link, a file no copy has), by template id.
    sizes: Mapping[int, int] = field(default_factory=dict)
    foreign: Mapping[int, str] = field(default_factory=dict)
    # The stages this host's runs named (layout.stage_owner): whether each run is alive.
    stage_runs: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class LeftoverMount:
    """A private mountpoint that a run no longer alive left behind (stores.leftovers)."""

    path: str
    pid: int
    source: str = ""  # what is still mounted there (host:/export), or "" for none


# --- the snapshot a plan is made from ----------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything a plan depends on, observed before any change."""

    zones: tuple[Zone, ...]
    stores: tuple[Store, ...]
    zone_hypervisors: Mapping[int, frozenset[tuple[str, str]]]  # zone -> (hypervisor, arch)
    templates: tuple[Template, ...] = ()  # every non-removed SYSTEM template
    store_refs: tuple[StoreRef, ...] = ()  # of those templates
    zone_refs: frozenset[tuple[int, int]] = frozenset()  # (template id, zone id)
    guest_os_ids: Mapping[str, int] = field(default_factory=dict)  # by display name
    settings: Mapping[str, Optional[str]] = field(default_factory=dict)  # global values
    overrides: tuple[Override, ...] = ()  # zone values of the same settings
    system_vms: tuple[SystemVm, ...] = ()
    holdings: frozenset[tuple[int, int]] = frozenset()  # (store id, template id), any template
    retired: tuple[Template, ...] = ()  # SYSTEM templates removed (retired) in the database
    # What uses a template besides settings and system VMs: any VM or volume, by id (prune).
    users: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    surveys: Mapping[int, StoreSurvey] = field(default_factory=dict)  # by store id
    # Why a spec has no usable source (no bundled, cached or downloadable file), by section.
    missing_sources: Mapping[str, str] = field(default_factory=dict)
    now: Optional[datetime.datetime] = None  # UTC, to age download states
    stale_after: float = STALE_AFTER
    leftover_mounts: tuple[LeftoverMount, ...] = ()  # seen, not reaped (doctor)

    def mount_error(self, store_id: int) -> str:
        survey = self.surveys.get(store_id)
        return survey.error if survey is not None else ""

    def copy(self, store_id: int, template_id: int) -> Optional[StoreCopy]:
        """What a store holds for a template; None when the store was not looked into."""
        survey = self.surveys.get(store_id)
        if survey is None or survey.error:
            return None
        return survey.copies.get(template_id, ABSENT)

    def template(self, template_id: Optional[int]) -> Optional[Template]:
        return next((t for t in self.templates if t.id == template_id), None)

    def registered(self, spec: TemplateSpec) -> Optional[Template]:
        """The registered template for a spec: SYSTEM, not removed, same name, hypervisor,
        arch. With several (the one-template-per-zone mess), the highest id, as CloudStack
        picks."""
        matches = [t for t in self.templates
                   if t.name == spec.name and t.arch == spec.arch
                   and t.hypervisor.lower() == spec.hypervisor.db_name.lower()]
        return max(matches, key=lambda t: t.id, default=None)

    def zone(self, zone_id: Optional[int]) -> Optional[Zone]:
        return next((z for z in self.zones if z.id == zone_id), None)

    def usable_stores(self, zone_id: int) -> list[Store]:
        return [s for s in self.stores if s.zone_id == zone_id and s.usable]


@dataclass(frozen=True)
class Scope:
    zones: tuple[str, ...] = ()  # ids, uuids or names; empty = all
    hypervisors: tuple[str, ...] = ()  # keys or database names; empty = all
    stores: tuple[int, ...] = ()  # image store ids; empty = all


# --- changes ---------------------------------------------------------------------------------

# A template a change concerns: its id, or (a str) the metadata.ini section of the template
# the same plan registers, whose id is known only once its first copy is recorded.
TemplateRef = Union[int, str]
# What must hold before a change is made: each (template, zone) Ready in that zone (zone None:
# anywhere), and no copy of it that the run tried there failed. The plan says which of them
# hold already (Plan.ready); the others wait for the run's copies.
Needs = tuple[tuple[TemplateRef, Optional[int]], ...]


@dataclass(frozen=True)
class SetTemplate:
    template_id: int
    state: Optional[str] = None
    cross_zones: Optional[int] = None
    retire: bool = False  # state Inactive and removed set; files kept
    size: Optional[int] = None
    needs: Needs = ()

    def describe(self) -> str:
        if self.retire:
            return f"vm_template {self.template_id}: state Inactive, removed set (files kept)"
        changes = [f"{k}={v}" for k, v in (("cross_zones", self.cross_zones),
                                           ("state", self.state), ("size", self.size))
                   if v is not None]
        return f"vm_template {self.template_id}: {', '.join(changes)}"


@dataclass(frozen=True)
class FixRef:
    """Record the complete copy on the store: update the ref (or insert one) to match it."""

    template_id: int
    store_id: int
    ref_id: Optional[int]
    install_path: str
    size: int
    physical_size: int
    url: str = field(default="", compare=False)  # of a ref inserted anew

    def describe(self) -> str:
        what = f"template_store_ref {self.ref_id}" if self.ref_id else "new template_store_ref"
        return (f"{what} for template {self.template_id} on store {self.store_id}: Ready, "
                f"{self.install_path}, size {self.size}, physical {self.physical_size}")


@dataclass(frozen=True)
class DropRef:
    ref_id: int
    template_id: int
    store_id: int

    def describe(self) -> str:
        return (f"template_store_ref {self.ref_id} (template {self.template_id}, store "
                f"{self.store_id}): destroyed=1, a duplicate")


@dataclass(frozen=True)
class CopyTemplate:
    """Write a copy of a registered template onto a store; source_store None: the file
    metadata.ini bundles."""

    template_id: int
    zone_id: int
    store_id: int
    ref_id: Optional[int]
    source_store: Optional[int]

    def describe(self) -> str:
        source = ("the bundled file" if self.source_store is None
                  else f"the copy on store {self.source_store}")
        return f"copy template {self.template_id} to store {self.store_id} from {source}"


@dataclass(frozen=True)
class AddZoneRef:
    template_id: int
    zone_id: int
    needs: Needs = ()

    def describe(self) -> str:
        return f"template_zone_ref for template {self.template_id} in zone {self.zone_id}"


@dataclass(frozen=True)
class SetSetting:
    """A global setting (configuration); inserted as CloudStack defines it when missing."""

    name: str
    old: Optional[str]
    new: str
    needs: Needs = ()
    after: tuple = ()  # changes that must have been made first
    note: str = field(default="", compare=False)  # e.g. "rolled back from 4.20.9"

    def describe(self) -> str:
        return f"{self.name}: {self.old!r} -> {self.new!r}" + (
            f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class DropOverride:
    id: int
    zone_id: int
    name: str
    value: Optional[str]
    needs: Needs = ()
    after: tuple = ()

    def describe(self) -> str:
        return f"zone {self.zone_id} override {self.name}={self.value!r}: deleted"


@dataclass(frozen=True)
class PointVms:
    template_id: TemplateRef
    zone_id: int
    vm_ids: tuple[int, ...]
    needs: Needs = ()
    vms: tuple[SystemVm, ...] = field(default=(), compare=False)  # to name them
    name: str = field(default="", compare=False)  # the template's
    note: str = field(default="", compare=False)

    def describe(self, template_id: Optional[int] = None) -> str:
        """In the plan's words; with the id a template registered by the run got."""
        known = template_id or (self.template_id if isinstance(self.template_id, int) else None)
        template = (f"template {known}" + (f" ({self.name})" if self.name else "") if known
                    else f"template {self.name or self.template_id} (registered by this run)")
        named = ", ".join(f"{vm.name} ({vm.type}, was {vm.template_id})" for vm in self.vms)
        return (f"system VMs in zone {self.zone_id} now on {template}: "
                f"{named or ', '.join(map(str, self.vm_ids))}; they use it once recreated"
                + (f" ({self.note})" if self.note else ""))


@dataclass(frozen=True)
class RemoveStage:
    store_id: int
    name: str

    def describe(self) -> str:
        return f"store {self.store_id}: delete stale stage {layout.WORK_DIR}/stage/{self.name}"


@dataclass(frozen=True)
class RemoveCopy:
    """Delete a retired template's copy from a store, as CloudStack retires one: its refs
    there Destroyed, and template/tmpl/1/<id>/ deleted (checked first: only the copy)."""

    template_id: int
    store_id: int
    ref_ids: tuple[int, ...]  # none: a directory left behind by an earlier retirement
    size: int  # bytes it frees

    def describe(self) -> str:
        refs = (f"template_store_ref {', '.join(map(str, self.ref_ids))} Destroyed, "
                if self.ref_ids else "")
        return (f"store {self.store_id}: {refs}delete template/tmpl/{layout.SYSTEM_ACCOUNT}/"
                f"{self.template_id}/ ({human_size(self.size)})")


@dataclass(frozen=True)
class RetireTemplate:
    """vm_template Inactive and removed, its template_zone_ref rows removed: once no store
    keeps a copy."""

    template_id: int
    after: tuple = ()  # its RemoveCopy changes

    def describe(self) -> str:
        return (f"vm_template {self.template_id}: state Inactive, removed set; its "
                "template_zone_ref rows removed")


Change = Union[SetTemplate, FixRef, DropRef, CopyTemplate, AddZoneRef, SetSetting,
               DropOverride, PointVms, RemoveStage, RemoveCopy, RetireTemplate]


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""  # pragma: no cover - the loop always returns


# --- the plan --------------------------------------------------------------------------------

REGISTER = "register"  # a new template, and its copy on this store
SEED = "seed"  # a copy of a registered template onto this store
ADOPT = "adopt"  # the copy is there; make the rows say so
NONE = "none"  # all in order
SKIP = "skip"  # not ours to seed, with why
FAIL = "fail"  # cannot be done in this run, with why
CONFIGURE = "configure"  # a row change besides the copies: settings, system VMs, templates
KEEP = "keep"  # prune: a template that stays, with why
PRUNE = "prune"  # prune: a template's copy or row that goes
WRITES_COPY = (REGISTER, SEED)


@dataclass(frozen=True)
class Step:
    """One line of a plan: where, what, why; a row change carries its change record."""

    action: str
    zone: Optional[Zone]
    store: Optional[Store]
    hypervisor: str
    arch: str
    template_id: Optional[int] = None
    reason: str = ""
    store_ref: Optional[StoreRef] = None
    copy: Optional[StoreCopy] = None
    change: Optional[Change] = None
    held: bool = False  # the plan holds this line back (why, and what finishes it: reason)


@dataclass(frozen=True)
class TemplateWork:
    """The copies of one template to write, and the template's row when it is new."""

    spec: TemplateSpec  # name, checksum, url, format; for repair, made from the template
    template: Optional[Template]  # None: registered with its first copy
    guest_os_id: int
    zone_ids: tuple[int, ...]  # zones whose template_zone_ref comes with the first copy
    steps: tuple[Step, ...]  # per target store: register, seed, none or fail
    activate: bool = False  # the registered template is made Active, and sized, by it too

    @property
    def ref(self) -> TemplateRef:
        return self.template.id if self.template else self.spec.section

    @property
    def seed_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action in WRITES_COPY)


@dataclass(frozen=True)
class Plan:
    works: tuple[TemplateWork, ...] = ()
    steps: tuple[Step, ...] = ()  # every other line, in the order apply takes them
    ready: frozenset[tuple[TemplateRef, Optional[int]]] = frozenset()  # needs met already

    @property
    def all_steps(self) -> list[Step]:
        return [*(s for w in self.works for s in w.steps), *self.steps]

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.change is not None]
