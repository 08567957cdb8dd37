"""`scripts/bench --curve` (issue 17): how a run grows with stores, zones and hypervisors.

For each point, in one run and alternating (the order rotates every repetition), it times
our tool, the floor and, where it applies, upstream's per-store path (bench.py's baseline,
extended to every hypervisor's image):

- stores in one zone: 1, 3, 10, 30; zones: 1, 5, 20 with 2 stores each; hypervisors: KVM
  alone, then KVM + VMware + XenServer + Hyper-V images together (1 zone x 3 stores);
  stores on a private tmpfs, bind-mounted in place of `mount -t nfs` (as bench.py);
- on the real-NFS bed (nfs-ganesha on 127.0.0.1 + the FUSE bridge, tests/testbed/nfs):
  1, 3 and 10 stores in one zone.

The floor is the least any tool must do on this machine: decompress each source once
(lbzip2 on every core for bzip2, `unzip -p` for zip, `tar x` for the OVA's members) into
scratch space on tmpfs, then `cp` the result onto each store (template/tmpl/1/<id>/):
timed both one store after the other and all stores at once, the faster counts; no rows,
no checksum, no fsync. On the real-NFS bed it also mounts the stores, all at once, and
unmounts them, as any tool must to write there: the bed's mount starts a Python FUSE
bridge per store (1.7 s for 10 stores here), which our tool pays inside its run too.

Per point it records the wall time (median of --repeat), the peak RSS of the tool (its
ru_maxrss) and of the tool and its children together (sampled every 0.1 s from /proc), the
MiB that waited in the spool (from the tool's log), and, from one more run under strace,
the bytes read from each source file. Then the no-op rerun on 20 zones x 2 and x 5 stores.
It writes curve.json, curve.md and curve.png (matplotlib, the bench extra) into --out.
A measurement: exit 0 whatever the numbers, non-zero only on errors.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid as uuidlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from testbed import images, mounts, trace
from testbed.nfs import harness as nfs_harness
from testbed.nfs import server as nfs_server

from cloudstack_sysvm_seed import copies
from cloudstack_sysvm_seed import images as tool_images

import bench
from bench import FORM, MIB, RECIPE, REPO, VERSION, run

T = TypeVar("T")
ALL_HYPERVISORS = ("kvm", "vmware", "xenserver", "hyperv")
DB_NAMES = {"kvm": "KVM", "vmware": "VMware", "xenserver": "XenServer", "hyperv": "Hyperv"}
EXTENSIONS = {"kvm": "qcow2", "vmware": "ova", "xenserver": "vhd", "hyperv": "vhd"}
RATIO_TARGET = 1.3  # ours / floor, at every point
NOOP_TARGETS = {2: 3.0, 5: 6.0}  # seconds, no-op rerun of 20 zones x N stores
SAMPLE_EVERY = 0.1  # seconds between RSS samples of the tool's process tree
_SPILLED = re.compile(r"lagged behind the source: (\d+) MiB waited on local disk")


# -- the sources ----------------------------------------------------------------------------


@dataclass
class Source:
    """One bundled file and what it expands to on a store."""

    hypervisor: str
    bundle: Path
    kind: str  # bzip2, zip, ova
    image_bytes: int  # the image file on a store (for an OVA, the .ova itself)
    members: Dict[str, int] = field(default_factory=dict)  # OVA members extracted beside it

    @property
    def bundle_bytes(self) -> int:
        return self.bundle.stat().st_size

    @property
    def store_bytes(self) -> int:
        return self.image_bytes + sum(self.members.values())


@dataclass
class Templates:
    """A templates dir (metadata.ini and bundles) and its sources, KVM first."""

    directory: Path
    sources: List[Source]

    @property
    def hypervisors(self) -> Tuple[str, ...]:
        return tuple(s.hypervisor for s in self.sources)


def kvm_templates(work: Path, mib: int) -> Templates:
    image = bench.cached_image(work, mib)
    return Templates(image.templates_dir,
                     [Source("kvm", image.bundle, "bzip2", image.qcow2_bytes)])


def all_templates(work: Path, mib: int) -> Templates:
    """KVM's bundle (bench.py's image) with a XenServer .vhd.bz2, a Hyper-V .vhd.zip and a
    VMware .ova of the same size and kind of content, built once and cached."""
    kvm = bench.cached_image(work, mib)
    directory = work / "images" / f"all-{mib}m-r{RECIPE}"
    facts = directory / "sources.json"
    if not facts.is_file():
        print(f"bench: building the XenServer, Hyper-V and VMware images ({mib} MiB each) "
              f"in {directory} (cached)", flush=True)
        scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=work / "images"))
        try:
            record = _build_others(scratch, kvm, mib)
            (scratch / "sources.json").write_text(json.dumps(record))
            shutil.rmtree(directory, ignore_errors=True)
            scratch.rename(directory)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    record = json.loads(facts.read_text())
    return Templates(directory, [
        Source(r["hypervisor"], directory / r["bundle"], r["kind"], r["image_bytes"],
               r.get("members", {})) for r in record])


def _build_others(scratch: Path, kvm: bench.Image, mib: int) -> List[dict]:
    def name(hv: str) -> Path:
        return scratch / images.canonical_filename(hv, VERSION, FORM)

    os.link(kvm.bundle, name("kvm"))  # the same file, so the same bytes as KVM alone
    record = [{"hypervisor": "kvm", "bundle": name("kvm").name, "kind": "bzip2",
               "image_bytes": kvm.qcow2_bytes}]
    raw = scratch / "disk.raw"
    for hv, seed in (("xenserver", 7), ("hyperv", 8)):
        bench.write_raw(raw, mib, seed)
        vhd = scratch / "systemvm.vhd"
        run(["qemu-img", "convert", "-q", "-S", "0", "-f", "raw", "-O", "vpc", raw, vhd])
        size = vhd.stat().st_size
        if hv == "xenserver":
            with open(name(hv), "wb") as out:
                run([*bench.bzip2_argv(), vhd], stdout=out)
        else:
            run(["zip", "-q", "-j", name(hv), vhd])
        vhd.unlink()
        record.append({"hypervisor": hv, "bundle": name(hv).name,
                       "kind": "bzip2" if hv == "xenserver" else "zip", "image_bytes": size})
    bench.write_raw(raw, mib, 9)
    members = _build_ova(raw, name("vmware"), mib)
    raw.unlink()
    record.append({"hypervisor": "vmware", "bundle": name("vmware").name, "kind": "ova",
                   "image_bytes": name("vmware").stat().st_size, "members": members})
    images.write_metadata(scratch, [images.MetadataEntry(r["hypervisor"],
                                                         path=scratch / r["bundle"])
                                    for r in record], version=VERSION, form=FORM)
    return record


def _build_ova(raw: Path, target: Path, mib: int) -> Dict[str, int]:
    """An OVA as VMware's (the test bed's) of `raw`; its members' sizes, by name."""
    images.make_ova(target, mib << 20, disk_name="systemvm-disk1.vmdk", content=raw)
    with tarfile.open(target) as archive:
        return {member.name: member.size for member in archive.getmembers()}


