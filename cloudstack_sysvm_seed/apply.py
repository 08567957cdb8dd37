"""Apply a plan: write copies, publish them, and make the database say so.

Per source file: the file is read once and written to a stage on every target store of every
template that uses it (KVM and LXC share one file), and its checksum is verified before any
row is written. Then, store by store as each copy is whole, one transaction covers the rows
of that (template, store) pair and is committed only after the copy has been renamed into
place. A failure undoes that pair alone. A slow store's copy goes on being written while
the next source file is read; it is published when it is done.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Optional

from . import checksum, copies, images, plan, progress, properties, sources, stores
from .catalog import Catalog, NewTemplate, now
from .errors import SeedError
from .plan import Step, TemplateWork

LOG = logging.getLogger(__name__)

READY = "ready"
FAILED = "failed"
SKIPPED = "skipped"
PLANNED = "planned"


@dataclass(frozen=True)
class Outcome:
    step: Step
    status: str
    template_id: Optional[int] = None
    error: str = ""
    virtual_size: Optional[int] = None
    source: str = ""
    timed_out: bool = False  # the store stopped answering; unmount it lazily


@dataclass(frozen=True)
class Context:
    catalog: Catalog
    roots: dict  # store id -> mountpoint
    sources: dict  # metadata section -> sources.Source
    release: str = ""  # metadata.ini's X.Y.Z: minreq.sysvmtemplate.version
    downloads: sources.DownloadSettings = field(default_factory=sources.DownloadSettings)
    max_image_size: int = images.DEFAULT_MAX_IMAGE_SIZE
    update_pointers: bool = True  # router.template.<hv>, minreq, system VMs (not for install)
    stall_timeout: float = copies.DEFAULT_STALL_TIMEOUT


def dry_run(the_plan: plan.Plan, source_of: dict) -> list[Outcome]:
    """What a run would do, as outcomes with status `planned`."""
    return [_unapplied(step, PLANNED, _described(source_of, work, step))
            for work, step in _steps_with_work(the_plan)]


def run(the_plan: plan.Plan, context: Context) -> list[Outcome]:
    """Apply the plan. The caller holds the registration lock, so no other run is writing:
    any stage left on a store is a leftover of a crashed run and is removed first."""
    for store_id, root in context.roots.items():
        swept = stores.sweep_stages(root)
        if swept:
            LOG.info("Store %d: removed %d stale stage(s) of an interrupted run", store_id, swept)
    outcomes: dict[Step, Outcome] = {}
    for step in the_plan.others:
        outcomes[step] = _unapplied(step, SKIPPED)
    runs = [_WorkRun(work) for work in the_plan.works]
    try:
        for group in _by_source(runs, context.sources):
            _seed_group(group, context)
            _publish_copies(runs, context, wait=False)
        _publish_copies(runs, context, wait=True)
    except BaseException:  # Ctrl-C, SIGTERM: no stage is left behind and no row half-made
        for work_run in runs:
            work_run.fail_seeding("interrupted")
        raise
    for work_run in runs:
        _finish_work(work_run, context)
        outcomes.update(work_run.outcomes)
    changes = _point_cloudstack_at(runs, context) if context.update_pointers else []
    return [outcomes[step] for _, step in _steps_with_work(the_plan)] + changes


def _steps_with_work(the_plan: plan.Plan):
    yield from ((None, step) for step in the_plan.others)
    for work in the_plan.works:
        yield from ((work, step) for step in work.steps)


def _described(source_of: dict, work: Optional[TemplateWork], step: Step) -> str:
    if work is None or step.action not in plan.WRITES_COPY:
        return ""
    source = source_of.get(work.spec.section)
    return source.describe() if source else ""


def _unapplied(step: Step, status: str, source: str = "") -> Outcome:
    if step.action == plan.FAIL:
        return Outcome(step, FAILED, step.template_id, step.reason)
    if step.action == plan.SKIP:
        return Outcome(step, SKIPPED, step.template_id)
    if step.action == plan.NONE:
        return Outcome(step, READY, step.template_id, virtual_size=step.copy.virtual_size)
    return Outcome(step, status, step.template_id, source=source)


class _WorkRun:
    """One template's progress through a run."""

    def __init__(self, work: TemplateWork):
        self.work = work
        self.template_id = work.template.id if work.template else None
        self.file_uuid = str(uuid.uuid4())  # also vm_template.uuid when registering
        self.filename = f"{self.file_uuid}.{work.spec.hypervisor.extension}"
        self.outcomes: dict[Step, Outcome] = {}
        self.writers: list[copies.CopyWriter] = []
        self.info: Optional[images.ImageInfo] = None  # set once the pass is verified
        self.checksum_text = str(work.spec.checksum) if work.spec.checksum else ""
        self.source = ""
        for step in work.steps:
            if step.action in (plan.NONE, plan.FAIL):
                self.outcomes[step] = _unapplied(step, READY)

    def failed_copy(self, writer: copies.CopyWriter) -> Outcome:
        return Outcome(writer.step, FAILED, self.template_id, writer.error, source=self.source,
                       timed_out=writer.stalled)

    def ready_zones(self) -> list[int]:
        """Zones where this template has a Ready copy after this run."""
        return sorted({o.step.zone.id for o in self.outcomes.values()
                       if o.status == READY and o.step.zone is not None})

    def unsettled(self) -> list[copies.CopyWriter]:
        """Writers of this template whose copy has no outcome yet."""
        return [writer for writer in self.writers if writer.step not in self.outcomes]

    def fail_seeding(self, message: str) -> None:
        for writer in self.unsettled():
            writer.fail(message)
            self.outcomes[writer.step] = self.failed_copy(writer)
        for step in self.work.seed_steps:
            self.outcomes.setdefault(step, Outcome(step, FAILED, self.template_id, message,
                                                   source=self.source))


