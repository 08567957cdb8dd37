"""From a snapshot to a plan: every change a run makes, decided before any is made. Pure: no
database, no disk, no clock.

- seed_plan: per (zone, store, hypervisor/arch) target one of register (a new template,
  first copy here), seed (a copy of a registered template), adopt (the copy is there; make
  the rows say so), none (all in order), skip or fail (why); then what CloudStack reads next
  (settings and system VMs, see `pointers`), each change with what it waits for. A
  templates directory older than what a hypervisor uses now plans nothing for it.
- install_plan: one copy of a registered template onto one store.
- repair_plan: doctor's decisions, as a plan of the same records.
"""

from __future__ import annotations

from typing import Mapping, Optional

from . import hypervisors, layout, pointers, versions
from .errors import SettingsError, StoreError
from .metadata import Metadata, TemplateSpec
from .model import (
    ABSENT,
    ADOPT,
    CONFIGURE,
    FAIL,
    NONE,
    REGISTER,
    SEED,
    SKIP,
    WRITES_COPY,
    AddZoneRef,
    CopyTemplate,
    FixRef,
    Plan,
    Scope,
    SetTemplate,
    Snapshot,
    Step,
    Store,
    StoreCopy,
    StoreRef,
    Template,
    TemplateWork,
    Zone,
)

Target = tuple[Zone, Store, TemplateSpec]


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
            targets.extend((zone, store, spec) for store in writable)
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
                            reason="no writable NFS image store in this zone: it gets no copy "
                                   "of the system VM templates, and its secondary storage VM "
                                   "cannot start until one is added (then `cloudstack-sysvm-seed "
                                   "on-store-added --store-id ID` seeds it)"))
    return writable


def _check_url(zone: Zone, store: Store) -> None:
    """:raises StoreError: before anything changes, for an NFS store whose URL is unusable."""
    try:
        layout.parse_url(store.url)
    except ValueError as exc:
        raise StoreError(
            f"Image store {store.id} ({store.name}) in zone {zone.name} is an NFS store, but "
            f"{exc}. Nothing was changed.",
            "Correct image_store.url (nfs://host/path), or limit the run with --zone.",
        ) from None


def store_ref_of(refs, template_id: int, store_id: int) -> Optional[StoreRef]:
    """The row for a (template, store) pair; with duplicates, the oldest."""
    matches = [r for r in refs if r.template_id == template_id and r.store_id == store_id]
    return min(matches, key=lambda r: r.id, default=None)


# --- seed ------------------------------------------------------------------------------------


def seed_plan(snapshot: Snapshot, metadata: Metadata, scope: Scope,
              allow_unverified: bool = False, allow_downgrade: bool = False) -> Plan:
    """Every change a seeding run makes, in the order apply takes them.

    allow_unverified: seed images whose metadata.ini checksum is empty (4.20's aarch64).
    allow_downgrade: roll a hypervisor back to an older templates directory on purpose.
    """
    targets, steps = select(snapshot, metadata, scope)
    by_spec: dict[TemplateSpec, list[Target]] = {}
    for target in targets:
        by_spec.setdefault(target[2], []).append(target)
    older = {} if allow_downgrade else downgrades(snapshot, metadata, by_spec)
    works = []
    for spec, group in by_spec.items():
        if spec.section in older:
            steps.append(Step(FAIL, None, None, spec.hypervisor.key, spec.arch,
                              reason=older[spec.section]))
            continue
        work, around = _work(snapshot, metadata, spec, group, allow_unverified)
        works.append(work)
        steps.extend(around)
    zones, keys = resolve_scope(snapshot, scope)
    steps += pointers.changes(snapshot, metadata, tuple(works), steps, older, pointers.Scope(
        frozenset(z.id for z in zones), frozenset(keys)), allow_downgrade)
    return Plan(tuple(works), tuple(steps))


