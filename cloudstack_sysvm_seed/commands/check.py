"""`check`, the pre-upgrade check: will seeding succeed? Read-only: it plans as `seed` does,
mounts and probes, and never writes a row or keeps a file."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass

from .. import checksum, errors, images, lock, plan, sources, stores
from ..catalog import Catalog
from ..errors import SeedError
from ..metadata import Metadata
from ..model import Snapshot
from ..observe import Observer
from ..settings import Settings
from . import (
    Command,
    connected,
    exit_codes,
    load_metadata,
    scope_arguments,
    source_arguments,
    store_arguments,
)
from .seed import observe_and_plan

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
        meta = load_metadata(config)
    except SeedError as exc:
        return [Problem("metadata.ini", str(exc))]
    with connected(config) as catalog:
        problems = _lock_problems(catalog.named_lock())
        with Observer(catalog, config.mounts, config.jobs) as observer:
            try:
                snapshot, _ = observe_and_plan(observer, meta, config)
                targets, _ = plan.select(snapshot, meta, config.scope)
            except SeedError as exc:
                return problems + [Problem("scope", str(exc))]
            specs = {spec for _, _, spec in targets}
            problems += _downgrade_problems(snapshot, meta, specs, config)
            problems += _name_problems(catalog, snapshot, specs)
            problems += _source_problems(snapshot, observer, specs, config)
            problems += _store_problems(snapshot, observer, targets)
    return problems


def _lock_problems(named) -> list[Problem]:
    try:
        return [Problem(f"lock {name!r}", f"held by {holder}")
                for name in (lock.UPGRADE_LOCK, lock.REGISTRATION_LOCK)
                if (holder := named.holder(name))]
    finally:
        named.close()


def _downgrade_problems(snapshot: Snapshot, meta: Metadata, specs,
                        config: Settings) -> list[Problem]:
    if config.allow_downgrade:
        return []
    return [Problem(f"[{section}]", reason)
            for section, reason in sorted(plan.downgrades(snapshot, meta, specs).items())]


def _name_problems(catalog: Catalog, snapshot: Snapshot, specs) -> list[Problem]:
    """Names that would make registration miss or shadow an existing template."""
    problems = []
    for spec in specs:
        for other in catalog.templates_named(spec.name):
            if other["type"] != "SYSTEM":
                problems.append(Problem(
                    f"template {other['id']}",
                    f"is named {spec.name!r} but is of type {other['type']}; a separate "
                    "SYSTEM template will be registered. Rename it, or set its type to "
                    "SYSTEM if it is the same image."))
        current = snapshot.settings.get(spec.hypervisor.config_key)
        if current and not catalog.templates_named(current):
            problems.append(Problem(spec.hypervisor.config_key,
                                    f"names {current!r}, which no template has"))
    return problems


def _source_problems(snapshot: Snapshot, observer: Observer, specs,
                     config: Settings) -> list[Problem]:
    problems = []
    for spec in sorted(specs, key=lambda s: s.section):
        where = f"[{spec.section}]"
        if spec.section in snapshot.missing_sources:
            problems.append(Problem(where, snapshot.missing_sources[spec.section]))
            continue
        if spec.checksum is None and not config.allow_unverified:
            problems.append(Problem(where, "checksum is empty (use --allow-unverified)"))
            continue
        source = observer.sources[spec.section]
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


def _reachable(source: sources.Source, settings) -> str:
    import requests  # only when a bundled file is missing (see sources._fetch_once)

    try:
        response = requests.head(source.url, allow_redirects=True,
                                 timeout=(settings.connect_timeout, settings.read_timeout))
    except requests.RequestException as exc:
        return f"{source.bundled} is missing and {source.url} cannot be reached ({exc})"
    if response.status_code != 200:
        return f"{source.bundled} is missing and {source.url} answers HTTP {response.status_code}"
    return ""


def _store_problems(snapshot: Snapshot, observer: Observer, targets) -> list[Problem]:
    problems = [Problem(f"store {store_id}", survey.error)
                for store_id, survey in snapshot.surveys.items() if survey.error]
    needed: dict[int, int] = {}
    for _, store, spec in targets:
        source = observer.sources.get(spec.section)
        template = snapshot.registered(spec)
        copy = snapshot.copy(store.id, template.id) if template else None
        if source and source.kind != sources.DOWNLOAD and not (copy and copy.seeded):
            needed[store.id] = (needed.get(store.id, 0)
                                + images.expanded_size_estimate(source.path))
    for store_id, root in observer.roots.items():
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


def _arguments(parser: argparse.ArgumentParser) -> None:
    scope_arguments(parser)
    store_arguments(parser)
    source_arguments(parser)
    parser.add_argument("--allow-downgrade", action="store_true",
                        help="do not count an older templates directory as a problem")


def _run(args: argparse.Namespace, config: Settings) -> int:
    problems = run(config)
    if config.json:
        print(json.dumps([{"where": p.where, "problem": p.what} for p in problems], indent=2))
    elif problems:
        print(f"{len(problems)} problem(s):")
        print("\n".join(f"- {p}" for p in problems))
    else:
        print("ready")
    return errors.EXIT_FAILED if problems else errors.EXIT_OK


CHECK = Command(
    "check", "say, changing nothing, whether seeding would succeed",
    "Check, without changing anything, that seeding would succeed now: a valid bundled or "
    "downloadable image for every hypervisor in use, no templates directory older than "
    "what a hypervisor uses now, names that line up, every store mountable and writable "
    "with room, and the lock free. Prints the problems, or 'ready'.",
    _arguments, _run,
    exit_codes(errors.EXIT_FAILED,
               meaning={errors.EXIT_OK: "ready: seeding would succeed now",
                        errors.EXIT_FAILED: "problems were found (listed)"}),
    mounts=True)
