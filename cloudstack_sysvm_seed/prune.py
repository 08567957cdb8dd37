"""Prune: which SYSTEM templates give their stores the space back, and which stay, and why.
Pure: no database, no disk, no clock.

Per (hypervisor, arch) the newest `keep` SYSTEM templates stay (newest by CloudStack version,
then by id: the current one and the one before, to roll back to). Of the others, a template
stays when a router.template.* setting names it (globally or for a zone), a VM of any type or
a volume uses it, or it is the only Ready template of a (hypervisor, arch) in use. BUILTIN
and users' templates are never considered.

A template that goes loses its copy on every store in scope (its refs there Destroyed, its
directory deleted), and its own rows (Inactive, removed; zone refs removed) once no store of
any zone keeps a copy. Directories of templates retired earlier that are still on a store go
too.
"""

from __future__ import annotations

from typing import Optional

from . import hypervisors, layout, plan, versions
from .model import (
    KEEP,
    PRUNE,
    Plan,
    RemoveCopy,
    RetireTemplate,
    Scope,
    Snapshot,
    Step,
    Store,
    Template,
)

DEFAULT_KEEP = 2


def prune_plan(snapshot: Snapshot, scope: Scope, keep: int = DEFAULT_KEEP) -> Plan:
    """Every template, row and directory prune removes, and every template it keeps."""
    zones, keys = plan.resolve_scope(snapshot, scope)
    in_scope = {z.id for z in zones}
    steps: list[Step] = []
    for pair, templates in sorted(_by_pair(snapshot, keys).items()):
        ordered = sorted(templates, key=lambda t: (versions.order(t.version), t.id),
                         reverse=True)
        kept = ordered[:keep]
        steps += [_keep(t, f"one of the newest {keep} for {pair[0]} {pair[1]}") for t in kept]
        last_ready = _last_ready(snapshot, pair, kept, ordered[keep:])
        for template in ordered[keep:]:
            why = _protected(snapshot, template) or (
                f"the only Ready template for {pair[0]} {pair[1]}, which a zone uses"
                if template == last_ready else "")
            steps += [_keep(template, why)] if why else _retire(snapshot, template, in_scope)
    steps += _left_behind(snapshot, in_scope)
    return Plan(steps=tuple(steps))


def _by_pair(snapshot: Snapshot, keys: set[str]) -> dict[tuple[str, str], list[Template]]:
    pairs: dict[tuple[str, str], list[Template]] = {}
    for template in snapshot.templates:
        hypervisor = hypervisors.by_db_name(template.hypervisor)
        if hypervisor is not None and (not keys or hypervisor.key in keys):
            pairs.setdefault((hypervisor.key, template.arch), []).append(template)
    return pairs


def _protected(snapshot: Snapshot, template: Template) -> str:
    """Why a template must stay whatever its age, or ""."""
    named = [name for name, value in snapshot.settings.items()
             if name.startswith("router.template.") and value == template.name]
    named += [f"zone {o.zone_id}'s {o.name}" for o in snapshot.overrides
              if o.name.startswith("router.template.") and o.value == template.name]
    if named:
        return f"{' and '.join(named)} name{'s' if len(named) == 1 else ''} it"
    users = snapshot.users.get(template.id, ())
    if users:
        more = f" and {len(users) - 3} more" if len(users) > 3 else ""
        return f"in use by {', '.join(users[:3])}{more}"
    return ""


def _ready(snapshot: Snapshot, template: Template) -> bool:
    return any(r.template_id == template.id and r.ready for r in snapshot.store_refs)


def _last_ready(snapshot: Snapshot, pair: tuple[str, str], kept: list[Template],
                older: list[Template]) -> Optional[Template]:
    """The newest older template with a Ready copy, when a zone uses the pair and none of
    the kept ones is Ready anywhere: system VMs there could not start without it."""
    in_use = any(hypervisors.by_db_name(name) and hypervisors.by_db_name(name).key == pair[0]
                 and arch == pair[1]
                 for zone_pairs in snapshot.zone_hypervisors.values()
                 for name, arch in zone_pairs)
    if not in_use or any(_ready(snapshot, t) for t in kept):
        return None
    return next((t for t in older if _ready(snapshot, t)), None)


