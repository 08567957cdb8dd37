"""The .deb through apt, as an operator installs it: `apt-get install ./cloudstack-sysvm-seed_*.deb`
on a root that lacks our Python libraries, so apt resolves the Depends from Debian's archive
(this test reaches the machine's Debian mirror: it needs the network, like scripts/setup),
downloads them and dpkg installs them beside ours. Then cloudstack-management's templates
arrive through apt too (install, then upgrade): the trigger fires, the hook fails (no
database in this root), apt still exits 0 and the pending marker is left. Purge leaves
nothing of ours.

The root is a throwaway dpkg database: this machine's packages less the Python libraries our
Depends pull in (and what needs them), see pkgtools.status_without and AptRoot. No other
package's script runs: only those libraries are installed, and their scripts only
byte-compile, which the root's py3compile stand-in records.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from pkgtools import DIST_PACKAGES, PENDING, AptRoot, base_env, need, run, status_without

PACKAGE = "cloudstack-sysvm-seed"


def depends(deb: Path):
    field = run(["dpkg-deb", "-f", deb, "Depends"]).stdout
    return [d.split()[0].split(":")[0] for d in field.split(",") if d.strip()]


@pytest.fixture(scope="module")
def apt_root(deb_package, tmp_path_factory):
    libraries = [d for d in depends(deb_package) if d != "python3"]
    status, left_out = status_without(libraries)
    missing = sorted(set(libraries) - set(left_out))
    assert not missing, f"not Python libraries on this machine, cannot leave out: {missing}"
    root = AptRoot(tmp_path_factory.mktemp("apt") / "root", status)
    started = time.monotonic()
    done = root.apt_get("update", env=base_env())
    assert done.returncode == 0, f"apt-get update (needs the Debian mirror):\n{done.stdout}"
    print(f"apt-get update: {time.monotonic() - started:.1f} s")
    return root, libraries


def installed(root: AptRoot, package: str) -> bool:
    done = run(["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W",
                "-f=${db:Status-Abbrev}", package], check=False)
    return done.returncode == 0 and done.stdout == "ii "


def test_apt_get_install_resolves_the_depends_from_debian(apt_root, deb_package,
                                                          management_debs):
    root, libraries = apt_root
    env = base_env()
    for library in libraries:
        assert not installed(root, library), library
    local = f"./{deb_package.name}"  # exactly as an operator types it

    # What apt will install: ours and Python libraries, nothing whose scripts act on /.
    done = root.apt_get("install", "--simulate", local, env=env, cwd=deb_package.parent)
    assert done.returncode == 0, done.stdout
    planned = re.findall(r"(?m)^Inst (\S+)", done.stdout)
    assert set(libraries) <= set(planned), done.stdout
    assert all(p == PACKAGE or p.startswith("python3-") for p in planned), done.stdout

    started = time.monotonic()
    done = root.apt_get("install", local, env=env, cwd=deb_package.parent)
    print(f"apt-get install ./{deb_package.name}: {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, done.stdout
    for package in planned:
        assert installed(root, package), package
        assert re.search(rf"(?m)^Setting up {re.escape(package)}(:\w+)? ", done.stdout), package
    # Debian's libraries byte-compile in their postinst, nothing else (ours does not under
    # DPKG_ROOT, see packaging/debian/postinst).
    for package in planned:
        for script in root.path.glob(f"var/lib/dpkg/info/{package}*.postinst"):
            if package != PACKAGE:
                code = [line for line in script.read_text().splitlines()
                        if line.strip() and not line.lstrip().startswith("#")]
                assert all(re.search(r"py3compile|pypy3compile|^(set -e|fi|then|exit 0)$"
                                     r"|^if |^\t|^ {4}", line) for line in code), script
    compiling = {package for package in set(planned) - {PACKAGE}
                 for script in root.path.glob(f"var/lib/dpkg/info/{package}*.postinst")
                 if "py3compile -p" in script.read_text()}
    recorded = {word.split(":")[0] for word in root.compiled.read_text().split()}
    assert compiling and compiling <= recorded

    # Debian's python3 imports every module with the root's libraries and the standard
    # library alone: the Depends are complete, and they came from Debian.
    python = need("/usr/bin/python3", "python3")
    script = f"""
import importlib, pkgutil, sys
sys.path = [{str(root / DIST_PACKAGES)!r}] + [
    p for p in sys.path if p and "dist-packages" not in p and "site-packages" not in p]
import cloudstack_sysvm_seed as package
for module in pkgutil.walk_packages(package.__path__, "cloudstack_sysvm_seed."):
    if module.name != "cloudstack_sysvm_seed.__main__":
        importlib.import_module(module.name)
import cryptography, pymysql, requests, tenacity, tqdm
for module in (package, cryptography, pymysql, requests, tenacity, tqdm):
    assert module.__file__.startswith(sys.path[0]), module.__file__
"""
    done = run([python, "-s", "-B", "-c", script], check=False, merge=True)
    assert done.returncode == 0, done.stdout

    # cloudstack-management's templates through apt: the trigger fires on install and on
    # upgrade; seeding fails (this root has no database), apt does not.
    for version in ("4.20.0.0", "4.20.1.0"):
        deb = management_debs[version][0]
        (root / PENDING).unlink(missing_ok=True)
        done = root.apt_get("install", f"./{deb.name}", env=env, cwd=deb.parent)
        assert done.returncode == 0, done.stdout
        assert f"Processing triggers for {PACKAGE} " in done.stdout, done.stdout
        assert "SystemVM template seeding did not finish (exit 2)" in done.stdout, done.stdout
        assert (root / PENDING).read_text().startswith("exit=2\n")
        assert installed(root, "cloudstack-management") and installed(root, PACKAGE)

    done = root.apt_get("purge", PACKAGE, env=env)
    assert done.returncode == 0, done.stdout
    assert not installed(root, PACKAGE)
    left = [p for p in ("usr/lib/cloudstack-sysvm-seed", f"{DIST_PACKAGES}/cloudstack_sysvm_seed",
                        "var/lib/cloudstack-sysvm-seed", "usr/bin/cloudstack-sysvm-seed",
                        "usr/lib/systemd/system/cloudstack-sysvm-seed.service")
            if (root / p).exists() or (root / p).is_symlink()]
    assert left == []
