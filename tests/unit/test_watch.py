"""The watch loop with its clock and sleep handed in: the backoff schedule, the log-once rule,
busy copies, and what one seeding run covers. The query and the seeding are plain functions
here; tests/integration/test_watch.py runs the real ones."""

from __future__ import annotations

import logging

import pytest

from cloudstack_sysvm_seed import errors, report
from cloudstack_sysvm_seed.apply import FAILED, READY, Outcome
from cloudstack_sysvm_seed.model import SEED, Step, Store, StoreNeed, Zone
from cloudstack_sysvm_seed.watch import Backoff, Watcher, cause_key, duration, sort_needs

MINUTE = 60.0


def need(store_id=5, hypervisor="KVM", arch="x86_64", ref_age=None, template_id=200):
    return StoreNeed(store_id, f"nfs://10.0.0.{store_id}/s", 1, hypervisor, arch, template_id,
                     f"systemvm-{hypervisor.lower()}-4.20.0", "router.template.kvm",
                     ref_id=None if ref_age is None else 77,
                     ref_state="" if ref_age is None else "Creating/DOWNLOAD_IN_PROGRESS",
                     ref_age=ref_age)


def outcome(store_id, status=READY, error=""):
    store = Store(store_id, "", f"s{store_id}", 1, f"nfs://10.0.0.{store_id}/s", "nfs", "NFS",
                  False)
    step = Step(SEED, Zone(1, "", "east"), store, "kvm", "x86_64", 200)
    return Outcome(step, status, 200, error)


class World:
    """The query's answer and the seeding, as plain data; a clock that sleep moves on."""

    def __init__(self, needs):
        self.now = 0.0
        self.needs = list(needs)
        self.seeded: list[tuple[float, tuple[int, ...], tuple[str, ...]]] = []
        self.error = "mount.nfs: access denied by server"  # what seeding store 5 fails with

    def ask(self):
        return list(self.needs)

    def seed(self, store_ids, hypervisors):
        self.seeded.append((self.now, store_ids, hypervisors))
        logging.getLogger("cloudstack_sysvm_seed.observe").error("store 5: %s", self.error)
        results = []
        for store_id in store_ids:
            if store_id == 5 and self.error:
                results.append(outcome(store_id, FAILED, self.error))
            else:
                results.append(outcome(store_id))
                self.needs = [n for n in self.needs if n.store_id != store_id]
        return results

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    def watcher(self, interval=MINUTE):
        return Watcher(self.ask, self.seed, report.to_table, interval, clock=self.clock,
                       sleep=self.sleep)

    def passes(self, watcher, until):
        while self.now < until:
            started = self.now
            watcher.one_pass()
            self.sleep(max(0.0, started + watcher.interval - self.now))


def test_backoff_doubles_from_the_interval_up_to_an_hour():
    backoff = Backoff(MINUTE)
    delays = [backoff.failed(5, "same", now=0.0)[0] for _ in range(9)]
    assert delays == [m * MINUTE for m in (1, 2, 4, 8, 16, 32, 60, 60, 60)]
    assert backoff.succeeded(5) == 9 and backoff.due(5, 0.0)


def test_a_failing_store_is_tried_after_1_2_4_intervals_and_logged_once(caplog):
    world = World([need(5)])
    watcher = world.watcher()
    caplog.set_level(logging.INFO)
    world.passes(watcher, until=60 * MINUTE)
    tries = [when for when, _, _ in world.seeded]
    # Each try fails at once, so it is tried again 1, 2, 4 ... minutes after the last.
    assert tries == [m * MINUTE for m in (0, 1, 3, 7, 15, 31)]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # The first failure: the seeder's own error line and the watch's, once; the retries say
    # nothing above DEBUG.
    assert [r.name for r in warnings] == ["cloudstack_sysvm_seed.observe",
                                          "cloudstack_sysvm_seed.watch"]
    assert "Next try in 1m, then twice as long each time up to 1h" in warnings[1].getMessage()
    assert sum("Report for store(s) 5" in r.getMessage() for r in caplog.records
               if r.levelno >= logging.INFO) == 1

    caplog.clear()
    world.error = "mount.nfs: Connection timed out"  # a new cause: logged again, once
    world.passes(watcher, until=200 * MINUTE)
    told = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(told) == 1 and "Connection timed out" in told[0]
    # The backoff went on counting: 64 minutes, capped.
    assert "Next try in 1h, then every 1h; logged again only when" in told[0]

    caplog.clear()
    world.error = ""  # fixed: seeded at the next try, and said so
    world.passes(watcher, until=300 * MINUTE)
    assert any("Store 5 (nfs://10.0.0.5/s) now holds every template its zone needs, after "
               "9 failed tries" in r.getMessage() for r in caplog.records)
    assert not watcher.backoff.failing


