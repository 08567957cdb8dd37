"""Apply a plan: write copies, publish them, and make the database say so.

Per template spec: the source is read once and written to a stage on every target store at
the same time; the checksum is verified before any row is written. Then, store by store, one
transaction covers the rows of that (template, store) pair and is committed only after the
copy has been renamed into place. A failure undoes that pair alone.
"""

from __future__ import annotations

import errno
import logging
import uuid
from dataclasses import dataclass
from typing import Optional

from . import images, plan, properties, sources, stores
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


@dataclass(frozen=True)
class Context:
    catalog: Catalog
    roots: dict  # store id -> mountpoint
    templates_dir: str
    all_zone_ids: tuple


def dry_run(the_plan: plan.Plan) -> list[Outcome]:
    """What a run would do, as outcomes with status `planned`."""
    return [_unapplied(step, PLANNED) for step in the_plan.steps]


def run(the_plan: plan.Plan, context: Context) -> list[Outcome]:
    outcomes = [_unapplied(step, SKIPPED) for step in the_plan.others]
    for work in the_plan.works:
        outcomes.extend(_apply_work(work, context))
    return outcomes


def _unapplied(step: Step, status: str) -> Outcome:
    if step.action == plan.FAIL:
        return Outcome(step, FAILED, step.template_id, step.reason)
    if step.action == plan.SKIP:
        return Outcome(step, SKIPPED, step.template_id)
    if step.action == plan.NONE:
        return Outcome(step, READY, step.template_id, virtual_size=step.copy.virtual_size)
    return Outcome(step, status, step.template_id)


def _apply_work(work: TemplateWork, context: Context) -> list[Outcome]:
    template_id = work.template.id if work.template else None
    outcomes: dict[Step, Outcome] = {}
    for step in work.steps:
        if step.action in (plan.NONE, plan.FAIL):
            outcomes[step] = _unapplied(step, PLANNED)
    if work.seed_steps:
        template_id = _seed(work, context, template_id, outcomes)
    for step in (s for s in work.steps if s.action == plan.ADOPT):
        outcomes[step] = _adopt(step, context.catalog)
    ready = [o for o in outcomes.values() if o.status == READY]
    if work.template is not None and ready:
        _complete_existing(work, context.catalog, ready)
    return [outcomes[step] for step in work.steps]


# --- seeding -------------------------------------------------------------------------------


class _CopyWriter:
    """One store's share of the single pass over the source; a failure here stays here."""

    def __init__(self, step: Step, root: str, filename: str):
        self.step = step
        self.filename = filename
        self.error = ""
        self.size = 0
        self.stage = stores.Stage(root)
        self.stream = self.stage.open_image(filename)

    def write(self, chunk: bytes) -> None:
        if self.error:
            return
        try:
            self.stream.write(chunk)
            self.size += len(chunk)
        except OSError as exc:
            self.fail(_store_error(exc, self.step))

    def finish(self) -> None:
        if self.error:
            return
        try:
            stores.fsync_file(self.stream)
            self.stream.close()
        except OSError as exc:
            self.fail(_store_error(exc, self.step))

    def fail(self, message: str) -> None:
        self.error = message
        try:
            self.stream.close()
        except OSError:
            pass
        self.stage.discard()


def _seed(work: TemplateWork, context: Context, template_id: Optional[int],
          outcomes: dict) -> Optional[int]:
    spec = work.spec
    file_uuid = str(uuid.uuid4())
    filename = f"{file_uuid}.{spec.hypervisor.extension}"
    writers = _open_writers(work.seed_steps, context, filename, outcomes)
    if not writers:
        return template_id
    try:
        virtual_size = _copy_source(work, context, writers)
    except (SeedError, OSError) as exc:
        LOG.error("%s: %s", spec.label, exc)
        for writer in writers:
            writer.fail(str(exc))
    except BaseException:
        for writer in writers:
            writer.fail("interrupted")
        raise
    for writer in writers:
        if writer.error:
            outcomes[writer.step] = Outcome(writer.step, FAILED, template_id, writer.error)
            continue
        outcome = _publish(work, writer, context, template_id, file_uuid, virtual_size)
        template_id = outcome.template_id
        outcomes[writer.step] = outcome
    return template_id