def _by_source(runs: list[_WorkRun], source_of: dict) -> list[list[_WorkRun]]:
    groups: dict[str, list[_WorkRun]] = {}
    for work_run in runs:
        if work_run.work.seed_steps:
            key = source_of[work_run.work.spec.section].path
            groups.setdefault(key, []).append(work_run)
    return list(groups.values())


# --- seeding -------------------------------------------------------------------------------


def _seed_group(group: list[_WorkRun], context: Context) -> None:
    """One pass over a source for every template that uses it."""
    spec = group[0].work.spec
    source = context.sources[spec.section]
    for work_run in group:
        work_run.source = source.describe()
    try:
        path = _local_file(source, spec, context)
    except (SeedError, OSError) as exc:
        for work_run in group:
            work_run.fail_seeding(str(exc))
        return
    hashers = {run_.checksum_text: _hasher(run_.work.spec.checksum) for run_ in group}
    try:
        needed = images.expanded_size_estimate(path)
        share = copies.memory_share(sum(len(run_.work.seed_steps) for run_ in group))
        for work_run in group:
            _open_writers(work_run, context, needed, share)
        writers = _writers_still_on(group)
        if not writers:
            return
        LOG.info("Copying %s to %d store(s)", path, len(writers))
        labels = "+".join(work_run.work.spec.label for work_run in group)
        shown = progress.start(f"{labels} to {len(writers)} store(s)", os.path.getsize(path))
        try:
            info = images.read(path, spec.hypervisor.image_format, list(hashers.values()),
                               writers, context.max_image_size, progress=shown)
        finally:
            shown.close()
    except (SeedError, OSError) as exc:
        LOG.error("%s: %s", spec.label, exc)
        for work_run in group:
            work_run.fail_seeding(str(exc))
        return
    for work_run in group:
        _verify(work_run, hashers[work_run.checksum_text], path, info)


def _local_file(source: sources.Source, spec, context: Context) -> str:
    if source.kind == sources.DOWNLOAD:
        return sources.fetch(source, spec.checksum, context.downloads)
    return source.path


def _hasher(expected: Optional[checksum.Checksum]):
    # Without an expected value (allowed with --allow-unverified) we record SHA-512.
    return expected.new_hasher() if expected else checksum.Checksum("SHA-512", "").new_hasher()


def _open_writers(work_run: _WorkRun, context: Context, needed: int,
                  memory_chunks: int) -> None:
    """A writer per target store; each checks its store (probe file, room) first."""
    for step in work_run.work.seed_steps:
        work_run.writers.append(copies.CopyWriter(
            step, context.roots[step.store.id], work_run.filename, needed,
            context.stall_timeout, context.downloads.cache_dir, memory_chunks))


def _writers_still_on(group: list[_WorkRun]) -> list[copies.CopyWriter]:
    """The group's writers once their stores were checked; those refused are recorded as
    failed now, before any data is read."""
    copies.wait_started([w for work_run in group for w in work_run.writers])
    for work_run in group:
        for writer in work_run.unsettled():
            if writer.error:
                writer.fail(writer.error)
                work_run.outcomes[writer.step] = work_run.failed_copy(writer)
    return [w for work_run in group for w in work_run.unsettled()]


def _verify(work_run: _WorkRun, hasher, path: str, info: images.ImageInfo) -> None:
    """Check the source's checksum; when it holds, let the writers finish their copies."""
    spec = work_run.work.spec
    try:
        if spec.checksum:
            spec.checksum.verify(hasher, path)
        else:
            work_run.checksum_text = str(checksum.Checksum("SHA-512", hasher.hexdigest()))
            LOG.warning("%s: no checksum to verify %s against; recording the computed %s",
                        spec.label, path, work_run.checksum_text)
    except SeedError as exc:
        work_run.fail_seeding(str(exc))
        return
    work_run.info = info
    for writer in work_run.unsettled():
        writer.end()


