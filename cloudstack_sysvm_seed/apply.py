"""Carry out a plan: write the copies it lists, then make the row changes it lists, each once
what it waits for holds. Apply decides nothing of its own: what it changes, and when a
change is held back, the plan says.

Before anything is written, every row the plan would write is checked against the schema
(catalog.check_row): a value that does not fit stops the run with nothing written.

Copies, per source file: the file is read once and written to a stage on every target
store of every template that uses it (KVM and LXC share one file), and its checksum is
verified before any row is written. Then, store by store as each copy is whole, one
transaction covers the rows of that (template, store) pair (with the template's own row
when it is new) and is committed only after the copy has been renamed into place. A failure
undoes that pair alone. A slow store's copy goes on while the next source file is read.

Row changes, after the copies: just before them the caller may re-read the database and,
where it changed meanwhile, plan again (`Context.replan`); then each change is made in a
transaction of its own when its needs hold, and reported held otherwise.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import checksum, copies, images, layout, progress, properties, signals, sources, stores
from .catalog import Catalog, NewTemplate, now
from .errors import ChecksumMismatch, ImageFormatError, SeedError, StoreError
from .model import (
    ADOPT,
    FAIL,
    KEEP,
    NONE,
    SKIP,
    WRITES_COPY,
    AddZoneRef,
    DropOverride,
    DropRef,
    FixRef,
    Plan,
    PointVms,
    RemoveCopy,
    RemoveStage,
    RetireTemplate,
    SetSetting,
    SetTemplate,
    Step,
    TemplateRef,
    TemplateWork,
)
from .settings import DEFAULT_MAX_IMAGE_SIZE, DEFAULT_STALL_TIMEOUT, DownloadSettings

LOG = logging.getLogger(__name__)

READY = "ready"
FAILED = "failed"
SKIPPED = "skipped"
PLANNED = "planned"
HELD = "held"
KEPT = "kept"


@dataclass(frozen=True)
class Outcome:
    step: Step
    status: str
    template_id: Optional[int] = None
    error: str = ""
    virtual_size: Optional[int] = None
    source: str = ""
    timed_out: bool = False  # the store stopped answering; unmount it lazily
    detail: str = ""  # a change as made, with the ids it got (else the plan's words)


@dataclass(frozen=True)
class Context:
    catalog: Catalog
    roots: dict  # store id -> mountpoint
    sources: dict  # metadata section -> sources.Source
    downloads: DownloadSettings = field(default_factory=DownloadSettings)
    max_image_size: int = DEFAULT_MAX_IMAGE_SIZE
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    guard: Callable[[], None] = lambda: None  # before each transaction: the lock still held
    # After the copies: the plan whose row changes to make instead, when the database
    # changed meanwhile (given the templates the copies wrote), else None.
    replan: Optional[Callable[[list[int]], Optional[Plan]]] = None


def dry_run(plan: Plan, source_of: dict) -> list[Outcome]:
    """What a run would do, as outcomes with status `planned`, in the words of the run."""
    outcomes = []
    for work in plan.works:
        source = source_of.get(work.spec.section)
        outcomes += [_unapplied(step, PLANNED, source.describe() if source else "")
                     for step in work.steps]
    return outcomes + [_unapplied(step, PLANNED) for step in plan.steps]


def run(plan: Plan, context: Context) -> list[Outcome]:
    """Apply the plan. The caller holds the registration lock, so no other run is writing:
    any stage left on a store the plan writes to is a leftover of a crashed run, and is
    removed first.

    :raises SchemaError: before anything is written, for a row that does not fit.
    """
    preflight(plan, context.catalog)
    for store_id in sorted({s.store.id for w in plan.works for s in w.seed_steps}):
        swept = stores.sweep_stages(context.roots[store_id])
        if swept:
            LOG.info("Store %d: removed %d stale stage(s) of an interrupted run", store_id, swept)
    runs = [_WorkRun(work) for work in plan.works]
    _copy(runs, context)
    copied = [o for r in runs for o in r.ordered()]
    rows = _RowChanges(plan, context, runs)
    if context.replan is not None and any(r.work.seed_steps for r in runs):
        # Copies take minutes: what the row changes were planned from may have moved.
        again = context.replan(sorted({r.template_id for r in runs if r.template_id}))
        if again is not None:
            LOG.warning("The database changed while the copies were written; planned the "
                        "row changes again")
            rows = _RowChanges(again, context, runs, copies_ran=False)
    return copied + rows.make()


def preflight(plan: Plan, catalog: Catalog) -> None:
    """Every row the plan would insert or update, checked against this schema's columns."""
    when = now()
    for work in plan.works:
        spec = work.spec
        template_id = work.template.id if work.template else 99_999_999
        if work.template is None:
            catalog.check_row("vm_template", catalog.template_row(NewTemplate(
                template_id, str(uuid.uuid4()), spec.name, spec.url,
                str(spec.checksum or checksum.Checksum("SHA-512", "0" * 128)),
                spec.hypervisor.image_format, work.guest_os_id, spec.hypervisor.db_name,
                spec.arch), when))
        for zone_id in work.zone_ids[:1]:
            catalog.check_row("template_zone_ref", catalog.zone_ref_row(template_id, zone_id, when))
        for step in work.seed_steps:
            path = layout.install_path(template_id, f"{uuid.uuid4()}.{spec.hypervisor.extension}")
            catalog.check_row("template_store_ref", catalog.store_ref_row(
                template_id, step.store.id, path, spec.url, when))
    for step in plan.changes:
        change = step.change
        if isinstance(change, SetSetting):
            catalog.check_row("configuration", catalog.setting_row(change.name, change.new, when),
                              inserting=change.old is None)
        elif isinstance(change, FixRef) and change.ref_id is None:
            catalog.check_row("template_store_ref", catalog.store_ref_row(
                change.template_id, change.store_id, change.install_path, change.url, when))


