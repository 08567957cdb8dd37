"""Observe: read the database, mount the stores in scope, probe them; build the snapshot.

The mounts stay up until the Observation closes, so apply reuses them: each store is
mounted once per run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from . import plan, sources, stores
from .catalog import Catalog, Store
from .errors import StoreError
from .metadata import Metadata

LOG = logging.getLogger(__name__)


def read_catalog(catalog: Catalog, metadata: Metadata) -> plan.Snapshot:
    """The database half of the snapshot."""
    templates = catalog.system_templates(spec.name for spec in metadata.specs)
    template_ids = [t.id for t in templates]
    return plan.Snapshot(
        zones=tuple(catalog.zones()),
        stores=tuple(catalog.image_stores()),
        zone_hypervisors=catalog.zone_hypervisors(),
        templates=tuple(templates),
        store_refs=tuple(catalog.store_refs(template_ids)),
        zone_refs=catalog.zone_refs(template_ids),
        guest_os_ids=catalog.guest_os_ids(s.guest_os for s in metadata.specs if s.guest_os),
    )


class Observation(contextlib.ExitStack):
    """The snapshot plus the mounted stores; closing it unmounts every store."""

    def __init__(self, snapshot: plan.Snapshot, mount_settings: stores.MountSettings,
                 jobs: int = 1):
        super().__init__()
        self.jobs = max(1, jobs)  # stores mounted at once: mount.nfs waits on the network
        self.lock = threading.Lock()
        self.mounts: list = []  # entered stores.mounted() context managers
        self.snapshot = snapshot
        self.mount_settings = mount_settings
        self.roots: dict[int, str] = {}  # store id -> mountpoint
        self.sources: dict[str, sources.Source] = {}  # metadata section -> source
        # Stores that stopped answering. Once one has, every store is detached without
        # starting a process (see stores._detach).
        self.stalled: set[int] = set()

    def probe(self, metadata: Metadata, targets: list[plan.Target], templates_dir: str,
              downloads: sources.DownloadSettings) -> None:
        """Mount each target store once, see what it holds, and find each spec's source."""
        stores.reap_leftovers(self.mount_settings.runtime_dir)
        mount_errors: dict[int, str] = {}
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="mount") as pool:
            for store, error in pool.map(self._mount, _unique_stores(targets)):
                if error:
                    mount_errors[store.id] = error
        copies = {}
        for target in targets:
            template = plan.existing_template(self.snapshot, target.spec)
            root = self.roots.get(target.store.id)
            if template is not None and root is not None:
                copies[(target.store.id, template.id)] = stores.probe(
                    root, template.id, target.spec.hypervisor.extension)
        missing = {}
        for spec in {t.spec for t in targets}:
            found = sources.locate(spec, metadata, templates_dir, downloads)
            if isinstance(found, sources.Source):
                self.sources[spec.section] = found
            else:
                missing[spec.section] = found
        self.snapshot = dataclasses.replace(
            self.snapshot, copies=copies, mount_errors=mount_errors, missing_sources=missing)

    def _mount(self, store: Store) -> tuple[Store, Optional[str]]:
        """Mount one store (in a pool thread); the error, if it cannot be."""
        label = f"store {store.id}"
        mount = stores.mounted(store.url, self.mount_settings, label,
                               lazy=lambda: bool(self.stalled), nfs_version=store.nfs_version)
        try:
            root = mount.__enter__()
        except StoreError as exc:
            LOG.error("%s (%s): %s", label, store.url, exc)
            return store, str(exc)
        with self.lock:  # registered at once, so an interrupt never leaves a mount behind
            self.mounts.append(mount)
            self.roots[store.id] = root
        return store, None

    def __exit__(self, *exc_info):
        """Unmount every store, `jobs` at a time: each umount waits on its server."""
        try:
            with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="umount") as pool:
                list(pool.map(lambda mount: mount.__exit__(None, None, None), self.mounts))
        finally:
            self.mounts.clear()
            suppress = super().__exit__(*exc_info)
        return suppress


def _unique_stores(targets: list[plan.Target]) -> list[Store]:
    seen: dict[int, Store] = {}
    for target in targets:
        seen.setdefault(target.store.id, target.store)
    return list(seen.values())