def _keep(template: Template, why: str) -> Step:
    hypervisor = hypervisors.by_db_name(template.hypervisor)
    return Step(KEEP, None, None, hypervisor.key if hypervisor else "", template.arch,
                template.id, f"template {template.label} stays: {why}")


def _retire(snapshot: Snapshot, template: Template, in_scope: set[int]) -> list[Step]:
    """Its copy off every store in scope, then its rows, once no store keeps a copy."""
    steps, removes, kept_on = [], [], []
    for store in _holding(snapshot, template.id):
        why = _why_not(snapshot, store, template.id, in_scope)
        if why:
            kept_on.append(f"store {store.id} ({why})")
            if store.zone_id in in_scope:
                steps.append(_step(snapshot, template, store, f"template {template.id}'s "
                                   f"copy on store {store.id} stays: {why}"))
            continue
        removes.append(_remove(snapshot, template, store))
        steps.append(removes[-1])
    if kept_on:
        steps.append(_step(snapshot, template, None,
                           f"vm_template {template.id} stays registered while "
                           f"{', '.join(kept_on)} keep a copy; a prune that reaches them "
                           "finishes it"))
    else:
        change = RetireTemplate(template.id, tuple(s.change for s in removes))
        steps.append(_step(snapshot, template, None, change.describe(), change))
    return steps


def _holding(snapshot: Snapshot, template_id: int) -> list[Store]:
    """Every store with a ref of the template, or its directory (where surveyed)."""
    ids = {r.store_id for r in snapshot.store_refs if r.template_id == template_id}
    ids |= {s for s, survey in snapshot.surveys.items() if template_id in survey.directories}
    return [store for store in snapshot.stores if store.id in ids]


def _why_not(snapshot: Snapshot, store: Store, template_id: int, in_scope: set[int]) -> str:
    """Why prune cannot delete a template's copy from a store now, or ""."""
    if store.zone_id not in in_scope:
        return "out of scope" if store.zone_id is not None else "a region-wide store"
    survey = snapshot.surveys.get(store.id)
    if survey is None:
        return f"a {store.provider or store.protocol} store, not one prune cleans"
    if survey.error:
        return f"it could not be mounted: {survey.error}"
    expected = layout.install_path(template_id, "")
    for ref in snapshot.store_refs:
        if (ref.template_id, ref.store_id) == (template_id, store.id) and not (
                ref.install_path or "").lstrip("/").startswith(expected.lstrip("/")):
            return (f"template_store_ref {ref.id} names {ref.install_path!r}, not "
                    f"{expected}: look at it by hand")
    if template_id in survey.foreign:
        return f"template/tmpl/1/{template_id} holds {survey.foreign[template_id]}"
    return ""


def _remove(snapshot: Snapshot, template: Template, store: Store) -> Step:
    refs = tuple(r.id for r in snapshot.store_refs
                 if (r.template_id, r.store_id) == (template.id, store.id))
    size = snapshot.surveys[store.id].sizes.get(template.id, 0)
    change = RemoveCopy(template.id, store.id, refs, size)
    return _step(snapshot, template, store, change.describe(), change)


def _left_behind(snapshot: Snapshot, in_scope: set[int]) -> list[Step]:
    """Directories of templates retired in the database that are still on a store."""
    retired = {t.id: t for t in snapshot.retired}
    steps = []
    for store in snapshot.stores:
        survey = snapshot.surveys.get(store.id)
        if store.zone_id not in in_scope or survey is None or survey.error:
            continue
        for template_id in survey.directories:
            template = retired.get(template_id)
            if template is None or (store.id, template_id) in snapshot.holdings:
                continue
            why = _why_not(snapshot, store, template_id, in_scope)
            steps.append(_step(snapshot, template, store,
                               f"template {template_id}'s directory stays: {why}")
                         if why else _remove(snapshot, template, store))
    return steps


def _step(snapshot: Snapshot, template: Template, store: Optional[Store], reason: str,
          change=None) -> Step:
    """A line of the prune: a change, or (none) one held back, with why."""
    hypervisor = hypervisors.by_db_name(template.hypervisor)
    return Step(PRUNE, snapshot.zone(store.zone_id) if store else None, store,
                hypervisor.key if hypervisor else "", template.arch, template.id, reason,
                change=change, held=change is None)