def _publish_copies(runs: list[_WorkRun], context: Context, wait: bool) -> None:
    """Publish every verified copy that is whole (or record its failure); with `wait`, every
    one, as each store is done, otherwise only those already done."""
    owner = {writer: work_run for work_run in runs if work_run.info
             for writer in work_run.unsettled()}
    for writer in copies.as_finished(owner, wait):
        work_run = owner[writer]
        work_run.outcomes[writer.step] = (work_run.failed_copy(writer) if writer.error else
                                          _publish(work_run, writer, work_run.info, context))


def _publish(work_run: _WorkRun, writer: copies.CopyWriter, info: images.ImageInfo,
             context: Context) -> Outcome:
    """One transaction for this (template, store): rows, template.properties, rename, commit."""
    step, catalog, spec = writer.step, context.catalog, work_run.work.spec
    when = now()
    registering = work_run.template_id is None
    template_id = work_run.template_id
    try:
        with catalog.transaction():
            if registering:
                template_id = catalog.allocate_template_id()
                catalog.insert_template(NewTemplate(
                    template_id, work_run.file_uuid, spec.name, spec.url,
                    work_run.checksum_text, spec.hypervisor.image_format,
                    work_run.work.guest_os_id, spec.hypervisor.db_name, spec.arch), when)
                catalog.add_zone_refs(template_id, work_run.work.missing_zone_ids, when)
            install_path = stores.install_path(template_id, writer.filename)
            ref_id = (step.store_ref.id if step.store_ref else
                      catalog.insert_store_ref(template_id, step.store.id, install_path,
                                               spec.url, when))
            install_path = _place(writer, template_id, spec, info) or install_path
            catalog.mark_store_ref_ready(ref_id, install_path, info.virtual_size,
                                         info.image_size, now())
            if registering:
                catalog.activate_template(template_id, info.virtual_size)
    except BaseException as exc:
        writer.stage.unpublish()
        writer.stage.discard()
        if not isinstance(exc, (SeedError, OSError)):
            raise
        message = copies.store_error(exc, step) if isinstance(exc, OSError) else str(exc)
        return Outcome(step, FAILED, template_id if not registering else None, message,
                       source=work_run.source)
    work_run.template_id = template_id
    LOG.info("%s: %s template %d on store %d (%s)", spec.label,
             "registered and seeded" if registering else "seeded", template_id, step.store.id,
             install_path)
    return Outcome(step, READY, template_id, virtual_size=info.virtual_size,
                   source=work_run.source)


def _place(writer: copies.CopyWriter, template_id: int, spec, info: images.ImageInfo):
    """Publish the stage as template/tmpl/1/<id>; returns the install path when an identical
    complete copy is already there and is kept instead.

    That copy can only be a run's own work whose rows were lost (killed between the rename
    and the commit): keeping it makes the rerun end exactly where an unbroken run would.
    """
    root = writer.stage.root
    planned = writer.step.copy
    there = stores.probe(root, template_id, spec.hypervisor.extension)
    if ((planned is None or planned.state != "seeded")  # not a copy we were asked to replace
            and there.state == "seeded" and there.physical_size == info.image_size
            and there.virtual_size == info.virtual_size):
        writer.stage.discard()
        LOG.info("Store %d: kept the identical copy already at %s", writer.step.store.id,
                 stores.template_dir(root, template_id))
        return stores.install_path(template_id, there.filename)
    writer.stage.write_properties(properties.TemplateProperties(
        template_id, spec.hypervisor.extension, writer.filename, info.image_size,
        info.virtual_size, spec.hypervisor.key))
    writer.stage.publish(template_id)
    return None


# --- rows only -----------------------------------------------------------------------------


def _finish_work(work_run: _WorkRun, context: Context) -> None:
    for step in (s for s in work_run.work.steps if s.action == plan.ADOPT):
        work_run.outcomes[step] = _adopt(step, context.catalog, work_run.work.spec.url)
    ready = [o for o in work_run.outcomes.values() if o.status == READY]
    if work_run.work.template is not None and ready:
        _complete_existing(work_run.work, context.catalog, ready)


