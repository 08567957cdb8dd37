"""`install`: one template image onto one store the operator mounted, safely: the successor of
cloud-install-sys-tmplt."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Optional

from .. import apply, checksum, errors, hypervisors, layout, lock, metadata, plan, sources, stores
from ..errors import SettingsError, StoreError
from ..metadata import TemplateSpec
from ..model import Snapshot, Store, Template
from ..observe import Observer
from ..settings import Settings
from . import Command, connected, exit_codes, lock_argument, source_arguments
from .seed import report_and_exit


@dataclass(frozen=True)
class InstallRequest:
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
    """Write one template copy onto a mounted store and keep the rows consistent.

    :raises SeedError: for anything that would make the copy unsafe or unrecorded.
    """
    if not stores.is_mounted(request.mountpoint):
        raise StoreError(f"{request.mountpoint} is not a mount point.",
                         "Mount the secondary store there first; nothing was written.")
    hypervisor = hypervisors.lookup(request.hypervisor)
    if hypervisor is None:
        raise SettingsError(f"Unknown hypervisor {request.hypervisor!r}.")
    meta = _optional_metadata(config)
    with connected(config) as catalog, lock.registration_lock(
            catalog, config.lock_timeout) as held:
        snapshot = Observer(catalog, config.mounts).read()
        template = _template(snapshot, request, hypervisor)
        store = _store(snapshot, request)
        spec = _spec(request, hypervisor, template, meta, config)
        source = (sources.Source(sources.DOWNLOAD, os.path.join(
                      config.downloads.cache_dir, spec.filename), request.url, "(none)")
                  if request.url else sources.Source(sources.BUNDLED, request.file))
        copy = stores.probe(request.mountpoint, template.id, hypervisor.extension)
        if copy.seeded and not request.force:
            raise StoreError(f"Template {template.id} is already on this store "
                             f"({layout.template_dir(request.mountpoint, template.id)}).",
                             "Pass -F to replace it (the old copy is set aside, not deleted).")
        return apply.run(plan.install_plan(snapshot, spec, template, store, copy), apply.Context(
            catalog, {store.id: request.mountpoint}, {spec.section: source}, config.downloads,
            config.max_image_size, config.stall_timeout, guard=held.verify))


def _optional_metadata(config: Settings) -> Optional[metadata.Metadata]:
    path = os.path.join(config.templates_dir, "metadata.ini")
    return metadata.load(path) if os.path.exists(path) else None


def _template(snapshot: Snapshot, request: InstallRequest,
              hypervisor: hypervisors.Hypervisor) -> Template:
    """-t ID, or the newest SYSTEM template of the hypervisor (cloud-install-sys-tmplt's
    choice), which must exist: install never registers a template by itself."""
    candidates = [t for t in snapshot.templates
                  if t.hypervisor.lower() == hypervisor.db_name.lower()
                  and t.arch == request.arch and request.template_id in (None, t.id)]
    if not candidates:
        wanted = f"template {request.template_id}" if request.template_id else (
            f"a SYSTEM template for {hypervisor.key} {request.arch}")
        raise SettingsError(f"There is no {wanted} (SYSTEM, not removed).",
                            "Register it first (run cloudstack-sysvm-seed), or pass -t ID.")
    return max(candidates, key=lambda t: t.id)


def _store(snapshot: Snapshot, request: InstallRequest) -> Store:
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


def _export(store: Store) -> str:
    try:
        return layout.parse_url(store.url).export
    except ValueError:
        return ""


def _spec(request: InstallRequest, hypervisor, template: Template, meta,
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


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--mountpoint", required=True, help="the mounted store")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--file", help="the template image (compressed or not)")
    source.add_argument("-u", "--url", help="download the image from this URL")
    # -h is the hypervisor, as in cloud-install-sys-tmplt; help stays on --help.
    parser.add_argument("-h", "--hypervisor", required=True, help="kvm, vmware, xenserver, ...")
    parser.add_argument("--arch", default="x86_64", help="x86_64 (default) or aarch64")
    parser.add_argument("-t", "--template-id", type=int,
                        help="the SYSTEM template to install (default: the newest one)")
    parser.add_argument("-s", "--store-id", type=int,
                        help="image_store.id of the mounted store (default: found from the mount)")
    parser.add_argument("-c", "--checksum", help="{ALG}hex of the file (default: metadata.ini)")
    parser.add_argument("-F", "--force", action="store_true",
                        help="replace an existing copy (it is set aside, not deleted)")
    source_arguments(parser)
    lock_argument(parser)


def _run(args: argparse.Namespace, config: Settings) -> int:
    return report_and_exit(install(config, InstallRequest(
        args.mountpoint, args.hypervisor, args.file, args.url, args.checksum,
        args.template_id, args.store_id, args.arch, args.force)), config)


INSTALL = Command(
    "install", "install one image onto one store you mounted",
    "Install one template image onto one store you mounted, safely: the successor of "
    "cloud-install-sys-tmplt. Refuses a mountpoint that is not mounted, verifies the "
    "checksum, writes template.properties with true sizes, and records the copy in "
    "template_store_ref.",
    _arguments, _run,
    exit_codes(errors.EXIT_FAILED, errors.EXIT_METADATA, errors.EXIT_STORE,
               errors.EXIT_SOURCE, errors.EXIT_LOCKED,
               meaning={errors.EXIT_OK: "the copy is written and recorded",
                        errors.EXIT_FAILED: "the copy failed (see the report)"}))
