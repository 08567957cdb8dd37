"""What an operator sees on a terminal: the CLI in a real pseudo-terminal draws a bar per
source file that ends at 100%, and log lines stay whole lines beside it."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import time


def run_in_terminal(argv, env, columns=100, timeout=120.0) -> tuple:
    """(exit code, everything the terminal received); the terminal is 30 x `columns`."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: wait for the window size, then become the tool
        time.sleep(0.2)
        os.execve(argv[0], argv, env)
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    received = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(terminal, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        received += data
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    return os.waitstatus_to_exitcode(status), received.decode("utf-8", "replace")


def test_a_terminal_gets_a_bar_per_source_and_whole_log_lines(world, slow_bundle):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    world.nfs_store(zone, "10.1.0.1", "/export/s1")
    world.nfs_store(zone, "10.1.0.2", "/export/s2")
    world.use_bundle(slow_bundle)
    code, shown = run_in_terminal(world.command(), world.env)
    assert code == 0, shown
    frames = [frame for line in shown.split("\n") for frame in line.split("\r")]
    bars = [frame for frame in frames if frame.startswith("kvm-x86_64 to 2 store(s):")]
    assert bars and "100%|" in bars[-1], shown
    assert all(len(bar) <= 100 for bar in bars)  # fits the terminal
    logged = [frame for frame in frames if frame.startswith("cloudstack-sysvm-seed: INFO:")]
    assert sum("seeded template" in line for line in logged) == 2, shown
    assert all("%|" not in line for line in logged)  # no bar fragment inside a log line


def test_under_dpkg_the_terminal_gets_log_lines_and_no_bar(world, slow_bundle):
    """As apt runs a trigger: on a pseudo-terminal, with DPKG_MAINTSCRIPT_PACKAGE set."""
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    world.nfs_store(zone, "10.1.0.1", "/export/s1")
    world.use_bundle(slow_bundle)
    env = dict(world.env, DPKG_MAINTSCRIPT_PACKAGE="cloudstack-sysvm-seed",
               DPKG_MAINTSCRIPT_NAME="postinst")
    code, shown = run_in_terminal(world.command(), env)
    assert code == 0, shown
    assert "%|" not in shown and "\r" not in shown.replace("\r\n", "\n"), shown
    assert "cloudstack-sysvm-seed: INFO: kvm-x86_64: registered and seeded template" in shown
