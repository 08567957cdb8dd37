"""The RPM: built by packaging/build-rpm with the real rpmbuild, inspected with rpm -qp, and
installed for real with rpm, whose triggers make the hook seed a real MariaDB and
bind-mounted stores."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Dict, List

import pytest
from pkgtools import (
    DB_PROPERTIES,
    DIST_PACKAGES,
    LOG,
    PENDING,
    REPO,
    TEMPLATES_DIR,
    assert_seeded,
    hook_env,
    need,
    one_store_zone,
    run,
)

from cloudstack_sysvm_seed import __version__

HOOK = "/usr/lib/cloudstack-sysvm-seed/hook"
PYDIR = "/usr/lib/cloudstack-sysvm-seed/python"


def query(rpm, *args: str) -> str:
    return run([need("rpm", "rpm"), "-qp", *args, rpm]).stdout


def scriptlets(text: str) -> Dict[str, List[str]]:
    """rpm's `<kind> scriptlet (using /bin/sh) -- <condition>` headers -> body lines."""
    found: Dict[str, List[str]] = {}
    body: List[str] = []
    for line in text.splitlines():
        if " scriptlet (using " in line:
            kind, _, rest = line.partition(" scriptlet (using ")
            body = found.setdefault(f"{kind} {rest.partition('-- ')[2]}".strip(), [])
        else:
            body.append(line)
    return found


def test_name_version_arch(rpm_package):
    assert rpm_package.name == f"cloudstack-sysvm-seed-{__version__}-1.noarch.rpm"
    assert query(rpm_package, "--qf", "%{NAME} %{VERSION} %{ARCH}") == (
        f"cloudstack-sysvm-seed {__version__} noarch")


def test_requires(rpm_package):
    requires = {r.strip() for r in query(rpm_package, "--requires").splitlines()
                if not r.startswith(("rpmlib(", "/bin/"))}
    assert requires == {"python3 >= 3.9", "python3dist(pymysql)",
                        "python3dist(requests)", "python3dist(tenacity)",
                        "python3dist(cryptography)", "python3dist(tqdm)"}


def test_triggers_call_the_hook_and_never_fail(rpm_package):
    triggers = scriptlets(query(rpm_package, "--triggers"))
    file_triggers = scriptlets(query(rpm_package, "--filetriggers"))
    assert list(triggers) == ["triggerin cloudstack-management"]
    assert list(file_triggers) == [
        "transfiletriggerin /usr/share/cloudstack-management/templates/systemvm"]
    code = [line for body in (*triggers.values(), *file_triggers.values()) for line in body
            if line.strip() and not line.startswith("#")]
    assert code == [f"{HOOK} --defer || :",
                    "cat >/dev/null  # rpm writes the matching file names on stdin; we do not "
                    "need them",
                    f"{HOOK} || :"]


def test_the_watch_unit_is_never_enabled_or_started(rpm_package):
    """The operator enables the watch; the package only stops and disables it on erase, and
    restarts it on upgrade when it runs (what %systemd_preun/_postun_with_restart do)."""
    scripts = scriptlets(query(rpm_package, "--scripts"))
    text = "\n".join(line for body in scripts.values() for line in body)
    assert "systemctl --no-reload disable --now cloudstack-sysvm-seed-watch.service" in "\n".join(
        scripts["preuninstall"])
    assert '[ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then systemctl --no-reload disable' \
        in text
    assert "systemctl try-restart cloudstack-sysvm-seed-watch.service" in "\n".join(
        scripts["postuninstall"])
    assert not re.search(r"systemctl (enable|start|restart)|preset", text)
    assert "/usr/lib/systemd/system/cloudstack-sysvm-seed-watch.service" in query(
        rpm_package, "-l")


def test_files_match_the_deb(rpm_package, deb_package):
    listing = {}
    for line in query(rpm_package, "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]").splitlines():
        mode, path = line.split(" ", 1)
        listing[path] = mode
    assert listing["/usr/bin/cloudstack-sysvm-seed"] == "-rwxr-xr-x"
    assert listing[HOOK] == "-rwxr-xr-x"
    sources = {f"{PYDIR}/{p.relative_to(REPO)}" for p in (REPO / "cloudstack_sysvm_seed").rglob(
        "*.py") if "__pycache__" not in p.parts}
    assert {p for p in listing if p.endswith(".py")} == sources
    # Apart from where Python code and docs go, both packages install the same files.
    in_deb = {}
    for line in run(["dpkg-deb", "-c", deb_package]).stdout.splitlines():
        mode, *_, path = line.split(None, 5)
        in_deb[path[1:].split(" -> ")[0]] = mode

    def files(modes):
        return {p for p, mode in modes.items() if mode[0] in "-l"
                and not p.startswith((f"/{DIST_PACKAGES}/", f"{PYDIR}/", "/usr/share/doc/",
                                      "/usr/share/lintian/"))}
    assert files(listing) == files(in_deb)
    assert {"/usr/share/man/man8/cloudstack-sysvm-seed.8.gz",
            "/usr/share/bash-completion/completions/cloudstack-sysvm-seed"} <= set(listing)


