"""Doctor: what keeps system VMs from starting, found in a snapshot of the database and the
stores, and the repair decision for each finding. Pure: no database, no disk, no clock.

Every finding has a stable code, the rows, zones and stores involved, and the fix an
operator would apply. `decide` pairs each finding with the actions `repair` takes for it, or
with the reason repair leaves it alone; `diagnose` is the findings alone.

"Current" template of a hypervisor and arch: the newest Active SYSTEM template, as CloudStack
picks it; where duplicates are found, the survivor repair keeps (and the duplicates it
retires no longer count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from . import hypervisors, layout, versions
from .layout import same_install_path
from .model import (
    AddZoneRef,
    Change,
    CopyTemplate,
    DropOverride,
    DropRef,
    FixRef,
    PointVms,
    RemoveStage,
    SetSetting,
    SetTemplate,
    Snapshot,
    Store,
    StoreCopy,
    StoreRef,
    StoreSurvey,
    SystemVm,
    Template,
    Zone,
)

DUPLICATE_ZONE_TEMPLATES = "duplicate-zone-templates"
MISSING_ZONE_REF = "missing-zone-ref"
STORE_MISSING_TEMPLATE = "store-missing-template"
STORE_REF_NOT_READY = "store-ref-not-ready"
INSTALL_PATH_MISMATCH = "install-path-mismatch"
SIZE_ZERO = "size-zero"
DUPLICATE_STORE_REF = "duplicate-store-ref"
ROUTER_TEMPLATE_MISMATCH = "router-template-mismatch"
ORPHAN_DIRECTORY = "orphan-directory"
STALE_STAGING = "stale-staging"
SYSTEM_VMS_ON_OLD_TEMPLATE = "system-vms-on-old-template"
OLDER_TEMPLATE_IN_USE = "older-template-in-use"
RETIRED_DIRECTORY_LEFT = "retired-directory-left"
STORE_UNREACHABLE = "store-unreachable"
STALE_MOUNT = "stale-mount"
PROG = "cloudstack-sysvm-seed"
SEED, REPAIR = f"{PROG} seed", f"{PROG} repair"
_RECREATE = {
    "SecondaryStorageVm": "destroy it; CloudStack recreates it from the new template",
    "ConsoleProxy": "destroy it; CloudStack recreates it from the new template",
    "DomainRouter": "restart its network or VPC with cleanup=true",
    "InternalLoadBalancerVm": "restart its network or VPC with cleanup=true",
}


# --- findings and what repair does about them ------------------------------------------------


RowKey = tuple[str, Union[int, str]]  # (table, id or name)


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    fix: str
    rows: tuple[RowKey, ...] = ()
    zones: tuple[int, ...] = ()
    stores: tuple[int, ...] = ()
    hypervisor: str = ""
    arch: str = ""
    command: str = ""  # the command that fixes it (the fix names it too); "" for by hand

    def record(self) -> dict:
        return {
            "code": self.code, "hypervisor": self.hypervisor or None, "arch": self.arch or None,
            "message": self.message,
            "rows": [{"table": table, "id": key} for table, key in self.rows],
            "zones": list(self.zones), "stores": list(self.stores), "fix": self.fix,
        }


Action = Change


@dataclass(frozen=True)
class Decision:
    finding: Finding
    actions: tuple[Action, ...] = ()
    left: str = ""  # why repair leaves (part of) it; empty when the actions fix it


@dataclass(frozen=True)
class RepairPlan:
    decisions: tuple[Decision, ...]
    ready: frozenset[tuple[int, int]] = frozenset()  # needed (template, zone) Ready already

    @property
    def findings(self) -> list[Finding]:
        return [d.finding for d in self.decisions]

    @property
    def actions(self) -> list[Action]:
        """Every action once, in the order first decided."""
        return list(dict.fromkeys(a for d in self.decisions for a in d.actions))

    @property
    def left(self) -> list[Decision]:
        return [d for d in self.decisions if d.left]


def diagnose(snapshot: Snapshot, seedable: frozenset[int] = frozenset()) -> list[Finding]:
    return decide(snapshot, seedable=seedable).findings


def decide(snapshot: Snapshot, bundled: frozenset[int] = frozenset(),
           seedable: frozenset[int] = frozenset()) -> RepairPlan:
    """Findings, each with repair's actions or the reason it is left.

    bundled: ids of templates whose image metadata.ini bundles (a copy source besides stores).
    seedable: ids of the templates metadata.ini describes (same name, hypervisor, arch):
    for those, `seed` is the command that fixes copies, rows and settings.
    """
    model = _Model(snapshot, bundled, seedable)
    decisions: list[Decision] = []
    # Copies are planned first: whether duplicates can be retired, settings changed and
    # system VMs moved depends on where the current templates will be Ready.
    for step in (_refs, _coverage, _template_sizes, _router_settings, _system_vms,
                 _rollbacks, _leftovers):
        decisions.extend(step(model))
    decisions = [*_unreachable(model), *_duplicates(model), *decisions, *_stale_mounts(model)]
    needed = {need for d in decisions for a in d.actions for need in getattr(a, "needs", ())}
    ready = frozenset(need for need in needed
                      if model.ready_now(model.templates[need[0]], need[1]))
    return RepairPlan(tuple(decisions), ready)


# --- the model both share ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    hypervisor: str  # key
    arch: str
    label: str  # the name or version the members share
    members: tuple[Template, ...]
    survivor: Template

    @property
    def duplicates(self) -> tuple[Template, ...]:
        return tuple(t for t in self.members if t.id != self.survivor.id)


class _Model:
    def __init__(self, snapshot: Snapshot, bundled: frozenset[int],
                 seedable: frozenset[int] = frozenset()):
        s = self.s = snapshot
        self.bundled = bundled
        self.seedable = seedable
        self.templates = {t.id: t for t in s.templates}
        self.stores = {st.id: st for st in s.stores}
        self.refs: dict[tuple[int, int], list[StoreRef]] = {}
        for ref in sorted(s.store_refs, key=lambda r: r.id):
            if ref.template_id in self.templates:
                self.refs.setdefault((ref.template_id, ref.store_id), []).append(ref)
        self.primary = {pair: self._primary(pair, refs) for pair, refs in self.refs.items()}
        self.groups = self._groups()
        self.retired = {t.id for g in self.groups for t in g.duplicates}
        self.current = self._current({g.survivor.id for g in self.groups})
        # Copies the actions write, filled while deciding; (template, zone) that will be Ready.
        self.copies: dict[tuple[int, int], CopyTemplate] = {}
        self.fixed: set[tuple[int, int]] = set()  # (template, store) recorded by a FixRef

    def fixer(self, template: Optional[Template]) -> str:
        """The command that fixes what concerns a template: seed, where metadata.ini
        describes it (seeding writes its copies, rows and settings), else repair."""
        return SEED if template is not None and template.id in self.seedable else REPAIR

    # zones, stores, hypervisors

    def pairs(self, zone_id: int) -> list[tuple[str, str]]:
        """(hypervisor key, arch) of a zone's clusters that have a system VM template."""
        found = set()
        for name, arch in self.s.zone_hypervisors.get(zone_id, ()):
            hypervisor = hypervisors.by_db_name(name)
            if hypervisor is not None and name not in hypervisors.NO_TEMPLATE:
                found.add((hypervisor.key, arch))
        return sorted(found)

    def zones_using(self, pair: tuple[str, str]) -> list[int]:
        return [z.id for z in self.s.zones if pair in self.pairs(z.id)]

    def targets(self, zone_id: int) -> list[Store]:
        """The zone's writable NFS stores: where system templates must be."""
        return self.s.usable_stores(zone_id)

    def survey(self, store_id: int) -> Optional[StoreSurvey]:
        survey = self.s.surveys.get(store_id)
        return survey if survey is not None and not survey.error else None

    def copy(self, template: Template, store_id: int) -> Optional[StoreCopy]:
        """What the store holds for the template; None when the store was not looked at."""
        return self.s.copy(store_id, template.id)

    def zone_of(self, store_id: int) -> Optional[int]:
        store = self.stores.get(store_id)
        return store.zone_id if store else None

    # templates

    @staticmethod
    def pair_of(template: Template) -> Optional[tuple[str, str]]:
        hypervisor = hypervisors.by_db_name(template.hypervisor or "")
        return (hypervisor.key, template.arch) if hypervisor else None

    def template_zones(self, template: Template) -> set[int]:
        zones = {z for t, z in self.s.zone_refs if t == template.id}
        zones |= {self.zone_of(s) for (t, s) in self.refs if t == template.id}
        return {z for z in zones if z is not None}

    def ready_stores(self, template: Template) -> list[int]:
        return sorted(s for (t, s), ref in self.primary.items()
                      if t == template.id and ref.ready)

    def _groups(self) -> list[_Group]:
        by_key: dict[tuple[str, str, str], list[Template]] = {}
        for template in self.s.templates:
            pair = self.pair_of(template)
            if pair is None or not template.active:
                continue
            version = template.version
            label = str(version) if version else template.name
            by_key.setdefault((*pair, label), []).append(template)
        groups = []
        for (key, arch, label), members in sorted(by_key.items()):
            per_zone = [t for t in members
                        if not t.cross_zones and len(self.template_zones(t)) <= 1]
            if len(members) < 2 or not per_zone:
                continue
            survivor = max(members, key=lambda t: (len(self.ready_stores(t)), t.id))
            groups.append(_Group(key, arch, label, tuple(members), survivor))
        return groups

    def _current(self, revived: set[int]) -> dict[tuple[str, str], Template]:
        current: dict[tuple[str, str], Template] = {}
        for template in self.s.templates:
            pair = self.pair_of(template)
            if pair is None or template.id in self.retired:
                continue
            if not (template.active or template.id in revived):
                continue
            if pair not in current or template.id > current[pair].id:
                current[pair] = template
        return current

    def router_template(self, key: str) -> Optional[Template]:
        """The template router.template.<key> should name: x86_64's where there is one."""
        for arch in ("x86_64", *sorted(hypervisors.ARCHES)):
            if (key, arch) in self.current:
                return self.current[(key, arch)]
        return None

    # refs and copies

    def _primary(self, pair: tuple[int, int], refs: list[StoreRef]) -> StoreRef:
        """Of several refs for one (template, store), the one to keep."""
        template = self.templates[pair[0]]
        copy = self.copy(template, pair[1])
        for ref in refs:
            if ref.ready and copy is not None and _matches(ref, template, copy):
                return ref
        return next((r for r in refs if r.ready), refs[0])

    def ready_now(self, template: Template, zone_id: int) -> bool:
        """A Ready copy in the zone now, or once the planned FixRefs are applied."""
        for store in (st for st in self.s.stores if st.zone_id == zone_id):
            if (template.id, store.id) in self.fixed:
                return True
            ref = self.primary.get((template.id, store.id))
            if ref is None or not ref.ready:
                continue
            copy = self.copy(template, store.id)
            if copy is None or _matches(ref, template, copy):
                return True
        return False

    def feasible(self, template: Template, zone_id: int) -> bool:
        """Ready in the zone now, or a planned copy may make it so."""
        return self.ready_now(template, zone_id) or any(
            t == template.id and self.zone_of(s) == zone_id for t, s in self.copies)

    def source_for(self, template: Template) -> tuple[bool, Optional[int]]:
        """(found, store id or None for the bundled file)."""
        if template.id in self.bundled:
            return True, None
        donors = []
        for store in self.s.stores:
            copy = self.copy(template, store.id)
            if copy is not None and copy.state == "seeded":
                ref = self.primary.get((template.id, store.id))
                donors.append((not (ref and ref.ready), store.id))
        if donors:
            return True, min(donors)[1]
        return False, None

    def plan_copy(self, template: Template, zone_id: int, store_id: int,
                  ref_id: Optional[int]) -> Union[CopyTemplate, str]:
        """The copy action, or why there is none."""
        found, source = self.source_for(template)
        if not found:
            return (f"no source for template {template.label}: no store holds a complete "
                    "copy, and metadata.ini bundles another template; run "
                    "`cloudstack-sysvm-seed seed` to install the packaged one")
        action = CopyTemplate(template.id, zone_id, store_id, ref_id, source)
        self.copies[(template.id, store_id)] = action
        return action

    def is_target_of_current(self, template: Template, store_id: int) -> bool:
        zone = self.zone_of(store_id)
        pair = self.pair_of(template)
        return (zone is not None and pair is not None
                and self.current.get(pair) == template and pair in self.pairs(zone)
                and any(st.id == store_id for st in self.targets(zone)))

    def recent(self, ref: StoreRef) -> bool:
        """A download reported in progress not long ago: the SSVM may still be at it."""
        if ref.download_state != "DOWNLOAD_IN_PROGRESS" or ref.last_updated is None:
            return False
        if self.s.now is None:
            return True
        return (self.s.now - ref.last_updated).total_seconds() < self.s.stale_after


