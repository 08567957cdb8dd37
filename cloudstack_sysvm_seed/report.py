"""The run's report: one record per (zone, store, hypervisor), and one per change around the
copies (action `configure`: settings, system VMs, template rows; held ones included, status
`held`), as text or as JSON. A dry run's report is the plan, in the same words.

The text fits an 80-column terminal without losing a word: a block per zone and store,
every long line wrapped; each distinct failure is told once, with what it hit; copies,
stores and the changes around them are counted apart.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from typing import Iterable, Optional

from .apply import FAILED, PLANNED, READY, SKIPPED, Outcome
from .model import ADOPT, FAIL, NONE, SKIP, WRITES_COPY

WIDTH = 80
WARNING = "warning"  # how the text shows a zone that can get no copy
_COPY_ACTIONS = (*WRITES_COPY, ADOPT, NONE, SKIP, FAIL)  # a record per (zone, store, hv)
_STATUS_ORDER = (READY, PLANNED, "held", FAILED, SKIPPED, WARNING)


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
        if is_change(rec):
            return (1,)
        return (0, rec["zone_id"] or 0, rec["store_id"] or 0, rec["hypervisor"] or "",
                rec["arch"] or "")
    return sorted((record(o) for o in outcomes), key=key)


def to_json(outcomes: Iterable[Outcome]) -> str:
    return json.dumps(records(outcomes), indent=2)


def fatal_json(message: str, exit_code: int, hint: Optional[str] = None) -> str:
    """What --json prints when the run stops early: the error, its exit code and hint."""
    return json.dumps({"error": message, "exit_code": exit_code, "hint": hint}, indent=2)


# --- what the records say ------------------------------------------------------------------


def is_change(rec: dict) -> bool:
    """A change around the copies (configure, prune, keep), not a copy's own record."""
    return rec["action"] not in _COPY_ACTIONS


def is_zone_warning(rec: dict) -> bool:
    """A zone with no usable NFS store: it can get no copy at all."""
    return (rec["action"] == SKIP and rec["zone_id"] is not None and rec["store_id"] is None
            and not rec["hypervisor"])


def warnings(recs: list[dict]) -> list[str]:
    return [f"zone {rec['zone']} ({rec['zone_id']}): {rec['detail']}"
            for rec in recs if is_zone_warning(rec)]


def failures(recs: list[dict]) -> list[tuple[str, str]]:
    """Each distinct failure once, in the order first met: (error, what it hit)."""
    hit: dict[str, list[dict]] = {}
    for rec in recs:
        if rec["status"] == FAILED:
            hit.setdefault(rec["error"] or "failed", []).append(rec)
    return [(error, _hit(found)) for error, found in hit.items()]


def failure_line(error: str, where: str) -> str:
    """A failure as the log says it."""
    return f"Failed for {where}: {error}"


def _hit(recs: list[dict]) -> str:
    changes = [rec["detail"] for rec in recs if is_change(rec)]
    if changes:
        return "the change " + "; ".join(dict.fromkeys(changes))
    hypervisors = list(dict.fromkeys(f"{r['hypervisor']} {r['arch']}" for r in recs
                                     if r["hypervisor"]))
    stores = list(dict.fromkeys(f"{r['store_id']} ({r['store_url']})" for r in recs
                                if r["store_id"] is not None))
    zones = list(dict.fromkeys(r["zone"] for r in recs if r["zone"]))
    parts = [", ".join(hypervisors)] if hypervisors else []
    if stores:
        parts.append(("on store " if len(stores) == 1 else "on stores ") + ", ".join(stores))
    if zones:
        parts.append(("in zone " if len(zones) == 1 else "in zones ") + ", ".join(zones))
    return " ".join(parts) or "the run"


def summary(outcomes: Iterable[Outcome]) -> str:
    """Copies, stores and the changes around them, each counted by status."""
    recs = records(outcomes)
    if not recs:
        return "Nothing to do: no zone with a hypervisor and an NFS image store in scope."
    copies = [r["status"] for r in recs if r["store_id"] is not None and r["hypervisor"]]
    stores = list(_store_status(recs).values())
    changes = [r["status"] for r in recs if is_change(r)]
    others = [WARNING if is_zone_warning(r) else r["status"] for r in recs
              if r["store_id"] is None and not is_change(r)]
    parts = [f"{what} {_counts(statuses)}" for what, statuses in (
        ("copies", copies), ("stores", stores), ("settings and other changes", changes),
        ("zones and hypervisors", others)) if statuses]
    return "; ".join(parts) + "."


