"""The watch loop: each interval, one query says which usable NFS image stores lack a Ready
copy of a template their zone needs; those stores are seeded, the busy ones left alone, and
the failing ones tried again with backoff.

The loop decides when, never how: the query (`catalog.store_needs`) and the seeding (the
`seed` command's, scoped to the stores) are handed in, and so are its clock and its sleep.
Stores seen lacking for the first time are seeded in one run (one plan: each source image
is then read once for all of them, as a `seed` of several stores is); a store tried again
after a failure, or one with a busy hypervisor (a narrower scope), in a run of its own, so
that its failure, its quiet retry and its scope stay its own.

Its only state is in memory, one `Backoff` per process: the database and the stores are the
state, so a restart only forgets when each failing store was to be tried again (it is tried
at the first pass) and which failures were already logged (each is logged once more).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

from . import layout
from .apply import FAILED, Outcome
from .errors import SeedError
from .model import BUSY_AFTER, StoreNeed

LOG = logging.getLogger(__name__)

DEFAULT_INTERVAL = 60.0
MAX_BACKOFF = 3600.0  # a failing store is tried at least hourly

Needs = Callable[[], Sequence[StoreNeed]]
# Seed these stores (only these hypervisors, or every one of their zones' when empty), as
# on-store-added does; the outcome of every step. Raises SeedError for a run that failed as
# a whole (lock, database, metadata.ini).
SeedStores = Callable[[tuple[int, ...], tuple[str, ...]], list[Outcome]]
Report = Callable[[list[Outcome]], str]


@dataclass
class _Failing:
    tries: int
    cause: str  # as logged
    key: str  # the cause without what changes from try to try (mountpoints, stages)
    retry_at: float


class Backoff:
    """When each failing store is tried again: 1, 2, 4 ... `base` seconds after each failure
    in a row (base: the interval, so 1, 2, 4 ... minutes by default), at most `ceiling` apart;
    and whether its cause changed since it was last logged."""

    def __init__(self, base: float, ceiling: float = MAX_BACKOFF):
        self.base = base
        self.ceiling = max(ceiling, base)
        self.failing: dict[int, _Failing] = {}

    def due(self, store_id: int, now: float) -> bool:
        entry = self.failing.get(store_id)
        return entry is None or now >= entry.retry_at

    def known(self, store_id: int) -> bool:
        return store_id in self.failing

    def failed(self, store_id: int, cause: str, now: float) -> tuple[float, bool]:
        """Record a failure: the delay until the next try, and whether the cause is new."""
        entry = self.failing.get(store_id)
        tries = entry.tries + 1 if entry else 1
        delay = min(self.base * 2 ** (tries - 1), self.ceiling)
        key = cause_key(cause)
        self.failing[store_id] = _Failing(tries, cause, key, now + delay)
        return delay, entry is None or entry.key != key

    def succeeded(self, store_id: int) -> Optional[int]:
        """Forget a store's failures; how many tries in a row had failed, if any."""
        entry = self.failing.pop(store_id, None)
        return entry.tries if entry else None

    def forget_others(self, store_ids: set[int]) -> list[int]:
        """Forget the stores that no longer lack anything (seeded by someone, or removed)."""
        gone = sorted(set(self.failing) - store_ids)
        for store_id in gone:
            del self.failing[store_id]
        return gone


_VARYING = (
    re.compile(r"sysvm-seed-\d+-[^\s/:'\"]+"),  # a run's private mountpoint (pid, random)
    re.compile(r"(?<=/stage/)[^\s/:'\"]+"),  # a stage directory (time, random)
)


def cause_key(cause: str) -> str:
    """A cause without the names that differ on every try, to tell a new cause from the same."""
    for pattern in _VARYING:
        cause = pattern.sub("*", cause)
    return cause


@dataclass(frozen=True)
class StoreWork:
    """What one pass finds for one store: the needs to seed and those someone is writing."""

    store_id: int
    url: str
    zone_id: int
    lacking: tuple[StoreNeed, ...] = ()  # seeded now
    busy: tuple[StoreNeed, ...] = ()  # left alone: their hypervisors are not seeded here now

    @property
    def hypervisors(self) -> tuple[str, ...]:
        """The seeding's scope: every hypervisor of the zone, or, when some copy on this
        store is being written by someone else, only the hypervisors of the others."""
        if not self.busy:
            return ()
        return tuple(sorted({n.hypervisor for n in self.lacking}))


def sort_needs(needs: Sequence[StoreNeed], busy_after: float = BUSY_AFTER) -> list[StoreWork]:
    """Per store: what to seed, and what is busy. A hypervisor with a copy in progress on a
    store is left alone there (its other arch too), so nothing writes beside someone else."""
    by_store: dict[int, list[StoreNeed]] = {}
    for need in needs:
        by_store.setdefault(need.store_id, []).append(need)
    works = []
    for store_id, own in sorted(by_store.items()):
        busy = tuple(n for n in own if n.busy(busy_after))
        held = {n.hypervisor.lower() for n in busy}
        lacking = tuple(n for n in own if n.hypervisor.lower() not in held)
        works.append(StoreWork(store_id, own[0].store_url, own[0].zone_id, lacking, busy))
    return works