def _adopt(step: Step, catalog: Catalog, url: str) -> Outcome:
    """The copy on the store is complete: make its template_store_ref row say so."""
    copy = step.copy
    install_path = stores.install_path(step.template_id, copy.filename)
    if step.store_ref and plan.same_install_path(step.store_ref.install_path, install_path):
        install_path = step.store_ref.install_path  # keep the recorded spelling
    try:
        with catalog.transaction():
            when = now()
            ref_id = (step.store_ref.id if step.store_ref else
                      catalog.insert_store_ref(step.template_id, step.store.id, install_path,
                                               url, when))
            catalog.mark_store_ref_ready(ref_id, install_path, copy.virtual_size,
                                         copy.physical_size, when)
    except SeedError as exc:
        return Outcome(step, FAILED, step.template_id, str(exc))
    LOG.info("Store %d: recorded the existing copy of template %d (%s)",
             step.store.id, step.template_id, step.reason)
    return Outcome(step, READY, step.template_id, virtual_size=copy.virtual_size)


def _complete_existing(work: TemplateWork, catalog: Catalog, ready: list[Outcome]) -> None:
    """Zone refs and state of an already registered template, once it has a Ready copy."""
    template = work.template
    if not work.missing_zone_ids and not work.activate:
        return
    size = template.size or next((o.virtual_size for o in ready if o.virtual_size), 0)
    with catalog.transaction():
        if work.missing_zone_ids:
            catalog.add_zone_refs(template.id, work.missing_zone_ids, now())
            LOG.info("Template %d: added template_zone_ref rows for zone(s) %s",
                     template.id, ", ".join(map(str, work.missing_zone_ids)))
        if work.activate:
            catalog.activate_template(template.id, size)
            LOG.info("Template %d: state set to Active", template.id)


# --- what CloudStack reads next: settings and system VMs --------------------------------------

CONFIGURE = "configure"
MINREQ_KEY = "minreq.sysvmtemplate.version"


def _point_cloudstack_at(runs: list[_WorkRun], context: Context) -> list[Outcome]:
    """Point router.template.<hv>, minreq.sysvmtemplate.version and the system VMs of the
    zones now served at each template that has a Ready copy; report every change."""
    ready = [r for r in runs if r.template_id is not None and r.ready_zones()]
    changes: list[Outcome] = []
    chosen: dict[str, _WorkRun] = {}
    for work_run in ready:
        key = work_run.work.spec.hypervisor.key
        # One router.template.<hv> serves every arch; upstream lets the last arch win, we
        # keep x86_64, which every zone can run, when both are registered.
        if key not in chosen or work_run.work.spec.arch == "x86_64":
            chosen[key] = work_run
    try:
        with context.catalog.transaction():
            for work_run in chosen.values():
                spec = work_run.work.spec
                changes += _set(context.catalog, work_run, spec.hypervisor.config_key, spec.name)
            if chosen:
                changes += _set(context.catalog, next(iter(chosen.values())), MINREQ_KEY,
                                context.release)
            for work_run in ready:
                changes += _repoint_system_vms(context.catalog, work_run)
    except SeedError as exc:
        LOG.error("Updating settings and system VMs failed: %s", exc)
        step = Step(CONFIGURE, None, None, "", "", reason="settings and system VMs")
        return [Outcome(step, FAILED, error=str(exc))]
    return changes


def _set(catalog: Catalog, work_run: _WorkRun, name: str, value: str) -> list[Outcome]:
    spec = work_run.work.spec
    zones = work_run.ready_zones()
    removed = catalog.delete_zone_overrides([name], zones)
    old = catalog.config_value(name)
    if old == value and not removed:
        return []
    if old != value:
        catalog.set_config(name, value, "Set by cloudstack-sysvm-seed")
    reason = f"{name}: {old!r} -> {value!r}" if old != value else f"{name}: {value!r}"
    if removed:
        reason += f" (removed {removed} zone override(s))"
    LOG.info("%s", reason)
    step = Step(CONFIGURE, None, None, spec.hypervisor.key, spec.arch, work_run.template_id,
                reason)
    return [Outcome(step, READY, work_run.template_id)]


def _repoint_system_vms(catalog: Catalog, work_run: _WorkRun) -> list[Outcome]:
    spec = work_run.work.spec
    vms = catalog.system_vms_not_on(work_run.template_id, spec.hypervisor.db_name, spec.arch,
                                    work_run.ready_zones())
    if not vms:
        return []
    catalog.point_system_vms_at([vm["id"] for vm in vms], work_run.template_id)
    named = ", ".join(f"{vm['instance_name']} ({vm['type']}, was {vm['vm_template_id']})"
                      for vm in vms)
    reason = (f"system VMs now on template {work_run.template_id}: {named}; they use it "
              "once recreated")
    LOG.info("%s", reason)
    step = Step(CONFIGURE, None, None, spec.hypervisor.key, spec.arch, work_run.template_id,
                reason)
    return [Outcome(step, READY, work_run.template_id)]