def _matches(ref: StoreRef, template: Template, copy: StoreCopy) -> bool:
    return (copy.state == "seeded"
            and same_install_path(ref.install_path,
                                  layout.install_path(template.id, copy.filename))
            and ref.size == copy.virtual_size and ref.physical_size == copy.physical_size)


def _fix_ref(model: _Model, template: Template, store_id: int, ref: Optional[StoreRef],
             copy: StoreCopy) -> FixRef:
    path = layout.install_path(template.id, copy.filename)
    if ref is not None and same_install_path(ref.install_path, path):
        path = ref.install_path  # keep the recorded spelling
    model.fixed.add((template.id, store_id))
    return FixRef(template.id, store_id, ref.id if ref else None, path, copy.virtual_size,
                  copy.physical_size, url=template.url)


def _said(value: Optional[str]) -> str:
    """A column's value for a sentence: a NULL is "not set", never "None"."""
    return value if value else "not set"


def _amount(what: str, value: Optional[int]) -> str:
    return f"no {what} (NULL)" if value is None else f"{what} {value}"


def _does(command: str) -> str:
    return f"`{command}` does"


def _hv(template: Template) -> dict:
    pair = _Model.pair_of(template)
    return {"hypervisor": pair[0], "arch": pair[1]} if pair else {}