# -- the beds -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    series: str  # stores, zones, hypervisors, nfs
    zones: int
    per_zone: int
    hypervisors: Tuple[str, ...] = ("kvm",)
    bed: str = "tmpfs"  # or nfs

    @property
    def stores(self) -> int:
        return self.zones * self.per_zone

    @property
    def label(self) -> str:
        where = " (real NFS)" if self.bed == "nfs" else ""
        images_ = ("" if self.hypervisors == ("kvm",) else
                   f", {len(self.hypervisors)} hypervisors")
        zones = f"{self.zones} zone{'s' if self.zones > 1 else ''}"
        return f"{zones} x {self.per_zone} store{'s' if self.per_zone > 1 else ''}" \
               f"{images_}{where}"


class CurveBed(bench.Bed):
    """bench.Bed (MariaDB, a tmpfs of exports), with zones of several hypervisors and,
    once start_nfs() has run, stores on a real NFS server (ganesha) instead."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.lab: Optional[nfs_harness.NfsLab] = None
        self.ganesha: Optional[nfs_server.NfsServer] = None
        self.exports: List[Path] = []
        self.scratch = self.run_dir / "scratch"  # the floor's decompressed images (tmpfs)
        self.tests_stand_in = False  # mount with the tests' bind-mount, not SH_MOUNT

    def start(self, tmpfs_size: str) -> None:
        super().start(tmpfs_size)
        self.scratch = mounts.mount_tmpfs(self.run_dir / "scratch", size="8g")

    def start_nfs(self, count: int, fs_bytes: int) -> None:
        """One ganesha exporting /export/s1..s<count> from an ext4 of `fs_bytes`."""
        # The bed's exports' file system is 2 GiB; 10 copies of the image need more.
        nfs_server.EXPORT_FS_BYTES = max(nfs_server.EXPORT_FS_BYTES, fs_bytes)
        self.lab = nfs_harness.NfsLab(self.run_dir / "nfslab")
        self.ganesha = self.lab.server("ganesha")
        self.exports = [self.ganesha.add_export(f"/export/s{n}") for n in range(1, count + 1)]
        self.ganesha.start()

    def fresh_point(self, point: Point) -> List[Path]:
        """A new `cloud` database for the point and its stores, empty; returns the stores'
        directories (as this process reaches them)."""
        clusters = [DB_NAMES[hv] for hv in point.hypervisors]
        if point.bed != "nfs":
            return self.fresh(point.zones, point.per_zone, clusters)
        self._wipe_exports()
        return self.fresh(point.zones, point.per_zone, clusters, self._export)

    def _export(self, zone: int, store: int, index: int) -> Tuple[str, Path]:
        """The URL and directory of the `index`th store: ganesha's export s<index + 1>."""
        return self.lab.url(self.ganesha, f"/export/s{index + 1}"), self.exports[index]

    def _wipe_exports(self) -> None:
        live, mounted = self.lab.leftovers()
        if live or mounted:
            raise RuntimeError(f"NFS bridges or mounts left behind: {live} {mounted}")
        # Through NFS, not on the exports' file system: ganesha keeps the files it wrote
        # open (NFSv3 has no close), so a file unlinked beneath it keeps its blocks, and
        # the exports' file system fills up after a few points (a cp then hangs on the
        # hard mount).
        with Mounted(self, len(self.exports)) as targets:
            for target in targets:
                for child in target.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        for child in self.staging.iterdir():
            child.unlink()
        os.sync()

    def mount_command(self, point: Point) -> str:
        if point.bed == "nfs":
            return self.lab.mount_command()
        if self.tests_stand_in:
            return mounts.mount_command(self.nfs_root)
        return sh_mount_command(self)

    def tool_args(self, templates: Templates, point: Point) -> List[str]:
        return ["--db-properties", str(self.run_dir / "db.properties"),
                "--templates-dir", str(templates.directory),
                "--mount-command", self.mount_command(point),
                "--cache-dir", str(self.run_dir / "cache"), "--json"]

    def close(self) -> None:
        problems = []
        if self.lab is not None:
            problems = self.lab.teardown()
        if mounts.is_mounted(self.scratch):
            mounts.umount(self.scratch)
        super().close()
        if problems:
            print("bench: the NFS bed left: " + "; ".join(problems), file=sys.stderr)


# The tmpfs bed's stand-in for `mount -t nfs`: bind-mount's calling convention, none of its
# checks (the exports are there), in a shell: about what mount.nfs, a C program, costs
# here, where the Python stand-in of the tests costs 50-100 ms a mount (stand_in_costs).
SH_MOUNT = """#!/bin/sh
# scripts/bench --curve: --root DIR [-o OPTS] [-t TYPE] HOST:/PATH MOUNTPOINT
# bind-mounts DIR/HOST/PATH on MOUNTPOINT (tests/testbed/bind-mount, without its checks).
root=
while [ $# -gt 2 ]; do
    case $1 in
        --root) root=$2; shift 2 ;;
        -o|-t) shift 2 ;;
        *) shift ;;
    esac
done
exec mount --bind "$root/${1%%:*}${1#*:}" "$2"
"""


