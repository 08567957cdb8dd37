"""The run's report: one record per (zone, store, hypervisor), and one per change around the
copies (action `configure`: settings, system VMs, template rows; held ones included, status
`held`), as a table or as JSON. A dry run's report is the plan, in the same words."""

from __future__ import annotations

import json
from collections import Counter
from typing import Iterable

from .apply import FAILED, Outcome
from .model import ADOPT, FAIL, NONE, SKIP, WRITES_COPY

_COLUMNS = ("ZONE", "STORE", "HYPERVISOR", "TEMPLATE", "ACTION", "STATUS", "DETAIL")
_DETAIL_WIDTH = 70


def record(outcome: Outcome) -> dict:
    step = outcome.step
    return {
        "zone_id": step.zone.id if step.zone else None,
        "zone": step.zone.name if step.zone else None,
        "store_id": step.store.id if step.store else None,
        "store_url": step.store.url if step.store else None,
        "hypervisor": step.hypervisor or None,
        "arch": step.arch or None,
        "template_id": outcome.template_id,
        "action": step.action,
        "status": outcome.status,
        "error": outcome.error or None,
        "detail": outcome.detail or step.reason or None,
        "source": outcome.source or None,
    }


def records(outcomes: Iterable[Outcome]) -> list[dict]:
    """The copies' records by zone, store and hypervisor (zone-wide ones first), then the
    changes around them in the order they were made."""
    def key(rec):
        if rec["action"] not in (*WRITES_COPY, ADOPT, NONE, SKIP, FAIL):
            return (1,)
        return (0, rec["zone_id"] or 0, rec["store_id"] or 0, rec["hypervisor"] or "",
                rec["arch"] or "")
    return sorted((record(o) for o in outcomes), key=key)


def to_json(outcomes: Iterable[Outcome]) -> str:
    return json.dumps(records(outcomes), indent=2)


def to_table(outcomes: list[Outcome], dry_run: bool = False) -> str:
    rows = [_row(rec) for rec in records(outcomes)]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(_COLUMNS)]
    lines = []
    if dry_run:
        lines.append("Dry run: nothing was changed. The plan:")
    lines.append(_line(_COLUMNS, widths))
    lines.extend(_line(r, widths) for r in rows)
    lines.append(summary(outcomes))
    failures = [rec for rec in records(outcomes) if rec["status"] == FAILED]
    if failures:
        lines.append("")
        lines.append("Failures:")
        lines.extend(f"- {_where(rec)}: {rec['error']}" for rec in failures)
    return "\n".join(lines)


def summary(outcomes: Iterable[Outcome]) -> str:
    counts = Counter(o.status for o in outcomes)
    if not counts:
        return "Nothing to do: no zone with a hypervisor and an NFS image store in scope."
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _row(rec: dict) -> tuple[str, ...]:
    text = (rec["error"] or rec["detail"] or "").splitlines()
    detail = text[0] if text else ""
    if len(detail) > _DETAIL_WIDTH:
        detail = detail[: _DETAIL_WIDTH - 3] + "..."
    hypervisor = "-".join(x for x in (rec["hypervisor"], rec["arch"]) if x)
    return (
        f"{rec['zone_id']} {rec['zone']}" if rec["zone_id"] is not None else "-",
        f"{rec['store_id']} {rec['store_url']}" if rec["store_id"] is not None else "-",
        hypervisor or "-",
        str(rec["template_id"]) if rec["template_id"] is not None else "-",
        rec["action"],
        rec["status"],
        detail,
    )


def _where(rec: dict) -> str:
    parts = []
    if rec["zone"]:
        parts.append(f"zone {rec['zone']}")
    if rec["store_id"] is not None:
        parts.append(f"store {rec['store_id']} ({rec['store_url']})")
    if rec["hypervisor"]:
        parts.append(f"{rec['hypervisor']} {rec['arch']}")
    return ", ".join(parts)


def _line(cells, widths) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
