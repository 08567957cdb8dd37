"""metadata.ini, as shipped in /usr/share/cloudstack-management/templates/systemvm/.

Three upstream forms are read into the same records:
- 4.16-4.18: sections `kvm`, `vmware`, `xenserver`, `hyperv`, `lxc`, `ovm3`;
- ~4.19: the same sections with an `arch` key;
- 4.20+: `kvm-x86_64`, `kvm-aarch64`, ... with `arch`, `guestos` and possibly an empty checksum.
Every problem in the file is collected and reported at once, each with its line, in our
words (the file is read line by line here, not by configparser, whose first error hides the
others and blames the wrong line: an unclosed `[kvm-aarch64` became "option 'templatename'
in section 'kvm-x86_64' already exists").
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
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
    problems: list[str] = []
    sections = _read_ini(text, path, problems)
    version = _read_version(sections, path, problems)
    specs = []
    for section in sections.values():
        if section.name == "default":
            continue
        spec = _read_section(section, path, problems)
        if spec is not None:
            specs.append(spec)
    _check_unique(specs, sections, path, problems)
    if problems:
        raise MetadataError(path, problems)
    default = sections.get("default")
    repository = (default.get("downloadrepository") if default else "").strip() or None
    return Metadata(path, version, tuple(specs), repository)


# --- the file's lines -------------------------------------------------------------------------


@dataclass
class _Section:
    """A [section] of the file: its keys (lower case, as configparser has them) and values,
    and the line each is on, so that every problem can say where it is."""

    name: str
    line: int
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def where(self, path: str, key: Optional[str] = None) -> str:
        return f"{path}:{self.lines.get(key, self.line)}: [{self.name}]"


_KEY_VALUE = re.compile(r"^(?P<key>.*?)\s*[=:]\s*(?P<value>.*)$")


def _read_ini(text: str, path: str, problems: list[str]) -> dict[str, _Section]:
    """The sections of an INI file, as configparser reads them (`key = value` or `key:
    value`, comments on lines of their own, indented lines continuing a value), with every
    line it cannot read said in our words. What follows a broken header, or repeats a
    section, is left out, so that one mistake is told once."""
    sections: dict[str, _Section] = {}
    current: Optional[_Section] = None
    lost = False  # in a section left out: its lines are not read
    key: Optional[str] = None  # the value an indented line continues
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            key = None if not line else key
            continue
        if raw[0] in " \t" and key is not None:
            current.values[key] += "\n" + line
            continue
        key = None
        where = f"{path}:{number}:"
        if line.startswith("["):
            current, lost = _header(line, number, where, sections, problems)
            continue
        if lost:
            continue
        match = _KEY_VALUE.match(line)
        if not match or not match.group("key"):
            problems.append(f"{where} {line!r} is neither a [section] header nor a "
                            "`key = value` line")
        elif current is None:
            problems.append(f"{where} {line!r} is outside any section: no section headers "
                            "come before it")
        else:
            key = _add_key(current, match.group("key").lower(), match.group("value"), number,
                           where, problems)
    return sections


def _header(line: str, number: int, where: str, sections: dict[str, _Section],
            problems: list[str]) -> tuple[Optional[_Section], bool]:
    """The section a header line opens, and whether its lines are left out."""
    if not line.endswith("]"):
        problems.append(f"{where} {line!r} is not a section header: the closing ']' is "
                        "missing (the lines up to the next header are not read)")
        return None, True
    name = line[1:-1].strip()
    if name in sections:
        problems.append(f"{where} section [{name}] again (it starts on line "
                        f"{sections[name].line}); this one is not read")
        return None, True
    sections[name] = _Section(name, number)
    return sections[name], False


def _add_key(section: _Section, key: str, value: str, number: int, where: str,
             problems: list[str]) -> Optional[str]:
    """Record key = value; the key an indented line continues, or None."""
    if key in section.values:
        problems.append(f"{where} [{section.name}] {key}: given again (first on line "
                        f"{section.lines[key]}); only the first is read")
        return None
    section.values[key] = value.strip()
    section.lines[key] = number
    return key


# --- what the sections say -------------------------------------------------------------------


def _read_version(sections: dict[str, _Section], path: str, problems: list[str]) -> str:
    default = sections.get("default")
    if default is None:
        problems.append(f"{path}: missing section [default]")
        return ""
    version = default.get("version").strip()
    if not version:
        problems.append(f"{default.where(path, 'version')} version: missing")
    elif not _VERSION.match(version):
        problems.append(f"{default.where(path, 'version')} version: {version!r} is not "
                        "X.Y.Z[.S]")
    return version


def _read_section(section: _Section, path: str, problems: list[str]) -> Optional[TemplateSpec]:
    key, _, section_arch = section.name.partition("-")
    hypervisor = hypervisors.by_key(key)
    if hypervisor is None:
        # Newer CloudStack may add hypervisors (proxmox); they are not ours to seed.
        LOG.warning("%s: unknown hypervisor section, ignored", section.where(path))
        return None

    before = len(problems)
    for required in _REQUIRED_KEYS:
        if required not in section:
            problems.append(f"{section.where(path)} {required}: missing")
    for required in ("templatename", "filename"):
        if required in section and not section[required].strip():
            problems.append(f"{section.where(path, required)} {required}: empty")
    filename = section.get("filename", "").strip()
    if filename and (filename in (".", "..") or "/" in filename or "\\" in filename):
        problems.append(f"{section.where(path, 'filename')} filename: {filename!r} must be a "
                        "plain file name")
    arch = _read_arch(section, section_arch, path, problems)
    digest = _read_checksum(section, path, problems)
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


def _read_arch(section: _Section, section_arch: str, path: str, problems: list[str]) -> str:
    key_arch = section.get("arch", "").strip()
    arch = key_arch or section_arch or hypervisors.DEFAULT_ARCH
    where = section.where(path, "arch" if key_arch else None)
    if arch not in hypervisors.ARCHES:
        problems.append(f"{where} arch: {arch!r} is not one of {', '.join(hypervisors.ARCHES)}")
    elif section_arch and key_arch and section_arch != key_arch:
        problems.append(f"{where} arch: {key_arch!r} contradicts the section name")
    return arch


def _read_checksum(section: _Section, path: str,
                   problems: list[str]) -> Optional[checksum.Checksum]:
    text = section.get("checksum", "").strip()
    where = section.where(path, "checksum")
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


def _check_unique(specs: list[TemplateSpec], sections: dict[str, _Section], path: str,
                  problems: list[str]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for spec in specs:
        pair = (spec.hypervisor.key, spec.arch)
        if pair in seen:
            problems.append(f"{sections[spec.section].where(path)}: {spec.label} is also "
                            f"described by [{seen[pair]}]")
        seen.setdefault(pair, spec.section)
