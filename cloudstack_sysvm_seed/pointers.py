"""What CloudStack reads to pick its system VM templates, and when a seeding run may change
it: `router.template.<hv>` and `minreq.sysvmtemplate.version` (global settings, and zone
overrides of them) and the template id of each system VM. Pure: it plans, apply changes.

The rules, so that a run never changes what the operator did not ask for:
- Scope is a promise. System VMs are repointed only in the zones and hypervisors in scope.
  A global setting changes only when, after the run, every zone that uses its hypervisor
  (and arch) has a Ready copy on each of its usable NFS stores; otherwise it is held, and the
  plan says which zones still lack a copy and the command that finishes the job. A zone
  override goes only with the global value it would otherwise hide.
- Failures change nothing around them. A hypervisor (and arch) whose copy failed on any
  store in scope keeps its settings and its system VMs: each change waits for the copies it
  depends on (`needs`), and is held when one of them fails.
- minreq.sysvmtemplate.version is the last change of a complete upgrade: it moves only when
  every hypervisor in use has its new template Ready everywhere it is needed, and is never
  lowered without --allow-downgrade.
"""

from __future__ import annotations

import shlex
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

from . import configkeys, hypervisors, versions
from .hypervisors import Hypervisor
from .metadata import Metadata, TemplateSpec
from .model import (
    ADOPT,
    CONFIGURE,
    FAIL,
    WRITES_COPY,
    DropOverride,
    PointVms,
    SetSetting,
    Snapshot,
    Step,
    TemplateRef,
    TemplateWork,
)

PROG = "cloudstack-sysvm-seed"


@dataclass(frozen=True)
class Scope:
    zone_ids: frozenset[int]  # the zones in scope (resolved)
    hypervisors: frozenset[str]  # keys; empty: all


def versions_in_use(snapshot: Snapshot, hypervisor: Hypervisor,
                    arch: str) -> dict[Optional[versions.Version], set[str]]:
    """The template versions a hypervisor uses now, each with what uses it: the template
    router.template.<hv> names (globally or for a zone) and its system VMs' template."""
    uses: dict[Optional[versions.Version], set[str]] = defaultdict(set)
    name = hypervisor.config_key
    if name in snapshot.settings:
        uses[versions.parse(snapshot.settings[name])].add(name)
    for override in snapshot.overrides:
        if override.name == name:
            uses[versions.parse(override.value)].add(f"zone {override.zone_id}'s {name}")
    for vm in snapshot.system_vms:
        template = snapshot.template(vm.template_id)
        if template is not None and vm.arch == arch and _hypervisor(vm.hypervisor) == hypervisor:
            uses[template.version].add(f"system VM {vm.name}")
    return dict(uses)


def changes(snapshot: Snapshot, metadata: Metadata, works: tuple[TemplateWork, ...],
            around: list[Step], refused: dict[str, str], scope: Scope,
            allow_downgrade: bool) -> list[Step]:
    """The settings and system VM changes of a seeding run, and those it holds back.

    works: the copies planned; around: the other steps planned so far (adoptions among them).
    """
    planner = _Planner(snapshot, metadata, works, around, refused, scope, allow_downgrade)
    steps: list[Step] = []
    router_changes = []
    for hypervisor in hypervisors.HYPERVISORS:
        made = planner.router_setting(hypervisor)
        steps += made
        router_changes += [s.change for s in made if isinstance(s.change, SetSetting)]
    steps += planner.system_vms()
    steps += planner.minreq(tuple(router_changes))
    return steps


@dataclass(frozen=True)
class _Coverage:
    """Where a template will be Ready after the run, in one zone."""

    planned: bool  # some copy of it is written (or adopted) in this zone by this run
    missing: tuple[str, ...]  # usable stores that will still lack a Ready copy, and why
    stores: int  # usable NFS stores in the zone


