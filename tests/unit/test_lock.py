"""Waiting for the registration lock, on a fake NamedLock and a fake clock (the seam is
GET_LOCK, which the integration tests take for real): one line when the wait starts, then
one every 30 s, each naming the holder as a person would."""

import logging

import pytest

from cloudstack_sysvm_seed import lock
from cloudstack_sysvm_seed.errors import LockTimeout

HOLDER = "connection 71 from 10.0.0.5:41234 (user cloud, idle for {}s)"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class FakeLock:
    """The registration lock, held by connection 71 until `free_at` on the clock."""

    def __init__(self, clock, free_at, name=lock.REGISTRATION_LOCK):
        self.clock, self.free_at, self.name = clock, free_at, name
        self.released = self.closed = False

    def _held(self):
        return self.clock.now < self.free_at

    def holder(self, name):
        if name == self.name and self._held():
            return HOLDER.format(int(self.clock.now - 1000))
        return None

    def acquire(self, name, seconds):
        return not (name == self.name and self._held())

    def release(self, name):
        self.released = True

    def close(self):
        self.closed = True


class Catalog:
    def __init__(self, named):
        self.named = named

    def named_lock(self):
        return self.named


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(lock.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(lock.time, "sleep", clock.sleep)
    return clock


def said(caplog):
    return [r.getMessage() for r in caplog.records if r.name == lock.__name__]


def test_a_wait_is_said_when_it_starts_then_every_30_seconds(clock, caplog):
    caplog.set_level(logging.INFO)
    named = FakeLock(clock, free_at=1000 + 95)
    with lock.registration_lock(Catalog(named), timeout=1200):
        pass
    assert said(caplog) == [
        "Waiting for lock 'UpgradeDatabase-Lock', held by connection 71 from 10.0.0.5:41234 "
        "(user cloud, idle for 0s): another seeding run, or a management server registering "
        "templates. Giving up after 1200s.",
        "Still waiting for lock 'UpgradeDatabase-Lock' after 30s; held by " + HOLDER.format(30),
        "Still waiting for lock 'UpgradeDatabase-Lock' after 60s; held by " + HOLDER.format(60),
        "Still waiting for lock 'UpgradeDatabase-Lock' after 90s; held by " + HOLDER.format(90),
        "Took lock 'UpgradeDatabase-Lock' after 95s",
    ]
    assert named.released and named.closed


def test_a_management_server_upgrading_is_named_as_such_and_the_timeout_too(clock, caplog):
    caplog.set_level(logging.INFO)
    named = FakeLock(clock, free_at=1e9, name=lock.UPGRADE_LOCK)
    with pytest.raises(LockTimeout) as info:
        with lock.registration_lock(Catalog(named), timeout=40):
            pass
    first, *rest = said(caplog)
    assert first.startswith("Waiting for lock 'DatabaseUpgrade', held by connection 71 ")
    assert first.endswith(": a management server is upgrading the database. Giving up after "
                          "40s.")
    assert rest == ["Still waiting for lock 'DatabaseUpgrade' after 30s; held by "
                    + HOLDER.format(30)]
    assert info.value.message == ("Lock 'DatabaseUpgrade' is still held by "
                                  + HOLDER.format(40) + " after 40s.")


def test_no_wait_says_nothing(clock, caplog):
    caplog.set_level(logging.INFO)
    with lock.registration_lock(Catalog(FakeLock(clock, free_at=0)), timeout=10):
        pass
    assert said(caplog) == []
