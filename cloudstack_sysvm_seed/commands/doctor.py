"""`doctor`: read the database and every zone's NFS stores, and report, changing nothing, what
keeps system VMs from starting; each finding with its code, rows, zones, stores and fix."""

from __future__ import annotations

import argparse
import json
from typing import Iterable

from .. import doctor, errors
from ..model import Snapshot
from ..observe import Observer
from ..settings import Settings
from . import Command, connected, exit_codes, store_arguments


def observe_all(observer: Observer) -> Snapshot:
    """The database, and a full survey of every zone's NFS store (read-only ones too)."""
    snapshot = observer.read()
    return observer.survey(snapshot, [s for s in snapshot.stores
                                      if s.protocol == "nfs" and s.zone_id is not None])


def findings_text(findings: Iterable[doctor.Finding]) -> str:
    findings = list(findings)
    if not findings:
        return "Healthy: no findings."
    lines = [f"{len(findings)} finding(s):"]
    for finding in findings:
        lines += ["", *finding_lines(finding)]
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
    ]


def _run(args: argparse.Namespace, config: Settings) -> int:
    with connected(config) as catalog, Observer(catalog, config.mounts, config.jobs) as observer:
        findings = doctor.diagnose(observe_all(observer))
    print(json.dumps([f.record() for f in findings], indent=2) if config.json
          else findings_text(findings))
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
