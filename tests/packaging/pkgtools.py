"""Helpers for the package tests: tool checks, commands, fake packages, throwaway dpkg and apt
roots."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
TEMPLATES_DIR = "usr/share/cloudstack-management/templates/systemvm"
HOOK = "usr/lib/cloudstack-sysvm-seed/hook"
PENDING = "var/lib/cloudstack-sysvm-seed/pending"
LOG = "var/log/cloudstack/management/sysvm-seed.log"
DB_PROPERTIES = "etc/cloudstack/management/db.properties"
DIST_PACKAGES = "usr/lib/python3/dist-packages"


def need(tool: str, apt_package: str) -> str:
    """The tool's path; a missing tool FAILS the test with what to install, never skips."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if not found:
        pytest.fail(f"{tool} not found: apt-get install {apt_package} "
                    "(scripts/setup installs it)", pytrace=False)
    return found


def run(argv: Sequence[Union[str, Path]], env: Optional[Mapping[str, str]] = None,
        check: bool = True, merge: bool = False, timeout: float = 120,
        cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run argv, capturing text output (stderr into stdout with `merge`); with check, a
    non-zero exit fails the test and shows the output."""
    done = subprocess.run([str(a) for a in argv], env=None if env is None else dict(env),
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                          text=True, timeout=timeout, check=False, cwd=cwd)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} exited {done.returncode}\n"
                    f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}", pytrace=False)
    return done


def build_deb(workdir: Path, package: str, version: str, files: Dict[str, Path]) -> Path:
    """A minimal binary package holding `files` (path in the package -> source file)."""
    stage = workdir / f"{package}-{version}"
    for target, source in files.items():
        destination = stage / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    (stage / "DEBIAN").mkdir(parents=True)
    (stage / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: package tests <tests@localhost>\n"
        f"Description: stand-in {package} for the package tests\n")
    deb = workdir / f"{package}_{version}_all.deb"
    run(["dpkg-deb", "--root-owner-group", "-Znone", "--build", stage, deb])
    return deb


class DpkgRoot:
    """An empty system for `dpkg --root`: its own database, nothing installed.

    Maintainer scripts run un-chrooted (--force-script-chrootless) with DPKG_ROOT set to
    this directory, which is how our hook finds every path inside it.
    """

    def __init__(self, path: Path):
        self.path = path
        admin = path / "var/lib/dpkg"
        for sub in ("info", "updates", "triggers"):
            (admin / sub).mkdir(parents=True, exist_ok=True)
        for name in ("status", "available"):
            (admin / name).touch()

    def __truediv__(self, relative: str) -> Path:
        return self.path / relative

    def dpkg(self, *args: Union[str, Path], env: Mapping[str, str]) -> subprocess.CompletedProcess:
        """dpkg on this root; --force-depends because our Python dependencies live on the
        host, not in this root's database. Output (stdout+stderr) is in .stdout."""
        return run(["dpkg", f"--root={self.path}", "--force-script-chrootless",
                    "--force-depends", "--log=/dev/null", *args],
                   env=env, check=False, merge=True)

    def status(self, package: str) -> str:
        """dpkg's three-letter status, e.g. "ii " for installed and configured."""
        done = run(["dpkg-query", f"--admindir={self / 'var/lib/dpkg'}", "-W",
                    "-f=${db:Status-Abbrev}", package])
        return done.stdout


def base_env(**extra: str) -> Dict[str, str]:
    """The environment for dpkg and the hook: ours, minus anything that would point the
    seeder elsewhere, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CLOUDSTACK_SYSVM_SEED_") and k != "DPKG_ROOT"}
    env.update(extra)
    return env


def hook_env(mount_command: str) -> Dict[str, str]:
    """What the hook needs in a test: this interpreter (it has the libraries) and the
    bind-mount stand-in for `mount -t nfs`. With bytecode written, a __pycache__ beside the
    installed package shows which copy ran."""
    env = base_env(CLOUDSTACK_SYSVM_SEED_PYTHON=sys.executable,
                   CLOUDSTACK_SYSVM_SEED_HOOK_ARGS=shlex.join(["--mount-command", mount_command]))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def one_store_zone(cloud, make_export) -> Tuple[Path, int]:
    """A zone with a KVM cluster and one NFS store: (export directory, store id)."""
    zone = cloud.builder.zone("east")
    cloud.builder.cluster(zone, "KVM")
    export = make_export("10.1.0.1", "/export/a1")
    return export, cloud.builder.store(zone, "nfs://10.1.0.1/export/a1")


def assert_seeded(cloud, export: Path, store: int, name: str) -> None:
    """One SYSTEM template called `name`, Ready on the store, its files there."""
    (template,) = cloud.query("SELECT id, uuid FROM vm_template WHERE type = 'SYSTEM' AND "
                              "name = %s AND removed IS NULL", (name,))
    (ref,) = cloud.query("SELECT store_id, state, install_path FROM template_store_ref "
                         "WHERE template_id = %s", (template["id"],))
    assert (ref["store_id"], ref["state"]) == (store, "Ready")
    image = export / ref["install_path"].lstrip("/")
    assert image.name == f"{template['uuid']}.qcow2" and image.stat().st_size > 0
    assert (image.parent / "template.properties").is_file()


# -- apt on a throwaway root --------------------------------------------------------------

HOST_STATUS = Path("/var/lib/dpkg/status")


def _status_paragraphs(text: str) -> Dict[str, Tuple[str, Dict[str, str]]]:
    """Installed packages of a dpkg status file: name -> (paragraph, fields)."""
    found = {}
    for paragraph in text.split("\n\n"):
        fields = dict(re.findall(r"(?m)^([A-Za-z0-9-]+):[ \t]*(.*(?:\n[ \t].*)*)", paragraph))
        if fields.get("Status") == "install ok installed":
            found[fields["Package"]] = (paragraph.strip("\n"), fields)
    return found


def _python_library(package: str, info: Path) -> bool:
    """Whether the installed package ships modules on python3's path (python3-pymysql does,
    python3 and python3-minimal do not)."""
    for listing in (info / f"{package}.list", *info.glob(f"{package}:*.list")):
        if listing.is_file() and any(line.startswith("/usr/lib/python3/dist-packages/")
                                     for line in listing.read_text().splitlines()):
            return True
    return False


def status_without(packages: Sequence[str], status: Path = HOST_STATUS) -> Tuple[str, List[str]]:
    """This machine's dpkg status less `packages`, the Python libraries they pull in, and
    whatever installed package needs one of those: (status text, the names left out). The
    rest stays consistent, so apt on it must fetch exactly those libraries from Debian."""
    installed = _status_paragraphs(status.read_text())
    provided: Dict[str, List[str]] = {}
    for name, (_, fields) in installed.items():
        for item in fields.get("Provides", "").split(","):
            if item.strip():
                provided.setdefault(item.split()[0].split(":")[0], []).append(name)

    def clauses(name: str) -> List[List[str]]:
        """Each dependency of `name` as the installed packages that satisfy it."""
        fields = installed[name][1]
        found = []
        for field in ("Pre-Depends", "Depends"):
            for clause in fields.get(field, "").split(","):
                names = [a.split()[0].split(":")[0] for a in clause.split("|") if a.strip()]
                options = [n for a in names for n in ([a] if a in installed else [])
                           + provided.get(a, [])]
                if options:
                    found.append(options)
        return found

    pulled, todo = set(), [p for p in packages if p in installed]
    while todo:
        name = todo.pop()
        if name not in pulled:
            pulled.add(name)
            todo += [options[0] for options in clauses(name)]
    left_out = {p for p in pulled if _python_library(p, status.parent / "info")}
    changed = True
    while changed:
        changed = False
        for name in installed:
            if name not in left_out and any(all(o in left_out for o in options)
                                            for options in clauses(name)):
                left_out.add(name)
                changed = True
    kept = [paragraph for name, (paragraph, _) in installed.items() if name not in left_out]
    return "\n\n".join(kept) + "\n", sorted(left_out)


class AptRoot(DpkgRoot):
    """A DpkgRoot that apt installs into: apt's state, cache and log inside it, the host's
    sources and apt settings, and dpkg run with --root (scripts un-chrooted, DPKG_ROOT set).
    The host's dpkg hooks (Pre-Install-Pkgs, Pre/Post-Invoke) are cleared: they act on /.
    py3compile and py3clean are stand-ins that only record their arguments: the real ones
    know no DPKG_ROOT and would byte-compile the host's files."""

    def __init__(self, path: Path, status: str):
        super().__init__(path)
        (self / "var/lib/dpkg/status").write_text(status)
        for sub in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial",
                    "var/log/apt", "etc/apt/apt.conf.d", "shims"):
            (self / sub).mkdir(parents=True, exist_ok=True)
        parts = self / "etc/apt/apt.conf.d"
        for host_part in sorted(Path("/etc/apt/apt.conf.d").glob("*")):
            if host_part.is_file():
                shutil.copy(host_part, parts / host_part.name)
        (parts / "zzzz-throwaway-root").write_text(
            "#clear DPkg::Pre-Install-Pkgs;\n#clear DPkg::Pre-Invoke;\n#clear DPkg::Post-Invoke;\n"
            "#clear APT::Update::Pre-Invoke;\n#clear APT::Update::Post-Invoke;\n"
            "#clear APT::Update::Post-Invoke-Success;\n")
        self.config = self / "etc/apt/apt.conf"
        root = str(path)
        if '"' in root:
            pytest.fail(f"a root path apt.conf cannot quote: {root}", pytrace=False)
        self.config.write_text(
            f'Dir::State "{root}/var/lib/apt";\n'
            f'Dir::State::status "{root}/var/lib/dpkg/status";\n'
            f'Dir::Cache "{root}/var/cache/apt";\n'
            f'Dir::Log "{root}/var/log/apt";\n'
            f'Dir::Etc::parts "{parts}";\n'
            'APT::Sandbox::User "root";\n'
            # apt gives dpkg, and so the packages' scripts, this PATH.
            f'DPkg::Path "{root}/shims:/usr/sbin:/usr/bin:/sbin:/bin";\n'
            f'DPkg::Options {{ "--root={root}"; "--force-script-chrootless"; '
            '"--log=/dev/null"; };\n')
        self.compiled = self / "shims/calls"
        for tool in ("py3compile", "py3clean"):
            shim = self / "shims" / tool
            shim.write_text(f'#!/bin/sh\necho "{tool} $*" >> "$SHIM_CALLS"\n')
            shim.chmod(0o755)

    def apt_get(self, *args: Union[str, Path], env: Mapping[str, str],
                cwd: Optional[Path] = None, timeout: float = 600) -> subprocess.CompletedProcess:
        env = dict(env, APT_CONFIG=str(self.config), DEBIAN_FRONTEND="noninteractive",
                   SHIM_CALLS=str(self.compiled))
        return run([need("apt-get", "apt"), "-q", "-y", *args], env=env, check=False,
                   merge=True, timeout=timeout, cwd=cwd)