def sh_mount_command(bed: CurveBed) -> str:
    script = bed.run_dir / "bench-mount"
    if not script.exists():
        script.write_text(SH_MOUNT)
        script.chmod(0o755)
    return " ".join(shlex.quote(str(p)) for p in (script, "--root", bed.nfs_root))


def stand_in_costs(bed: CurveBed, count: int = 10) -> dict:
    """Milliseconds a mount + umount takes here with the tests' stand-in, with this
    benchmark's, and with `mount --bind` alone."""
    export = bed.nfs_root / "10.0.0.1" / "export"
    export.mkdir(parents=True, exist_ok=True)
    point = bed.run_dir / "stand-in"
    point.mkdir(exist_ok=True)
    env = tool_env()
    costs = {}
    for name, argv in (
            ("bind-mount (as the tests run it)",
             [*shlex.split(mounts.mount_command(bed.nfs_root)), "10.0.0.1:/export", point]),
            ("sh + mount --bind (this benchmark)",
             [*shlex.split(sh_mount_command(bed)), "10.0.0.1:/export", point]),
            ("mount --bind alone", ["mount", "--bind", export, point])):
        start = time.monotonic()
        for _ in range(count):
            subprocess.run([str(a) for a in argv], check=True, env=env)
            subprocess.run(["umount", str(point)], check=True)
        costs[name] = round((time.monotonic() - start) / count * 1000, 1)
    shutil.rmtree(bed.nfs_root / "10.0.0.1")
    return costs


# -- our tool -------------------------------------------------------------------------------


@dataclass
class OursRun:
    seconds: float
    cpu_s: float  # user + system, the tool and every child it reaped
    rss_tool_kib: int  # ru_maxrss of the tool's process: exact
    rss_tree_kib: int  # the tool and its children at once, sampled
    rss_helpers_kib: int  # the mount stand-ins at once, sampled
    rss_parts_kib: Dict[str, int]  # what the sampled peak was made of
    spilled_mib: int  # backlog that waited in the spool, all stores
    records: list


# Children that stand in for the system's mount.nfs, umount and kernel NFS client (Python
# scripts here, small C programs or the kernel there), by the name of the program or the
# script in their first three arguments: their RSS is not the tool's.
_STAND_INS = {b"bind-mount", b"nfs-mount", b"fusenfs.py", b"mount", b"umount"}


class TreePeak(threading.Thread):
    """The largest sum of RSS over a process and its descendants, sampled from /proc; the
    mount stand-ins are counted apart (`helpers_kib`)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kib = 0  # the tool and its children, the stand-ins left out
        self.helpers_kib = 0  # the stand-ins' largest sum at one moment
        self.peak_parts: Dict[str, int] = {}  # program name -> KiB, at the peak
        self.cmdline = b""
        self.done = threading.Event()
        self.page_kib = os.sysconf("SC_PAGE_SIZE") // 1024

    def run(self) -> None:
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as handle:
                self.cmdline = handle.read()
        except OSError:
            return
        while not self.done.wait(SAMPLE_EVERY):
            ours = helpers = 0
            parts: Dict[str, int] = {}
            for pid in self._tree(self.pid):
                rss, name, stand_in = self._rss_kib(pid)
                if name is None:
                    continue  # forked, not yet exec'd: the tool's pages, counted once
                if stand_in:
                    helpers += rss
                else:
                    ours += rss
                    parts[name] = parts.get(name, 0) + rss
            if ours > self.peak_kib:
                self.peak_kib, self.peak_parts = ours, parts
            self.helpers_kib = max(self.helpers_kib, helpers)

    def _tree(self, pid: int) -> List[int]:
        found, todo = [], [pid]
        while todo:
            current = todo.pop()
            found.append(current)
            try:
                for task in os.listdir(f"/proc/{current}/task"):
                    with open(f"/proc/{current}/task/{task}/children") as handle:
                        todo += [int(p) for p in handle.read().split()]
            except OSError:
                continue
        return found

    def _rss_kib(self, pid: int) -> Tuple[int, Optional[str], bool]:
        """(RSS, program name (None: a fork of the tool before its exec), whether it is a
        mount stand-in)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read()
            with open(f"/proc/{pid}/statm") as handle:
                rss = int(handle.read().split()[1]) * self.page_kib
        except (OSError, IndexError, ValueError):
            return 0, "", False
        if pid != self.pid and argv == self.cmdline:
            return 0, None, False
        names = {os.path.basename(arg) for arg in argv.split(b"\0")[:3]}
        name = "tool" if pid == self.pid else os.path.basename(argv.split(b"\0")[0]).decode(
            errors="replace")
        return rss, name, bool(names & _STAND_INS)


def run_ours(bed: CurveBed, templates: Templates, point: Point,
             prefix: Sequence[str] = ()) -> OursRun:
    stats = bed.run_dir / "stats.json"
    stats.unlink(missing_ok=True)
    argv = [*prefix, sys.executable, "-c", bench.WRAPPER, str(stats),
            *bed.tool_args(templates, point)]
    env = tool_env()
    out_path, err_path = bed.run_dir / "ours.out", bed.run_dir / "ours.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.monotonic()
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        sampler = TreePeak(process.pid)
        sampler.start()
        try:
            code, cpu = _wait_with_usage(process)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            sampler.done.set()
        seconds = time.monotonic() - start
    sampler.join()
    log = err_path.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"our tool exited {code} on {point.label}:\n{log[-3000:]}")
    data = json.loads(stats.read_text())
    spilled = sum(int(m) for m in _SPILLED.findall(log))
    return OursRun(seconds, cpu, data["rss_self_kib"], sampler.peak_kib,
                   sampler.helpers_kib, sampler.peak_parts, spilled,
                   json.loads(out_path.read_text()))