# --- the checks, each with its repair ---------------------------------------------------------


def _unreachable(model: _Model) -> list[Decision]:
    decisions = []
    for store_id, survey in sorted(model.s.surveys.items()):
        if survey.error:
            store = model.stores.get(store_id)
            finding = Finding(
                STORE_UNREACHABLE,
                f"Store {store_id} ({store.url if store else '?'}) could not be checked: "
                f"{survey.error}",
                "Make the store mountable from this host (the error says what failed), then "
                "run doctor again.",
                rows=(("image_store", store_id),), stores=(store_id,),
                zones=(store.zone_id,) if store and store.zone_id else ())
            decisions.append(Decision(finding, left="the store cannot be mounted"))
    return decisions


def _duplicates(model: _Model) -> list[Decision]:
    decisions = []
    for group in model.groups:
        survivor = group.survivor
        zones = sorted({z for t in group.members for z in model.template_zones(t)})
        stores_ = sorted({s for (t, s) in model.refs if t in {m.id for m in group.members}})
        placed = ", ".join(
            f"{t.id} (zone {', '.join(map(str, sorted(model.template_zones(t)))) or 'none'}"
            f"{', cross-zone' if t.cross_zones else ''})" for t in group.members)
        newest = max(group.members, key=lambda t: t.id)
        duplicates = ", ".join(str(t.id) for t in group.duplicates)
        names = sorted({t.name for t in group.members})
        alike = f"named {names[0]!r}" if len(names) == 1 else f"of version {group.label}"
        finding = Finding(
            DUPLICATE_ZONE_TEMPLATES,
            f"{len(group.members)} Active SYSTEM templates for {group.hypervisor} {group.arch} "
            f"{alike} are registered zone by zone: {placed}. CloudStack uses "
            f"the highest id ({newest.id}) in every zone, so zones without a copy of it "
            "cannot recreate their system VMs.",
            f"Keep template {survivor.id}: set cross_zones=1 and state Active, copy it to every "
            f"NFS store of the zones using {group.hypervisor}, add its template_zone_ref rows, "
            f"point router.template.{group.hypervisor} and the system VMs at it, then "
            f"deactivate {duplicates} (state Inactive, removed set; their files are kept). "
            "`repair` does all of this in one run.",
            rows=tuple(("vm_template", t.id) for t in group.members), zones=tuple(zones),
            stores=tuple(stores_), hypervisor=group.hypervisor, arch=group.arch,
            command=REPAIR)
        actions: list[Action] = []
        if not survivor.cross_zones or not survivor.active:
            actions.append(SetTemplate(survivor.id, state=None if survivor.active else "Active",
                                       cross_zones=None if survivor.cross_zones else 1))
        pair = (group.hypervisor, group.arch)
        in_use = set(model.zones_using(pair))
        is_current = model.current.get(pair) == survivor
        left = []
        for duplicate in group.duplicates:
            needed = sorted(model.template_zones(duplicate) & in_use) if is_current else []
            missing = [z for z in needed if not model.feasible(survivor, z)]
            if missing:
                left.append(f"template {duplicate.id} stays until {survivor.id} can be Ready "
                            f"in zone {', '.join(map(str, missing))}")
                continue
            actions.append(SetTemplate(duplicate.id, retire=True,
                                       needs=tuple((survivor.id, z) for z in needed)))
        decisions.append(Decision(finding, tuple(actions), "; ".join(left)))
    return decisions


