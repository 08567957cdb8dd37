"""The one observer: read the database and mount and look into the stores, for every command.

Stores are mounted `jobs` at a time, each once per run, after the mountpoints a killed run
left behind are reaped; the mounts stay up until the Observer closes, so apply writes
through the same ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Optional

from . import configkeys, hypervisors, sources, stores
from .catalog import Catalog, now
from .errors import StoreError
from .metadata import Metadata, TemplateSpec
from .model import Snapshot, Store, StoreSurvey, Template
from .settings import DownloadSettings, MountSettings

LOG = logging.getLogger(__name__)

# The settings CloudStack reads to pick system VM templates, globally and per zone.
SETTING_NAMES = (*(hv.config_key for hv in hypervisors.HYPERVISORS), configkeys.MINREQ)

ProbeFor = Callable[[Store], Iterable[Template]]


class Observer(contextlib.ExitStack):
    """What the database and the stores hold; closing it unmounts every store."""

    def __init__(self, catalog: Catalog, mounts: MountSettings, jobs: int = 1,
                 reap: bool = True):
        super().__init__()
        # Whether the mountpoints dead runs left are reaped before mounting (doctor, which
        # changes nothing, only reports them).
        self.reap = reap
        self.catalog = catalog
        self.mount_settings = mounts
        self.jobs = max(1, jobs)  # stores mounted at once: mount.nfs waits on the network
        self.lock = threading.Lock()
        self.mounts: list = []  # entered stores.mounted() context managers
        self.roots: dict[int, str] = {}  # store id -> mountpoint
        self.sources: dict[str, sources.Source] = {}  # metadata section -> source
        # Stores that stopped answering. Once one has, every store is detached without
        # starting a process (see stores._detach).
        self.stalled: set[int] = set()
        self.reaped = False

    # --- the database ------------------------------------------------------------------------

    def read(self, guest_os_names: Iterable[str] = ()) -> Snapshot:
        catalog = self.catalog
        templates = tuple(catalog.system_templates())
        ids = [t.id for t in templates]
        return Snapshot(
            zones=tuple(catalog.zones()),
            stores=tuple(catalog.image_stores()),
            zone_hypervisors=catalog.zone_hypervisors(),
            templates=templates,
            store_refs=tuple(catalog.store_refs(ids)),
            zone_refs=catalog.zone_refs(ids),
            guest_os_ids=catalog.guest_os_ids(guest_os_names),
            settings=catalog.settings(SETTING_NAMES),
            overrides=tuple(catalog.zone_overrides(SETTING_NAMES)),
            system_vms=tuple(catalog.system_vms()),
            holdings=catalog.store_holdings(),
            retired=tuple(catalog.system_templates(removed=True)),
            now=now(),
        )

    def read_users(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot with what uses each template (any VM, any volume), for prune."""
        return dataclasses.replace(snapshot, users=self.catalog.template_users(
            t.id for t in snapshot.templates))

    def changed_since(self, snapshot: Snapshot, touched: Iterable[int] = ()) -> bool:
        """Whether the database changed, since `snapshot`, in what the row changes of a plan
        are made from (touched: the templates the run itself wrote)."""
        fresh = self.read(snapshot.guest_os_ids)
        skip = set(touched)
        return _inputs(fresh, skip) != _inputs(snapshot, skip)

    # --- the stores ----------------------------------------------------------------------------

    def survey(self, snapshot: Snapshot, targets: Iterable[Store],
               probe_for: Optional[ProbeFor] = None) -> Snapshot:
        """Mount each store (once per run) and look at what it holds: the templates
        probe_for(store) names (seed: the templates it is to hold), or, without probe_for,
        everything (every template directory, each SYSTEM template's copy, our stages:
        doctor)."""
        if not self.reaped:
            runtime = self.mount_settings.mountpoint_parent
            if self.reap:
                stores.reap_leftovers(runtime)
            else:
                snapshot = dataclasses.replace(
                    snapshot, leftover_mounts=tuple(stores.leftovers(runtime)))
            self.reaped = True
        by_id = {t.id: t for t in (*snapshot.templates, *snapshot.retired)}
        unique = list({store.id: store for store in targets}.values())

        def look(store: Store) -> StoreSurvey:
            root, error = self.roots.get(store.id, ""), ""
            if not root:
                root, error = self._mount(store)
            if error:
                return StoreSurvey(store.id, error=error)
            if probe_for is None:
                return _full_survey(root, store.id, by_id)
            return StoreSurvey(store.id, copies={
                t.id: stores.probe(root, t.id, _extension(t)) for t in probe_for(store)})

        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="mount") as pool:
            try:
                found = {survey.store_id: survey for survey in pool.map(look, unique)}
            except BaseException:  # Ctrl-C: mount no more stores (those mounted come off)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return dataclasses.replace(snapshot, surveys={**snapshot.surveys, **found})

    def _mount(self, store: Store) -> tuple[str, str]:
        """Mount one store (in a pool thread): its mountpoint, or the error."""
        label = f"store {store.id}"
        mount = stores.mounted(store.url, self.mount_settings, label,
                               lazy=lambda: bool(self.stalled), nfs_version=store.nfs_version)
        try:
            root = mount.__enter__()
        except StoreError as exc:  # at ERROR in the report's list, once, at the end
            LOG.warning("%s (%s): %s", label, store.url, exc)
            return "", str(exc)
        with self.lock:  # registered at once, so an interrupt never leaves a mount behind
            self.mounts.append(mount)
            self.roots[store.id] = root
        return root, ""

    def __exit__(self, *exc_info):
        """Unmount every store, `jobs` at a time: each umount waits on its server."""
        try:
            with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="umount") as pool:
                list(pool.map(lambda mount: mount.__exit__(None, None, None), self.mounts))
        finally:
            self.mounts.clear()
            suppress = super().__exit__(*exc_info)
        return suppress

    # --- the templates directory ----------------------------------------------------------------

    def find_sources(self, snapshot: Snapshot, meta: Metadata, specs: Iterable[TemplateSpec],
                     templates_dir: str, downloads: DownloadSettings) -> Snapshot:
        """Where each spec's image comes from (bundled, cached, downloadable), or why none."""
        missing = {}
        for spec in set(specs):
            found = sources.locate(spec, meta, templates_dir, downloads)
            if isinstance(found, sources.Source):
                self.sources[spec.section] = found
            else:
                missing[spec.section] = found
        return dataclasses.replace(snapshot, missing_sources=missing)