def tool_env() -> Dict[str, str]:
    """The environment the tool runs in: the venv first on PATH (see bench.run_ours), and
    bytecode cached, as an installed package has it (this machine sets
    PYTHONDONTWRITEBYTECODE, which would have every run compile the tool again)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_tool() -> None:
    """Byte-compile the tool once, before anything is timed (a package ships it so)."""
    run([sys.executable, "-m", "compileall", "-q", REPO / "cloudstack_sysvm_seed"],
        stdout=subprocess.DEVNULL)


def _wait_with_usage(process: subprocess.Popen) -> Tuple[int, float]:
    """The exit code and the CPU seconds (user + system) of the process and every child
    it reaped; a run past bench.TOOL_TIMEOUT is an error."""
    deadline = time.monotonic() + bench.TOOL_TIMEOUT
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_utime + usage.ru_stime
        time.sleep(0.01)
    raise RuntimeError(f"our tool ran longer than {bench.TOOL_TIMEOUT} s")


def seed_ours(bed: CurveBed, templates: Templates, point: Point,
              stores: List[Path]) -> OursRun:
    outcome = run_ours(bed, templates, point)
    check_stores(stores, templates, "ours")
    want = len(stores) * len(templates.sources)
    if bed.ready_copies() != want:
        raise RuntimeError(f"ours: {bed.ready_copies()} Ready rows, expected {want}")
    if point.bed == "nfs":
        live, mounted = bed.lab.leftovers()
        if live or mounted:
            raise RuntimeError(f"ours left NFS bridges or mounts: {live} {mounted}")
    return outcome


def check_stores(stores: List[Path], templates: Templates, who: str) -> None:
    """Every store holds every source's image (and members) at its size, or the timing
    lies."""
    for store in stores:
        files = sorted(p for p in store.glob("template/tmpl/1/*/*") if p.is_file()
                       and p.name != "template.properties")
        got = sorted(p.stat().st_size for p in files)
        want = sorted([s.image_bytes for s in templates.sources]
                      + [n for s in templates.sources for n in s.members.values()])
        if got != want:
            raise RuntimeError(f"{who}: {store} holds files of {got} bytes, expected {want}: "
                               f"{[p.name for p in files]}")


# -- the baseline: upstream's per-store path, every hypervisor ------------------------------


def run_baseline(bed: CurveBed, templates: Templates, stores: List[Path]) -> float:
    """Upstream, one store after the other and one image after the other (bench.py's
    baseline for KVM; for the others the same steps with their tools); wall seconds."""
    start = time.monotonic()
    template_id = 200
    for store in stores:
        for source in templates.sources:
            baseline_copy(source, store, bed.staging, template_id)
            template_id += 1
    return time.monotonic() - start


def baseline_copy(source: Source, store: Path, staging: Path, template_id: int) -> None:
    """setup-sysvm-tmplt + createtmplt.sh -c for one image on one store
    (reference/cloudstack-upstream.md sections 3.1, 3.2)."""
    if source.hypervisor == "kvm":
        bench.baseline_store(source.bundle, store, staging, template_id)
        return
    ext = EXTENSIONS[source.hypervisor]
    uuid = str(uuidlib.uuid4())
    run(["md5sum", source.bundle], stdout=subprocess.DEVNULL)
    dest = store / "template" / "tmpl" / "1" / str(template_id)
    run(["mkdir", "-p", dest])
    staged = staging / f"{uuid}.{ext}"
    run(["cp", source.bundle, staged])
    image = dest / f"{uuid}.{ext}"
    if source.kind == "ova":  # not compressed: copied as it is, then unpacked beside it
        run(["cp", staged, image])
        unpacked = staging / f"ova-{uuid}"
        unpacked.mkdir()
        run(["tar", "xf", staged, "-C", unpacked])
        run(["cp", *sorted(unpacked.iterdir()), dest])
        shutil.rmtree(unpacked)
        staged.unlink()
        size = image.stat().st_size
    else:
        tmp = staging / f"{uuid}.{ext}.tmp"
        with open(tmp, "wb") as out:
            tool = ["bunzip2", "-c"] if source.kind == "bzip2" else ["unzip", "-p"]
            run([*tool, staged], stdout=out)
        run(["cp", tmp, image])
        size = tmp.stat().st_size
        tmp.unlink()
    props = staging / "template.properties"
    props.write_text(_properties(uuid, ext, source.hypervisor, template_id, size))
    run(["cp", props, dest / "template.properties"])
    props.unlink()


def _properties(uuid: str, ext: str, hypervisor: str, template_id: int, size: int) -> str:
    """createtmplt.sh's four lines, then setup-sysvm-tmplt's eight; every size is the
    file's, as upstream writes them for VHD and OVA."""
    name = f"{uuid}.{ext}"
    return "\n".join([
        f"filename={name}", f"description=SystemVM Template ( {hypervisor} )", "hvm=false",
        f"size={size}", f"{ext}=true", f"id={template_id}", "public=true",
        f"{ext}.filename={name}", f"uniquename=routing-{template_id}",
        f"{ext}.virtualsize={size}", f"virtualsize={size}", f"{ext}.size={size}",
    ]) + "\n"


# -- the floor: decompress once, cp N times ---------------------------------------------------


@dataclass
class FloorRun:
    decompress: float
    sequential: float  # cp to one store after the other
    parallel: float  # one cp per store, all at once
    cpu_s: float = 0.0  # user + system of lbzip2 (or unzip, tar) and the sequential cps
    mount: float = 0.0  # mounting the stores and unmounting them (the real-NFS bed)

    @property
    def seconds(self) -> float:
        return self.mount + self.decompress + min(self.sequential, self.parallel)


def run_floor(bed: CurveBed, templates: Templates, stores: List[Path],
              targets: List[Path]) -> FloorRun:
    """`targets` are where the floor writes each store (for NFS, the store mounted)."""
    cores = str(len(os.sched_getaffinity(0)))
    scratch = bed.scratch / "floor"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    files: List[Path] = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    for source in templates.sources:
        out = scratch / f"{source.hypervisor}.{EXTENSIONS[source.hypervisor]}"
        if source.kind == "ova":
            members = scratch / "ova"
            members.mkdir()
            run(["tar", "xf", source.bundle, "-C", members])
            files += [source.bundle, *sorted(members.iterdir())]
            continue
        with open(out, "wb") as sink:
            tool = (["lbzip2", "-d", "-c", "-n", cores] if source.kind == "bzip2"
                    else ["unzip", "-p"])
            run([*tool, source.bundle], stdout=sink)
        files.append(out)
    decompress = time.monotonic() - start
    dests = [target / "template" / "tmpl" / "1" / "200" for target in targets]
    timings = []
    for parallel in (False, True):
        for dest in dests:
            dest.mkdir(parents=True)
        start = time.monotonic()
        argvs = [["cp", *map(str, files), str(dest)] for dest in dests]
        if parallel:
            processes = [subprocess.Popen(argv) for argv in argvs]
            if any(p.wait(bench.STEP_TIMEOUT) != 0 for p in processes):
                raise RuntimeError("floor: a cp failed")
        else:
            for argv in argvs:
                run(argv)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        timings.append(time.monotonic() - start)
        check_stores(stores, templates, "floor")
        for target in targets:
            shutil.rmtree(target / "template")
    shutil.rmtree(scratch)
    return FloorRun(decompress, *timings, cpu)