def _refs(model: _Model) -> list[Decision]:
    """Per (template, store): duplicate refs, refs not Ready, files that disagree, sizes 0."""
    decisions = []
    for (template_id, store_id), refs in sorted(model.refs.items()):
        template = model.templates[template_id]
        if template_id in model.retired or store_id not in model.stores:
            continue  # retired with its group (rows kept), or on a removed store
        zone = model.zone_of(store_id)
        where = dict(zones=(zone,) if zone else (), stores=(store_id,), **_hv(template))
        primary = model.primary[(template_id, store_id)]
        if len(refs) > 1:
            others = [r for r in refs if r.id != primary.id]
            decisions.append(Decision(Finding(
                DUPLICATE_STORE_REF,
                f"Template {template.label} has {len(refs)} template_store_ref rows on store "
                f"{store_id}: {', '.join(str(r.id) for r in refs)}.",
                f"Keep {primary.id} and mark {', '.join(str(r.id) for r in others)} "
                "destroyed=1 (`repair` does; the files stay).",
                rows=tuple(("template_store_ref", r.id) for r in refs), command=REPAIR,
                **where),
                tuple(DropRef(r.id, template_id, store_id) for r in others)))
        decisions.extend(_ref_state(model, template, primary, where))
    return decisions


def _ref_state(model: _Model, template: Template, ref: StoreRef, where: dict) -> list[Decision]:
    store_id = ref.store_id
    fix = model.fixer(template)
    copy = model.copy(template, store_id)
    rows = (("template_store_ref", ref.id),)
    if not ref.ready:
        finding = Finding(
            STORE_REF_NOT_READY,
            f"template_store_ref {ref.id} (template {template.label}, store {store_id}) is "
            f"{_said(ref.state)}/{_said(ref.download_state)} ({ref.download_pct or 0}%)"
            + (f", last updated {ref.last_updated:%Y-%m-%d %H:%M:%S}" if ref.last_updated
               else "") + (f": {ref.error_str}" if ref.error_str else "") + ".",
            "If the files on the store are complete, record them (state Ready, DOWNLOADED, "
            f"sizes from template.properties); otherwise copy the template again. {_does(fix)} "
            "either.", rows=rows, command=fix, **where)
        return [_restore_copy(model, finding, template, ref, copy)]
    if copy is None:
        return []  # a store doctor could not look into; reported as unreachable
    decisions = []
    if not ref.size or not ref.physical_size:
        finding = Finding(
            SIZE_ZERO,
            f"template_store_ref {ref.id} (template {template.label}, store {store_id}) "
            f"records {_amount('size', ref.size)} and "
            f"{_amount('physical size', ref.physical_size)}.",
            f"Take the sizes from template.properties on the store ({_does(fix)}).",
            rows=rows, command=fix, **where)
        decisions.append(_restore_copy(model, finding, template, ref, copy))
    problem = _disagreement(ref, template, copy)
    if problem:
        finding = Finding(
            INSTALL_PATH_MISMATCH,
            f"template_store_ref {ref.id} (template {template.label}, store {store_id}): "
            f"{problem}.",
            "Make the row match a complete copy on the store, or copy the template again "
            f"({_does(fix)} either).", rows=rows, command=fix, **where)
        decisions.append(_restore_copy(model, finding, template, ref, copy))
    return decisions


