"""The .deb: built by packaging/build-deb, inspected with dpkg-deb, and installed for real
with dpkg into a throwaway root, where cloudstack-management's templates fire our trigger
and the hook seeds a real MariaDB and bind-mounted stores."""

from __future__ import annotations

import configparser
import importlib.metadata
import platform
import re
import shutil
import socket
import sys
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
    DpkgRoot,
    assert_seeded,
    base_env,
    hook_env,
    need,
    one_store_zone,
    run,
)

from cloudstack_sysvm_seed import __version__

UNIT = "usr/lib/systemd/system/cloudstack-sysvm-seed.service"
WATCH_UNIT = "usr/lib/systemd/system/cloudstack-sysvm-seed-watch.service"
WANTS = "usr/lib/systemd/system/cloudstack-management.service.wants/cloudstack-sysvm-seed.service"
MANPAGE = "usr/share/man/man8/cloudstack-sysvm-seed.8.gz"
COMPLETION = "usr/share/bash-completion/completions/cloudstack-sysvm-seed"
DOC = "usr/share/doc/cloudstack-sysvm-seed"
# The Python distribution behind each Debian dependency, to say what the host provides.
DIST_OF_DEB = {"python3-pymysql": "PyMySQL", "python3-requests": "requests",
               "python3-tenacity": "tenacity", "python3-cryptography": "cryptography",
               "python3-tqdm": "tqdm"}


def field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", deb, name]).stdout.strip()


def depends(deb: Path) -> List[str]:
    return [d.strip() for d in field(deb, "Depends").split(",")]