class Mounted:
    """The NFS stores mounted through the bed's nfs-mount, all at once, and unmounted so;
    `seconds` is what the two took (the floor's and upstream's path's share of reaching
    the stores)."""

    def __init__(self, bed: CurveBed, count: int):
        self.bed = bed
        self.points = [bed.run_dir / "floor-mnt" / f"s{n}" for n in range(1, count + 1)]
        self.seconds = 0.0

    def __enter__(self) -> List[Path]:
        argv = shlex.split(self.bed.lab.mount_command())
        for point in self.points:
            point.mkdir(parents=True, exist_ok=True)
        self._all_at_once([[*argv, f"127.0.0.1:/export/s{n}", str(point)]
                           for n, point in enumerate(self.points, start=1)])
        return self.points

    def __exit__(self, *exc) -> None:
        self._all_at_once([["umount", str(p)] for p in self.points if mounts.is_mounted(p)])
        live, mounted = self.bed.lab.leftovers()
        if live or mounted:
            raise RuntimeError(f"floor: bridges or mounts left: {live} {mounted}")

    def _all_at_once(self, argvs: List[List[str]]) -> None:
        start = time.monotonic()
        processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                     for argv in argvs]
        outputs = [p.communicate(timeout=bench.STEP_TIMEOUT)[0] for p in processes]
        self.seconds += time.monotonic() - start
        failed = [(argv, out) for argv, out, p in zip(argvs, outputs, processes)
                  if p.returncode != 0]
        if failed:
            argv, output = failed[0]
            raise RuntimeError(f"{shlex.join(argv)} failed: {output.decode(errors='replace')}")


# -- measuring a point ----------------------------------------------------------------------


@dataclass
class Result:
    point: Point
    ours: List[OursRun] = field(default_factory=list)
    floor: List[FloorRun] = field(default_factory=list)
    baseline: List[float] = field(default_factory=list)
    reads: Dict[str, float] = field(default_factory=dict)  # source -> bytes read / size
    load: List[float] = field(default_factory=list)  # 1-min load average before each rep

    def median(self, who: str) -> Optional[float]:
        values = {"ours": [r.seconds for r in self.ours],
                  "floor": [r.seconds for r in self.floor],
                  "baseline": self.baseline}[who]
        return statistics.median(values) if values else None

    def as_json(self) -> dict:
        ours, floor, base = (self.median(w) for w in ("ours", "floor", "baseline"))
        return {
            "series": self.point.series, "label": self.point.label,
            "bed": self.point.bed, "zones": self.point.zones,
            "stores_per_zone": self.point.per_zone, "stores": self.point.stores,
            "hypervisors": list(self.point.hypervisors),
            "ours_s": ours, "floor_s": floor, "upstream_s": base,
            "ratio_to_floor": ours / floor, "ratio_to_upstream": ours / base if base else None,
            "ours_samples_s": [r.seconds for r in self.ours],
            "ours_cpu_s": statistics.median(r.cpu_s for r in self.ours),
            "floor_cpu_s": statistics.median(r.cpu_s for r in self.floor),
            "floor_samples": [asdict(r) for r in self.floor],
            "floor_mount_s": statistics.median(r.mount for r in self.floor),
            "floor_decompress_s": statistics.median(r.decompress for r in self.floor),
            "floor_cp_sequential_s": statistics.median(r.sequential for r in self.floor),
            "floor_cp_parallel_s": statistics.median(r.parallel for r in self.floor),
            "upstream_samples_s": self.baseline,
            "rss_tool_mb": max(mb(r.rss_tool_kib) for r in self.ours),
            "rss_tree_mb": max(mb(r.rss_tree_kib) for r in self.ours),
            "backlog_budget_mb": backlog_budget_mb(self.point.stores),
            "rss_mount_stand_ins_mb": max(mb(r.rss_helpers_kib) for r in self.ours),
            "rss_tree_parts_mb": {name: round(mb(kib), 1) for name, kib in max(
                self.ours, key=lambda r: r.rss_tree_kib).rss_parts_kib.items()},
            "spilled_mib": max(r.spilled_mib for r in self.ours),
            "source_read_ratio": self.reads,
            "load_1min_before_reps": self.load,
        }


def mb(kib: int) -> float:
    return kib * 1024 / 1e6


def measure(bed: CurveBed, templates: Templates, point: Point, repeat: int,
            upstream: bool = True) -> Result:
    result = Result(point)
    who_all = ["ours", "floor", "baseline"] if upstream else ["ours", "floor"]
    for rep in range(repeat):
        result.load.append(os.getloadavg()[0])
        turn = rep % len(who_all)
        order = who_all[turn:] + who_all[:turn]
        for who in order:
            stores = bed.fresh_point(point)
            if who == "ours":
                outcome = seed_ours(bed, templates, point, stores)
                result.ours.append(outcome)
                shown = (f"{outcome.seconds:.2f} s (CPU {outcome.cpu_s:.2f} s), RSS "
                         f"{mb(outcome.rss_tool_kib):.0f} MB (tree "
                         f"{mb(outcome.rss_tree_kib):.0f} MB), spilled "
                         f"{outcome.spilled_mib} MiB")
            elif who == "floor":
                floor, floor.mount = on_stores(
                    bed, point, stores, functools.partial(run_floor, bed, templates, stores))
                result.floor.append(floor)
                shown = (f"{floor.seconds:.2f} s (CPU {floor.cpu_s:.2f} s; mount "
                         f"{floor.mount:.2f} s, decompress {floor.decompress:.2f} s, cp "
                         f"{floor.sequential:.2f} s one by one, {floor.parallel:.2f} s at once)")
            else:
                seconds, mounting = on_stores(
                    bed, point, stores, functools.partial(run_baseline, bed, templates))
                seconds += mounting
                check_stores(stores, templates, "upstream")
                result.baseline.append(seconds)
                shown = f"{seconds:.2f} s"
            print(f"bench: {point.label}: rep {rep + 1}/{repeat}, {who}: {shown}", flush=True)
    result.reads = source_reads(bed, templates, point)
    return result