def _open_writers(steps, context: Context, filename: str, outcomes: dict) -> list[_CopyWriter]:
    writers = []
    for step in steps:
        try:
            writers.append(_CopyWriter(step, context.roots[step.store.id], filename))
        except OSError as exc:
            outcomes[step] = Outcome(step, FAILED, step.template_id, _store_error(exc, step))
    return writers


def _copy_source(work: TemplateWork, context: Context, writers: list[_CopyWriter]) -> int:
    """Stream the source once into every writer; verify format and checksum. Returns the
    virtual size."""
    spec = work.spec
    path = sources.bundled_path(context.templates_dir, spec)
    LOG.info("Copying %s to %d store(s)", path, len(writers))
    hasher = spec.checksum.new_hasher()
    head = b""
    virtual_size = None
    for chunk in images.expand(path, hasher):
        if virtual_size is None:
            head += chunk[: images.HEAD_SIZE - len(head)]
            if len(head) >= images.HEAD_SIZE:
                # Refuse a wrong image before writing gigabytes of it.
                virtual_size = images.virtual_size(head, spec.hypervisor.image_format, path)
        for writer in writers:
            writer.write(chunk)
    if virtual_size is None:
        virtual_size = images.virtual_size(head, spec.hypervisor.image_format, path)
    spec.checksum.verify(hasher, path)
    for writer in writers:
        writer.finish()
    return virtual_size


def _publish(work: TemplateWork, writer: _CopyWriter, context: Context,
             template_id: Optional[int], file_uuid: str, virtual_size: int) -> Outcome:
    """One transaction for this (template, store): rows, template.properties, rename, commit."""
    step, catalog, spec = writer.step, context.catalog, work.spec
    when = now()
    registering = template_id is None
    try:
        with catalog.transaction():
            if registering:
                template_id = catalog.allocate_template_id()
                catalog.insert_template(NewTemplate(
                    template_id, file_uuid, spec.name, spec.url, str(spec.checksum),
                    spec.hypervisor.image_format, work.guest_os_id, spec.hypervisor.db_name,
                    spec.arch), when)
                catalog.add_zone_refs(template_id, work.missing_zone_ids, when)
            install_path = stores.install_path(template_id, writer.filename)
            ref_id = (step.store_ref.id if step.store_ref else
                      catalog.insert_store_ref(template_id, step.store.id, install_path,
                                               spec.url, when))
            writer.stage.write_properties(properties.TemplateProperties(
                template_id, spec.hypervisor.extension, writer.filename, writer.size,
                virtual_size, spec.hypervisor.key))
            writer.stage.publish(template_id)
            catalog.mark_store_ref_ready(ref_id, install_path, virtual_size, writer.size, now())
            if registering:
                catalog.activate_template(template_id, virtual_size)
    except BaseException as exc:
        writer.stage.unpublish()
        writer.stage.discard()
        if not isinstance(exc, (SeedError, OSError)):
            raise
        return Outcome(step, FAILED, None if registering else template_id,
                       _store_error(exc, step) if isinstance(exc, OSError) else str(exc))
    LOG.info("%s: %s template %d on store %d (%s)", spec.label,
             "registered and seeded" if registering else "seeded", template_id, step.store.id,
             install_path)
    return Outcome(step, READY, template_id, virtual_size=virtual_size)


# --- rows only -----------------------------------------------------------------------------


def _adopt(step: Step, catalog: Catalog) -> Outcome:
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
                                               "", when))
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


def _store_error(exc: OSError, step: Step) -> str:
    where = f"store {step.store.id} ({step.store.url})"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{where} is full: {exc.strerror}. Free space on it and rerun."
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"{where} refused the write: {exc.strerror}. Export it with no_root_squash "
                "to this management server.")
    if exc.errno == errno.EROFS:
        return f"{where} is read-only: {exc.strerror}."
    return f"{where}: {exc}"