@dataclass
class PassResult:
    seeded: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # failing, not due yet


@dataclass
class _Run:
    """One seeding run of a pass: its stores, its outcomes, each store's causes of failure."""

    group: list[StoreWork]
    retry: bool  # every store in it failed before
    outcomes: list[Outcome] = field(default_factory=list)
    causes: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        self.causes = {w.store_id: [] for w in self.group}

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(w.store_id for w in self.group)

    def cause(self, store_id: int) -> str:
        return "; ".join(self.causes[store_id])


class Watcher:
    """The loop. `run` passes every `interval` seconds until interrupted (or once)."""

    def __init__(self, needs: Needs, seed: SeedStores, report: Report, interval: float,
                 *, busy_after: float = BUSY_AFTER, max_backoff: float = MAX_BACKOFF,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.needs = needs
        self.seed = seed
        self.report = report
        self.interval = interval
        self.busy_after = busy_after
        self.clock = clock
        self.sleep = sleep
        self.backoff = Backoff(interval, max_backoff)
        self.busy_told: dict[int, str] = {}  # store id -> the busy line last logged
        self.query_failure = ""  # the database error last logged
        self.passes = 0

    def run(self, once: bool = False) -> int:
        """Pass every interval until interrupted (KeyboardInterrupt, errors.Interrupted
        propagate); with once, one pass: 1 when a store failed, else 0.

        :raises SeedError: with once, when the query fails.
        """
        LOG.info("Watching every %s for NFS image stores that lack their zone's system VM "
                 "templates; a copy someone else updated within %s is left alone; a failing "
                 "store is tried again after %s, then twice as long each time, at most every "
                 "%s", duration(self.interval), duration(self.busy_after),
                 duration(self.backoff.base), duration(self.backoff.ceiling))
        while True:
            started = self.clock()
            try:
                result = self.one_pass()
                if once:
                    return 1 if result.failed else 0
            except SeedError:
                if once:
                    raise  # logged; the loop instead asks again at the next interval
            self.sleep(max(0.0, started + self.interval - self.clock()))

    def one_pass(self) -> PassResult:
        """One query; then seed the stores that lack something and are due.

        :raises SeedError: when the query fails (logged once per change of cause).
        """
        self.passes += 1
        works = self._ask()
        result = PassResult()
        self.backoff.forget_others({w.store_id for w in works})
        for store_id in sorted(set(self.busy_told) - {w.store_id for w in works if w.busy}):
            del self.busy_told[store_id]
        due = []
        for work in works:
            if work.busy:
                self._tell_busy(work)
                result.busy.append(work.store_id)
            if not work.lacking:
                continue
            if not self.backoff.due(work.store_id, self.clock()):
                LOG.debug("Store %d still failing; next try in %s", work.store_id,
                          duration(self.backoff.failing[work.store_id].retry_at - self.clock()))
                result.waiting.append(work.store_id)
                continue
            problem = _url_problem(work)
            if problem:
                self._failed(work, problem, result)
                continue
            due.append(work)
        if not due:
            LOG.debug("Pass %d: nothing to seed", self.passes)
            return result
        self._seed_all(due, result)
        return result

    # --- the steps of a pass ---------------------------------------------------------------

    def _ask(self) -> list[StoreWork]:
        try:
            needs = self.needs()
        except SeedError as exc:
            cause = str(exc)
            if cause != self.query_failure:
                LOG.error("%s The watch goes on and asks again every %s; this is logged "
                          "again only when the cause changes.", cause, duration(self.interval))
                self.query_failure = cause
            else:
                LOG.debug("The query failed again: %s", cause)
            raise
        if self.query_failure:
            LOG.info("The database answers again.")
            self.query_failure = ""
        return sort_needs(needs, self.busy_after)

    def _tell_busy(self, work: StoreWork) -> None:
        text = "; ".join(
            f"{n.describe()} is being written by someone else (template_store_ref {n.ref_id}: "
            f"{n.ref_state}, updated {duration(max(0.0, n.ref_age or 0.0))} ago)"
            for n in work.busy)
        line = (f"Store {work.store_id} ({work.url}): {text}; left alone until it is Ready, "
                f"or seeded over once it has not moved for {duration(self.busy_after)}.")
        if self.busy_told.get(work.store_id) != cause_key(line):
            LOG.info("%s", line)
            self.busy_told[work.store_id] = cause_key(line)

    def _seed_all(self, due: list[StoreWork], result: PassResult) -> None:
        runs = [self._seed(group) for group in _groups(due, self.backoff)]
        self._ask_again(runs)
        for run in runs:
            news = not run.retry or any(
                not run.causes[i] or cause_key(run.cause(i)) != self.backoff.failing[i].key
                for i in run.ids)
            if run.outcomes:
                level = logging.INFO if news else logging.DEBUG
                LOG.log(level, "Report for store(s) %s:", ", ".join(map(str, run.ids)))
                for line in self.report(run.outcomes).splitlines():
                    LOG.log(level, "  %s", line)
            for work in run.group:
                if run.causes[work.store_id]:
                    self._failed(work, run.cause(work.store_id), result)
                    continue
                result.seeded.append(work.store_id)
                tries = self.backoff.succeeded(work.store_id)
                LOG.info("Store %d (%s) now holds every template its zone needs%s.",
                         work.store_id, work.url,
                         f", after {tries} failed tries" if tries else "")

    def _seed(self, group: list[StoreWork]) -> _Run:
        """Seed a group of stores as on-store-added does, and collect each store's failures."""
        run = _Run(group, all(self.backoff.known(w.store_id) for w in group))
        hypervisors = group[0].hypervisors if len(group) == 1 else ()
        if run.retry:
            LOG.debug("Trying store(s) %s again", ", ".join(map(str, run.ids)))
        for work in group if not run.retry else ():
            LOG.info("Store %d (%s) in zone %d lacks %s: seeding it%s", work.store_id,
                     work.url, work.zone_id, ", ".join(n.describe() for n in work.lacking),
                     f" for {', '.join(hypervisors)} only" if hypervisors else "")
        with quietly(run.retry):  # a retry's lines were logged at its first failure
            try:
                run.outcomes = self.seed(run.ids, hypervisors)
            except SeedError as exc:
                for store_id in run.ids:
                    run.causes[store_id].append(str(exc))
        for outcome in run.outcomes:
            if outcome.status != FAILED or not outcome.error:
                continue
            store = outcome.step.store
            for store_id in [store.id] if store is not None and store.id in run.causes \
                    else run.ids:
                if outcome.error not in run.causes[store_id]:
                    run.causes[store_id].append(outcome.error)
        return run

    def _ask_again(self, runs: list[_Run]) -> None:
        """After seeding, ask again: a store seeded without error that still lacks a template
        its zone needs has failed too (the templates directory does not hold that template),
        or it would be seeded, to no avail, every interval."""
        if not any(not run.causes[i] for run in runs for i in run.ids):
            return
        try:
            still = {w.store_id: w for w in sort_needs(self.needs(), self.busy_after)}
        except SeedError as exc:
            LOG.debug("Could not ask again after seeding: %s", exc)
            return
        for run in runs:
            for store_id in run.ids:
                lacking = still[store_id].lacking if store_id in still else ()
                if lacking and not run.causes[store_id]:
                    names = ", ".join(n.describe() for n in lacking)
                    run.causes[store_id].append(
                        f"seeded, but it still lacks {names}: the templates directory (its "
                        "metadata.ini) holds other templates. Copy it there from a store that "
                        "has it with `cloudstack-sysvm-seed repair`, or install the templates "
                        "that hold it")

    def _failed(self, work: StoreWork, cause: str, result: PassResult) -> None:
        delay, new = self.backoff.failed(work.store_id, cause, self.clock())
        result.failed.append(work.store_id)
        if new:
            ceiling = duration(self.backoff.ceiling)
            then = (f"every {ceiling}" if delay >= self.backoff.ceiling
                    else f"twice as long each time up to {ceiling}")
            LOG.warning("Store %d (%s) in zone %d: %s. Next try in %s, then %s; logged again "
                        "only when the cause changes.", work.store_id, work.url, work.zone_id,
                        cause.rstrip("."), duration(delay), then)
        else:
            LOG.debug("Store %d failed again (same cause); next try in %s", work.store_id,
                      duration(delay))


def _groups(due: list[StoreWork], backoff: Backoff) -> Iterator[list[StoreWork]]:
    """One seeding run for every store seen failing for the first time, with no copy in
    progress (each source image is then read once for all of them); one run each for the
    others, so that a retry's failure, or a store's narrower scope, stays its own."""
    together = [w for w in due if not w.busy and not backoff.known(w.store_id)]
    if together:
        yield together
    for work in due:
        if work not in together:
            yield [work]


def _url_problem(work: StoreWork) -> str:
    try:
        layout.parse_url(work.url)
    except ValueError as exc:
        return f"{exc}; correct image_store.url (nfs://host/path)"
    return ""


class _Demote(logging.Filter):
    """Every record becomes DEBUG: shown with --debug only."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def quietly(enabled: bool = True) -> Iterator[None]:
    """Log what happens inside at DEBUG only (on every handler of the root logger)."""
    if not enabled:
        yield
        return
    demote = _Demote()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(demote)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(demote)


def duration(seconds: float) -> str:
    """1h, 1.5h, 2m, 10m (for 612 s), 90s, 30s, 0.25s."""
    if seconds >= 3600:
        hours = seconds / 3600
        return f"{hours:g}h" if hours == int(hours) else f"{hours:.1f}h"
    if seconds >= 120 or (seconds >= 60 and seconds % 60 == 0):
        return f"{round(seconds / 60)}m"
    if seconds >= 10:
        return f"{seconds:.0f}s"
    return f"{seconds:.2g}s"