def on_stores(bed: CurveBed, point: Point, stores: List[Path],
              work: Callable[[List[Path]], T]) -> Tuple[T, float]:
    """work(targets) on the point's stores, and the seconds spent reaching them: on the
    real-NFS bed the stores mounted for it (Mounted); on tmpfs their directories, as is."""
    if point.bed != "nfs":
        return work(stores), 0.0
    mounted = Mounted(bed, len(stores))
    with mounted as targets:
        outcome = work(targets)
    return outcome, mounted.seconds


def source_reads(bed: CurveBed, templates: Templates, point: Point) -> Dict[str, float]:
    """Bytes read from each source file over its size, by strace (one untimed run)."""
    if not trace.available():
        return {}
    stores = bed.fresh_point(point)
    trace_dir = bed.run_dir / "strace"
    shutil.rmtree(trace_dir, ignore_errors=True)
    trace_dir.mkdir()
    try:
        run_ours(bed, templates, point, trace.prefix(trace_dir))
        check_stores(stores, templates, "ours under strace")
        reads = trace.reads(trace_dir)
    finally:
        shutil.rmtree(trace_dir)
    ratios = {}
    for source in templates.sources:
        if os.path.realpath(source.bundle) in reads.mapped:
            raise RuntimeError(f"{source.bundle} was mmapped: its reads cannot be counted")
        ratios[source.hypervisor] = reads.of(source.bundle) / source.bundle_bytes
    return ratios


def noop_rerun(bed: CurveBed, templates: Templates, per_zone: int, repeat: int,
               tests_stand_in: bool = False) -> dict:
    """Seed 20 zones x `per_zone` stores, then time reruns that must find nothing to do,
    with this benchmark's mount stand-in or the tests' one."""
    point = Point("noop", 20, per_zone)
    stand_in = "the tests' bind-mount" if tests_stand_in else "sh + mount --bind"
    bed.tests_stand_in = tests_stand_in
    try:
        stores = bed.fresh_point(point)
        first = seed_ours(bed, templates, point, stores)
        reruns = []
        for _ in range(repeat):
            outcome = seed_ours(bed, templates, point, stores)
            if {r.get("action") for r in outcome.records} != {"none"}:
                raise RuntimeError(f"the rerun on {point.label} had something to do")
            reruns.append(outcome)
            print(f"bench: no-op rerun, {point.label} ({stand_in}): {outcome.seconds:.2f} s "
                  f"(CPU {outcome.cpu_s:.2f} s)", flush=True)
    finally:
        bed.tests_stand_in = False
    return {"label": point.label, "stores": point.stores, "mount_stand_in": stand_in,
            "first_s": first.seconds, "samples_s": [r.seconds for r in reruns],
            "median_s": statistics.median(r.seconds for r in reruns),
            "cpu_s": statistics.median(r.cpu_s for r in reruns),
            "target_s": NOOP_TARGETS.get(per_zone),
            "rss_tool_mb": max(mb(r.rss_tool_kib) for r in reruns)}


# -- the machine ----------------------------------------------------------------------------


def machine() -> dict:
    def first_line(argv: List[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            return (done.stdout or done.stderr).splitlines()[0].strip()
        except (OSError, IndexError):
            return "not installed"

    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as handle:
        ram_kib = int(handle.readline().split()[1])
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                            "cloudstack_sysvm_seed"], capture_output=True, text=True,
                           check=False).stdout.strip()
    return {
        "nproc": len(os.sched_getaffinity(0)), "cpu": cpu,
        "ram_gib": round(ram_kib / (1 << 20), 1), "kernel": platform.release(),
        "python": platform.python_version(), "lbzip2": first_line(["lbzip2", "--version"]),
        "stores": "tmpfs, bind-mounted by tests/testbed/bind-mount; NFS: nfs-ganesha "
                  f"{first_line(['ganesha.nfsd', '-v'])} on ext4 (loop) + FUSE bridge",
        "commit": commit + ("+dirty" if dirty else ""),
    }


# -- output ---------------------------------------------------------------------------------


def write_outputs(out: Path, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "curve.md").write_text(markdown(data))
    plot(data, out / "curve.png")
    print(f"bench: wrote {out}/curve.json, curve.md, curve.png")