def _inputs(snapshot: Snapshot, touched: set[int]) -> tuple:
    return (snapshot.zones, snapshot.stores, dict(snapshot.zone_hypervisors),
            dict(snapshot.settings), snapshot.overrides, snapshot.system_vms,
            tuple(t for t in snapshot.templates if t.id not in touched))


def _extension(template: Template) -> str:
    hypervisor = hypervisors.by_db_name(template.hypervisor)
    return hypervisor.extension if hypervisor else template.image_format.lower()


def _full_survey(root: str, store_id: int, templates: dict[int, Template]) -> StoreSurvey:
    try:
        ids = stores.template_ids_on(root)
        copies = {tid: stores.probe(root, tid, _extension(templates[tid]))
                  for tid in ids if tid in templates}
        clock = time.time()
        stages = tuple((name, max(0.0, clock - mtime))
                       for name, mtime in stores.stages_on(root))
        contents = {tid: stores.contents(root, tid) for tid in ids}
    except OSError as exc:
        return StoreSurvey(store_id, error=f"cannot read the store: {exc}")
    runs = stores.stage_runs([name for name, _ in stages])
    return StoreSurvey(store_id, "", tuple(ids), copies, stages, stage_runs=runs,
                       sizes={tid: size for tid, (size, _) in contents.items()},
                       foreign={tid: why for tid, (_, why) in contents.items() if why})
