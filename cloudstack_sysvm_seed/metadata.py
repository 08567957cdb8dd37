"""metadata.ini, as shipped in /usr/share/cloudstack-management/templates/systemvm/.

Three upstream forms are read into the same records:
- 4.16-4.18: sections `kvm`, `vmware`, `xenserver`, `hyperv`, `lxc`, `ovm3`;
- ~4.19: the same sections with an `arch` key;
- 4.20+: `kvm-x86_64`, `kvm-aarch64`, ... with `arch`, `guestos` and possibly an empty checksum.
Every problem in the file is collected and reported at once.
"""

from __future__ import annotations

import configparser
import logging
import re
from dataclasses import dataclass
from typing import Optional

from . import checksum, hypervisors
from .errors import MetadataError
from .hypervisors import Hypervisor

LOG = logging.getLogger(__name__)

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:\.(\d+))?(?:-.+)?$")
_REQUIRED_KEYS = ("templatename", "filename", "checksum")


@dataclass(frozen=True)
class TemplateSpec:
    """One system VM template the package provides, for one hypervisor and CPU arch."""

    section: str
    hypervisor: Hypervisor
    arch: str
    name: str  # vm_template.name and display_text; also router.template.<hv>
    filename: str  # the bundled file's name in the templates directory
    checksum: Optional[checksum.Checksum]  # None when metadata.ini leaves it empty
    url: str  # vm_template.url
    guest_os: Optional[str]  # guest_os.display_name (4.20+), else the 4.16 fixed id applies

    @property
    def label(self) -> str:
        return f"{self.hypervisor.key}-{self.arch}"


@dataclass(frozen=True)
class Metadata:
    path: str
    version: str  # [default] version, e.g. 4.20.2.0
    specs: tuple[TemplateSpec, ...]
    download_repository: Optional[str] = None

    @property
    def release(self) -> str:
        """major.minor.patch, the value of `minreq.sysvmtemplate.version`."""
        major, minor, patch = _VERSION.match(self.version).groups()[:3]
        return f"{major}.{minor}.{patch}"

    def spec_for(self, hypervisor: Hypervisor, arch: str) -> Optional[TemplateSpec]:
        for spec in self.specs:
            if spec.hypervisor == hypervisor and spec.arch == arch:
                return spec
        return None


def load(path: str) -> Metadata:
    """Read and validate metadata.ini.

    :raises MetadataError: listing every problem, each naming file, section and key.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise MetadataError(path, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MetadataError(path, [f"cannot read: {exc}"]) from exc
    return parse(text, path)


def parse(text: str, path: str = "metadata.ini") -> Metadata:
    """Parse metadata.ini text; see `load`."""
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00none")
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise MetadataError(path, [_one_line(exc)]) from exc

    problems: list[str] = []
    version = _read_version(parser, path, problems)
    specs = []
    for section in parser.sections():
        if section == "default":
            continue
        spec = _read_section(parser[section], path, problems)
        if spec is not None:
            specs.append(spec)
    _check_unique(specs, path, problems)
    if problems:
        raise MetadataError(path, problems)
    repository = parser.get("default", "downloadrepository", fallback="").strip() or None
    return Metadata(path, version, tuple(specs), repository)


def _read_version(parser: configparser.ConfigParser, path: str, problems: list[str]) -> str:
    if not parser.has_section("default"):
        problems.append(f"{path}: missing section [default]")
        return ""
    version = parser.get("default", "version", fallback="").strip()
    if not version:
        problems.append(f"{path} [default] version: missing")
    elif not _VERSION.match(version):
        problems.append(f"{path} [default] version: {version!r} is not X.Y.Z[.S]")
    return version


def _read_section(
    section: configparser.SectionProxy, path: str, problems: list[str]
) -> Optional[TemplateSpec]:
    where = f"{path} [{section.name}]"
    key, _, section_arch = section.name.partition("-")
    hypervisor = hypervisors.by_key(key)
    if hypervisor is None:
        # Newer CloudStack may add hypervisors (proxmox); they are not ours to seed.
        LOG.warning("%s: unknown hypervisor section, ignored", where)
        return None

    before = len(problems)
    for required in _REQUIRED_KEYS:
        if required not in section:
            problems.append(f"{where} {required}: missing")
    for required in ("templatename", "filename"):
        if required in section and not section[required].strip():
            problems.append(f"{where} {required}: empty")
    filename = section.get("filename", "").strip()
    if filename and (filename in (".", "..") or "/" in filename or "\\" in filename):
        problems.append(f"{where} filename: {filename!r} must be a plain file name")
    arch = _read_arch(section, section_arch, where, problems)
    digest = _read_checksum(section, where, problems)
    if len(problems) > before:
        return None
    return TemplateSpec(
        section=section.name,
        hypervisor=hypervisor,
        arch=arch,
        name=section["templatename"].strip(),
        filename=filename,
        checksum=digest,
        url=section.get("downloadurl", "").strip(),
        guest_os=section.get("guestos", "").strip() or None,
    )


def _read_arch(
    section: configparser.SectionProxy, section_arch: str, where: str, problems: list[str]
) -> str:
    key_arch = section.get("arch", "").strip()
    arch = key_arch or section_arch or hypervisors.DEFAULT_ARCH
    if arch not in hypervisors.ARCHES:
        problems.append(f"{where} arch: {arch!r} is not one of {', '.join(hypervisors.ARCHES)}")
    elif section_arch and key_arch and section_arch != key_arch:
        problems.append(f"{where} arch: {key_arch!r} contradicts the section name")
    return arch


def _read_checksum(
    section: configparser.SectionProxy, where: str, problems: list[str]
) -> Optional[checksum.Checksum]:
    text = section.get("checksum", "").strip()
    if not text:
        return None  # 4.20.2 shipped aarch64 this way; seeding refuses it unless allowed
    if "\n" in text:
        # templateConfig.sh once matched several lines of md5sum.txt (PR #6037).
        problems.append(f"{where} checksum: several values on several lines")
        return None
    try:
        return checksum.parse(text)
    except ValueError as exc:
        problems.append(f"{where} checksum: {exc}")
        return None


def _check_unique(specs: list[TemplateSpec], path: str, problems: list[str]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for spec in specs:
        pair = (spec.hypervisor.key, spec.arch)
        if pair in seen:
            problems.append(
                f"{path} [{spec.section}]: {spec.label} is also described by [{seen[pair]}]"
            )
        seen.setdefault(pair, spec.section)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