def test_the_retries_lines_show_with_debug(caplog):
    world = World([need(5)])
    watcher = world.watcher()
    caplog.set_level(logging.DEBUG)
    world.passes(watcher, until=2 * MINUTE)
    demoted = [r for r in caplog.records if r.name == "cloudstack_sysvm_seed.observe"]
    assert [r.levelname for r in demoted] == ["ERROR", "DEBUG"]


def test_other_stores_are_seeded_while_one_waits_for_its_retry():
    world = World([need(5), need(6)])
    watcher = world.watcher()
    world.passes(watcher, until=1)
    assert world.seeded == [(0.0, (5, 6), ())]  # one run for both: each image read once
    world.needs.append(need(7))
    world.passes(watcher, until=2 * MINUTE + 1)
    # Store 7 at once, store 5 at its retry: each in a run of its own.
    assert world.seeded[1:] == [(1 * MINUTE, (7,), ()), (1 * MINUTE, (5,), ())]


def test_a_busy_copy_is_left_alone_until_stale(caplog):
    caplog.set_level(logging.INFO)
    world = World([need(6, ref_age=10 * MINUTE)])
    watcher = world.watcher()
    world.passes(watcher, until=5 * MINUTE)
    assert world.seeded == []
    busy = [r.getMessage() for r in caplog.records if "being written" in r.getMessage()]
    assert len(busy) == 1  # once, not every interval
    assert ("template_store_ref 77: Creating/DOWNLOAD_IN_PROGRESS, updated 10m ago); left "
            "alone until it is Ready, or seeded over once it has not moved for 30m") in busy[0]
    world.needs = [need(6, ref_age=31 * MINUTE)]
    world.passes(watcher, until=6 * MINUTE)
    assert [ids for _, ids, _ in world.seeded] == [(6,)]


def test_a_busy_hypervisor_is_left_out_of_the_stores_seeding():
    works = sort_needs([need(6, "KVM", ref_age=60.0), need(6, "KVM", "aarch64"),
                        need(6, "XenServer", template_id=201)])
    (work,) = works
    assert [n.hypervisor for n in work.lacking] == ["XenServer"]
    assert work.hypervisors == ("XenServer",)
    world = World([need(6, "KVM", ref_age=60.0), need(6, "XenServer", template_id=201)])
    world.passes(world.watcher(), until=1)
    assert world.seeded == [(0.0, (6,), ("XenServer",))]


def test_a_failed_query_is_logged_once_and_asked_again(caplog):
    world = World([])
    calls = []

    def ask():
        calls.append(world.now)
        if len(calls) <= 3:
            raise errors.CatalogError("Cannot connect to the cloud database: refused.")
        return []

    watcher = Watcher(ask, world.seed, report.to_table, MINUTE, clock=world.clock,
                      sleep=world.sleep)
    caplog.set_level(logging.INFO)
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        world.sleep(seconds)
        if len(slept) == 5:
            raise KeyboardInterrupt

    watcher.sleep = sleep
    with pytest.raises(KeyboardInterrupt):
        watcher.run()
    assert calls == [0.0, 60.0, 120.0, 180.0, 240.0]  # every interval
    errors_told = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors_told) == 1 and "refused" in errors_told[0].getMessage()
    assert any(r.getMessage() == "The database answers again." for r in caplog.records)
    with pytest.raises(errors.CatalogError):
        Watcher(lambda: (_ for _ in ()).throw(errors.CatalogError("down")), world.seed,
                report.to_table, MINUTE).run(once=True)


def test_a_store_seeded_that_still_lacks_its_template_is_a_failure(caplog):
    world = World([need(6, template_id=150)])
    world.seed = lambda ids, hvs: [outcome(i) for i in ids]  # "ready", but not that template
    watcher = world.watcher()
    caplog.set_level(logging.WARNING)
    assert watcher.run(once=True) == 1
    (told,) = [r.getMessage() for r in caplog.records]
    assert "seeded, but it still lacks template 150" in told
    assert "cloudstack-sysvm-seed repair" in told


def test_causes_differing_only_in_mountpoints_are_the_same():
    first = "cannot write /tmp/sysvm-seed-41-store5-abcd1234/x: Permission denied"
    again = "cannot write /tmp/sysvm-seed-97-store5-zzzz9999/x: Permission denied"
    assert cause_key(first) == cause_key(again)
    assert cause_key(first) != cause_key(first.replace("Permission", "Access"))


def test_durations_read_as_written():
    assert [duration(s) for s in (0.2, 1.6, 30, 60, 90, 612, 1800, 3600, 5400)] == [
        "0.2s", "1.6s", "30s", "1m", "90s", "10m", "30m", "1h", "1.5h"]
