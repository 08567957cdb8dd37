import os
import signal
import threading
import time

import pytest
from testbed.processes import still_running

from cloudstack_sysvm_seed import runner, signals
from cloudstack_sysvm_seed.errors import CommandFailed


def test_output_and_exit_code():
    result = runner.run(["sh", "-c", "echo out; echo err >&2"], timeout=10)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "out\n", "err\n")


def test_failure_carries_exit_code_and_stderr_tail():
    with pytest.raises(CommandFailed) as info:
        runner.run(["sh", "-c", "echo first >&2; echo 'access denied' >&2; exit 32"], timeout=10)
    assert info.value.detail == "exit code 32: first | access denied"


def test_allowed_exit_codes():
    assert runner.run(["false"], timeout=10, ok_codes=(0, 1)).exit_code == 1


def test_timeout():
    with pytest.raises(CommandFailed, match="timed out after 0.3s"):
        runner.run(["sleep", "5"], timeout=0.3)


def test_missing_program_names_the_package():
    with pytest.raises(CommandFailed, match="program not found") as info:
        runner.run(["/nonexistent/qemu-img", "info"], timeout=5)
    assert "qemu-utils" in info.value.hint


def test_secrets_are_masked_in_messages():
    with pytest.raises(CommandFailed) as info:
        runner.run(["sh", "-c", "exit 3", "--password=hunter2"], timeout=5, secrets=["hunter2"])
    assert "hunter2" not in str(info.value) and "****" in str(info.value)


def test_no_shell_interpretation(tmp_path):
    marker = tmp_path / "pwned"
    result = runner.run(["echo", f"; touch {marker}"], timeout=5)
    assert result.stdout.strip() == f"; touch {marker}" and not marker.exists()


def test_a_program_that_cannot_start_is_named(tmp_path):
    script = tmp_path / "mount-helper"
    script.write_text("#!/bin/sh\necho never\n")  # not executable
    with pytest.raises(CommandFailed, match="cannot start: Permission denied") as info:
        runner.run([str(script)], timeout=5)
    assert str(script) in str(info.value)


# --- process groups: nothing a child started outlives it -------------------------------------


def gone_soon(pid, seconds=5.0):
    return not still_running([pid], seconds)


# A mount command that forks a helper (as mount does mount.nfs) and hangs with it; the
# helper keeps stdout and stderr open, so waiting for their end alone would hang too.
FORKS_AND_HANGS = 'sleep 30 & echo $! > "$1"; sleep 30'


def test_a_timeout_kills_the_child_and_what_it_forked(tmp_path):
    pidfile = tmp_path / "helper.pid"
    started = time.monotonic()
    with pytest.raises(CommandFailed, match="timed out after 0.5s"):
        runner.run(["sh", "-c", FORKS_AND_HANGS, "sh", str(pidfile)], timeout=0.5)
    assert time.monotonic() - started < 5
    assert gone_soon(int(pidfile.read_text()))


def test_each_child_has_a_process_group_of_its_own():
    result = runner.run(["sh", "-c", "ps -o pgid= -p $$; echo $$"], timeout=10)
    pgid, pid = result.stdout.split()
    assert pgid == pid and int(pgid) != os.getpgrp()


def test_ctrl_c_kills_running_children_but_lets_cleanup_finish(tmp_path):
    """A real SIGINT to this process, with the run's handlers (see signals)."""
    pidfile = tmp_path / "helper.pid"
    outcome = {}

    def mount():
        try:
            runner.run(["sh", "-c", FORKS_AND_HANGS, "sh", str(pidfile)], timeout=30)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome["mount"] = exc

    def umount():
        outcome["umount"] = runner.run(["sh", "-c", "sleep 1; echo unmounted"], timeout=30,
                                       cleanup=True)

    threads = [threading.Thread(target=mount), threading.Thread(target=umount)]
    restore = signals.install()
    try:
        for thread in threads:
            thread.start()
        while not pidfile.exists() or not pidfile.read_text().strip():
            time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        for thread in threads:
            thread.join(10)
    finally:
        restore()
    # The mount's thread hears of the stop, not of a failed mount ("exit code -9").
    assert isinstance(outcome["mount"], KeyboardInterrupt)
    assert gone_soon(int(pidfile.read_text()))
    assert outcome["umount"].stdout == "unmounted\n"
    # After the stop, a command that is no cleanup does not run.
    restore = signals.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            runner.run(["sleep", "30"], timeout=60)
        assert time.monotonic() - started < 5
    finally:
        restore()


def test_a_child_killed_by_a_signal_is_named_so():
    with pytest.raises(CommandFailed) as info:
        runner.run(["sh", "-c", "kill -KILL $$"], timeout=10)
    assert info.value.detail == "killed by SIGKILL (out of memory?)"
    assert info.value.signal == signal.SIGKILL
    with pytest.raises(CommandFailed, match=r"killed by SIGSEGV$"):
        runner.run(["sh", "-c", "kill -SEGV $$"], timeout=10)
