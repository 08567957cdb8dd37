"""The pre-upgrade check: will seeding succeed? Read-only: it mounts and probes, never writes
a row or keeps a file."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import requests

from . import checksum, images, metadata, observe, plan, session, sources, stores
from .errors import SeedError
from .settings import Settings

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def run(config: Settings) -> list[Problem]:
    """Every reason a seeding run would fail now; empty when ready."""
    try:
        meta = metadata.load(os.path.join(config.templates_dir, "metadata.ini"))
    except SeedError as exc:
        return [Problem("metadata.ini", str(exc))]
    with session.connected(config) as catalog:
        problems = _lock_problems(catalog.named_lock())
        snapshot = observe.read_catalog(catalog, meta)
        try:
            targets, _ = plan.select(snapshot, meta, config.scope)
        except SeedError as exc:
            return problems + [Problem("scope", str(exc))]
        problems += _name_problems(catalog, snapshot, targets)
        with observe.Observation(snapshot, config.mounts, config.jobs) as observation:
            observation.probe(meta, targets, config.templates_dir, config.downloads)
            problems += _source_problems(observation, targets, config)
            problems += _store_problems(observation, targets)
    return problems


def _lock_problems(lock) -> list[Problem]:
    try:
        return [Problem(f"lock {name!r}", f"held by {holder}")
                for name in (session.UPGRADE_LOCK, session.REGISTRATION_LOCK)
                if (holder := lock.holder(name))]
    finally:
        lock.close()


def _name_problems(catalog, snapshot: plan.Snapshot, targets) -> list[Problem]:
    """Names that would make registration miss or shadow an existing template."""
    problems = []
    for spec in {t.spec for t in targets}:
        for other in catalog.templates_named(spec.name):
            if other["type"] != "SYSTEM":
                problems.append(Problem(
                    f"template {other['id']}",
                    f"is named {spec.name!r} but is of type {other['type']}; a separate "
                    "SYSTEM template will be registered. Rename it, or set its type to "
                    "SYSTEM if it is the same image."))
        current = catalog.config_value(spec.hypervisor.config_key)
        if current and not catalog.templates_named(current):
            problems.append(Problem(spec.hypervisor.config_key,
                                    f"names {current!r}, which no template has"))
    return problems


def _source_problems(observation: observe.Observation, targets, config: Settings):
    problems = []
    for spec in sorted({t.spec for t in targets}, key=lambda s: s.section):
        where = f"[{spec.section}]"
        if spec.section in observation.snapshot.missing_sources:
            problems.append(Problem(where, observation.snapshot.missing_sources[spec.section]))
            continue
        if spec.checksum is None and not config.allow_unverified:
            problems.append(Problem(where, "checksum is empty (use --allow-unverified)"))
            continue
        source = observation.sources[spec.section]
        problem = (_reachable(source, config.downloads) if source.kind == sources.DOWNLOAD
                   else _intact(source, spec))
        if problem:
            problems.append(Problem(where, problem))
    return problems


def _intact(source: sources.Source, spec) -> str:
    if spec.checksum is None:
        return ""
    actual = checksum.of_file(source.path, spec.checksum.algorithm)
    if actual != spec.checksum:
        return (f"{source.path} does not match its checksum ({spec.checksum.algorithm}: "
                f"expected {spec.checksum.hexdigest}, actual {actual.hexdigest})")
    return ""


def _reachable(source: sources.Source, settings: sources.DownloadSettings) -> str:
    try:
        response = requests.head(source.url, allow_redirects=True,
                                 timeout=(settings.connect_timeout, settings.read_timeout))
    except requests.RequestException as exc:
        return f"{source.bundled} is missing and {source.url} cannot be reached ({exc})"
    if response.status_code != 200:
        return f"{source.bundled} is missing and {source.url} answers HTTP {response.status_code}"
    return ""


def _store_problems(observation: observe.Observation, targets) -> list[Problem]:
    problems = [Problem(f"store {store_id}", error)
                for store_id, error in observation.snapshot.mount_errors.items()]
    needed: dict[int, int] = {}
    for target in targets:
        source = observation.sources.get(target.spec.section)
        template = plan.existing_template(observation.snapshot, target.spec)
        copy = observation.snapshot.copies.get(
            (target.store.id, template.id if template else -1))
        if source and source.kind != sources.DOWNLOAD and not (copy and copy.state == "seeded"):
            needed[target.store.id] = (needed.get(target.store.id, 0)
                                       + images.expanded_size_estimate(source.path))
    for store_id, root in observation.roots.items():
        label = f"store {store_id}"
        try:
            stores.check_writable(root, label)
        except SeedError as exc:
            problems.append(Problem(label, str(exc)))
            continue
        free = stores.free_bytes(root)
        if free < needed.get(store_id, 0):
            problems.append(Problem(label, f"{free} bytes free; about {needed[store_id]} "
                                           "needed"))
    return problems