def test_rpmlint_reports_no_error_and_each_warning_is_explained(rpm_package):
    """rpmlint with its own defaults, plus the spec's rpmlintrc (which filters only
    no-signature, with its reason); every warning left is explained in packaging/README.md."""
    rpmlint = need("rpmlint", "rpmlint")
    rpmlintrc = REPO / "packaging/rpm/cloudstack-sysvm-seed.rpmlintrc"
    done = run([rpmlint, "-r", rpmlintrc, rpm_package], check=False, merge=True)
    found = re.findall(r"(?m)^cloudstack-sysvm-seed\.noarch: ([EW]): (\S+)", done.stdout)
    assert [tag for level, tag in found if level == "E"] == [], done.stdout
    assert re.search(r"(?m)^ 1 packages and 0 specfiles checked; 0 errors", done.stdout), (
        done.stdout)
    readme = (REPO / "packaging/README.md").read_text()
    unexplained = sorted({tag for _, tag in found if f"`{tag}`" not in readme})
    assert unexplained == [], f"explain them in packaging/README.md:\n{done.stdout}"


# -- rpm for real ---------------------------------------------------------------------------


class OverlaySystem:
    """This machine's /usr, /etc and /var under a throwaway writable layer, in a private
    mount namespace per command. rpm has no un-chrooted --root, so it installs "into /"
    here and its scriptlets run like on a real host, while every write lands in `upper`."""

    LAYERS = ("usr", "etc", "var")

    def __init__(self, path: Path):
        self.upper, work, self.db = path / "upper", path / "work", path / "rpmdb"
        mounts = ""
        for layer in self.LAYERS:
            (self.upper / layer).mkdir(parents=True)
            (work / layer).mkdir(parents=True)
            mounts += (f"mount -t overlay overlay -o lowerdir=/{layer},"
                       f"upperdir={self.upper / layer},workdir={work / layer} /{layer}\n")
        self.enter = path / "enter"
        self.enter.write_text(f'#!/bin/sh\nset -e\n{mounts}exec "$@"\n')
        self.enter.chmod(0o755)

    def rpm(self, *args, env):
        unshare = need("unshare", "util-linux")
        # rpm 4.20 (Debian 13) runs scriptlets without network and with a private /tmp
        # (its unshare plugin); the test database is on 127.0.0.1 and the hook must reach it,
        # as it does on a real host, whose rpm has no such plugin switched on.
        isolation = ["--define", "__transaction_unshare_nonet 0",
                     "--define", "__transaction_unshare_paths %{nil}"]
        return run([unshare, "--mount", "--propagation", "private", self.enter,
                    "rpm", f"--dbpath={self.db}", *isolation, *args], env=env, check=False,
                   merge=True)


MANAGEMENT_SPEC = """Name: cloudstack-management
Version: {version}
Release: 1
Summary: stand-in cloudstack-management for the package tests
License: Apache-2.0
BuildArch: noarch
%description
Ships only the SystemVM templates.
%install
mkdir -p %{{buildroot}}{templates}
cp -p {source}/* %{{buildroot}}{templates}/
%files
{templates}
"""


@pytest.fixture(scope="session")
def management_rpms(template_bundles, rpm_package, tmp_path_factory):
    """Stand-in cloudstack-management RPMs: version -> (rpm, templatename)."""
    made = {}
    for version, bundle in template_bundles.items():
        top = tmp_path_factory.mktemp(f"management-rpm-{version}")
        spec = top / "cloudstack-management.spec"
        spec.write_text(MANAGEMENT_SPEC.format(version=version, source=bundle.directory,
                                               templates=f"/{TEMPLATES_DIR}"))
        run(["rpmbuild", "--quiet", "-bb", "--define", f"_topdir {top}", spec])
        (built,) = (top / "RPMS").rglob("*.rpm")
        made[version] = (built, bundle.templatename)
    return made


def test_triggers_seed_on_install_and_on_upgrade(rpm_package, management_rpms, cloud_db,
                                                 make_export, mount_command, tmp_path):
    export, store = one_store_zone(cloud_db, make_export)
    system = OverlaySystem(tmp_path / "system")
    (system.upper / DB_PROPERTIES).parent.mkdir(parents=True)
    shutil.copy(cloud_db.db_properties, system.upper / DB_PROPERTIES)
    env = hook_env(mount_command)
    assert system.rpm("--initdb", env=env).returncode == 0
    # --nodeps: the python3dist() requires are met by the hook's interpreter, not by RPMs.
    done = system.rpm("-i", "--nodeps", rpm_package, env=env)
    assert done.returncode == 0, done.stdout
    for version, verb in (("4.20.0.0", "-i"), ("4.20.1.0", "-U")):  # install, then upgrade
        management, name = management_rpms[version]
        done = system.rpm(verb, management, env=env)
        assert done.returncode == 0, done.stdout
        assert "did not finish" not in done.stdout, done.stdout
        assert_seeded(cloud_db, export, store, name)
        # %triggerin recorded the work as pending; the file trigger did it and cleared it.
        assert not (system.upper / PENDING).exists()
    assert "Done:" in (system.upper / LOG).read_text()
    package = system.upper / "usr/lib/cloudstack-sysvm-seed/python/cloudstack_sysvm_seed"
    assert (package / "__pycache__").is_dir(), "the hook did not run the installed package"