def _unapplied(step: Step, status: str, source: str = "") -> Outcome:
    if step.action == FAIL:
        return Outcome(step, FAILED, step.template_id, step.reason)
    if step.action == SKIP:
        return Outcome(step, SKIPPED, step.template_id)
    if step.held:
        return Outcome(step, HELD, step.template_id)
    if step.action == KEEP:
        return Outcome(step, KEPT, step.template_id)
    if step.action == NONE:
        return Outcome(step, READY, step.template_id, virtual_size=step.copy.virtual_size)
    return Outcome(step, status, step.template_id, source=source)


class _WorkRun:
    """One template's copies through a run."""

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
        self.completed = not (work.template is None or work.zone_ids or work.activate)
        for step in work.steps:
            if step.action not in WRITES_COPY:
                self.outcomes[step] = _unapplied(step, READY)

    def ordered(self) -> list[Outcome]:
        return [self.outcomes[step] for step in self.work.steps]

    def failed_copy(self, writer: copies.CopyWriter) -> Outcome:
        return Outcome(writer.step, FAILED, self.template_id, writer.error, source=self.source,
                       timed_out=writer.stalled)

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


# --- copies --------------------------------------------------------------------------------


def _copy(runs: list[_WorkRun], context: Context) -> None:
    pool = copies.WriterPool()
    try:
        for group in _by_source(runs, context.sources):
            _seed_group(group, context, pool)
            _publish_copies(runs, context, pool, wait=False)
        _publish_copies(runs, context, pool, wait=True)
    except BaseException:  # Ctrl-C, SIGTERM: no stage is left behind and no row half-made
        for work_run in runs:
            work_run.fail_seeding("interrupted")
        raise


def _by_source(runs: list[_WorkRun], source_of: dict) -> list[list[_WorkRun]]:
    groups: dict[str, list[_WorkRun]] = {}
    for work_run in runs:
        if work_run.work.seed_steps:
            key = source_of[work_run.work.spec.section].path
            groups.setdefault(key, []).append(work_run)
    return list(groups.values())


