"""The only place that starts processes: argv lists, a timeout on every call (or a stream
we end ourselves), logged."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import CommandFailed

LOG = logging.getLogger(__name__)

MASK = "****"
_TAIL_LINES = 20
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
) -> Result:
    """Run argv (never through a shell) and return its output.

    :raises CommandFailed: on a missing program, a timeout or an exit code not in ok_codes;
        the message carries the last lines of stderr and never a secret.
    """
    argv = [str(arg) for arg in argv]
    shown = masked(argv, secrets)
    LOG.debug("Running: %s", " ".join(shown))
    started = time.monotonic()
    try:
        # On a timeout or an interrupt, run() kills the process and reaps it.
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              encoding="utf-8", errors="replace", timeout=timeout,
                              env=dict(os.environ, LC_ALL="C"), check=False)
    except FileNotFoundError:
        hint = _PACKAGE_HINTS.get(os.path.basename(argv[0]), "check the PATH")
        raise CommandFailed(shown, "program not found", hint.capitalize() + ".") from None
    except OSError as exc:  # not executable, say
        raise CommandFailed(shown, f"cannot start: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(shown, f"timed out after {timeout:g}s") from None
    seconds = time.monotonic() - started
    LOG.debug("Command %s exited %d in %.2fs", shown[0], done.returncode, seconds)
    if done.returncode not in tuple(ok_codes):
        detail = _tail(done.stderr or done.stdout)
        raise CommandFailed(
            shown, f"exit code {done.returncode}" + (f": {detail}" if detail else "")
        )
    return Result(done.returncode, done.stdout, done.stderr, seconds)


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
    """

    def __init__(self, argv: Sequence[str]):
        self.argv = [str(arg) for arg in argv]
        LOG.debug("Streaming through: %s", " ".join(self.argv))
        self.started = time.monotonic()
        try:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=dict(os.environ, LC_ALL="C"))
        except OSError as exc:
            raise CommandFailed(self.argv, f"cannot start: {exc.strerror}") from None
        self.stdin = self.process.stdin
        self.stdout = self.process.stdout
        for pipe in (self.stdin, self.stdout):
            _widen(pipe)

    def finish(self, timeout: float = 60.0) -> None:
        """Wait for the exit; :raises CommandFailed: on a non-zero status."""
        code = self.process.wait(timeout)
        stderr = self.process.stderr.read().decode("utf-8", "replace")
        self.process.stderr.close()
        LOG.debug("Command %s exited %d in %.2fs", self.argv[0], code,
                  time.monotonic() - self.started)
        if code != 0:
            raise CommandFailed(self.argv, f"exit code {code}: {_tail(stderr)}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.stdin, self.stdout, self.process.stderr):
            try:
                pipe.close()
            except OSError:
                pass
