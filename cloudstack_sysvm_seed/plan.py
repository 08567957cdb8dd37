"""From an observed snapshot to the steps of a run. Pure: no database, no disk, no clock.

A run is planned per (zone, store, hypervisor/arch) target. Per target the plan says one of:
register (a new template, first copy here), seed (write a copy of an existing template),
adopt (the copy is there; make the rows say so), none (all in order), skip or fail (why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from . import hypervisors, stores
from .catalog import Store, StoreRef, Template, Zone
from .errors import SettingsError, StoreError
from .metadata import Metadata, TemplateSpec
from .stores import StoreCopy

REGISTER = "register"
SEED = "seed"
ADOPT = "adopt"
NONE = "none"
SKIP = "skip"
FAIL = "fail"
WRITES_COPY = (REGISTER, SEED)


@dataclass(frozen=True)
class Snapshot:
    """Everything a plan depends on, observed before any change."""

    zones: tuple[Zone, ...]
    stores: tuple[Store, ...]
    zone_hypervisors: Mapping[int, frozenset[tuple[str, str]]]
    templates: tuple[Template, ...] = ()
    store_refs: tuple[StoreRef, ...] = ()
    zone_refs: frozenset[tuple[int, int]] = frozenset()
    guest_os_ids: Mapping[str, int] = field(default_factory=dict)
    # Filled after mounting: what each store holds, and which stores could not be mounted.
    copies: Mapping[tuple[int, int], StoreCopy] = field(default_factory=dict)
    mount_errors: Mapping[int, str] = field(default_factory=dict)
    # Why a spec has no usable source (no bundled, cached or downloadable file), by section.
    missing_sources: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Scope:
    zones: tuple[str, ...] = ()  # ids, uuids or names; empty = all
    hypervisors: tuple[str, ...] = ()  # keys or database names; empty = all
    stores: tuple[int, ...] = ()  # image store ids; empty = all


@dataclass(frozen=True)
class Target:
    zone: Zone
    store: Store
    spec: TemplateSpec


@dataclass(frozen=True)
class Step:
    action: str
    zone: Optional[Zone]
    store: Optional[Store]
    hypervisor: str
    arch: str
    template_id: Optional[int] = None
    reason: str = ""
    store_ref: Optional[StoreRef] = None
    copy: Optional[StoreCopy] = None


@dataclass(frozen=True)
class TemplateWork:
    """Everything to do for one template spec, across its target stores."""

    spec: TemplateSpec
    template: Optional[Template]  # None: registered with its first copy
    guest_os_id: int
    missing_zone_ids: tuple[int, ...]  # zones that need a template_zone_ref row
    activate: bool  # the existing row is not Active or has no size
    steps: tuple[Step, ...]

    @property
    def seed_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action in WRITES_COPY)


@dataclass(frozen=True)
class Plan:
    works: tuple[TemplateWork, ...]
    others: tuple[Step, ...]  # skips and failures not tied to a template spec

    @property
    def steps(self) -> list[Step]:
        return [*self.others, *(s for w in self.works for s in w.steps)]


def resolve_scope(snapshot: Snapshot, scope: Scope) -> tuple[list[Zone], set[str]]:
    """Zones and hypervisor keys in scope.

    :raises SettingsError: for a zone or hypervisor that does not exist.
    """
    zones = list(snapshot.zones)
    if scope.zones:
        zones = [_find_zone(snapshot.zones, wanted) for wanted in scope.zones]
        zones = sorted(set(zones), key=lambda z: z.id)
    if scope.stores:
        known = {s.id: s for s in snapshot.stores}
        for store_id in scope.stores:
            if store_id not in known:
                raise SettingsError(f"No image store {store_id} (role Image, not removed).",
                                    "Check the id with listImageStores.")
        store_zones = {known[s].zone_id for s in scope.stores}
        zones = [z for z in zones if z.id in store_zones]
    keys = set()
    for name in scope.hypervisors:
        hypervisor = hypervisors.lookup(name)
        if hypervisor is None:
            known = ", ".join(hv.key for hv in hypervisors.HYPERVISORS)
            raise SettingsError(f"Unknown hypervisor {name!r}.", f"Use one of: {known}.")
        keys.add(hypervisor.key)
    return zones, keys


def _find_zone(zones: tuple[Zone, ...], wanted: str) -> Zone:
    for zone in zones:
        if wanted in (str(zone.id), zone.uuid, zone.name):
            return zone
    known = ", ".join(f"{z.id} ({z.name})" for z in zones) or "none"
    raise SettingsError(f"No zone {wanted!r} in the database (not removed).",
                        f"Known zones: {known}.")


def select(snapshot: Snapshot, metadata: Metadata, scope: Scope) -> tuple[list[Target], list[Step]]:
    """The (zone, store, spec) targets in scope, and the skips found on the way."""
    zones, keys = resolve_scope(snapshot, scope)
    targets: list[Target] = []
    skipped: list[Step] = []
    for zone in zones:
        writable = _zone_stores(snapshot, zone, scope.stores, skipped)
        for hv_name, arch in sorted(snapshot.zone_hypervisors.get(zone.id, ())):
            hypervisor = hypervisors.by_db_name(hv_name)
            if keys and (hypervisor is None or hypervisor.key not in keys):
                continue
            if hypervisor is None or hv_name in hypervisors.NO_TEMPLATE:
                skipped.append(Step(SKIP, zone, None, hv_name, arch,
                                    reason=f"{hv_name} has no system VM template"))
                continue
            spec = metadata.spec_for(hypervisor, arch)
            if spec is None:
                skipped.append(Step(SKIP, zone, None, hypervisor.key, arch,
                                    reason=f"{metadata.path} has no section for "
                                           f"{hypervisor.key} {arch}"))
                continue
            targets.extend(Target(zone, store, spec) for store in writable)
    if not scope.zones:
        skipped.extend(Step(SKIP, None, store, "", "", reason="region-wide store; not seeded")
                       for store in snapshot.stores if store.zone_id is None
                       and (not scope.stores or store.id in scope.stores))
    return targets, skipped


def _zone_stores(snapshot: Snapshot, zone: Zone, store_ids: tuple[int, ...],
                 skipped: list[Step]) -> list[Store]:
    """The zone's writable NFS stores in scope; every other one is recorded as skipped, with
    why."""
    writable = []
    for store in snapshot.stores:
        if store.zone_id != zone.id or (store_ids and store.id not in store_ids):
            continue
        if store.protocol != "nfs":
            reason = (f"{store.provider or store.protocol} store: not seeded "
                      "(system VMs need an NFS store)")
        elif store.readonly:
            reason = "read-only store"
        else:
            _check_url(zone, store)
            writable.append(store)
            continue
        skipped.append(Step(SKIP, zone, store, "", "", reason=reason))
    if not writable:
        skipped.append(Step(SKIP, zone, None, "", "",
                            reason="no writable NFS image store in this zone; its secondary "
                                   "storage VM cannot start until one is added"))
    return writable


def _check_url(zone: Zone, store: Store) -> None:
    """:raises StoreError: before anything changes, for an NFS store whose URL is unusable."""
    try:
        stores.parse_url(store.url)
    except ValueError as exc:
        raise StoreError(
            f"Image store {store.id} ({store.name}) in zone {zone.name} is an NFS store, but "
            f"{exc}. Nothing was changed.",
            "Correct image_store.url (nfs://host/path), or limit the run with --zone.",
        ) from None


def existing_template(snapshot: Snapshot, spec: TemplateSpec) -> Optional[Template]:
    """The registered template for a spec: SYSTEM, not removed, same name, hypervisor, arch.

    With several (the one-template-per-zone mess), the highest id, as CloudStack picks.
    """
    matches = [
        t for t in snapshot.templates
        if t.name == spec.name and t.hypervisor.lower() == spec.hypervisor.db_name.lower()
        and t.arch == spec.arch
    ]
    return max(matches, key=lambda t: t.id, default=None)


def build(snapshot: Snapshot, metadata: Metadata, targets: list[Target],
          skipped: list[Step], allow_unverified: bool = False) -> Plan:
    """Turn targets into per-template work.

    allow_unverified: seed images whose metadata.ini checksum is empty (4.20's aarch64).
    """
    by_spec: dict[TemplateSpec, list[Target]] = {}
    for target in targets:
        by_spec.setdefault(target.spec, []).append(target)
    works = tuple(_work(snapshot, metadata, spec, group, allow_unverified)
                  for spec, group in by_spec.items())
    return Plan(works, tuple(skipped))


def _work(snapshot: Snapshot, metadata: Metadata, spec: TemplateSpec,
          targets: list[Target], allow_unverified: bool) -> TemplateWork:
    template = existing_template(snapshot, spec)
    steps = [_target_step(snapshot, spec, template, t) for t in targets]
    problem = _seeding_problem(snapshot, metadata, spec, allow_unverified)
    if problem:
        steps = [_failed(s, problem) if s.action in WRITES_COPY else s for s in steps]
    all_zones = tuple(z.id for z in snapshot.zones)
    if template is None:
        missing, activate = all_zones, False
    else:
        missing = tuple(z for z in all_zones if (template.id, z) not in snapshot.zone_refs)
        activate = template.state not in (None, "Active") or not template.size
    guest_os_id = snapshot.guest_os_ids.get(spec.guest_os or "", spec.hypervisor.guest_os_id)
    return TemplateWork(spec, template, guest_os_id, missing, activate, tuple(steps))


def _target_step(snapshot: Snapshot, spec: TemplateSpec, template: Optional[Template],
                 target: Target) -> Step:
    zone, store = target.zone, target.store
    base = dict(zone=zone, store=store, hypervisor=spec.hypervisor.key, arch=spec.arch)
    if store.id in snapshot.mount_errors:
        return Step(FAIL, reason=snapshot.mount_errors[store.id], **base)
    if template is None:
        return Step(REGISTER, reason="not registered yet", **base)
    ref = store_ref_of(snapshot.store_refs, template.id, store.id)
    copy = snapshot.copies.get((store.id, template.id), StoreCopy("absent"))
    base.update(template_id=template.id, store_ref=ref, copy=copy)
    if copy.state != "seeded":
        reason = "no copy on this store" if copy.state == "absent" else (
            f"incomplete copy ({copy.reason}) will be set aside")
        return Step(SEED, reason=reason, **base)
    if _ref_matches(ref, template.id, copy):
        return Step(NONE, reason="already seeded", **base)
    return Step(ADOPT, reason=_adopt_reason(ref), **base)


def _seeding_problem(snapshot: Snapshot, metadata: Metadata, spec: TemplateSpec,
                     allow_unverified: bool) -> str:
    """Why no copy of this spec can be written in this run, or "" when one can."""
    if spec.section in snapshot.missing_sources:
        return snapshot.missing_sources[spec.section]
    if spec.checksum is None and not allow_unverified:
        return (f"{metadata.path} [{spec.section}] checksum is empty; refusing to seed an "
                "unverified image (--allow-unverified seeds it and records its SHA-512)")
    return ""


def _failed(step: Step, reason: str) -> Step:
    return Step(FAIL, step.zone, step.store, step.hypervisor, step.arch, step.template_id,
                reason, step.store_ref, step.copy)


def store_ref_of(refs, template_id: int, store_id: int) -> Optional[StoreRef]:
    """The row for a (template, store) pair; with duplicates, the oldest."""
    matches = [r for r in refs if r.template_id == template_id and r.store_id == store_id]
    return min(matches, key=lambda r: r.id, default=None)


def _ref_matches(ref: Optional[StoreRef], template_id: int, copy: StoreCopy) -> bool:
    return (
        ref is not None
        and ref.state == "Ready"
        and ref.download_state == "DOWNLOADED"
        and ref.download_pct == 100
        and same_install_path(ref.install_path, stores.install_path(template_id, copy.filename))
        and ref.size == copy.virtual_size
        and ref.physical_size == copy.physical_size
    )


def same_install_path(recorded: Optional[str], expected: str) -> bool:
    # The SSVM records paths without the leading slash, registration with it: both work.
    return (recorded or "").lstrip("/") == expected.lstrip("/")


def _adopt_reason(ref: Optional[StoreRef]) -> str:
    if ref is None:
        return "copy present on the store; no template_store_ref row"
    return f"copy present; template_store_ref {ref.id} is {ref.state}/{ref.download_state}"