def _seed_group(group: list[_WorkRun], context: Context, pool: copies.WriterPool) -> None:
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
            _open_writers(work_run, context, needed, share, pool)
        writers = _writers_still_on(group, pool)
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
        for work_run in group:
            cause = _cause(work_run, hashers[work_run.checksum_text], path, exc)
            LOG.warning("%s: %s", work_run.work.spec.label, cause)  # ERROR with the report
            work_run.fail_seeding(cause)
        return
    for work_run in group:
        _verify(work_run, hashers[work_run.checksum_text], path, info)


def _cause(work_run: _WorkRun, hasher, path: str, exc: Exception) -> str:
    """Why a pass failed, in words: a file that fails to decode and does not match its
    checksum is a damaged file, and the mismatch is what says so for certain. (The reader
    hashed the whole file before it raised ImageFormatError.)"""
    expected = work_run.work.spec.checksum
    if isinstance(exc, ImageFormatError) and expected is not None:
        actual = hasher.hexdigest()
        if actual != expected.hexdigest:
            decoding = exc.message.removeprefix(f"{path}: ")
            return str(ChecksumMismatch(path, expected.algorithm, expected.hexdigest, actual,
                                        also=decoding))
    return str(exc)


def _local_file(source: sources.Source, spec, context: Context) -> str:
    if source.kind == sources.DOWNLOAD:
        return sources.fetch(source, spec.checksum, context.downloads)
    return source.path


def _hasher(expected: Optional[checksum.Checksum]):
    # Without an expected value (allowed with --allow-unverified) we record SHA-512.
    return expected.new_hasher() if expected else checksum.Checksum("SHA-512", "").new_hasher()


def _open_writers(work_run: _WorkRun, context: Context, needed: int, memory_chunks: int,
                  pool: copies.WriterPool) -> None:
    """A writer per target store; each checks its store (probe file, room) first."""
    for step in work_run.work.seed_steps:
        # A writer's thread makes its stage at once: a signal between the start and the
        # append would leave a stage nobody removes, and a file open on the mount.
        with signals.deferred():
            work_run.writers.append(copies.CopyWriter(
                step, context.roots[step.store.id], work_run.filename, needed,
                context.stall_timeout, context.downloads.cache_dir, memory_chunks, pool=pool))


def _writers_still_on(group: list[_WorkRun], pool: copies.WriterPool) -> list[copies.CopyWriter]:
    """The group's writers once their stores were checked; those refused are recorded as
    failed now, before any data is read."""
    pool.wait_started([w for work_run in group for w in work_run.writers])
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


def _publish_copies(runs: list[_WorkRun], context: Context, pool: copies.WriterPool,
                    wait: bool) -> None:
    """Publish every verified copy that is whole (or record its failure); with `wait`, every
    one, as each store is done, otherwise only those already done."""
    owner = {writer: work_run for work_run in runs if work_run.info
             for writer in work_run.unsettled()}
    for writer in pool.as_finished(owner, wait):
        work_run = owner[writer]
        work_run.outcomes[writer.step] = (work_run.failed_copy(writer) if writer.error else
                                          _publish(work_run, writer, work_run.info, context))


