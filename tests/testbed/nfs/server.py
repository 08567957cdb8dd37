"""A real NFS server for tests: nfs-ganesha on 127.0.0.1, its rpcbind out of sight.

    server = NfsServer(workdir)
    a1 = server.add_export("/export/a1")        # -> the directory behind it
    server.start()                              # rpcbind + ganesha; ready when it lists exports
    server.stop_nfs(); server.start_nfs()       # ganesha alone: "the server went away"
    server.close()                              # everything, by PID

Layout (see shared/reference/test-infrastructure.md section 1):

- A holder process (`unshare --mount --net --propagation slave`) owns two private
  namespaces: a network namespace holding only `lo` (rpcbind binds *:111 there, so nothing
  on the host sees it; `rpcbind -h 127.0.0.1` crashes), and a mount namespace with its own
  tmpfs on /run, so `/run/rpcbind.sock` and `/run/rpcbind/*` never touch the host's /run.
  Nothing is named globally: no `ip netns` entry, no host socket file; when the holder and
  rpcbind die, both namespaces go with them. Two servers can run side by side.
- rpcbind runs in both namespaces; ganesha runs in the private mount namespace only, so it
  registers through that /run/rpcbind.sock and listens on the host's 127.0.0.1, on two
  free ports (NFS and MOUNT). Clients pass both ports and never need a portmapper.
  Both enter the namespaces with `nsenter --target HOLDER --root --wd`, so they keep our
  root when we run chrooted (see NfsServer._in_holder).
- The exported directories live on an ext4 file system of our own (a sparse image in the
  workdir, loop-mounted by the holder in its mount namespace): ganesha 6 (trixie) refuses
  to export tmpfs ("Ignoring /tmp because type tmpfs"), and /tmp is a tmpfs on trixie and
  in many CI roots. add_export() returns the directory as the server sees it,
  /proc/<holder>/root/..., valid until close(); the mount goes with the namespace.
- NFSv3 mounts use the Pseudo path (mount_path_pseudo), as NFSv4 does, so a store URL is
  nfs://127.0.0.1/<pseudo>. Attr_Expiration_Time = 0: tests read the export directories.

Every process is started here and stopped here by PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
NFS_MOUNT = HERE / "nfs-mount"
HOST = "127.0.0.1"

#: command -> Debian package, for messages when something is missing.
PROGRAMS = {
    "ganesha.nfsd": "nfs-ganesha nfs-ganesha-vfs",
    "rpcbind": "rpcbind",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "mkfs.ext4": "e2fsprogs",
}
PY_MODULES = {"nfs_rs": "nfs-rs", "mfusepy": "mfusepy"}
FSAL_VFS = "libfsalvfs.so"
#: The exports' file system: a sparse image, so only what the tests write takes room.
EXPORT_FS_BYTES = 2 << 30


class NfsServerError(RuntimeError):
    pass


def missing_requirements() -> List[str]:
    """What this tier needs and is not installed, as 'apt-get install X' / 'pip install Y'."""
    problems = []
    for program, package in PROGRAMS.items():
        if not shutil.which(program) and not os.path.exists(f"/usr/sbin/{program}"):
            problems.append(f"{program} not found: apt-get install {package}")
    if shutil.which("ganesha.nfsd") and not _fsal_vfs_installed():
        problems.append("ganesha's VFS FSAL not found: apt-get install nfs-ganesha-vfs")
    import importlib.util

    for module, package in PY_MODULES.items():
        if importlib.util.find_spec(module) is None:
            problems.append(f"Python module {module} not found: pip install {package}"
                            + (f" (needs Python 3.11+, this is {sys.version.split()[0]})"
                               if module == "nfs_rs" and sys.version_info < (3, 11) else ""))
    if not os.path.exists("/dev/loop-control"):
        problems.append("/dev/loop-control is missing: the export file system is a loop mount "
                        "(the kernel needs CONFIG_BLK_DEV_LOOP)")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing: the kernel needs FUSE (CONFIG_FUSE_FS)")
    try:
        import ctypes.util

        if not (ctypes.util.find_library("fuse") or ctypes.util.find_library("fuse3")):
            problems.append("libfuse not found: apt-get install libfuse2 (or libfuse3-3)")
    except Exception as exc:  # pragma: no cover - ctypes always imports on Linux
        problems.append(f"cannot look for libfuse: {exc}")
    return problems


def _fsal_vfs_installed() -> bool:
    for root in ("/usr/lib/x86_64-linux-gnu/ganesha", "/usr/lib/aarch64-linux-gnu/ganesha",
                 "/usr/lib64/ganesha", "/usr/lib/ganesha"):
        if os.path.exists(os.path.join(root, FSAL_VFS)):
            return True
    return False


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the test process dies (even by SIGKILL), so a
    killed test run leaves no server behind. Survives exec; cleared when a program drops
    privileges (rpcbind), which then goes with the namespaces' holder instead."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            state = stream.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0,
                 sig: int = signal.SIGTERM) -> None:
    """Signal one process we started, wait; SIGKILL it after `timeout`."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Export:
    export_id: int
    pseudo: str
    path: Path  # as ganesha names it
    local: Path  # the same directory as this process reaches it