def _disagreement(ref: StoreRef, template: Template, copy: StoreCopy) -> str:
    directory = f"template/tmpl/1/{template.id}"
    if copy.state == "absent":
        return f"{directory} is missing on the store"
    if copy.state != "seeded":
        return f"the copy in {directory} is incomplete ({copy.reason})"
    expected = layout.install_path(template.id, copy.filename)
    if not same_install_path(ref.install_path, expected):
        recorded = repr(ref.install_path) if ref.install_path else "not set"
        return (f"install_path is {recorded}, but template.properties names "
                f"{expected!r}")
    if not ref.size or not ref.physical_size:
        return ""  # reported as size-zero
    if (ref.size, ref.physical_size) != (copy.virtual_size, copy.physical_size):
        return (f"the row says size {ref.size}, physical {ref.physical_size}; "
                f"template.properties says {copy.virtual_size}, {copy.physical_size}")
    return ""


def _restore_copy(model: _Model, finding: Finding, template: Template, ref: StoreRef,
                  copy: Optional[StoreCopy]) -> Decision:
    """Record a complete copy, or write the copy again, or say why not."""
    if model.recent(ref):
        return Decision(finding, left="a download was reported in progress less than "
                                      f"{model.s.stale_after / 60:g} minutes ago; rerun later")
    if copy is None:
        return Decision(finding, left=f"store {ref.store_id} was not looked into (not a "
                                      "zone's NFS store, or not mountable)")
    if copy.state == "seeded":
        return Decision(finding, (_fix_ref(model, template, ref.store_id, ref, copy),))
    if not model.is_target_of_current(template, ref.store_id):
        return Decision(finding, left=f"template {template.label} is not the current system "
                                      "template of this store's zone; repair only rewrites "
                                      "copies of current ones")
    planned = model.copies.get((template.id, ref.store_id))
    action = planned or model.plan_copy(template, model.zone_of(ref.store_id), ref.store_id,
                                        ref.id)
    if isinstance(action, str):
        return Decision(finding, left=action)
    return Decision(finding, (action,))


