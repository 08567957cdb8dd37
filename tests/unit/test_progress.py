"""Progress: a tqdm bar on a terminal, log lines elsewhere."""

import io
import logging

from cloudstack_sysvm_seed import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_that_reaches_the_total():
    stream = Terminal()
    bar = progress.start("kvm.qcow2.bz2 to 3 store(s)", 4 << 20, stream)
    assert isinstance(bar, progress.Bar)
    for _ in range(4):
        bar.advance(1 << 20)
    bar.close()
    shown = stream.getvalue()
    assert "kvm.qcow2.bz2 to 3 store(s)" in shown and "100%" in shown and "4.00M" in shown


def test_elsewhere_a_line_every_interval_with_fraction_and_rate(caplog):
    now = [0.0]
    lines = progress.LogLines("kvm.qcow2.bz2", 100 << 20, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger=progress.__name__)
    for _ in range(10):  # 10 MiB per second for 10 s: one line, at the 10th second
        now[0] += 1
        lines.advance(10 << 20)
    assert [r.getMessage() for r in caplog.records] == [
        "kvm.qcow2.bz2: 100% read (100 of 100 MiB, 10 MiB/s)"]
    assert isinstance(progress.start("x", 1, io.StringIO()), progress.LogLines)


def test_under_dpkg_a_terminal_gets_log_lines_not_a_bar():
    """apt runs dpkg on a pseudo-terminal: a bar would land in apt's output and term.log."""
    dpkg = {"DPKG_MAINTSCRIPT_PACKAGE": "cloudstack-sysvm-seed"}
    assert isinstance(progress.start("x", 1, Terminal(), environ=dpkg), progress.LogLines)
    assert isinstance(progress.start("x", 1, Terminal(), environ={}), progress.Bar)