def _publish(work_run: _WorkRun, writer: copies.CopyWriter, info: images.ImageInfo,
             context: Context) -> Outcome:
    """One transaction for this (template, store): rows, template.properties, rename, commit.
    The first copy of a template also writes what the plan left to it: the template's row
    when it is new, its zone refs, its state and size."""
    step, catalog, work = writer.step, context.catalog, work_run.work
    spec = work.spec
    when = now()
    registering = work_run.template_id is None
    template_id = work_run.template_id
    try:
        with catalog.transaction(context.guard):
            if registering:
                template_id = catalog.allocate_template_id()
                catalog.insert_template(NewTemplate(
                    template_id, work_run.file_uuid, spec.name, spec.url,
                    work_run.checksum_text, spec.hypervisor.image_format, work.guest_os_id,
                    spec.hypervisor.db_name, spec.arch), when)
            if not work_run.completed:
                catalog.add_zone_refs(template_id, work.zone_ids, when)
            install_path = layout.install_path(template_id, writer.filename)
            ref_id = (step.store_ref.id if step.store_ref else
                      catalog.insert_store_ref(template_id, step.store.id, install_path,
                                               spec.url, when))
            install_path = _place(writer, template_id, spec, info) or install_path
            catalog.mark_store_ref_ready(ref_id, install_path, info.virtual_size,
                                         info.image_size, now())
            if registering or (not work_run.completed and work.activate):
                catalog.update_template(template_id, {"state": "Active",
                                                      "size": info.virtual_size})
    except BaseException as exc:
        writer.stage.unpublish()
        writer.stage.discard()
        if not isinstance(exc, (SeedError, OSError)):
            raise
        message = copies.store_error(exc, step) if isinstance(exc, OSError) else str(exc)
        return Outcome(step, FAILED, template_id if not registering else None, message,
                       source=work_run.source)
    work_run.template_id = template_id
    work_run.completed = True
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
    if ((planned is None or not planned.seeded)  # not a copy we were asked to replace
            and there.seeded and there.physical_size == info.image_size
            and there.virtual_size == info.virtual_size):
        writer.stage.discard()
        LOG.info("Store %d: kept the identical copy already at %s", writer.step.store.id,
                 layout.template_dir(root, template_id))
        return layout.install_path(template_id, there.filename)
    writer.stage.write_properties(properties.TemplateProperties(
        template_id, spec.hypervisor.extension, writer.filename, info.image_size,
        info.virtual_size, spec.hypervisor.key))
    writer.stage.publish(template_id)
    return None


# --- row changes -----------------------------------------------------------------------------