def _s(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f} s"


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        f"Measured {data['date']} by `scripts/bench --curve` (commit {m['commit']}) on "
        f"{m['nproc']} x {m['cpu']}, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['lbzip2']}; 1-min load {data['load']['start']:.2f} at "
        f"the start, {data['load']['end']:.2f} at the end (highest before a repetition "
        f"{data['load']['max']:.2f}). Image: {data['image']}. Median of {data['repeat']}.",
        "",
        "| point | stores | ours | floor | upstream's path | ours / floor | paired | CPU | "
        "ours / upstream | peak RSS: tool (tool + children) | backlog budget | source read |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["points"]:
        reads = ", ".join(f"{v:.4f}x" for v in row["source_read_ratio"].values()) or "-"
        up = row["ratio_to_upstream"]
        floor = _s(row["floor_s"])
        if row.get("floor_mount_s"):
            floor += f" (mounts {row['floor_mount_s']:.2f} s)"
        lines.append(
            f"| {row['label']} | {row['stores']} | {_s(row['ours_s'])} | "
            f"{floor} | {_s(row['upstream_s'])} | "
            f"{row['ratio_to_floor']:.2f}x | {paired_ratio(row):.2f}x | "
            f"{row['ours_cpu_s'] / row['floor_cpu_s']:.2f}x | "
            f"{'-' if up is None else f'{up:.2f}x'} | "
            f"{row['rss_tool_mb']:.0f} MB ({row['rss_tree_mb']:.0f} MB) | "
            f"{row.get('backlog_budget_mb', 0):.0f} MB | {reads} |")
    lines += [
        "",
        "Floor: each source decompressed once (lbzip2 on every core, `unzip -p`, `tar x`) "
        "into tmpfs, then `cp` onto each store, one by one or all at once, whichever was "
        "faster; no rows, checksum or fsync. On the real-NFS bed the floor and upstream's "
        "path also count mounting the stores all at once and unmounting them (a FUSE bridge "
        "per store, in Python; in brackets, the median), as ours does within its run. "
        "Upstream's path: per store and image, "
        "md5sum, cp, bunzip2/unzip, cp, qemu-img info (KVM), template.properties. Ours: the "
        "whole CLI run; tmpfs stores mounted by `sh` + `mount --bind` (the real-NFS bed: "
        "nfs-mount and a FUSE bridge per store). Source read: bytes read from each source "
        "file over its size (strace). RSS: ru_maxrss of the tool; in brackets the tool and "
        "its children at once, sampled every 0.1 s, the mount stand-ins left out. Backlog "
        "budget: what copies.py lets the pass hold in memory for that many stores. "
        "Paired: the median of each repetition's ours / floor (the two run back to back, so "
        "a slow minute of this shared VM slows both); CPU: user + system seconds of ours "
        "(tool and children) over the floor's (its decompressor and one-by-one cps).",
        "",
    ]
    for row in data["noop"]:
        lines.append(f"- No-op rerun, {row['label']}, mount stand-in {row['mount_stand_in']}: "
                     f"{row['median_s']:.2f} s (target < {row['target_s']:g} s; runs "
                     f"{' '.join(f'{s:.2f}' for s in row['samples_s'])}; CPU "
                     f"{row['cpu_s']:.2f} s with the stand-ins).")
    costs = "; ".join(f"{name} {ms:g} ms" for name, ms in data["mount_stand_in_ms"].items())
    lines.append(f"- One mount + umount here: {costs}.")
    lines.append("")
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.ticker
        from matplotlib import pyplot
    except ImportError:
        print("bench: matplotlib is not installed (pip install -e '.[bench]'): no plot",
              file=sys.stderr)
        return
    panels = [("stores", "stores in one zone"), ("zones", "zones x 2 stores (all stores)"),
              ("hypervisors", "hypervisor images, 1 zone x 3 stores"),
              ("nfs", "real NFS (ganesha + FUSE), stores in one zone")]
    figure, axes = pyplot.subplots(2, 2, figsize=(11, 8))
    for axis, (series, title) in zip(axes.flat, panels):
        rows = [r for r in data["points"] if r["series"] == series]
        if not rows:
            axis.set_visible(False)
            continue
        if series == "hypervisors":
            xs = [len(r["hypervisors"]) for r in rows]
            axis.set_xlabel("hypervisor images (1: KVM; 4: + VMware, XenServer, Hyper-V)")
        else:
            xs = [r["stores"] for r in rows]
            axis.set_xlabel("stores")
        for key, label, style, color in (
                ("upstream_s", "upstream's per-store path", "s:", "tab:blue"),
                ("ours_s", "cloudstack-sysvm-seed", "o-", "tab:orange"),
                ("floor_s", "floor (decompress once + cp)", "^--", "tab:green")):
            pairs = [(x, r[key]) for x, r in zip(xs, rows) if r[key] is not None]
            if pairs:
                axis.plot(*zip(*pairs), style, label=label, color=color)
        axis.plot(xs, [RATIO_TARGET * r["floor_s"] for r in rows], color="grey",
                  linewidth=0.8, label=f"{RATIO_TARGET}x the floor")
        axis.set_title(title, fontsize=10)
        axis.set_ylabel("wall time, s (log scale)")
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_xticks(xs)
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    m = data["machine"]
    figure.suptitle(f"cloudstack-sysvm-seed against the floor and upstream's path: "
                    f"{m['nproc']} x {m['cpu']}, median of {data['repeat']}\n"
                    f"{data['image']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)


def backlog_budget_mb(stores: int) -> float:
    """What copies.py lets the backlogs of a pass to `stores` stores hold in memory: each
    its share (memory_share: 8 chunks, fewer from 5 stores on, at least 2), and
    SHARED_CHUNKS beyond them for the stores keeping up; MB of 10^6 bytes."""
    chunks = stores * copies.memory_share(stores) + copies.SHARED_CHUNKS
    return chunks * tool_images.CHUNK_SIZE / 1e6


def paired_ratio(row: dict) -> float:
    """The median over repetitions of ours / floor, each pair measured back to back."""
    floors = [FloorRun(**sample).seconds for sample in row["floor_samples"]]
    return statistics.median(o / f for o, f in zip(row["ours_samples_s"], floors))


def print_summary(data: dict) -> None:
    print("\n" + markdown(data))
    tmpfs = [r["rss_tree_mb"] for r in data["points"] if r["bed"] == "tmpfs"]
    base = min(tmpfs or [r["rss_tree_mb"] for r in data["points"]])
    for row in data["points"]:
        grown = row["rss_tree_mb"] - base
        budget = row.get("backlog_budget_mb") or backlog_budget_mb(row["stores"])
        checks = {
            f"<= {RATIO_TARGET}x floor": row["ratio_to_floor"] <= RATIO_TARGET,
            f"paired <= {RATIO_TARGET}x": paired_ratio(row) <= RATIO_TARGET,
            f"RSS +{grown:.0f} MB <= budget {budget:.0f} MB": grown <= budget,
            "reads 1.0x": all(1.0 <= v <= 1.001 for v in row["source_read_ratio"].values()),
        }
        print(f"{row['label']:<42} " + "  ".join(
            f"{name}: {'PASS' if ok else 'FAIL'}" for name, ok in checks.items()))
    for row in data["noop"]:
        ok = row["median_s"] < row["target_s"]
        print(f"no-op rerun, {row['label']} ({row['mount_stand_in']}): {row['median_s']:.2f} s "
              f"< {row['target_s']:g} s: "
              f"{'PASS' if ok else 'FAIL'}")


# -- main -----------------------------------------------------------------------------------


SERIES = ("stores", "zones", "hypervisors", "nfs", "noop")
# Where upstream's path is timed. Not in the zones series: upstream seeds one store per
# zone, so "its path on every store of 20 zones" is nothing it does, and per store it is
# the stores series again (the longest part of the run, ~25 min).
UPSTREAM_SERIES = ("stores", "hypervisors", "nfs")


def points(args) -> List[Point]:
    stores = [1, 3, 10] if args.quick else [1, 3, 10, 30]
    zones = [1, 5] if args.quick else [1, 5, 20]
    nfs = [1, 3] if args.quick else [1, 3, 10]
    found = [Point("stores", 1, n) for n in stores]
    found += [Point("zones", n, 2) for n in zones]
    # KVM alone at 1 zone x 3 stores is the stores point; measured again in its series.
    found += [Point("hypervisors", 1, 3), Point("hypervisors", 1, 3, ALL_HYPERVISORS)]
    found += [Point("nfs", 1, n, bed="nfs") for n in nfs]
    return [p for p in found if p.series in args.series]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench --curve",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--curve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/sysvm-seed-bench"),
                        help="cache of built images and scratch space")
    parser.add_argument("--size", type=int, default=200, metavar="MIB",
                        help="each image's decompressed size, MiB (default 200)")
    parser.add_argument("--repeat", type=int, default=3, metavar="N",
                        help="repetitions of each point (default 3)")
    parser.add_argument("--series", default=",".join(SERIES),
                        help=f"which to measure, comma-separated (default {','.join(SERIES)})")
    parser.add_argument("--out", type=Path, help="where the results go (default bench/, or "
                        "WORK/curve-quick with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 16 MiB images, 1 repetition, fewer points")
    parser.add_argument("--skip-upstream", action="store_true",
                        help="time only our tool and the floor (upstream's path takes the "
                             "longest)")
    parser.add_argument("--redraw", type=Path, metavar="JSON",
                        help="measure nothing: write the Markdown and the plot again from "
                             "a curve.json (into --out)")
    args = parser.parse_args(argv)
    args.series = [s.strip() for s in args.series.split(",") if s.strip()]
    unknown = set(args.series) - set(SERIES)
    if unknown:
        parser.error(f"unknown series {sorted(unknown)}; choose from {', '.join(SERIES)}")
    if args.quick:
        args.size, args.repeat = 16, 1
    if args.out is None:
        args.out = args.work / "curve-quick" if args.quick else REPO / "bench"
    if args.size < 8 or args.repeat < 1:
        parser.error("--size needs at least 8 MiB, --repeat at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.redraw:
        data = json.loads(args.redraw.read_text())
        write_outputs(args.out, data)
        print_summary(data)
        return 0
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    (args.work / "images").mkdir(parents=True, exist_ok=True)
    compile_tool()
    wanted = points(args)
    kvm = kvm_templates(args.work, args.size)
    every = all_templates(args.work, args.size) if any(
        len(p.hypervisors) > 1 for p in wanted) else None
    small = bench.small_image(args.work)
    small_templates = Templates(small.templates_dir,
                                [Source("kvm", small.bundle, "bzip2", small.qcow2_bytes)])
    def templates_of(point: Point) -> Templates:
        return every if len(point.hypervisors) > 1 else kvm

    # Room for the largest point's copies (the floor's scratch has its own tmpfs).
    most = max([p.stores * sum(s.store_bytes for s in templates_of(p).sources)
                for p in wanted if p.bed == "tmpfs"] + [0])
    tmpfs = f"{(most * 11 // 10 >> 20) + 512}m"
    nfs_most = max([p.stores for p in wanted if p.bed == "nfs"] + [0])
    bed = CurveBed(Path(tempfile.mkdtemp(prefix="curve-", dir=args.work)))
    results: List[Result] = []
    noop = []
    helpers = {}
    try:
        bed.start(tmpfs)
        helpers = stand_in_costs(bed)
        if nfs_most:
            bed.start_nfs(nfs_most, nfs_most * kvm.sources[0].store_bytes * 2 + (1 << 30))
        for point in wanted:
            upstream = not args.skip_upstream and point.series in UPSTREAM_SERIES
            results.append(measure(bed, templates_of(point), point, args.repeat, upstream))
        if "noop" in args.series:
            for tests_stand_in in (False, True):
                for per_zone in (2, 5):
                    noop.append(noop_rerun(bed, small_templates, per_zone,
                                           max(3, args.repeat), tests_stand_in))
    finally:
        bed.close()
    load = [load_start] + [x for r in results for x in r.load] + [os.getloadavg()[0]]
    data = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "mount_stand_in_ms": helpers,
        "load": {"start": load_start, "end": load[-1], "max": max(load)},
        "repeat": args.repeat,
        "image": describe(kvm, every),
        "sources": [{"hypervisor": s.hypervisor, "bundle": s.bundle.name,
                     "bundle_bytes": s.bundle_bytes, "store_bytes": s.store_bytes}
                    for s in (every or kvm).sources],
        "memory_budget": {"chunk_bytes": tool_images.CHUNK_SIZE,
                          "MEMORY_CHUNKS": copies.MEMORY_CHUNKS,
                          "PASS_MEMORY_CHUNKS": copies.PASS_MEMORY_CHUNKS,
                          "SHARED_CHUNKS": copies.SHARED_CHUNKS},
        "points": [r.as_json() for r in results],
        "noop": noop,
        "bench_seconds": time.monotonic() - started,
    }
    write_outputs(args.out, data)
    print_summary(data)
    return 0


def describe(kvm: Templates, every: Optional[Templates]) -> str:
    source = kvm.sources[0]
    text = (f"KVM qcow2 {source.image_bytes / MIB:.0f} MiB, bzip2 "
            f"{source.bundle_bytes / MIB:.0f} MiB ({source.bundle_bytes / source.image_bytes:.0%})")
    if every:
        others = ", ".join(f"{s.hypervisor} {s.store_bytes / MIB:.0f} MiB on a store from "
                           f"{s.bundle_bytes / MIB:.0f} MiB" for s in every.sources[1:])
        text += f"; {others}"
    return text


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench: the stores are tmpfs and bind mounts: run it as root.")
    sys.exit(main())