def _coverage(model: _Model) -> list[Decision]:
    """Every zone has its current templates on every writable NFS store, with zone refs."""
    decisions = []
    for zone in model.s.zones:
        for pair in model.pairs(zone.id):
            template = model.current.get(pair)
            where = dict(zones=(zone.id,), hypervisor=pair[0], arch=pair[1])
            targets = model.targets(zone.id)
            if template is None:
                finding = Finding(
                    STORE_MISSING_TEMPLATE,
                    f"Zone {zone.name} uses {pair[0]} {pair[1]}, but no Active SYSTEM template "
                    "exists for it.",
                    "Run `cloudstack-sysvm-seed seed` to register and seed the packaged "
                    "template.", stores=tuple(s.id for s in targets), command=SEED, **where)
                decisions.append(Decision(finding, left="registering templates is seed's job"))
                continue
            for store in targets:
                decision = _store_coverage(model, template, zone, store, where)
                if decision:
                    decisions.append(decision)
            if (template.id, zone.id) not in model.s.zone_refs:
                decisions.append(Decision(Finding(
                    MISSING_ZONE_REF,
                    f"Template {template.label}, current for {pair[0]} {pair[1]}, has no "
                    f"template_zone_ref row for zone {zone.name} ({zone.id}).",
                    f"Insert the template_zone_ref row ({_does(model.fixer(template))}).",
                    rows=(("vm_template", template.id),), command=model.fixer(template),
                    **where),
                    (AddZoneRef(template.id, zone.id),)))
    return decisions


def _store_coverage(model: _Model, template: Template, zone: Zone, store: Store,
                    where: dict) -> Optional[Decision]:
    if model.survey(store.id) is None or (template.id, store.id) in model.refs:
        return None  # unreachable, or the ref checks cover it
    copy = model.copy(template, store.id)
    present = copy.state == "seeded"
    finding = Finding(
        STORE_MISSING_TEMPLATE,
        f"Store {store.id} ({store.url}) in zone {zone.name} has no template_store_ref row "
        f"for template {template.label}"
        + ("; a complete copy is on the store." if present else ", and no complete copy."),
        ("Record the copy on the store" if present else
         "Copy the template onto the store from a store that has it, or from the bundled "
         "file") + f" ({_does(model.fixer(template))}).",
        rows=(("vm_template", template.id),), stores=(store.id,),
        command=model.fixer(template), **where)
    if present:
        return Decision(finding, (_fix_ref(model, template, store.id, None, copy),))
    action = model.copies.get((template.id, store.id)) or model.plan_copy(
        template, zone.id, store.id, None)
    if isinstance(action, str):
        return Decision(finding, left=action)
    return Decision(finding, (action,))


def _template_sizes(model: _Model) -> list[Decision]:
    decisions = []
    in_use = {pair for zone in model.s.zones for pair in model.pairs(zone.id)}
    current = {t for pair, t in model.current.items() if pair in in_use}
    for template in model.s.templates:
        if template.id in model.retired or template.size:
            continue
        if template not in current and not model.ready_stores(template):
            continue  # unused (a never-seeded legacy row): CloudStack never reads its size
        finding = Finding(
            SIZE_ZERO, f"vm_template {template.label} has {_amount('size', template.size)}.",
            "Set vm_template.size to the virtual size of a Ready copy "
            f"({_does(model.fixer(template))}).",
            rows=(("vm_template", template.id),), command=model.fixer(template),
            **_hv(template))
        sizes = [ref.size for (t, _), ref in sorted(model.primary.items())
                 if t == template.id and ref.ready and ref.size]
        sizes += [model.copy(template, s).virtual_size for s in sorted(model.stores)
                  if model.copy(template, s) is not None
                  and model.copy(template, s).state == "seeded"]
        if sizes:
            decisions.append(Decision(finding, (SetTemplate(template.id, size=sizes[0]),)))
        elif any(t == template.id for t, _ in model.copies):
            planned = tuple(a for (t, _), a in model.copies.items() if t == template.id)
            decisions.append(Decision(finding, planned))  # the first copy sets the size
        else:
            decisions.append(Decision(finding, left="no Ready copy says how large it is"))
    return decisions