def _store_status(recs: list[dict]) -> dict[int, str]:
    """A store is failed when one of its copies failed, skipped when it was not seeded."""
    found: dict[int, set] = {}
    for rec in recs:
        if rec["store_id"] is not None:
            found.setdefault(rec["store_id"], set()).add(rec["status"])
    return {store: next((s for s in (FAILED, PLANNED, READY) if s in statuses), SKIPPED)
            for store, statuses in found.items()}


def _counts(statuses: list[str]) -> str:
    counts = Counter(statuses)
    ordered = sorted(counts, key=lambda s: (_STATUS_ORDER.index(s) if s in _STATUS_ORDER
                                            else len(_STATUS_ORDER), s))
    return ", ".join(f"{counts[s]} {s}" for s in ordered)


# --- the text -------------------------------------------------------------------------------


def to_table(outcomes: list[Outcome], dry_run: bool = False) -> str:
    """The report as text: a block per zone and store, the changes, the failures."""
    recs = records(outcomes)
    failed = failures(recs)
    number = {error: n for n, (error, _) in enumerate(failed, 1)}
    lines = ["Dry run: nothing was changed. The plan:", ""] if dry_run else []
    lines += _places(recs, number)
    changes = [rec for rec in recs if is_change(rec)]
    if changes:
        lines += ["", "Changes:"]
        for rec in changes:
            lines += _wrapped(_change_text(rec, number), "  ", " " * 11)
    if failed:
        lines += ["", "Failures:"]
        for n, (error, where) in enumerate(failed, 1):
            lines += _error_lines(f"[{n}] ", error)
            lines += _wrapped(f"({where})", "    ", "     ")
    said = summary(outcomes)
    lines += [""] + _wrapped(said[:1].upper() + said[1:], "", "")
    return "\n".join(lines)


def _places(recs: list[dict], number: dict[str, int]) -> list[str]:
    """A block per zone, and in it one per store, each line one record."""
    lines: list[str] = []
    zone, store = object(), object()
    for rec in recs:
        if is_change(rec):
            continue
        if rec["zone_id"] != zone:
            zone, store = rec["zone_id"], object()
            lines.append(f"Zone {rec['zone']} ({zone})" if zone is not None else "All zones")
        if rec["store_id"] is not None and rec["store_id"] != store:
            store = rec["store_id"]
            lines += _wrapped(f"Store {store}  {rec['store_url']}", "  ", "    ")
        indent = "    " if rec["store_id"] is not None else "  "
        lines += _wrapped(_place_text(rec, number), indent, indent + "  ")
    return lines


def _place_text(rec: dict, number: dict[str, int]) -> str:
    if is_zone_warning(rec):
        return f"{WARNING}: {rec['detail']}"
    what = " ".join(x for x in (rec["hypervisor"], rec["arch"]) if x)
    template = f"template {rec['template_id']}" if rec["template_id"] is not None else ""
    # "fail failed", "skip skipped": the action says nothing the status does not.
    action = "" if rec["action"] in (FAIL, SKIP) else rec["action"]
    head = (f"{what:<17}{template:<14}{action:<9} {rec['status']}" if what else
            rec["status"])
    if rec["status"] == FAILED:
        return f"{head}: see failure [{number[rec['error'] or 'failed']}]"
    return f"{head}: {rec['detail']}" if rec["detail"] else head


def _change_text(rec: dict, number: dict[str, int]) -> str:
    text = f"{rec['status']:<8} {rec['detail'] or ''}"
    if rec["status"] == FAILED:
        text += f": see failure [{number[rec['error'] or 'failed']}]"
    return text


def _error_lines(first: str, error: str) -> list[str]:
    """An error's own lines kept (a checksum's expected and actual), each one wrapped."""
    lines = []
    for n, line in enumerate(error.splitlines() or [""]):
        lines += _wrapped(line, first if n == 0 else " " * len(first), " " * (len(first) + 2))
    return lines


def _wrapped(text: str, indent: str, subsequent: str) -> list[str]:
    # Paths, URLs and digests are never broken: a word longer than a line keeps its own.
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=subsequent,
                         break_long_words=False, break_on_hyphens=False) or [indent.rstrip()]
