"""The only place that starts processes: argv lists, a timeout on every call (or a stream
we end ourselves), logged. Each child runs in a process group of its own, killed whole on a
timeout, an error or a signal (see signals): nothing it started is left running."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from . import signals
from .errors import CommandFailed

LOG = logging.getLogger(__name__)

MASK = "****"
_TAIL_LINES = 20
_REAP_SECONDS = 10.0  # how long a SIGKILLed child may take to go
# What to install when a command is missing, by command name.
_PACKAGE_HINTS = {
    "mount": "install nfs-common (Debian/Ubuntu) or nfs-utils (EL) for mount.nfs",
    "umount": "install util-linux",
    "qemu-img": "install qemu-utils (Debian/Ubuntu) or qemu-img (EL)",
}


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    ok_codes: Iterable[int] = (0,),
    secrets: Iterable[str] = (),
    cleanup: bool = False,
) -> Result:
    """Run argv (never through a shell) and return its output.

    The process runs in a process group of its own: a terminal's Ctrl-C reaches only us,
    and a timeout or an interrupt kills the whole group (`mount` leaves `mount.nfs` behind
    otherwise). cleanup: a command that undoes something (umount), which a stopping run
    lets finish; it has a timeout of its own.

    :raises CommandFailed: on a missing program, a timeout or an exit code not in ok_codes;
        the message carries the last lines of stderr and never a secret.
    """
    argv = [str(arg) for arg in argv]
    shown = masked(argv, secrets)
    LOG.debug("Running: %s", " ".join(shown))
    started = time.monotonic()
    try:
        process = _start(argv, cleanup, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        hint = _PACKAGE_HINTS.get(os.path.basename(argv[0]), "check the PATH")
        raise CommandFailed(shown, "program not found", hint.capitalize() + ".") from None
    except OSError as exc:  # not executable, say
        raise CommandFailed(shown, f"cannot start: {exc.strerror}") from None
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(process)
        raise CommandFailed(shown, f"timed out after {timeout:g}s") from None
    except BaseException:  # Ctrl-C, SIGTERM: nothing of ours is left running
        _kill(process)
        raise
    finally:
        stopped = _forget(process.pid)
    if stopped:  # killed by the signal that stops the run, which the main thread raises
        raise signals.exception(signals.stopping() or signal.SIGINT)
    seconds = time.monotonic() - started
    LOG.debug("Command %s exited %d in %.2fs", shown[0], process.returncode, seconds)
    if process.returncode not in tuple(ok_codes):
        detail = _tail(stderr or stdout)
        raise CommandFailed(shown, status(process.returncode) + (f": {detail}" if detail else ""),
                            signal=_signal_of(process.returncode))
    return Result(process.returncode, stdout, stderr, seconds)


def status(code: int) -> str:
    """An exit status in words: "exit code 32", "killed by SIGKILL (out of memory?)"."""
    signum = _signal_of(code)
    if signum is None:
        return f"exit code {code}"
    name = signal.Signals(signum).name if signum in signal.valid_signals() else str(signum)
    # The OOM killer uses SIGKILL; so does an operator, but rarely without knowing it.
    return f"killed by {name}" + (" (out of memory?)" if signum == signal.SIGKILL else "")


def _signal_of(code: int) -> Optional[int]:
    return -code if code < 0 else None


# The children running now: pid -> (process, whether a stopping run lets it finish); and
# those a stop killed. Plain dict and set operations, atomic under the GIL, so that the
# signal handler may use them at any moment.
_LIVE: dict[int, tuple[subprocess.Popen, bool]] = {}
_STOPPED: set[int] = set()


def _start(argv: list[str], cleanup: bool = False, **options) -> subprocess.Popen:
    """Start a child in a new session (so a process group of its own), recorded at once."""
    with signals.deferred():
        process = subprocess.Popen(argv, start_new_session=True,
                                   env=dict(os.environ, LC_ALL="C"), **options)
        _LIVE[process.pid] = (process, cleanup)
    if signals.stopping() is not None and not cleanup:
        _stop(process)  # started by another thread as the run stopped: too late to run
    return process


def stop_children() -> None:
    """Kill every child's process group but the cleanup commands': the run is stopping,
    and no mount or decoder is to outlive it, or to hold it up."""
    for process, cleanup in list(_LIVE.values()):
        if not cleanup:
            _stop(process)


signals.on_stop(stop_children)


def _stop(process: subprocess.Popen) -> None:
    if process.returncode is None:
        _STOPPED.add(process.pid)
        _kill_group(process.pid)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the group's id is its leader's pid
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def _kill(process: subprocess.Popen) -> None:
    """Kill the child's whole group while the child is unreaped (so its pid, the group's
    id, cannot be reused), then reap it."""
    if process.returncode is None:
        _kill_group(process.pid)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass
    try:
        process.wait(_REAP_SECONDS)
    except subprocess.TimeoutExpired:  # stuck in the kernel (a dead NFS server): leave it
        LOG.warning("Process %d (%s) did not die within %gs of SIGKILL; left to the kernel",
                    process.pid, process.args[0], _REAP_SECONDS)
    _forget(process.pid)


def _forget(pid: int) -> bool:
    """Drop a reaped child from the records; whether a stopping run had killed it."""
    _LIVE.pop(pid, None)
    stopped = pid in _STOPPED
    _STOPPED.discard(pid)
    return stopped


def masked(argv: Sequence[str], secrets: Iterable[str]) -> list[str]:
    """argv with every secret replaced, fit for logs and messages."""
    hidden = [s for s in secrets if s]
    shown = []
    for arg in argv:
        for secret in hidden:
            arg = arg.replace(secret, MASK)
        shown.append(arg)
    return shown


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-_TAIL_LINES:])


PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size; 16x the default pipe


def _widen(pipe) -> None:
    """Give a pipe 1 MiB of buffer: a stream of megabytes then moves in a few large steps,
    not thousands of 64 KiB ones, each waking the other side."""
    try:
        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except OSError:
        pass  # a lower pipe-max-size: the default buffer works, a little slower


class Filter:
    """A process that data streams through: bytes in on stdin, bytes out on stdout.

    For decompressors, which must stream: run() would hold the whole output in memory.
    Like run()'s, the process has a process group of its own.
    """

    def __init__(self, argv: Sequence[str]):
        self.argv = [str(arg) for arg in argv]
        LOG.debug("Streaming through: %s", " ".join(self.argv))
        self.started = time.monotonic()
        try:
            self.process = _start(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        except OSError as exc:
            raise CommandFailed(self.argv, f"cannot start: {exc.strerror}") from None
        self.stdin = self.process.stdin
        self.stdout = self.process.stdout
        for pipe in (self.stdin, self.stdout):
            _widen(pipe)

    def finish(self, timeout: float = 60.0) -> None:
        """Wait for the exit; :raises CommandFailed: on a non-zero status (with `signal`
        set when a signal killed it)."""
        try:
            code = self.process.wait(timeout)
        finally:
            _forget(self.process.pid)
        stderr = self.process.stderr.read().decode("utf-8", "replace")
        self.process.stderr.close()
        LOG.debug("Command %s exited %d in %.2fs", self.argv[0], code,
                  time.monotonic() - self.started)
        if code != 0:
            detail = _tail(stderr)
            raise CommandFailed(self.argv, status(code) + (f": {detail}" if detail else ""),
                                signal=_signal_of(code))

    def kill(self) -> None:
        _kill(self.process)