def _router_settings(model: _Model) -> list[Decision]:
    decisions = []
    keys = sorted({key for zone in model.s.zones for key, _ in model.pairs(zone.id)})
    for key in keys:
        template = model.router_template(key)
        if template is None:
            continue
        name = f"router.template.{key}"
        value = model.s.settings.get(name)
        overrides = [o for o in model.s.overrides if o.name == name and o.value != template.name]
        if value == template.name and not overrides:
            continue
        problems = []
        if value != template.name:
            problems.append(f"{name} is {value!r}" if value is not None else f"{name} is not set")
        problems += [f"zone {o.zone_id} overrides it with "
                     + (repr(o.value) if o.value is not None else "an empty value (NULL)")
                     for o in overrides]
        finding = Finding(
            ROUTER_TEMPLATE_MISMATCH,
            f"{'; '.join(problems)}; the newest Active SYSTEM template for {key} is "
            f"{template.label}.",
            f"Set {name} to {template.name!r} and delete the zone overrides "
            f"({_does(model.fixer(template))}).",
            rows=(("configuration", name), *(("data_center_details", o.id) for o in overrides)),
            zones=tuple(sorted({o.zone_id for o in overrides})), hypervisor=key,
            arch=template.arch, command=model.fixer(template))
        if not any(model.feasible(template, z) for z in model.zones_using(
                (key, template.arch))):
            decisions.append(Decision(finding, left=f"template {template.label} has no Ready "
                                                    "copy in any zone yet"))
            continue
        actions: list[Action] = []
        if value != template.name:
            actions.append(SetSetting(name, value, template.name))
        actions += [DropOverride(o.id, o.zone_id, o.name, o.value) for o in overrides]
        decisions.append(Decision(finding, tuple(actions)))
    return decisions


def _system_vms(model: _Model) -> list[Decision]:
    by_zone: dict[tuple[tuple[str, str], int], list[SystemVm]] = {}
    for vm in model.s.system_vms:
        hypervisor = hypervisors.by_db_name(vm.hypervisor or "")
        if hypervisor is None:
            continue
        pair = (hypervisor.key, vm.arch)
        template = model.current.get(pair)
        if template is not None and vm.template_id != template.id:
            by_zone.setdefault((pair, vm.zone_id), []).append(vm)
    decisions = []
    for (pair, zone_id), vms in sorted(by_zone.items()):
        template = model.current[pair]
        named = ", ".join(f"{vm.name} ({vm.type}, "
                          + (f"template {vm.template_id})" if vm.template_id else "no template)")
                          for vm in vms)
        steps = "; ".join(f"{vm.name}: {_RECREATE.get(vm.type, 'recreate it')}" for vm in vms)
        finding = Finding(
            SYSTEM_VMS_ON_OLD_TEMPLATE,
            f"System VMs in zone {zone_id} are not on template {template.label}, current for "
            f"{pair[0]} {pair[1]}: {named}.",
            f"Point them at template {template.id} ({_does(model.fixer(template))}; it "
            f"never destroys anything), then recreate them: {steps}.",
            rows=tuple(("vm_instance", vm.id) for vm in vms), zones=(zone_id,),
            hypervisor=pair[0], arch=pair[1], command=model.fixer(template))
        if not model.feasible(template, zone_id):
            decisions.append(Decision(finding, left=f"template {template.id} has no Ready "
                                                    f"copy in zone {zone_id}, and none can "
                                                    "be made in this run"))
            continue
        decisions.append(Decision(finding, (PointVms(
            template.id, zone_id, tuple(vm.id for vm in vms),
            () if model.ready_now(template, zone_id) else ((template.id, zone_id),),
            vms=tuple(vms), name=template.name),)))
    return decisions


def _rollbacks(model: _Model) -> list[Decision]:
    """The current template of a hypervisor is older, by version, than another one that is
    Ready, and its settings or system VMs use it: a rollback, on purpose or not."""
    decisions = []
    for pair, current in sorted(model.current.items()):
        newer = [t for t in model.s.templates
                 if model.pair_of(t) == pair and t.active and t.id not in model.retired
                 and versions.newer(t.version, current.version) and model.ready_stores(t)]
        if not newer:
            continue
        users = _users(model, pair, current)
        if not users:
            continue
        best = max(newer, key=lambda t: (t.version.parts, t.id))
        finding = Finding(
            OLDER_TEMPLATE_IN_USE,
            f"{' and '.join(users)} use{'s' if len(users) == 1 else ''} template "
            f"{current.label}, version {versions.describe(current.version)}, while template "
            f"{best.label}, version {best.version}, is Ready: {pair[0]} {pair[1]} was rolled "
            "back.",
            "If that was not on purpose, run `cloudstack-sysvm-seed seed` with the newer "
            "templates directory (upgrade cloudstack-management); repair leaves it.",
            rows=(("vm_template", current.id), ("vm_template", best.id)),
            hypervisor=pair[0], arch=pair[1], command=SEED)
        decisions.append(Decision(finding, left="a rollback may be on purpose; seed with the "
                                                "newer templates moves forward"))
    return decisions


