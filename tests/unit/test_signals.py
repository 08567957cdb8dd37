"""Signals, with real signals sent to this process: the first stops the children and
raises; one that arrives while something is started and recorded waits for it; later
ones are only logged, so the cleanup they would cut short runs to its end."""

import logging
import os
import signal

import pytest

from cloudstack_sysvm_seed import errors, signals


@pytest.fixture
def handled():
    stopped = []
    signals.on_stop(lambda: stopped.append(True))
    restore = signals.install()
    try:
        yield stopped
    finally:
        restore()
        signals._on_stop.pop()


def test_the_first_signal_stops_the_children_and_raises(handled):
    with pytest.raises(errors.Interrupted):
        os.kill(os.getpid(), signal.SIGTERM)
    assert handled == [True] and signals.stopping() == signal.SIGTERM


def test_a_signal_waits_for_the_end_of_a_deferred_block(handled):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("recorded")  # the block goes on to its end
    assert done == ["recorded"] and handled == [True]


def test_later_signals_are_logged_and_let_the_cleanup_run(handled, caplog):
    cleaned = []
    with pytest.raises(KeyboardInterrupt):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again, during the cleanup
            os.kill(os.getpid(), signal.SIGTERM)
            cleaned.append(True)
    assert cleaned == [True] and handled == [True]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["Got SIGINT again; still undoing partial work, please wait",
                        "Got SIGTERM again; still undoing partial work, please wait"]


def test_each_run_starts_afresh_and_leaves_nothing_stopping():
    restore = signals.install()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert signals.stopping() == signal.SIGINT
    restore()
    assert signals.stopping() is None