class _RowChanges:
    """The plan's steps after the copies, each change made once its needs hold."""

    def __init__(self, plan: Plan, context: Context, runs: list[_WorkRun],
                 copies_ran: bool = True):
        self.plan = plan
        self.context = context
        self.ids: dict[TemplateRef, int] = {}  # a plan's template refs -> the ids they got
        self.by_pair: dict[tuple[str, str], int] = {}  # (hypervisor, arch) -> the same
        # (template, zone) -> whether each copy this run tried there ended Ready
        self.tried: dict[tuple[TemplateRef, int], list[bool]] = {}
        self.made: set = set()  # changes made
        self.names: dict[TemplateRef, str] = {}  # how to name a template ref in a message
        for work_run in runs:
            self.names[work_run.work.ref] = work_run.work.spec.name
        for work_run in runs if copies_ran else ():
            refs = {work_run.work.ref, work_run.template_id} - {None}
            spec = work_run.work.spec
            for ref in refs:
                if work_run.template_id:
                    self.ids[ref] = work_run.template_id
                    self.by_pair[(spec.hypervisor.key, spec.arch)] = work_run.template_id
                for step in work_run.work.seed_steps:
                    self._tried(ref, step, work_run.outcomes[step].status == READY)

    def make(self) -> list[Outcome]:
        return [self._take(step) for step in self.plan.steps]

    def _tried(self, ref: TemplateRef, step: Step, ok: bool) -> None:
        self.tried.setdefault((ref, step.zone.id), []).append(ok)

    def _take(self, step: Step) -> Outcome:
        change = step.change
        if change is None or step.held:  # a note, or a change the plan holds back
            return _unapplied(step, READY)
        waiting = self._waiting(change)
        if waiting:
            LOG.warning("Held back: %s (%s)", step.reason, waiting)
            return Outcome(step, HELD, step.template_id,
                           detail=f"{step.reason}; held back: {waiting}")
        try:
            detail = self._make(change)
        except (SeedError, OSError, ValueError) as exc:
            LOG.warning("%s failed: %s", step.reason, exc)  # ERROR with the report
            outcome = Outcome(step, FAILED, step.template_id, str(exc))
        else:
            self.made.add(change)
            LOG.info("%s", detail)
            template_id = (self._id(getattr(change, "template_id", None)) or step.template_id
                           or self.by_pair.get((step.hypervisor, step.arch)))
            outcome = Outcome(step, READY, template_id, detail=detail)
        if step.action == ADOPT:
            self._tried(change.template_id, step, outcome.status == READY)
        return outcome

    def _waiting(self, change) -> str:
        """Why a change must wait, or "" when everything it needs holds."""
        for template, zone in getattr(change, "needs", ()):
            results = [ok for (t, z), oks in self.tried.items()
                       if t == template and (zone is None or z == zone) for ok in oks]
            where = f"in zone {zone}" if zone is not None else "anywhere"
            name = self.names.get(template, f"template {template}")
            if zone is not None and not all(results):
                return f"a copy of {name} {where} failed"
            if (template, zone) not in self.plan.ready and not any(results):
                return f"{name} has no Ready copy {where}"
        for before in getattr(change, "after", ()):
            if before not in self.made:
                return f"it comes after '{before.describe()}', which was not made"
        return ""

    def _id(self, template: Optional[TemplateRef]) -> Optional[int]:
        return self.ids.get(template, template if isinstance(template, int) else None)

    def _make(self, change) -> str:
        """Make one change, in a transaction of its own; its description, as made."""
        if isinstance(change, RemoveStage):
            stores.remove_stage(self.context.roots[change.store_id], change.name)
            return change.describe()
        if isinstance(change, RemoveCopy):
            return self._remove_copy(change)
        catalog, when = self.context.catalog, now()
        with catalog.transaction(self.context.guard):
            if isinstance(change, FixRef):
                ref_id = change.ref_id or catalog.insert_store_ref(
                    change.template_id, change.store_id, change.install_path, change.url, when)
                catalog.mark_store_ref_ready(ref_id, change.install_path, change.size,
                                             change.physical_size, when)
            elif isinstance(change, SetTemplate):
                catalog.update_template(change.template_id, _template_changes(change, when))
            elif isinstance(change, DropRef):
                catalog.update_store_ref(change.ref_id, {"destroyed": 1})
            elif isinstance(change, AddZoneRef):
                catalog.add_zone_refs(change.template_id, [change.zone_id], when)
            elif isinstance(change, SetSetting):
                catalog.set_setting(change.name, change.new, when)
            elif isinstance(change, DropOverride):
                catalog.delete_overrides([change.id])
            elif isinstance(change, RetireTemplate):
                catalog.retire_template(change.template_id, when)
            elif isinstance(change, PointVms):
                template_id = self._id(change.template_id)
                if template_id is None:
                    raise ValueError(f"template {change.template_id} was not registered")
                catalog.point_vms(change.vm_ids, template_id)
                return change.describe(template_id)
            else:  # pragma: no cover - every change type is handled above
                raise TypeError(change)
        return change.describe()


    def _remove_copy(self, change: RemoveCopy) -> str:
        """Mark the copy's refs Destroyed, then move it out of the template tree (a rename)
        and delete it. Rows first: whatever stops the run, CloudStack never sees a Ready
        copy whose files are gone; files left behind a commit, the next prune deletes."""
        root = self.context.roots[change.store_id]
        present = os.path.isdir(layout.template_dir(root, change.template_id))
        if present:
            stores.check_only_a_copy(root, change.template_id)
        with self.context.catalog.transaction(self.context.guard):
            self.context.catalog.destroy_store_refs(change.ref_ids)
        if present:
            try:
                stores.empty_trash(root, stores.trash_copy(root, change.template_id))
            except (OSError, StoreError) as exc:
                raise StoreError(f"Store {change.store_id}: the rows say template "
                                 f"{change.template_id}'s copy is gone, but its directory "
                                 f"could not be deleted: {exc}.",
                                 "The next prune deletes it.") from exc
        return change.describe()


def _template_changes(change: SetTemplate, when) -> dict:
    values = {"state": "Inactive", "removed": when} if change.retire else {}
    for name in ("state", "cross_zones", "size"):
        if getattr(change, name) is not None:
            values[name] = getattr(change, name)
    return values