def _users(model: _Model, pair: tuple[str, str], template: Template) -> list[str]:
    """What uses a template: the router.template.<hv> setting or its system VMs."""
    users = []
    name = f"router.template.{pair[0]}"
    if model.router_template(pair[0]) == template and model.s.settings.get(name) == template.name:
        users.append(name)
    vms = [vm.name for vm in model.s.system_vms if vm.template_id == template.id]
    if vms:
        users.append(f"system VM(s) {', '.join(vms)}")
    return users


def _leftovers(model: _Model) -> list[Decision]:
    decisions = []
    for store_id, survey in sorted(model.s.surveys.items()):
        if survey.error:
            continue
        zone = model.zone_of(store_id)
        where = dict(zones=(zone,) if zone else (), stores=(store_id,))
        for template_id in survey.directories:
            if (store_id, template_id) in model.s.holdings:
                continue
            if (template_id, store_id) in model.copies or (
                    (template_id, store_id) in model.fixed):
                continue  # the current template's copy: recorded or rewritten above
            retired = next((t for t in model.s.retired if t.id == template_id), None)
            if retired is not None:
                decisions.append(Decision(Finding(
                    RETIRED_DIRECTORY_LEFT,
                    f"Store {store_id} still holds template/tmpl/1/{template_id} of SYSTEM "
                    f"template {retired.label}, which is retired (removed) in the database"
                    + (f": {survey.sizes[template_id]} bytes." if template_id in survey.sizes
                       else "."),
                    "Run `cloudstack-sysvm-seed prune`: it deletes it.",
                    rows=(("vm_template", template_id),), **where),
                    left="deleting files is prune's job"))
                continue
            template = model.templates.get(template_id)
            known = (f"SYSTEM template {template.label}" if template else
                     "no Active or Inactive SYSTEM template with this id")
            decisions.append(Decision(Finding(
                ORPHAN_DIRECTORY,
                f"Store {store_id} holds template/tmpl/1/{template_id}, which no "
                f"template_store_ref row of the store names ({known}).",
                "Check what it is; once nothing needs it, move it off the store by hand.",
                rows=(("vm_template", template_id),) if template else (), **where),
                left="repair neither deletes nor adopts data no row accounts for"))
        stale = _stale_stages(model, survey)
        if stale:
            decisions.append(Decision(Finding(
                STALE_STAGING,
                f"Store {store_id} has {len(stale)} abandoned stage(s) in "
                f"{layout.WORK_DIR}/stage/: {'; '.join(stale.values())}.",
                f"Delete them ({_does(REPAIR)}, holding the lock, so no run is writing "
                "there).", command=REPAIR, **where),
                tuple(RemoveStage(store_id, name) for name in stale)))
    return decisions


def _stale_stages(model: _Model, survey: StoreSurvey) -> dict[str, str]:
    """The stages no run is writing, each with why we know: its run, on this host, is gone
    (at once), or nothing in it changed for stale_after (another host's, an old name's).
    A live run's fresh stage is in progress (see in_progress)."""
    stale = {}
    for name, age in survey.stages:
        owner = layout.stage_owner(name)
        if survey.stage_runs.get(name) is False:
            stale[name] = f"{name} (run {owner[1]} on this host is no longer running)"
        elif age >= model.s.stale_after:
            stale[name] = f"{name} (untouched for {age / 60:.0f} minutes)"
    return stale


def in_progress(snapshot: Snapshot) -> list[str]:
    """The stages a live run on this host is writing: left alone, and said so."""
    found = []
    for store_id, survey in sorted(snapshot.surveys.items()):
        for name, age in survey.stages:
            if survey.stage_runs.get(name) and age < snapshot.stale_after:
                pid = layout.stage_owner(name)[1]
                found.append(f"Store {store_id}: stage {name} is being written by run {pid} "
                             "on this host; left alone.")
    return found


def _stale_mounts(model: _Model) -> list[Decision]:
    decisions = []
    for leftover in model.s.leftover_mounts:
        what = (f"{leftover.source} is still mounted there" if leftover.source
                else "nothing is mounted there any more")
        finding = Finding(
            STALE_MOUNT,
            f"{leftover.path} was left by run {leftover.pid}, which is no longer running: "
            f"{what}.",
            f"Any run of `{SEED}` (or `repair`) detaches and removes it first; by hand: "
            + (f"umount -l {leftover.path}; " if leftover.source else "")
            + f"rmdir {leftover.path}.", command=SEED)
        decisions.append(Decision(finding, left="removed by the next seed or repair run, as it "
                                                "starts"))
    return decisions
