"""Package builds shared by the package tests: each is built once per session with the
real tools (packaging/build-deb, packaging/build-rpm)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import pytest
from pkgtools import PACKAGING, TEMPLATES_DIR, build_deb, need, run
from testbed import images

# Two template versions: what cloudstack-management ships at install, then at upgrade.
VERSIONS = ("4.20.0.0", "4.20.1.0")


@pytest.fixture(scope="session")
def deb_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool, package in (("dpkg-buildpackage", "dpkg-dev"), ("dh", "debhelper"),
                          ("dh_python3", "dh-python"), ("pybuild", "dh-python")):
        need(tool, package)
    out = tmp_path_factory.mktemp("deb")
    return Path(run([PACKAGING / "build-deb", out]).stdout.strip())


@pytest.fixture(scope="session")
def deb_tree(deb_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb's files unpacked (no scripts run)."""
    tree = tmp_path_factory.mktemp("deb-tree")
    run(["dpkg-deb", "-x", deb_package, tree])
    return tree


@pytest.fixture(scope="session")
def rpm_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("rpmbuild", "rpm")
    out = tmp_path_factory.mktemp("rpm")
    return Path(run([PACKAGING / "build-rpm", out]).stdout.strip())


@dataclass
class Bundle:
    directory: Path  # metadata.ini and the bundled KVM image, as the package installs them
    templatename: str  # the KVM x86_64 template's name, as registered in vm_template
    filename: str  # the bundled image's file name


@pytest.fixture(scope="session")
def template_bundles(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Bundle]:
    made = {}
    for version in VERSIONS:
        directory = tmp_path_factory.mktemp(f"templates-{version}")
        meta = images.build_kvm_bundle(directory, version, 64 * 1024**2)
        kvm = next(s for s in meta.sections.values()
                   if s.hypervisor == "kvm" and s.arch == "x86_64")
        made[version] = Bundle(directory, kvm.templatename, kvm.filename)
    return made


@pytest.fixture(scope="session")
def management_debs(template_bundles, tmp_path_factory):
    """Stand-in cloudstack-management .debs: version -> (deb, templatename, bundle name)."""
    work = tmp_path_factory.mktemp("management-deb")
    made = {}
    for version, bundle in template_bundles.items():
        files = {f"{TEMPLATES_DIR}/{p.name}": p for p in bundle.directory.iterdir()}
        deb = build_deb(work, "cloudstack-management", f"{version}-1", files)
        made[version] = (deb, bundle.templatename, bundle.filename)
    return made