def install_requires() -> List[str]:
    """The distribution names setup.cfg requires (what dh_python3 reads from the metadata)."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return [re.match(r"[A-Za-z0-9_.-]+", line.strip()).group()
            for line in config["options"]["install_requires"].splitlines() if line.strip()]


# -- what the package holds ---------------------------------------------------------------


def test_control_fields_and_trigger(deb_package):
    assert deb_package.name == f"cloudstack-sysvm-seed_{__version__}_all.deb"
    assert field(deb_package, "Package") == "cloudstack-sysvm-seed"
    assert field(deb_package, "Version") == __version__
    assert field(deb_package, "Architecture") == "all"
    # dh_python3 computed Depends from the package metadata: one Debian package per
    # requirement in setup.cfg, and the interpreter.
    assert {d.split()[0] for d in depends(deb_package)} == {"python3:any", *DIST_OF_DEB}
    assert sorted(d.lower() for d in DIST_OF_DEB.values()) == sorted(
        d.lower() for d in install_requires()), "a new requirement: add it to DIST_OF_DEB"
    assert field(deb_package, "Maintainer") == (
        "cloudstack-sysvm-seed developers <cloudstack-sysvm-seed@lists.apache.org>")
    triggers = run(["dpkg-deb", "-I", deb_package, "triggers"]).stdout.splitlines()
    assert [t for t in triggers if t.strip() and not t.startswith("#")] == [
        "interest-noawait /usr/share/cloudstack-management/templates/systemvm"]


def test_file_list_modes_and_scripts(deb_package, tmp_path):
    listing: Dict[str, str] = {}
    for line in run(["dpkg-deb", "-c", deb_package]).stdout.splitlines():
        mode, owner, _size, _date, _time, path = line.split(None, 5)
        assert owner == "root/root", line
        listing[path[1:].rstrip("/")] = mode
    sources = {str(p.relative_to(REPO)) for p in (REPO / "cloudstack_sysvm_seed").rglob("*.py")
               if "__pycache__" not in p.parts}
    shipped = {p[len(f"/{DIST_PACKAGES}/"):] for p in listing
               if p.startswith(f"/{DIST_PACKAGES}/") and p.endswith(".py")}
    assert shipped == sources
    assert not [p for p in listing if "__pycache__" in p or p.endswith(".pyc")]
    assert listing["/usr/bin/cloudstack-sysvm-seed"] == "-rwxr-xr-x"
    assert listing["/usr/lib/cloudstack-sysvm-seed/hook"] == "-rwxr-xr-x"
    assert listing[f"/{UNIT}"] == "-rw-r--r--"
    assert listing[f"/{WATCH_UNIT}"] == "-rw-r--r--"
    assert listing[f"/{WANTS} -> ../cloudstack-sysvm-seed.service"] == "lrwxrwxrwx"
    assert "/var/lib/cloudstack-sysvm-seed" in listing
    for path in (MANPAGE, COMPLETION, f"{DOC}/copyright", f"{DOC}/changelog.gz",
                 "usr/share/lintian/overrides/cloudstack-sysvm-seed",
                 f"{DIST_PACKAGES}/cloudstack_sysvm_seed-{__version__}.dist-info/METADATA"):
        assert listing[f"/{path}"] == "-rw-r--r--", path
    # The maintainer scripts at least parse, and debhelper filled in its part (dh_python3:
    # byte-compile on configure, clean before removal).
    control = tmp_path / "control"
    run(["dpkg-deb", "-e", deb_package, control])
    assert sorted(p.name for p in control.iterdir()) == [
        "control", "md5sums", "postinst", "postrm", "prerm", "triggers"]
    for script in ("postinst", "prerm", "postrm"):
        run(["sh", "-n", control / script])
        assert "#DEBHELPER#" not in (control / script).read_text()
    assert "py3compile -p cloudstack-sysvm-seed" in (control / "postinst").read_text()
    assert "py3clean -p cloudstack-sysvm-seed" in (control / "prerm").read_text()


def test_lintian_is_clean(deb_package):
    """No error, warning or info at all: what remains is overridden in
    packaging/debian/lintian-overrides, each override with its reason."""
    lintian = need("lintian", "lintian")
    # (--fail-on info would count the overridden tags too.)
    done = run([lintian, "--display-info", "--fail-on", "error,warning", deb_package],
               check=False, merge=True)
    tags = [line for line in done.stdout.splitlines() if re.match(r"[EWI]: ", line)]
    assert (done.returncode, tags) == (0, []), done.stdout
    overrides = (REPO / "packaging/debian/lintian-overrides").read_text().split("\n\n")
    for stanza in overrides:
        lines = [line for line in stanza.splitlines() if line.strip()]
        assert lines[0].startswith("#") and not lines[-1].startswith("#"), (
            f"an override without its reason:\n{stanza}")


def test_man_page_and_completion(deb_tree):
    man = need("man", "man-db")
    done = run([man, "--warnings", "-l", "-Tutf8", deb_tree / MANPAGE],
               env=base_env(LC_ALL="C.UTF-8", MANWIDTH="80"), merge=True)
    # Bold and underline: overstrikes (groff 1.22, Debian 12) or SGR escapes (1.23, Debian 13).
    text = re.sub(r"\x1b\[[0-9;]*m", "", re.sub(r".\x08", "", done.stdout))
    for heading in ("NAME", "SYNOPSIS", "COMMANDS", "GLOBAL OPTIONS", "EXIT STATUS", "FILES",
                    "ENVIRONMENT", "SEE ALSO"):
        assert re.search(rf"(?m)^{heading}$", text), heading
    program = ('source "$1"; COMP_WORDS=(cloudstack-sysvm-seed on-st); COMP_CWORD=1; '
               '_cloudstack_sysvm_seed; printf "%s\\n" "${COMPREPLY[@]}"')
    done = run(["bash", "--norc", "-c", program, "bash", deb_tree / COMPLETION])
    assert done.stdout.split() == ["on-store-added"]


def test_launcher_runs_the_package(deb_tree):
    text = (deb_tree / "usr/bin/cloudstack-sysvm-seed").read_text()
    python = "${CLOUDSTACK_SYSVM_SEED_PYTHON:-/usr/bin/python3}"
    assert f'exec "{python}" -m cloudstack_sysvm_seed "$@"' in text
    env = base_env(PYTHONPATH=str(deb_tree / DIST_PACKAGES),
                   CLOUDSTACK_SYSVM_SEED_PYTHON=sys.executable)
    done = run([deb_tree / "usr/bin/cloudstack-sysvm-seed", "--version"], env=env)
    assert done.stdout.strip() == f"cloudstack-sysvm-seed {__version__}"


def test_depends_cover_every_import_with_debian_python(deb_tree):
    """Debian's python3 with the Debian packages named in Depends imports every module, and
    the runner starts processes."""
    python = need("/usr/bin/python3", "python3")
    script = f"""
