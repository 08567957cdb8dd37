"""A run against the cloud database: connect, then observe, plan and apply."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterator, Optional

from . import apply, checksum, dbprops, hypervisors, metadata, observe, plan, sources, stores
from .catalog import Catalog
from .errors import CatalogError, LockTimeout, SettingsError, StoreError
from .metadata import TemplateSpec
from .settings import Settings

LOG = logging.getLogger(__name__)

# CloudStack's own names (GlobalLock): the management server holds the first for a whole
# database upgrade, and takes the second, inside it, to register templates.
UPGRADE_LOCK = "DatabaseUpgrade"
REGISTRATION_LOCK = "UpgradeDatabase-Lock"
POLL_SECONDS = 1.0


@contextlib.contextmanager
def connected(config: Settings) -> Iterator[Catalog]:
    """The cloud database named by db.properties; closed when the block ends."""
    db_config = dbprops.database_config(dbprops.load(config.db_properties),
                                        config.db_properties, config.key_file, os.environ)
    catalog = Catalog.connect(db_config)
    try:
        yield catalog
    finally:
        catalog.close()


@contextlib.contextmanager
def registration_lock(catalog: Catalog, timeout: float,
                      poll: float = POLL_SECONDS) -> Iterator[None]:
    """Hold CloudStack's template-registration lock, and start only while no management
    server is upgrading the database.

    :raises LockTimeout: naming who holds the lock.
    """
    lock = catalog.named_lock()
    deadline = time.monotonic() + timeout
    told = None
    try:
        while True:
            blocker = _try_take(lock)
            if blocker is None:
                break
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"Lock {blocker[0]!r} is still held by {blocker[1]} after {timeout:g}s.",
                    "Another seeding run or a management server upgrade is in progress; "
                    "rerun when it is done (or raise --lock-timeout).")
            if blocker != told:
                LOG.info("Waiting for lock %r, held by %s", *blocker)
                told = blocker
            time.sleep(max(0.0, min(poll, deadline - time.monotonic())))
        catalog.guard = lambda: lock.verify(REGISTRATION_LOCK)
        yield
    finally:
        catalog.guard = lambda: None
        try:
            lock.release(REGISTRATION_LOCK)
        except CatalogError:
            pass  # the lock's connection is gone, and the server released the lock with it
        finally:
            lock.close()


def _try_take(lock) -> Optional[tuple[str, str]]:
    """Take the registration lock unless something blocks it; the blocker otherwise.

    Never wait with the registration lock held: a management server takes the upgrade lock
    first and this one inside it, so holding ours while waiting for theirs would deadlock.
    """
    upgrading = lock.holder(UPGRADE_LOCK)
    if upgrading:
        return UPGRADE_LOCK, upgrading
    if not lock.acquire(REGISTRATION_LOCK, 0):
        return REGISTRATION_LOCK, lock.holder(REGISTRATION_LOCK) or "another connection"
    upgrading = lock.holder(UPGRADE_LOCK)
    if upgrading:
        lock.release(REGISTRATION_LOCK)
        return UPGRADE_LOCK, upgrading
    return None


def seed(config: Settings) -> list[apply.Outcome]:
    """Register and seed what config.scope asks for; the outcome of every target.

    A real run observes only once it holds the lock, so concurrent runs never plan from the
    same stale snapshot (that is how duplicate templates are born).
    """
    meta = metadata.load(os.path.join(config.templates_dir, "metadata.ini"))
    with connected(config) as catalog:
        with (contextlib.nullcontext() if config.dry_run
              else registration_lock(catalog, config.lock_timeout)):
            return _seed_locked(config, meta, catalog)


def _seed_locked(config: Settings, meta: metadata.Metadata,
                 catalog: Catalog) -> list[apply.Outcome]:
    snapshot = observe.read_catalog(catalog, meta)
    targets, skipped = plan.select(snapshot, meta, config.scope)
    with observe.Observation(snapshot, config.mounts, config.jobs) as observation:
        observation.probe(meta, targets, config.templates_dir, config.downloads)
        the_plan = plan.build(observation.snapshot, meta, targets, skipped,
                              config.allow_unverified)
        if config.dry_run:
            return apply.dry_run(the_plan, observation.sources)
        outcomes = apply.run(the_plan, apply.Context(
            catalog, observation.roots, observation.sources, meta.release, config.downloads,
            config.max_image_size, stall_timeout=config.stall_timeout))
        observation.stalled.update(o.step.store.id for o in outcomes if o.timed_out)
        return outcomes


@dataclass(frozen=True)
class InstallRequest:
    """`install`: one copy of a template onto one store the operator mounted."""

    mountpoint: str
    hypervisor: str
    file: Optional[str] = None
    url: Optional[str] = None
    checksum: Optional[str] = None
    template_id: Optional[int] = None
    store_id: Optional[int] = None
    arch: str = hypervisors.DEFAULT_ARCH
    force: bool = False


def install(config: Settings, request: InstallRequest) -> list[apply.Outcome]:
    """Write one template copy onto a mounted store and keep the rows consistent: the safe
    successor of cloud-install-sys-tmplt.

    :raises SeedError: for anything that would make the copy unsafe or unrecorded.
    """
    if not stores.is_mounted(request.mountpoint):
        raise StoreError(f"{request.mountpoint} is not a mount point.",
                         "Mount the secondary store there first; nothing was written.")
    hypervisor = hypervisors.lookup(request.hypervisor)
    if hypervisor is None:
        raise SettingsError(f"Unknown hypervisor {request.hypervisor!r}.")
    meta = _optional_metadata(config)
    with connected(config) as catalog, registration_lock(catalog, config.lock_timeout):
        snapshot = observe.read_catalog(catalog, meta) if meta else plan.Snapshot(
            tuple(catalog.zones()), tuple(catalog.image_stores()), {})
        template = _install_template(catalog, request, hypervisor)
        store = _install_store(snapshot, request)
        zone = next(z for z in snapshot.zones if z.id == store.zone_id)
        spec = _install_spec(request, hypervisor, template, meta, config)
        source = (sources.Source(sources.DOWNLOAD, os.path.join(
                      config.downloads.cache_dir, spec.filename), request.url, "(none)")
                  if request.url else sources.Source(sources.BUNDLED, request.file))
        copy = stores.probe(request.mountpoint, template.id, hypervisor.extension)
        if copy.state == "seeded" and not request.force:
            raise StoreError(f"Template {template.id} is already on this store "
                             f"({stores.template_dir(request.mountpoint, template.id)}).",
                             "Pass -F to replace it (the old copy is set aside, not deleted).")
        ref = plan.store_ref_of(catalog.store_refs([template.id]), template.id, store.id)
        step = plan.Step(plan.SEED, zone, store, hypervisor.key, request.arch, template.id,
                         "install", ref, copy)
        zone_refs = catalog.zone_refs([template.id])
        missing_zones = tuple(z.id for z in snapshot.zones if (template.id, z.id) not in zone_refs)
        work = plan.TemplateWork(spec, template, hypervisor.guest_os_id, missing_zones, False,
                                 (step,))
        return apply.run(plan.Plan((work,), ()), apply.Context(
            catalog, {store.id: request.mountpoint}, {spec.section: source},
            downloads=config.downloads, max_image_size=config.max_image_size,
            update_pointers=False, stall_timeout=config.stall_timeout))


def _optional_metadata(config: Settings) -> Optional[metadata.Metadata]:
    path = os.path.join(config.templates_dir, "metadata.ini")
    return metadata.load(path) if os.path.exists(path) else None


def _install_template(catalog: Catalog, request: InstallRequest,
                      hypervisor: hypervisors.Hypervisor):
    """-t ID, or the newest SYSTEM template of the hypervisor (cloud-install-sys-tmplt's
    choice), which must exist: install never registers a template by itself."""
    candidates = [t for t in catalog.system_templates_of(hypervisor.db_name, request.arch)
                  if request.template_id in (None, t.id)]
    if not candidates:
        wanted = f"template {request.template_id}" if request.template_id else (
            f"a SYSTEM template for {hypervisor.key} {request.arch}")
        raise SettingsError(f"There is no {wanted} (SYSTEM, not removed).",
                            "Register it first (run cloudstack-sysvm-seed), or pass -t ID.")
    return max(candidates, key=lambda t: t.id)


def _install_store(snapshot: plan.Snapshot, request: InstallRequest):
    """--store-id, or the NFS store whose URL is what is mounted at the mountpoint."""
    if request.store_id is not None:
        match = [s for s in snapshot.stores if s.id == request.store_id]
    else:
        mounted = (stores.mount_source(request.mountpoint) or "").rstrip("/")
        match = [s for s in snapshot.stores if s.protocol == "nfs" and _export(s) == mounted]
    if len(match) != 1 or match[0].zone_id is None:
        raise SettingsError(f"Cannot tell which image store is mounted at "
                            f"{request.mountpoint}.", "Pass --store-id N.")
    return match[0]


def _export(store) -> str:
    try:
        return stores.parse_url(store.url).export
    except ValueError:
        return ""


def _install_spec(request: InstallRequest, hypervisor, template, meta,
                  config: Settings) -> TemplateSpec:
    """A spec for the given file: checksum from --checksum, else from metadata.ini when the
    file is the one it names, else none (allowed only with --allow-unverified)."""
    filename = os.path.basename(request.file or request.url.rsplit("/", 1)[-1])
    digest = checksum.parse(request.checksum) if request.checksum else None
    listed = meta.spec_for(hypervisor, request.arch) if meta else None
    if digest is None and listed is not None and listed.filename == filename:
        digest = listed.checksum
    if digest is None and not config.allow_unverified:
        raise SettingsError(f"No checksum for {filename}.",
                            "Pass --checksum {ALG}hex, or --allow-unverified.")
    return TemplateSpec("install", hypervisor, request.arch, template.name, filename, digest,
                        request.url or "", None)
