"""Fixture helpers for the real-NFS tier: servers, the mount command, leak checks.

    lab = NfsLab(tmp_path / "nfs")
    a = lab.server("a"); a.add_export("/export/a1"); a.start()
    lab.url(a, "/export/a1")       # nfs://127.0.0.1/export/a1 (the first server: no port)
    lab.mount_command()            # nfs-mount knowing every server's ports
    ...
    problems = lab.teardown()      # leaks found (then cleaned up anyway); [] when clean

Bridges started by nfs-mount leave DIR/<mountpoint>.<id>.pid (PID, mountpoint) and .log in
the lab's state dir; that is how leaks are found and cleaned up, always by PID.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .fusenfs import mountinfo_has
from .server import NFS_MOUNT, NfsServer, _alive, missing_requirements

__all__ = ["Bridge", "NfsLab", "missing_requirements", "stage_files"]

_MOUNTED_IN = re.compile(r"nfs-mount: mounted in ([0-9.]+)s")


@dataclass(frozen=True)
class Bridge:
    pid: int
    mountpoint: str
    log: Path

    @property
    def alive(self) -> bool:
        return _alive(self.pid)

    @property
    def mounted(self) -> bool:
        # The recorded path is already real; never stat a mount that may hang.
        return mountinfo_has(self.mountpoint, resolve=False)


class NfsLab:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.state_dir = self.root / "bridges"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.servers: List[NfsServer] = []

    # -- servers and the tool's view of them ---------------------------------------------

    def server(self, name: str) -> NfsServer:
        server = NfsServer(self.root / name, name)
        self.servers.append(server)
        return server

    def url(self, server: NfsServer, pseudo: str) -> str:
        """The first server is at the default ports (no port in the URL, as most stores);
        any other carries its NFS port, which the tool passes on as `-o port=N`."""
        netloc = "127.0.0.1" if server is self.servers[0] else f"127.0.0.1:{server.nfs_port}"
        return f"nfs://{netloc}/{pseudo.strip('/')}"

    def mount_command(self, options: str = "") -> str:
        """nfs-mount with the first server as default and every server's MOUNT port known
        by its NFS port (our stand-in for asking the portmapper)."""
        first = self.servers[0]
        argv = [sys.executable, str(NFS_MOUNT), "--state-dir", str(self.state_dir),
                "--nfs-port", str(first.nfs_port), "--mount-port", str(first.mount_port)]
        for server in self.servers:
            argv += ["--server", f"{server.nfs_port}:{server.mount_port}"]
        if options:
            argv += ["-o", options]
        return " ".join(shlex.quote(a) for a in argv)

    # -- bridges --------------------------------------------------------------------------

    def bridges(self) -> List[Bridge]:
        found = []
        for pidfile in sorted(self.state_dir.glob("*.pid")):
            lines = pidfile.read_text().splitlines()
            if len(lines) >= 2:
                found.append(Bridge(int(lines[0]), lines[1], pidfile.with_suffix(".log")))
        return found

    def mount_times(self) -> List[float]:
        times = []
        for bridge in self.bridges():
            try:
                match = _MOUNTED_IN.search(bridge.log.read_text(errors="replace"))
            except OSError:
                continue
            if match:
                times.append(float(match.group(1)))
        return times

    def leftovers(self, wait: float = 5.0):
        """(live bridges, still-mounted mountpoints), after giving bridges `wait` seconds
        to exit on their own (a bridge leaves shortly after its umount)."""
        deadline = time.monotonic() + wait
        while True:
            live = [b for b in self.bridges() if b.alive]
            mounted = [b.mountpoint for b in self.bridges() if b.mounted]
            if (not live and not mounted) or time.monotonic() > deadline:
                return live, mounted
            time.sleep(0.02)

    def logs(self, limit: int = 4000) -> str:
        parts = []
        for bridge in self.bridges():
            try:
                text = bridge.log.read_text(errors="replace")
            except OSError:
                continue
            parts.append(f"--- {bridge.log.name} (pid {bridge.pid})\n{text[-limit:]}")
        return "\n".join(parts)

    def force_unmount(self, mountpoint: str) -> None:
        # Lazy: a dead or hung bridge cannot answer; the mount goes at once, the bridge's
        # retry loop then sees it gone and gives up.
        if mountinfo_has(mountpoint, resolve=False):
            subprocess.run(["umount", "-l", "-c", mountpoint], check=False, timeout=30,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill_bridge(self, bridge: Bridge, grace: float = 3.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not bridge.alive:
                return
            try:
                os.kill(bridge.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while bridge.alive and time.monotonic() < deadline:
                time.sleep(0.02)

    def release_all(self) -> None:
        """Unmount every bridge's mount (lazily: a bridge blocked on a dead server then
        gives up) and stop every bridge by PID."""
        for bridge in self.bridges():
            self.force_unmount(bridge.mountpoint)
        for bridge in self.bridges():
            self.kill_bridge(bridge)
        for bridge in self.bridges():
            self.force_unmount(bridge.mountpoint)  # a SIGKILLed bridge leaves its mount

    def teardown(self) -> List[str]:
        """Stop everything; return what was left behind (live bridges, mounts, servers
        that did not stop), which a test should treat as a failure."""
        problems = []
        live, mounted = self.leftovers()
        if live:
            problems.append("bridge processes still running after their store was done: "
                            + ", ".join(f"{b.pid} ({b.mountpoint})" for b in live))
        if mounted:
            problems.append(f"FUSE NFS mounts left behind: {mounted}")
        self.release_all()
        for server in self.servers:
            pids = server.pids()
            try:
                server.close()
            except Exception as exc:  # noqa: BLE001 - report, keep going
                problems.append(f"stopping NFS server {server.name}: {exc}")
            still = [pid for pid in pids if _alive(pid)]
            if still:
                problems.append(f"NFS server {server.name} processes survived: {still}")
        return problems


def stage_files(export: Path) -> List[str]:
    """Files in the tool's stage area of an export (read from the server's side)."""
    found = []
    for directory, _, names in os.walk(Path(export) / ".cloudstack-sysvm-seed" / "stage"):
        found.extend(os.path.join(directory, n) for n in names)
    return found


def process_diagnostics(pid: int) -> str:
    """Where a (hung) process is: kernel stack, wait channel, current syscall, threads."""
    parts = []
    for name in ("wchan", "syscall", "stack"):
        try:
            parts.append(f"/proc/{pid}/{name}: "
                         + Path(f"/proc/{pid}/{name}").read_text(errors="replace").strip())
        except OSError as exc:
            parts.append(f"/proc/{pid}/{name}: ({exc.strerror})")
    try:
        fds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        syscall = Path(f"/proc/{pid}/syscall").read_text().split()
        if len(syscall) > 1 and syscall[1].startswith("0x"):
            fd = str(int(syscall[1], 16))
            parts.append(f"first syscall argument, fd {fd}: {fds.get(fd, '?')}")
    except (OSError, ValueError, IndexError):
        pass
    pyspy = _which("py-spy")
    if pyspy:
        # --nonblocking: a process in D state cannot be stopped for ptrace.
        try:
            done = subprocess.run([pyspy, "dump", "--nonblocking", "--pid", str(pid)],
                                  capture_output=True, text=True, timeout=15, check=False)
            parts.append("py-spy dump:\n" + (done.stdout or done.stderr))
        except subprocess.TimeoutExpired:
            parts.append("py-spy dump: timed out")
    else:
        parts.append("(install py-spy for the Python stack: pip install py-spy)")
    return "\n".join(parts)


def _which(name: str) -> Optional[str]:
    for directory in os.environ.get("PATH", "").split(os.pathsep) + [
            os.path.dirname(sys.executable)]:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None