def downgrades(snapshot: Snapshot, metadata: Metadata, specs) -> dict[str, str]:
    """The specs whose templates directory is older than what their hypervisor uses now
    (router.template.<hv>, a zone's override of it, or its system VMs' template), by
    section, each with the sentence that says so and the way out."""
    release = versions.parse(metadata.version)
    refused = {}
    for spec in specs:
        uses = pointers.versions_in_use(snapshot, spec.hypervisor, spec.arch)
        newest = versions.newest(uses)
        if versions.newer(newest, release):
            where = ", ".join(sorted(uses[newest]))
            refused[spec.section] = (
                f"{metadata.path} holds {spec.hypervisor.key} {spec.arch} {release} "
                f"({spec.name}), older than {newest}, which {where} uses now; nothing was "
                f"changed for {spec.hypervisor.key} {spec.arch}. Install the newer templates "
                "(upgrade cloudstack-management), or rerun with --allow-downgrade to roll "
                "back on purpose")
    return refused


def _work(snapshot: Snapshot, metadata: Metadata, spec: TemplateSpec, targets: list[Target],
          allow_unverified: bool) -> tuple[TemplateWork, list[Step]]:
    """The copies of one spec's template, and the row changes around them."""
    template = snapshot.registered(spec)
    steps = [_target_step(snapshot, spec, template, zone, store) for zone, store, _ in targets]
    problem = _seeding_problem(snapshot, metadata, spec, allow_unverified)
    if problem:
        steps = [_failed(s, problem) if s.action in WRITES_COPY else s for s in steps]
    guest_os_id = snapshot.guest_os_ids.get(spec.guest_os or "", spec.hypervisor.guest_os_id)
    copies = tuple(s for s in steps if s.action != ADOPT)
    around = [s for s in steps if s.action == ADOPT]
    all_zones = tuple(z.id for z in snapshot.zones)
    if template is None:
        return TemplateWork(spec, None, guest_os_id, all_zones, copies), around
    missing = tuple(z for z in all_zones if (template.id, z) not in snapshot.zone_refs)
    activate = not template.active or not template.size
    ready_now = any(s.action == NONE for s in steps)
    if any(s.action in WRITES_COPY for s in steps) and not ready_now:
        # Completed by the first copy written, in its transaction, as a registration is.
        return TemplateWork(spec, template, guest_os_id, missing, copies, activate), around
    # A copy is Ready already (or is adopted): the rows are completed around the copies.
    size = template.size or next((s.copy.virtual_size for s in steps
                                  if s.action in (NONE, ADOPT)), 0)
    around += _complete(spec, template, missing, activate, size, ready_now)
    return TemplateWork(spec, template, guest_os_id, (), copies), around


def _complete(spec: TemplateSpec, template: Template, missing: tuple[int, ...],
              activate: bool, size: int, ready_now: bool) -> list[Step]:
    """Zone refs and state of a registered template that has, or will have, a Ready copy."""
    needs = () if ready_now else ((template.id, None),)
    changes = [AddZoneRef(template.id, zone_id, needs) for zone_id in missing]
    if activate and size:
        changes.append(SetTemplate(template.id, state=None if template.active else "Active",
                                   size=None if template.size else size, needs=needs))
    return [Step(CONFIGURE, None, None, spec.hypervisor.key, spec.arch, template.id,
                 change.describe(), change=change) for change in changes]


def _target_step(snapshot: Snapshot, spec: TemplateSpec, template: Optional[Template],
                 zone: Zone, store: Store) -> Step:
    base = dict(zone=zone, store=store, hypervisor=spec.hypervisor.key, arch=spec.arch)
    if snapshot.mount_error(store.id):
        return Step(FAIL, reason=snapshot.mount_error(store.id), **base)
    if template is None:
        return Step(REGISTER, reason="not registered yet", **base)
    ref = store_ref_of(snapshot.store_refs, template.id, store.id)
    copy = snapshot.copy(store.id, template.id) or ABSENT
    base.update(template_id=template.id, store_ref=ref, copy=copy)
    if not copy.seeded:
        reason = "no copy on this store" if copy.state == "absent" else (
            f"incomplete copy ({copy.reason}) will be set aside")
        return Step(SEED, reason=reason, **base)
    if ref_matches(ref, template.id, copy):
        return Step(NONE, reason="already seeded", **base)
    path = layout.install_path(template.id, copy.filename)
    if ref is not None and layout.same_install_path(ref.install_path, path):
        path = ref.install_path  # keep the recorded spelling
    fix = FixRef(template.id, store.id, ref.id if ref else None, path, copy.virtual_size,
                 copy.physical_size, url=spec.url)
    return Step(ADOPT, reason=_adopt_reason(ref), change=fix, **base)


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