import importlib, pkgutil, sys
# Only Debian's own paths: no /usr/local, no user site, no virtualenv.
sys.path = [{str(deb_tree / DIST_PACKAGES)!r}] + [
    p for p in sys.path if p and not p.startswith("/usr/local") and "site-packages" not in p]
import cloudstack_sysvm_seed as package
for module in pkgutil.walk_packages(package.__path__, "cloudstack_sysvm_seed."):
    if module.name != "cloudstack_sysvm_seed.__main__":  # it runs the tool
        importlib.import_module(module.name)
from cloudstack_sysvm_seed import runner
assert runner.run(["echo", "ok"], timeout=10).stdout == "ok\\n"
print(package.__file__)
"""
    done = run([python, "-s", "-c", script], check=False)
    wanted = " ".join(DIST_OF_DEB)
    assert done.returncode == 0, (
        f"the package does not import with Debian's python3 and its Depends; if a module "
        f"is missing, apt-get install {wanted} (scripts/setup does), else add the new "
        f"dependency to setup.cfg (dh_python3 maps it) and the spec:\n{done.stderr}")
    assert done.stdout.strip().startswith(str(deb_tree))


def test_systemd_unit(deb_tree, tmp_path):
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(deb_tree / UNIT)
    assert unit["Unit"]["ConditionPathExists"] == f"/{PENDING}"
    assert unit["Unit"]["Before"].split() == ["cloudstack-management.service"]
    assert set(unit["Unit"]["After"].split()) == {
        "network-online.target", "mariadb.service", "mysql.service"}
    # Wants semantics: a failed seed must never keep the management server down.
    for strong in ("Requires", "Requisite", "BindsTo", "PartOf"):
        assert strong not in unit["Unit"]
    assert unit["Unit"]["Documentation"] == "man:cloudstack-sysvm-seed(8)"
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Service"]["ExecStart"] == "/usr/lib/cloudstack-sysvm-seed/hook"
    assert int(unit["Service"]["TimeoutStartSec"]) >= 3600
    # Static: the package ships the link WantedBy= would make, so nothing needs enabling.
    assert "Install" not in unit
    assert (deb_tree / WANTS).resolve() == (deb_tree / UNIT).resolve()

    assert_verified(deb_tree, tmp_path, UNIT)


def assert_verified(deb_tree, tmp_path, unit):
    """systemd-analyze verify passes on the packaged unit."""
    analyze = need("systemd-analyze", "systemd")
    # verify loads the default dependencies (sysinit.target...) from the root: lend it the
    # host's targets, then check our unit and that ExecStart is there and executable.
    root = tmp_path / "root"
    shutil.copytree(deb_tree, root, symlinks=True)
    host_units = next(d for d in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                      if (d / "sysinit.target").exists())
    for target in host_units.glob("*.target"):
        shutil.copy(target, root / "usr/lib/systemd/system" / target.name)
    # verify also runs `man` on Documentation=: let it find the packaged page.
    done = run([analyze, "verify", f"--root={root}", f"/{unit}"], check=False,
               env=base_env(MANPATH=str(root / "usr/share/man")))
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_watch_unit(deb_tree, deb_package, tmp_path):
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str
    unit.read(deb_tree / WATCH_UNIT)
    assert unit["Service"]["Type"] == "simple"
    assert unit["Service"]["Restart"] == "on-failure"
    # The watch stops its own children (mount, umount) on SIGTERM; systemd must not.
    assert unit["Service"]["KillMode"] == "mixed"
    assert {"mariadb.service", "mysql.service"} <= set(unit["Unit"]["After"].split())
    assert "Before" not in unit["Unit"]  # it does not hold up the management server
    assert unit["Install"]["WantedBy"] == "multi-user.target"  # `systemctl enable` works
    argv = unit["Service"]["ExecStart"].split()
    assert argv[0] == "/usr/bin/cloudstack-sysvm-seed" and argv[-1] == "watch"
    # The log: the journal (stderr) and CloudStack's log directory.
    assert argv[argv.index("--log-file") + 1] == "/var/log/cloudstack/management/sysvm-seed.log"
    assert "StandardError" not in unit["Service"]
    assert_verified(deb_tree, tmp_path, WATCH_UNIT)

    # Not enabled, not started by the package: only an operator's enablement is kept (and
    # purged with the package), a running watch restarted on upgrade and stopped on removal.
    control = tmp_path / "control"
    run(["dpkg-deb", "-e", deb_package, control])
    scripts = {name: (control / name).read_text() for name in ("postinst", "prerm", "postrm")}
    calls = {name: re.findall(r"deb-systemd-(?:helper|invoke) (?:--quiet )?([a-z-]+)", text)
             for name, text in scripts.items()}
    assert calls == {
        "postinst": ["debian-installed", "was-enabled", "enable", "update-state", "try-restart"],
        "prerm": ["stop"], "postrm": ["purge"]}
    # `enable` only where the operator had enabled it (new symlinks of a changed unit).
    postinst = scripts["postinst"]
    assert re.search(r'was-enabled "\$watch"; then\n(\s*#.*\n)*\s*deb-systemd-helper enable',
                     postinst), postinst
    assert 'if [ -z "${DPKG_ROOT:-}" ] && [ -n "${2:-}" ] && [ -d /run/systemd/system ]; then\n' \
           '            deb-systemd-invoke try-restart "$watch"' in postinst  # upgrades only
    assert '[ "$1" = remove ]' in scripts["prerm"]
    for text in scripts.values():
        assert not re.search(r"deb-systemd-invoke (start|restart)|systemctl (enable|start)",
                             text)


# -- dpkg for real --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def host_python_deb(deb_package, tmp_path_factory):
    """A package telling the root's dpkg database that the host provides our Depends, at
    the versions of the interpreter the hook will use (this one). Installing ours with
    --force-depends instead leaves its triggers pending: dpkg then reports a trigger cycle."""
    provides = []
    for dep in depends(deb_package):
        name = dep.split()[0].split(":")[0]  # python3:any is python3 of any architecture
        if name == "python3":
            version = platform.python_version()
        elif name in DIST_OF_DEB:
            version = importlib.metadata.version(DIST_OF_DEB[name])
        else:
            pytest.fail(f"unknown dependency {name}: add its Python distribution to DIST_OF_DEB")
        provides.append(f"{name} (= {version})")
    work = tmp_path_factory.mktemp("host-python")
    stage = work / "stage" / "DEBIAN"
    stage.mkdir(parents=True)
    (stage / "control").write_text(
        # Multi-Arch: allowed, so that its python3 also satisfies python3:any.
        "Package: host-python\nVersion: 1\nArchitecture: all\nMulti-Arch: allowed\n"
        f"Maintainer: package tests <tests@localhost>\nProvides: {', '.join(provides)}\n"
        "Description: the host's python3 and libraries, seen from a throwaway root\n")
    deb = work / "host-python_1_all.deb"
    run(["dpkg-deb", "--root-owner-group", "--build", stage.parent, deb])
    return deb


@pytest.fixture
def installed(cloud_db, make_export, mount_command, tmp_path, deb_package, host_python_deb):
    """A zone with one NFS store, and a root with our package installed."""
    export, store = one_store_zone(cloud_db, make_export)
    root = DpkgRoot(tmp_path / "root")
    (root / DB_PROPERTIES).parent.mkdir(parents=True)
    shutil.copy(cloud_db.db_properties, root / DB_PROPERTIES)
    env = hook_env(mount_command)
    done = root.dpkg("-i", host_python_deb, deb_package, env=env)
    assert done.returncode == 0, done.stdout
    return cloud_db, root, env, export, store


def test_trigger_seeds_on_install_and_on_upgrade(installed, management_debs):
    cloud, root, env, export, store = installed
    for version in ("4.20.0.0", "4.20.1.0"):  # install, then upgrade
        deb, name, bundle = management_debs[version]
        done = root.dpkg("-i", deb, env=env)
        assert done.returncode == 0, done.stdout
        assert "Processing triggers for cloudstack-sysvm-seed" in done.stdout
        assert "did not finish" not in done.stdout
        assert sorted(p.name for p in (root / TEMPLATES_DIR).iterdir()) == sorted(
            ["metadata.ini", bundle])
        assert_seeded(cloud, export, store, name)
        assert not (root / PENDING).exists()
    assert_seeded(cloud, export, store, management_debs["4.20.0.0"][1])  # still just one
    assert "Done:" in (root / LOG).read_text()
    assert root.status("cloudstack-sysvm-seed") == "ii "
    package = root / f"{DIST_PACKAGES}/cloudstack_sysvm_seed"
    assert (package / "__pycache__").is_dir(), "the hook did not run the root's package"

    done = root.dpkg("--purge", "cloudstack-sysvm-seed", env=env)
    assert done.returncode == 0, done.stdout
    assert not package.exists()  # prerm removed __pycache__, so dpkg could remove the dir
    assert not (root / "var/lib/cloudstack-sysvm-seed").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_failed_hook_keeps_dpkg_green_and_the_unit_retries(installed, management_debs):
    cloud, root, env, export, store = installed
    good = (root / DB_PROPERTIES).read_text()
    (root / DB_PROPERTIES).write_text(
        re.sub(r"(?m)^db\.cloud\.port=.*$", f"db.cloud.port={free_port()}", good))
    deb, name, _ = management_debs["4.20.0.0"]
    done = root.dpkg("-i", deb, env=env)
    assert done.returncode == 0, done.stdout
    # Exit 4: database unreachable (README).
    assert "SystemVM template seeding did not finish (exit 4)" in done.stdout
    assert f"see {root.path}/{LOG}" in done.stdout
    assert "retried when cloudstack-management starts, or run: cloudstack-sysvm-seed" in done.stdout
    assert (root / PENDING).read_text().startswith("exit=4\n")
    # The log says why, in the seeder's words, and what to run next (the hook's last line).
    lines = (root / LOG).read_text().splitlines()
    assert " ERROR cloudstack_sysvm_seed.cli: Cannot connect to the cloud database " in \
        lines[-3]
    assert lines[-2].endswith("Check db.properties (--db-properties) and that MySQL/MariaDB "
                              "is running.")
    assert "hook: ERROR SystemVM template seeding did not finish (exit 4)" in lines[-1]
    assert "run: cloudstack-sysvm-seed check" in lines[-1]
    assert root.status("cloudstack-sysvm-seed") == "ii "
    assert root.status("cloudstack-management") == "ii "
    assert not cloud.query("SELECT id FROM vm_template WHERE name = %s", (name,))

    # The database is back; the unit's ExecStart runs as systemd would, on this root.
    (root / DB_PROPERTIES).write_text(good)
    unit = configparser.ConfigParser(interpolation=None)
    unit.read(root / UNIT)
    exec_start = root / unit["Service"]["ExecStart"].lstrip("/")
    run([exec_start], env=dict(env, DPKG_ROOT=str(root.path)))
    assert not (root / PENDING).exists()
    assert_seeded(cloud, export, store, name)
