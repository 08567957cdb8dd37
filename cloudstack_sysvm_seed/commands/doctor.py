"""`doctor`: read the database and every zone's NFS stores, and report, changing nothing, what
keeps system VMs from starting; each finding with its code, rows, zones, stores and fix."""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Iterable

from .. import doctor, errors, hypervisors, metadata
from ..errors import MetadataError
from ..model import Snapshot
from ..observe import Observer
from ..settings import Settings
from . import Command, connected, exit_codes, store_arguments

LOG = logging.getLogger(__name__)


def observe_all(observer: Observer) -> Snapshot:
    """The database, and a full survey of every zone's NFS store (read-only ones too)."""
    snapshot = observer.read()
    return observer.survey(snapshot, [s for s in snapshot.stores
                                      if s.protocol == "nfs" and s.zone_id is not None])


def seedable(config: Settings, snapshot: Snapshot) -> frozenset[int]:
    """The templates metadata.ini describes: for them, `seed` is the fix to recommend."""
    try:
        meta = metadata.load(os.path.join(config.templates_dir, "metadata.ini"))
    except MetadataError as exc:
        LOG.info("Cannot read metadata.ini (%s); repair is recommended where seed would do",
                 exc.message.splitlines()[0])
        return frozenset()
    found = set()
    for template in snapshot.templates:
        hypervisor = hypervisors.by_db_name(template.hypervisor)
        spec = meta.spec_for(hypervisor, template.arch) if hypervisor else None
        if spec is not None and spec.name == template.name:
            found.add(template.id)
    return frozenset(found)


def findings_text(findings: Iterable[doctor.Finding], in_progress: Iterable[str] = ()) -> str:
    findings, in_progress = list(findings), list(in_progress)
    lines = [f"{len(findings)} finding(s):" if findings else "Healthy: no findings."]
    for finding in findings:
        lines += ["", *finding_lines(finding)]
    if in_progress:
        lines += ["", "In progress (left alone):", *(f"  {line}" for line in in_progress)]
    return "\n".join(lines)


def finding_lines(finding: doctor.Finding) -> list[str]:
    where = " ".join(x for x in (finding.hypervisor, finding.arch) if x)
    rows = ", ".join(f"{table} {key}" for table, key in finding.rows) or "-"
    return [
        f"[{finding.code}]" + (f" {where}" if where else ""),
        f"  {finding.message}",
        f"  rows: {rows}; zones: {', '.join(map(str, finding.zones)) or '-'}; "
        f"stores: {', '.join(map(str, finding.stores)) or '-'}",
        f"  fix: {finding.fix}",
        *([f"  run: {finding.command}"] if finding.command else []),
    ]


def _run(args: argparse.Namespace, config: Settings) -> int:
    # reap=False: doctor changes nothing; what dead runs left is a finding (stale-mount).
    with connected(config) as catalog, Observer(catalog, config.mounts, config.jobs,
                                                reap=False) as observer:
        snapshot = observe_all(observer)
    findings = doctor.diagnose(snapshot, seedable(config, snapshot))
    busy = doctor.in_progress(snapshot)
    if config.json:
        print(json.dumps([f.record() for f in findings], indent=2))
        for line in busy:
            LOG.info("%s", line)
    else:
        print(findings_text(findings, busy))
    return errors.EXIT_FAILED if findings else errors.EXIT_OK


DOCTOR = Command(
    "doctor", "find what keeps system VMs from starting (read-only)",
    "Check, without changing anything, what keeps system VMs from starting: duplicate "
    "per-zone templates, missing zone refs and store copies, refs that are not Ready, files "
    "that disagree with the rows, zero sizes, router.template.<hv>, system VMs on old "
    "templates, templates rolled back, orphan directories and abandoned stages.",
    store_arguments, _run,
    exit_codes(errors.EXIT_FAILED,
               meaning={errors.EXIT_OK: "healthy: no findings",
                        errors.EXIT_FAILED: "findings (listed, each with its fix)"}),
    mounts=True)
