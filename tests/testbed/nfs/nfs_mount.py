"""`mount -t nfs` for the tests, over the FUSE bridge (fusenfs.py) to a real NFS server.

    nfs-mount [--state-dir DIR] [--nfs-port N] [--mount-port M] [-t nfs] [-o OPTS]...
              HOST:/PATH MOUNTPOINT

The calling convention is the tool's (`CMD [-o OPTIONS] HOST:/PATH MOUNTPOINT`); the
leading --options come from the configured command string. Starts the bridge detached
(its own session, output to DIR/<mountpoint name>.<id>.log, its PID in the matching .pid),
waits until MOUNTPOINT shows in /proc/self/mountinfo, and exits 0. On failure it prints a
mount.nfs-like message (for example "mount.nfs: access denied by server while mounting
127.0.0.1:/export/x"), exits 32, and leaves no process behind. `umount MOUNTPOINT` ends
the bridge. Mount options: port=, mountport=, soft, hard, timeo=, retrans=, vers=3; the
rest is ignored (and logged).
"""

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid

try:
    from .fusenfs import EXIT_MOUNT_FAILURE, mountinfo_has
except ImportError:  # run through nfs-mount: this directory is sys.path[0]
    from fusenfs import EXIT_MOUNT_FAILURE, mountinfo_has

HERE = os.path.dirname(os.path.abspath(__file__))

BRIDGE = os.path.join(HERE, "fusenfs.py")
MOUNT_TIMEOUT = 10.0


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="nfs-mount", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default=os.environ.get("NFS_MOUNT_STATE_DIR")
                        or os.path.join("/tmp", "nfs-mount-bridges"))
    parser.add_argument("--nfs-port", type=int)
    parser.add_argument("--mount-port", type=int)
    parser.add_argument("--server", action="append", default=[], metavar="NFS:MOUNT",
                        help="a server's MOUNT port by its NFS port (what mount.nfs would ask "
                             "the portmapper), for stores whose URL names the NFS port")
    parser.add_argument("--timeout", type=float, default=MOUNT_TIMEOUT)
    parser.add_argument("-t", dest="fstype", default="nfs")
    parser.add_argument("-o", dest="options", action="append", default=[])
    parser.add_argument("source", help="HOST:/PATH")
    parser.add_argument("mountpoint")
    return parser.parse_args(argv)


def last_mount_message(log_path, source):
    try:
        with open(log_path, encoding="utf-8", errors="replace") as stream:
            lines = [line.strip() for line in stream if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("mount.nfs:"):
            return line
    detail = lines[-1] if lines else "no output"
    return f"mount.nfs: mounting {source} failed: {detail}"


def stop(proc):
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def mount_port_for(args):
    """-o port=N picks the MOUNT port known for N; otherwise the defaults apply."""
    known = {}
    for item in args.server:
        nfs, _, mount = item.partition(":")
        known[int(nfs)] = int(mount)
    port = None
    for options in args.options:
        for item in options.split(","):
            key, _, value = item.strip().partition("=")
            if key == "port" and value:
                port = int(value)
    if port is None:
        return args.mount_port
    return known.get(port, args.mount_port if port == args.nfs_port else None)


def main(argv=None):
    started = time.monotonic()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.fstype not in ("nfs", "nfs3"):
        print(f"mount.nfs: unsupported type {args.fstype}", file=sys.stderr)
        return EXIT_MOUNT_FAILURE
    if not os.path.isdir(args.mountpoint):
        print(f"mount.nfs: mount point {args.mountpoint} does not exist", file=sys.stderr)
        return EXIT_MOUNT_FAILURE
    mountpoint = os.path.realpath(args.mountpoint)  # now, while nothing is mounted there
    if mountinfo_has(mountpoint, resolve=False):
        print(f"mount.nfs: {args.mountpoint} is busy or already mounted", file=sys.stderr)
        return EXIT_MOUNT_FAILURE
    os.makedirs(args.state_dir, exist_ok=True)
    stem = os.path.join(args.state_dir, f"{os.path.basename(os.path.abspath(args.mountpoint))}"
                                        f".{uuid.uuid4().hex[:8]}")
    argv = [sys.executable, BRIDGE, args.source, args.mountpoint]
    for flag, value in (("--nfs-port", args.nfs_port), ("--mount-port", mount_port_for(args))):
        if value:
            argv += [flag, str(value)]
    for options in args.options:
        argv += ["-o", options]
    with open(stem + ".log", "ab") as log:
        log.write(f"nfs-mount: {' '.join(argv)}\n".encode())
        log.flush()
        # Own session, no inherited pipes: the caller (the tool's runner) waits for our
        # stdout/stderr to close, and must not wait for the bridge as well.
        bridge = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  close_fds=True)
    with open(stem + ".pid", "w", encoding="ascii") as pidfile:
        pidfile.write(f"{bridge.pid}\n{mountpoint}\n")
    deadline = time.monotonic() + args.timeout
    while not mountinfo_has(mountpoint, resolve=False):
        if bridge.poll() is not None:
            print(last_mount_message(stem + ".log", args.source), file=sys.stderr)
            return EXIT_MOUNT_FAILURE
        if time.monotonic() > deadline:
            stop(bridge)
            if mountinfo_has(mountpoint, resolve=False):  # mounted just now, then SIGKILLed
                subprocess.run(["umount", "-l", "-c", mountpoint], check=False, timeout=30)
            print(f"mount.nfs: Connection timed out while mounting {args.source} "
                  f"(nothing mounted on {args.mountpoint} after {args.timeout:g}s)",
                  file=sys.stderr)
            return EXIT_MOUNT_FAILURE
        time.sleep(0.005)
    with open(stem + ".log", "a", encoding="utf-8") as log:
        log.write(f"nfs-mount: mounted in {time.monotonic() - started:.3f}s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