@dataclass
class Timings:
    rpcbind: float = 0.0
    ganesha: List[float] = None  # every (re)start of ganesha, seconds to serving

    def __post_init__(self):
        if self.ganesha is None:
            self.ganesha = []


class NfsServer:
    """One ganesha with its private rpcbind; see the module docstring."""

    def __init__(self, workdir: Path, name: str = "nfs"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = self.workdir.resolve()  # ganesha's paths, inside the holder's root
        self.image = self.workdir / "exports.ext4"
        self.exports_dir = self.workdir / "exports"  # where the holder mounts the image
        self.name = name
        self.exports: Dict[str, Export] = {}
        self.nfs_port = 0
        self.mount_port = 0
        self.holder: Optional[subprocess.Popen] = None
        self.rpcbind: Optional[subprocess.Popen] = None
        self.ganesha: Optional[subprocess.Popen] = None
        self.timings = Timings()
        self.conf = self.workdir / "ganesha.conf"
        self.log = self.workdir / "ganesha.log"

    # -- exports --------------------------------------------------------------------------

    def add_export(self, pseudo: str, path: Optional[Path] = None) -> Path:
        """Declare `pseudo` (e.g. /export/a1) and return its directory as the server sees
        it (under /proc/<holder>/root, valid until close()). By default the directory is
        made on the exports' file system; a `path` of the caller's is used as it is (on
        tmpfs, ganesha 6 will not export it). The first call makes the namespaces; on a
        running server ganesha is restarted to pick the export up, the directory being
        created first, as an admin would."""
        pseudo = "/" + pseudo.strip("/")
        if pseudo not in self.exports:
            if path is None:
                self._ensure_holder()
                path = self.exports_dir / pseudo.strip("/").replace("/", "_")
                # /proc/<holder>/root shows the holder's mount namespace, its mounts too.
                local = Path(f"/proc/{self.holder.pid}/root") / path.relative_to("/")
            else:
                path = local = Path(path).resolve()
            local.mkdir(parents=True, exist_ok=True)
            export_id = max((e.export_id for e in self.exports.values()), default=0) + 1
            self.exports[pseudo] = Export(export_id, pseudo, path, local)
            if self.nfs_running:
                self.stop_nfs()
                self.start_nfs()
        return self.exports[pseudo].local

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> NfsServer:
        try:
            self._ensure_holder()
            self._start_rpcbind()
            self.nfs_port, self.mount_port = free_port(), free_port()
            while self.mount_port == self.nfs_port:
                self.mount_port = free_port()
            self.start_nfs()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def nfs_running(self) -> bool:
        return self.ganesha is not None and self.ganesha.poll() is None

    def start_nfs(self, timeout: float = 20.0) -> float:
        """(Re)start ganesha on the same ports and exports; returns seconds to serving."""
        if self.nfs_running:
            return 0.0
        self._write_conf()
        pidfile = self.workdir / "ganesha.pid"
        started = time.monotonic()
        # Ganesha and its children open the log themselves; stdout/stderr are for crashes.
        out = open(self.workdir / "ganesha.stdout", "ab")  # noqa: SIM115
        try:
            self.ganesha = subprocess.Popen(
                [*self._in_holder("mount"),
                 "ganesha.nfsd", "-F", "-f", str(self.conf), "-L", str(self.log),
                 "-p", str(pidfile), "-N", "NIV_EVENT"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        self._wait_serving(started + timeout)
        seconds = time.monotonic() - started
        self.timings.ganesha.append(seconds)
        return seconds

    def stop_nfs(self, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop ganesha only (SIGKILL with kill=True: a crash, not a shutdown)."""
        if self.ganesha is not None:
            stop_process(self.ganesha, timeout, signal.SIGKILL if kill else signal.SIGTERM)
            self.ganesha = None

    def pause_nfs(self) -> None:
        """Freeze ganesha (SIGSTOP): a server that stops answering for a while, then
        resume_nfs() goes on where it was, as an overloaded filer does."""
        os.kill(self.ganesha.pid, signal.SIGSTOP)

    def resume_nfs(self) -> None:
        os.kill(self.ganesha.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop ganesha, rpcbind and the namespace holder (the exports' file system goes
        with its namespace), remove the image; safe to call twice."""
        errors = []
        for attr in ("ganesha", "rpcbind", "holder"):
            proc = getattr(self, attr)
            if proc is None:
                continue
            try:
                stop_process(proc)
            except Exception as exc:  # keep stopping the others
                errors.append(f"{attr}: {exc}")
            setattr(self, attr, None)
        try:
            self.image.unlink()  # the loop device still holding it lets go when it ends
        except FileNotFoundError:
            pass
        if errors:
            raise NfsServerError("; ".join(errors))

    def pids(self) -> List[int]:
        return [p.pid for p in (self.ganesha, self.rpcbind, self.holder)
                if p is not None and p.poll() is None]

    def __enter__(self) -> NfsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _in_holder(self, *namespaces: str) -> List[str]:
        """argv prefix: run a program in the holder's `namespaces` ("mount", "net").

        --root and --wd matter: setns() into a mount namespace moves the caller to the root
        of that namespace's mount tree, which is not our root when this runs chrooted (a
        build root, a CI image root, fresh-root/run.sh). Without them the program escapes
        the chroot: it runs the outer machine's binaries, writes /run/rpcbind.sock into the
        outer /run, and sees neither our private /run nor our /tmp."""
        return ["nsenter", f"--target={self.holder.pid}",
                *(f"--{ns}" for ns in namespaces), "--root", "--wd", "--"]

    def _ensure_holder(self) -> None:
        if self.holder is not None:
            return
        problems = missing_requirements()
        if problems:
            raise NfsServerError("the NFS test tier cannot run: " + "; ".join(problems))
        if os.geteuid() != 0:
            raise NfsServerError("the NFS test tier needs root (namespaces, FUSE mounts)")
        self._make_export_fs()
        try:
            self._start_holder()
        except BaseException:
            self.close()
            raise

    def _make_export_fs(self) -> None:
        self.exports_dir.mkdir(exist_ok=True)
        with open(self.image, "wb") as image:
            image.truncate(EXPORT_FS_BYTES)
        # No journal, lazy init: a throwaway file system, made in milliseconds.
        done = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
             "-E", "nodiscard,lazy_itable_init=1", str(self.image)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise NfsServerError(f"mkfs.ext4 {self.image} failed ({done.returncode}): "
                                 + (done.stderr or done.stdout).strip())

    def _start_holder(self) -> None:
        # The holder makes the namespaces, puts a tmpfs on /run inside (the host's /run is
        # never written), loop-mounts the exports' file system ($1 on $2), brings lo up,
        # says "ready", and sleeps until we stop it.
        script = ("mount -t tmpfs -o mode=0755,size=8m nfs-test-run /run"
                  " && mkdir -m 0755 /run/rpcbind"
                  ' && mount -t ext4 -o loop,nosuid,nodev "$1" "$2"'
                  " && ip link set lo up && echo ready && exec sleep infinity")
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--net", "--propagation", "slave", "sh", "-c", script,
             "nfs-holder", str(self.image), str(self.exports_dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=_die_with_parent,
            cwd="/",  # what --wd gives the programs run in its namespaces
        )
        line = self.holder.stdout.readline()
        if line.strip() != b"ready":
            err = self.holder.stderr.read().decode(errors="replace") if self.holder.poll() \
                is not None else ""
            raise NfsServerError(f"cannot make the private namespaces: {line!r} {err}")

    def _start_rpcbind(self, timeout: float = 10.0) -> None:
        started = time.monotonic()
        out = open(self.workdir / "rpcbind.log", "ab")  # noqa: SIM115
        try:
            self.rpcbind = subprocess.Popen(
                [*self._in_holder("mount", "net"), "rpcbind", "-f"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        # /proc/<holder>/root shows the holder's mount namespace, private /run included.
        sock = Path(f"/proc/{self.holder.pid}/root/run/rpcbind.sock")
        while not sock.exists():
            if self.rpcbind.poll() is not None:
                raise NfsServerError(f"rpcbind exited {self.rpcbind.returncode}: "
                                     + _tail(self.workdir / "rpcbind.log"))
            if time.monotonic() > started + timeout:
                raise NfsServerError(f"rpcbind made no {sock} in {timeout:g}s")
            time.sleep(0.005)
        self.timings.rpcbind = time.monotonic() - started

    def _write_conf(self) -> None:
        recovery = self.workdir / "recovery"
        recovery.mkdir(exist_ok=True)
        parts = [f"""
NFS_CORE_PARAM {{
    Bind_addr = {HOST};
    NFS_Port = {self.nfs_port};
    MNT_Port = {self.mount_port};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    Protocols = 3, 4;
    mount_path_pseudo = true;
    # Ganesha 6 (trixie) makes itself an I/O flusher, which needs CAP_SYS_RESOURCE, and
    # exits when a machine or container has dropped it (EPERM). There is no kernel NFS
    # client here for that to protect. Ganesha 4.3 (bookworm) logs "Unknown parameter".
    allow_set_io_flusher_fail = true;
}}
NFSv4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{recovery}";
    Only_Numeric_Owners = true;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
LOG {{ Default_Log_Level = EVENT; }}
"""]
        for export in self.exports.values():
            parts.append(f"""
EXPORT {{
    Export_Id = {export.export_id};
    Path = "{export.path}";
    Pseudo = "{export.pseudo}";
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3, 4;
    Transports = TCP;
    SecType = sys;
    Attr_Expiration_Time = 0;
    FSAL {{ Name = VFS; }}
}}
""")
        self.conf.write_text("".join(parts))

    def _wait_serving(self, deadline: float) -> None:
        """Serving = the MOUNT service lists every export (ganesha is up and registered)."""
        import nfs_rs

        wanted = set(self.exports)
        last = ""
        while True:
            if self.ganesha.poll() is not None:
                raise NfsServerError(
                    f"ganesha.nfsd exited {self.ganesha.returncode}: {_tail(self.log)}")
            try:
                listed = nfs_rs.list_exports(
                    f"nfs://{HOST}/", nfs_port=self.nfs_port, mount_port=self.mount_port,
                    connect_timeout=1, operation_timeout=2)
                if wanted <= {e.path for e in listed}:
                    return
                last = f"exports listed: {sorted(e.path for e in listed)}"
            except Exception as exc:  # not listening yet
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                self.stop_nfs()
                raise NfsServerError(f"ganesha did not serve in time ({last}): "
                                     + _tail(self.log))
            time.sleep(0.01)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no {path})"
    return " | ".join(text.strip().splitlines()[-lines:])