def ref_matches(ref: Optional[StoreRef], template_id: int, copy: StoreCopy) -> bool:
    """The ref is Ready and says what the copy on the store is."""
    return (
        ref is not None
        and ref.state == "Ready"
        and ref.download_state == "DOWNLOADED"
        and ref.download_pct == 100
        and layout.same_install_path(ref.install_path,
                                     layout.install_path(template_id, copy.filename))
        and ref.size == copy.virtual_size
        and ref.physical_size == copy.physical_size
    )


def _adopt_reason(ref: Optional[StoreRef]) -> str:
    if ref is None:
        return "copy present on the store; no template_store_ref row"
    return f"copy present; template_store_ref {ref.id} is {ref.state}/{ref.download_state}"


# --- install and repair ----------------------------------------------------------------------


def install_plan(snapshot: Snapshot, spec: TemplateSpec, template: Template, store: Store,
                 copy: StoreCopy) -> Plan:
    """One copy of a registered template onto one store (`install`); nothing else changes
    but the template's zone refs, added with the copy."""
    zone = snapshot.zone(store.zone_id)
    ref = store_ref_of(snapshot.store_refs, template.id, store.id)
    step = Step(SEED, zone, store, spec.hypervisor.key, spec.arch, template.id, "install",
                ref, copy)
    missing = tuple(z.id for z in snapshot.zones if (template.id, z.id) not in snapshot.zone_refs)
    return Plan((TemplateWork(spec, template, spec.hypervisor.guest_os_id, missing, (step,)),))


def repair_plan(snapshot: Snapshot, decided, specs: Mapping[int, TemplateSpec]) -> Plan:
    """Doctor's decisions (a doctor.RepairPlan) as a plan: a work per template that copies
    go to, from specs[template id] (the bundled file's, or a donor store's copy), and a
    step per row change, in the order decided."""
    copies: dict[int, list[CopyTemplate]] = {}
    steps = []
    for action in decided.actions:
        if isinstance(action, CopyTemplate):
            copies.setdefault(action.template_id, []).append(action)
        else:
            steps.append(_repair_step(snapshot, action))
    works = tuple(_copy_work(snapshot, specs[tid], snapshot.template(tid), actions)
                  for tid, actions in copies.items())
    return Plan(works, tuple(steps), decided.ready)


def donor_spec(template: Template, donor: int, copy: StoreCopy) -> TemplateSpec:
    """A spec to copy a template from the complete copy on another store: an image as it is
    on a store, uncompressed, which the reader takes as it is; no checksum to verify."""
    hypervisor = hypervisors.by_db_name(template.hypervisor)
    return TemplateSpec(f"store-{donor}-template-{template.id}", hypervisor, template.arch,
                        template.name, copy.filename, None, template.url, None)


def _copy_work(snapshot: Snapshot, spec: TemplateSpec, template: Template,
               actions: list[CopyTemplate]) -> TemplateWork:
    steps = []
    for action in actions:
        ref = next((r for r in snapshot.store_refs if r.id == action.ref_id), None)
        steps.append(Step(SEED, snapshot.zone(action.zone_id),
                          next(s for s in snapshot.stores if s.id == action.store_id),
                          spec.hypervisor.key, template.arch, template.id,
                          "repair: " + action.describe(), ref, ABSENT, change=action))
    return TemplateWork(spec, template, spec.hypervisor.guest_os_id, (), tuple(steps),
                        not template.size)


def _repair_step(snapshot: Snapshot, action) -> Step:
    template = snapshot.template(getattr(action, "template_id", None))
    hypervisor = hypervisors.by_db_name(template.hypervisor) if template else None
    store_id = getattr(action, "store_id", None)
    return Step(CONFIGURE, snapshot.zone(getattr(action, "zone_id", None)),
                next((s for s in snapshot.stores if s.id == store_id), None),
                hypervisor.key if hypervisor else "", template.arch if template else "",
                template.id if template else None, action.describe(), change=action)