class _Planner:
    def __init__(self, snapshot: Snapshot, metadata: Metadata, works: tuple[TemplateWork, ...],
                 around: list[Step], refused: dict[str, str], scope: Scope,
                 allow_downgrade: bool):
        self.s = snapshot
        self.metadata = metadata
        self.works = {work.spec.section: work for work in works}
        # Per spec, every step that leaves a copy of its template on a store: the work's,
        # and the adoptions (copies there already, rows to fix).
        self.copy_steps = {
            work.spec.section: [*work.steps, *(s for s in around if s.action == ADOPT
                                               and work.template is not None
                                               and s.template_id == work.template.id)]
            for work in works}
        self.refused = refused
        self.scope = scope
        self.allow_downgrade = allow_downgrade
        self.release = versions.parse(metadata.version)

    # --- what the run leaves where -------------------------------------------------------

    def ref(self, spec: TemplateSpec) -> Optional[TemplateRef]:
        work = self.works.get(spec.section)
        if work is not None:
            return work.ref
        template = self.s.registered(spec)
        return template.id if template else None

    def zones_using(self, hypervisor: Hypervisor, arch: str) -> list[int]:
        return [z.id for z in self.s.zones
                if any(_hypervisor(name) == hypervisor and a == arch
                       for name, a in self.s.zone_hypervisors.get(z.id, ()))]

    def coverage(self, spec: TemplateSpec, zone_id: int) -> _Coverage:
        steps = {s.store.id: s for s in self.copy_steps.get(spec.section, ())
                 if s.store and s.zone and s.zone.id == zone_id}
        template = self.s.registered(spec)
        planned, missing = False, []
        usable = self.s.usable_stores(zone_id)
        for store in usable:
            step = steps.get(store.id)
            if step is not None and step.action in (*WRITES_COPY, ADOPT):
                planned = True
            elif step is not None and step.action == FAIL:
                # Its cause is the copy's own record; the report tells each failure once.
                missing.append(f"store {store.id} ({store.url}, failed)")
            elif step is None and not (template and self._ready_in_db(template.id, store.id)):
                missing.append(f"store {store.id} ({store.url})")
        return _Coverage(planned, tuple(missing), len(usable))

    def _ready_in_db(self, template_id: int, store_id: int) -> bool:
        return any(r.template_id == template_id and r.store_id == store_id and r.ready
                   for r in self.s.store_refs)

    def failures_in_scope(self, spec: TemplateSpec) -> list[str]:
        work = self.works.get(spec.section)
        return [f"store {s.store.id}: {s.reason}" for s in (work.steps if work else ())
                if s.action == FAIL and s.store is not None]

    def rollback_note(self, hypervisor: Hypervisor, arch: str) -> str:
        newest = versions.newest(versions_in_use(self.s, hypervisor, arch))
        return (f"rolled back from {newest}" if versions.newer(newest, self.release)
                else "")

    # --- router.template.<hv> ------------------------------------------------------------------

    def router_setting(self, hypervisor: Hypervisor) -> list[Step]:
        if self.scope.hypervisors and hypervisor.key not in self.scope.hypervisors:
            return []
        spec = self._router_spec(hypervisor)
        if spec is None or spec.section in self.refused or spec.section not in self.works:
            return []
        name, new = hypervisor.config_key, spec.name
        old = self.s.settings.get(name)
        zones = self.zones_using(hypervisor, spec.arch)
        lacking = {z: self.coverage(spec, z).missing for z in zones}
        lacking = {z: m for z, m in lacking.items() if m}
        ref = self.ref(spec)
        needs = tuple((ref, z) for z in zones if self.coverage(spec, z).planned)
        steps, change = [], None
        if old != new:
            if lacking:
                steps.append(self._held(spec, f"{name} stays {old!r}", lacking))
            else:
                change = SetSetting(name, old, new, needs,
                                    note=self.rollback_note(hypervisor, spec.arch))
                steps.append(self._step(spec, change))
        for override in self.s.overrides:
            if (override.name != name or override.value == new or override.zone_id not in zones
                    or override.zone_id not in self.scope.zone_ids):
                continue
            if lacking:  # the override goes only with the global value it would hide
                steps.append(self._held(spec, f"zone {override.zone_id}'s {name} "
                                              f"{override.value!r} stays", lacking))
                continue
            zone_needs = tuple(n for n in needs if n[1] == override.zone_id)
            steps.append(self._step(spec, DropOverride(
                override.id, override.zone_id, name, override.value, zone_needs,
                (change,) if change else ())))
        return steps

    def _router_spec(self, hypervisor: Hypervisor) -> Optional[TemplateSpec]:
        """One router.template.<hv> serves every arch: upstream lets the last arch
        registered win; we keep x86_64, which every zone can run, where it is in use."""
        arches = sorted({arch for z in self.s.zones
                         for name, arch in self.s.zone_hypervisors.get(z.id, ())
                         if _hypervisor(name) == hypervisor},
                        key=lambda a: (a != hypervisors.DEFAULT_ARCH, a))
        for arch in arches:
            spec = self.metadata.spec_for(hypervisor, arch)
            if spec is not None:
                return spec
        return None

    # --- system VMs ------------------------------------------------------------------------------

    def system_vms(self) -> list[Step]:
        steps = []
        for zone in self.s.zones:
            if zone.id not in self.scope.zone_ids:
                continue
            for hypervisor, arch in self._pairs(zone.id):
                if self.scope.hypervisors and hypervisor.key not in self.scope.hypervisors:
                    continue
                steps += self._zone_vms(zone.id, hypervisor, arch)
        return steps

    def _zone_vms(self, zone_id: int, hypervisor: Hypervisor, arch: str) -> list[Step]:
        spec = self.metadata.spec_for(hypervisor, arch)
        if spec is None or spec.section in self.refused:
            return []
        ref = self.ref(spec)
        existing = ref if isinstance(ref, int) else None
        vms = tuple(vm for vm in self.s.system_vms
                    if vm.zone_id == zone_id and vm.arch == arch
                    and _hypervisor(vm.hypervisor) == hypervisor and vm.template_id != existing)
        if not vms or ref is None:
            return []
        coverage = self.coverage(spec, zone_id)
        failed = self.failures_in_scope(spec)
        what = f"system VMs in zone {zone_id} stay on their template"
        if failed:
            return [self._held(spec, what, {zone_id: tuple(failed)}, zone_id)]
        if coverage.missing or not coverage.stores:
            missing = coverage.missing or ("no usable NFS image store",)
            return [self._held(spec, what, {zone_id: missing}, zone_id)]
        needs = tuple((ref, z) for z in sorted(self.scope.zone_ids)
                      if self.coverage(spec, z).planned)
        change = PointVms(ref, zone_id, tuple(vm.id for vm in vms), needs, vms=vms,
                          name=spec.name, note=self.rollback_note(hypervisor, arch))
        return [self._step(spec, change, zone_id)]

    def _pairs(self, zone_id: int) -> list[tuple[Hypervisor, str]]:
        found = set()
        for name, arch in self.s.zone_hypervisors.get(zone_id, ()):
            hypervisor = _hypervisor(name)
            if hypervisor is not None and name not in hypervisors.NO_TEMPLATE:
                found.add((hypervisor, arch))
        return sorted(found, key=lambda pair: (pair[0].key, pair[1]))

    # --- minreq.sysvmtemplate.version ------------------------------------------------------------

    def minreq(self, router_changes: tuple) -> list[Step]:
        name, new = configkeys.MINREQ, self.metadata.release
        old = self.s.settings.get(name)
        if old != new and versions.newer(versions.parse(old), self.release) \
                and not self.allow_downgrade:
            return [self._minreq_step(f"{name} stays {old!r}: {self.metadata.path} holds "
                                      f"{new}, which is older; --allow-downgrade lowers it")]
        blockers, needs, blocked_zones = [], [], set()
        for zone in self.s.zones:
            for hypervisor, arch in self._pairs(zone.id):
                spec = self.metadata.spec_for(hypervisor, arch)
                if spec is None:
                    continue  # no template of this release for it
                label = f"{hypervisor.key} {arch} in zone {zone.name}"
                coverage = self.coverage(spec, zone.id)
                if spec.section in self.refused:
                    blockers.append(f"{label} keeps a newer template")
                elif coverage.missing:
                    blockers.append(f"{label} lacks {spec.name} on "
                                    + ", ".join(coverage.missing))
                else:
                    needs += [(self.ref(spec), zone.id)] if coverage.planned else []
                    continue
                blocked_zones.add(zone.id)
        steps, change = [], None
        if old != new:
            if blockers:
                steps.append(self._minreq_step(
                    f"{name} stays {old!r}: it moves to {new!r} last, once every "
                          f"hypervisor in use has its new template Ready on every store; "
                          f"still missing: {'; '.join(blockers)}. Finish with: "
                          f"{self._finish_command(blockers)}"))
            else:
                note = "rolled back" if versions.newer(versions.parse(old), self.release) else ""
                change = SetSetting(name, old, new, tuple(dict.fromkeys(needs)),
                                    router_changes, note=note)
                steps.append(self._minreq_step(change.describe(), change))
        for override in self.s.overrides:
            if (override.name != name or override.value == new
                    or override.zone_id not in self.scope.zone_ids):
                continue
            if override.zone_id in blocked_zones or (old != new and change is None):
                continue  # held with the global value, said above
            zone_needs = tuple(n for n in dict.fromkeys(needs) if n[1] == override.zone_id)
            drop = DropOverride(override.id, override.zone_id, name, override.value,
                                zone_needs, (change,) if change else ())
            steps.append(self._minreq_step(drop.describe(), drop))
        return steps

    def _finish_command(self, blockers: list[str]) -> str:
        if any("newer template" in b for b in blockers):
            return "the newer templates directory, or --allow-downgrade"
        return f"{PROG} seed"

    # --- steps -----------------------------------------------------------------------------------

    def _step(self, spec: TemplateSpec, change, zone_id: Optional[int] = None) -> Step:
        ref = self.ref(spec)
        return Step(CONFIGURE, self.s.zone(zone_id), None, spec.hypervisor.key, spec.arch,
                    ref if isinstance(ref, int) else None, change.describe(), change=change)

    def _minreq_step(self, reason: str, change=None) -> Step:
        """minreq's line: its change, or (no change) why it is held back."""
        return Step(CONFIGURE, None, None, "", "", None, reason, change=change,
                    held=change is None)

    def _held(self, spec: TemplateSpec, what: str, lacking: dict[int, tuple[str, ...]],
              zone_id: Optional[int] = None) -> Step:
        names = {z.id: z.name for z in self.s.zones}
        where = "; ".join(f"zone {names.get(z, z)}: {', '.join(m)}"
                          for z, m in sorted(lacking.items()))
        out_of_scope = [names[z] for z in sorted(lacking) if z not in self.scope.zone_ids]
        finish = (f"{PROG} seed" + "".join(f" --zone {shlex.quote(n)}" for n in out_of_scope)
                  if out_of_scope else "fix the failures above and rerun")
        reason = (f"{what}: {spec.name} is not Ready everywhere it is needed yet ({where}). "
                  f"Finish with: {finish}")
        ref = self.ref(spec)
        return Step(CONFIGURE, self.s.zone(zone_id), None, spec.hypervisor.key, spec.arch,
                    ref if isinstance(ref, int) else None, reason, held=True)


def _hypervisor(name: Optional[str]) -> Optional[Hypervisor]:
    return hypervisors.by_db_name(name or "")
