"""Tiny SystemVM template bundles: real qcow2 images, real bzip2/gzip, upstream metadata.ini.

metadata.ini forms (see reference/cloudstack-upstream.md section 2):
  "4.16"  sections kvm, vmware, xenserver, hyperv, lxc, ovm3; keys templatename, checksum,
          downloadurl, filename; files systemvmtemplate-X.Y.Z-<hv>.<ext>
  "4.19"  same sections, plus `arch = x86_64`; names and files carry `-x86_64`
  "4.20"  sections kvm-x86_64, kvm-aarch64, vmware, xenserver, hyperv, lxc, ovm3; keys
          templatename, checksum, downloadurl, filename, arch, guestos
Every form starts with an empty line (templateConfig.sh first writes a bare newline).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Union

FORMS = ("4.16", "4.19", "4.20")
HYPERVISORS = ("kvm", "vmware", "xenserver", "hyperv", "lxc", "ovm3")
# Loopback, port 9 (discard, nothing listens): a test bed must never reach out to the
# internet, even when a test forgets to bundle a file.
DEFAULT_DOWNLOAD_BASE = "http://127.0.0.1:9/systemvm"

# The hypervisor part of upstream's file names (templateConfig.sh's "generic" names).
_FILE_HV = {
    "kvm": "kvm",
    "lxc": "kvm",
    "xenserver": "xen",
    "ovm3": "ovm",
    "vmware": "vmware",
    "hyperv": "hyperv",
}
_FILE_EXT = {
    "kvm": "qcow2.bz2",
    "lxc": "qcow2.bz2",
    "xenserver": "vhd.bz2",
    "ovm3": "raw.bz2",
    "vmware": "ova",
    "hyperv": "vhd.zip",
}
_GUESTOS_OTHER = "Other Linux (64-bit)"
_GUESTOS_DEBIAN = "Debian GNU/Linux 12 (64-bit)"
# How CloudStack spells each algorithm inside `{ALG}hex` (ChecksumValue).
_ALG_PREFIX = {
    "md5": "MD5",
    "sha1": "SHA-1",
    "sha224": "SHA-224",
    "sha256": "SHA-256",
    "sha384": "SHA-384",
    "sha512": "SHA-512",
}
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+)(-.*)?$")


def _run(argv: List[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, timeout=300, **kw)


# -- images ---------------------------------------------------------------------------------


def make_qcow2(path: Union[Path, str], virtual_size: Union[int, str]) -> Path:
    """A qcow2 of `virtual_size` (bytes, or qemu-img syntax like "64M") with a little data.

    The data makes the image non-empty, so compression and copies have bytes to move;
    without qemu-io the image stays empty, which is still a valid template.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _run(["qemu-img", "create", "-q", "-f", "qcow2", str(target), str(virtual_size)])
    qemu_io = shutil.which("qemu-io")
    if qemu_io:
        for offset, pattern in (("0", "0xcd"), ("1M", "0x5a")):
            _run(
                [qemu_io, "-f", "qcow2", "-c", f"write -q -P {pattern} {offset} 64k", str(target)],
                stdout=subprocess.DEVNULL,
            )
    return target


def make_vhd(path: Union[Path, str], virtual_size: Union[int, str], fixed: bool = False) -> Path:
    """A VHD as XenServer and Hyper-V use: dynamic (footer copy at offset 0) or fixed (only
    the footer at the end), with a little data."""
    target = Path(path)
    options = ["-o", "subformat=fixed"] if fixed else []
    _run(["qemu-img", "create", "-q", "-f", "vpc", *options, str(target), str(virtual_size)])
    _write_pattern(target, "vpc")
    return target


def make_raw(path: Union[Path, str], virtual_size: int) -> Path:
    """A raw disk (Ovm3): sparse, with a little data."""
    target = Path(path)
    _run(["qemu-img", "create", "-q", "-f", "raw", str(target), str(virtual_size)])
    _write_pattern(target, "raw")
    return target


def make_ova(path: Union[Path, str], virtual_size: int, disk_name: str = "disk1.vmdk",
             content: Optional[Path] = None) -> Path:
    """An OVA as VMware's template: the OVF first, then the manifest, then a
    streamOptimized vmdk, packed with the real tar in that order. The disk is empty, or
    holds `content` (a raw image of `virtual_size` bytes)."""
    target = Path(path)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".ova-") as scratch:
        work = Path(scratch)
        disk = work / disk_name
        if content is None:
            _run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized",
                  str(disk), str(virtual_size)])
        else:
            _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
                  "subformat=streamOptimized", str(content), str(disk)])
        mib = virtual_size >> 20
        ovf = work / "systemvm.ovf"
        ovf.write_text(_OVF.format(disk=disk_name, size=disk.stat().st_size, mib=mib))
        manifest = work / "systemvm.mf"
        manifest.write_text("".join(
            f"SHA256({f.name})= {file_digest(f, 'sha256')}\n" for f in (ovf, disk)))
        _run(["tar", "--format=ustar", "-cf", str(target), "-C", str(work),
              ovf.name, manifest.name, disk.name])
    return target


_OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References>
    <File ovf:href="{disk}" ovf:id="file1" ovf:size="{size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{mib}" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1"
      ovf:fileRef="file1"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="systemvm"><Info>A SystemVM template</Info></VirtualSystem>
</Envelope>
"""


def _write_pattern(target: Path, image_format: str) -> None:
    qemu_io = shutil.which("qemu-io")
    if qemu_io:
        _run([qemu_io, "-f", image_format, "-c", "write -q -P 0x5a 0 64k", str(target)],
             stdout=subprocess.DEVNULL)


def compress(src: Union[Path, str], dst: Union[Path, str], kind: str = "bz2") -> Path:
    """Compress with the real tool (bzip2/gzip) as packaging does; "none" copies."""
    source, target = Path(src), Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "none":
        shutil.copyfile(source, target)
        return target
    if kind == "zip":
        # zip -j: the member keeps its bare name, as upstream's .vhd.zip files do.
        target.unlink(missing_ok=True)
        _run(["zip", "-q", "-j", str(target), str(source)])
        return target
    tools = {"bz2": ["bzip2", "-k", "-c"], "gz": ["gzip", "-k", "-c", "-n"]}
    if kind not in tools:
        raise ValueError(f"unknown compression {kind!r}; choose bz2, gz, zip or none")
    with open(target, "wb") as out:
        _run([*tools[kind], str(source)], stdout=out)
    return target


def file_digest(path: Union[Path, str], alg: str = "md5") -> str:
    digest = hashlib.new(alg)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- metadata.ini ---------------------------------------------------------------------------


@dataclass
class MetadataEntry:
    """One hypervisor (and arch) to list; `path` is the bundled file, None when not bundled.

    `checksum`: None computes it from `path` (or, unbundled, from the file name, standing in
    for the value upstream's checksum file would carry); "" writes an empty value.
    """

    hypervisor: str
    arch: str = "x86_64"
    path: Optional[Path] = None
    checksum: Optional[str] = None
    guestos: Optional[str] = None


@dataclass
class Section:
    """What write_metadata wrote for one section, for assertions and for the tool's tests."""

    name: str
    hypervisor: str
    arch: str
    templatename: str
    filename: str
    checksum: str
    downloadurl: str
    guestos: Optional[str]
    bundled: Optional[Path]


@dataclass
class Metadata:
    path: Path
    version: str
    form: str
    sections: Dict[str, Section]


def split_version(version: str) -> tuple:
    """ "4.20.1.0" -> ("4.20", "4.20.1"), like templateConfig.sh's CS_VERSION and VERSION."""
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"version {version!r} is not X.Y.Z.S[-suffix]")
    major, minor, patch = match.group(1, 2, 3)
    return f"{major}.{minor}", f"{major}.{minor}.{patch}"


def canonical_filename(hypervisor: str, version: str, form: str, arch: str = "x86_64") -> str:
    _, full = split_version(version)
    hv = _normalise_hv(hypervisor)
    arch_part = "" if form == "4.16" else f"-{arch}"
    return f"systemvmtemplate-{full}{arch_part}-{_FILE_HV[hv]}.{_FILE_EXT[hv]}"


def write_metadata(
    templates_dir: Union[Path, str],
    entries: Iterable[Union[MetadataEntry, Mapping]],
    version: str = "4.16.0.0",
    form: str = "4.16",
    checksum_alg: str = "md5",
    prefixed: bool = False,
    download_base: str = DEFAULT_DOWNLOAD_BASE,
) -> Metadata:
    """Write `<templates_dir>/metadata.ini` in the given era's form.

    A bundled file is copied into templates_dir under its canonical name unless it is
    already there. Checksums are `checksum_alg` hex, bare (as upstream writes them) unless
    `prefixed`, which writes `{SHA-512}hex` style.
    """
    if form not in FORMS:
        raise ValueError(f"unknown metadata form {form!r}; choose one of {', '.join(FORMS)}")
    if checksum_alg not in _ALG_PREFIX:
        raise ValueError(f"unknown checksum algorithm {checksum_alg!r}")
    directory = Path(templates_dir)
    directory.mkdir(parents=True, exist_ok=True)
    short, _ = split_version(version)
    sections: Dict[str, Section] = {}
    for raw in entries:
        entry = raw if isinstance(raw, MetadataEntry) else MetadataEntry(**raw)
        section = _section(
            directory, entry, version, form, short, checksum_alg, prefixed, download_base
        )
        if section.name in sections:
            raise ValueError(f"two entries for section [{section.name}]")
        sections[section.name] = section
    path = directory / "metadata.ini"
    path.write_text(_render(version, form, sections.values()), encoding="utf-8")
    return Metadata(path=path, version=version, form=form, sections=sections)


def _normalise_hv(hypervisor: str) -> str:
    hv = hypervisor.lower()
    if hv not in HYPERVISORS:
        choices = ", ".join(HYPERVISORS)
        raise ValueError(f"unknown hypervisor {hypervisor!r}; choose one of {choices}")
    return hv


def _section(
    directory: Path,
    entry: MetadataEntry,
    version: str,
    form: str,
    short: str,
    alg: str,
    prefixed: bool,
    download_base: str,
) -> Section:
    hv = _normalise_hv(entry.hypervisor)
    if form != "4.20" and entry.arch != "x86_64":
        raise ValueError(f"the {form} metadata form has no room for arch {entry.arch!r}")
    _, full = split_version(version)
    filename = canonical_filename(hv, version, form, entry.arch)
    bundled = _place(entry.path, directory / filename) if entry.path else None
    checksum = entry.checksum
    if checksum is None and bundled:
        checksum = file_digest(bundled, alg)
    elif checksum is None:
        checksum = hashlib.new(alg, filename.encode()).hexdigest()
    if prefixed and checksum:
        checksum = f"{{{_ALG_PREFIX[alg]}}}{checksum}"
    arch_suffix = "" if form == "4.16" else f"-{entry.arch}"
    guestos = None
    if form == "4.20":
        default = _GUESTOS_OTHER if hv in ("vmware", "xenserver") else _GUESTOS_DEBIAN
        guestos = entry.guestos or default
    return Section(
        name=f"kvm-{entry.arch}" if form == "4.20" and hv == "kvm" else hv,
        hypervisor=hv,
        arch=entry.arch,
        templatename=f"systemvm-{hv}-{full}{arch_suffix}",
        filename=filename,
        checksum=checksum,
        downloadurl=f"{download_base.rstrip('/')}/{short}/{filename}",
        guestos=guestos,
        bundled=bundled,
    )


def _place(source: Path, target: Path) -> Path:
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"bundled file {source} does not exist")
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return target


def _render(version: str, form: str, sections: Iterable[Section]) -> str:
    lines = ["", "[default]", f"version = {version}"]
    for section in sections:
        lines += [
            "",
            f"[{section.name}]",
            f"templatename = {section.templatename}",
            f"checksum = {section.checksum}",
            f"downloadurl = {section.downloadurl}",
            f"filename = {section.filename}",
        ]
        if form != "4.16":
            lines.append(f"arch = {section.arch}")
        if form == "4.20":
            lines.append(f"guestos = {section.guestos}")
    return "\n".join(lines) + "\n"


# -- one-call bundle --------------------------------------------------------------------------


def build_kvm_bundle(
    templates_dir: Union[Path, str],
    version: str,
    virtual_size: Union[int, str] = 64 * 1024**2,
    form: str = "4.20",
    checksum_alg: str = "md5",
    prefixed: bool = False,
) -> Metadata:
    """A templates dir like the package installs: the KVM image bundled (LXC shares it, as
    upstream), every other hypervisor listed but not bundled, and metadata.ini."""
    directory = Path(templates_dir)
    directory.mkdir(parents=True, exist_ok=True)
    bundle = directory / canonical_filename("kvm", version, form)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as scratch:
        image = make_qcow2(Path(scratch) / "systemvm.qcow2", virtual_size)
        compress(image, bundle, "bz2")
    entries = [MetadataEntry("kvm", path=bundle)]
    if form == "4.20":
        entries.append(MetadataEntry("kvm", arch="aarch64"))
    entries += [MetadataEntry(hv) for hv in ("vmware", "xenserver", "hyperv")]
    entries += [MetadataEntry("lxc", path=bundle), MetadataEntry("ovm3")]
    return write_metadata(
        directory, entries, version=version, form=form, checksum_alg=checksum_alg, prefixed=prefixed
    )


def build_all_bundle(
    templates_dir: Union[Path, str],
    version: str,
    virtual_size: int = 64 * 1024**2,
    form: str = "4.20",
    fixed_vhd: bool = False,
) -> Metadata:
    """A templates dir with every hypervisor's image bundled, each in upstream's packaging:
    kvm/lxc .qcow2.bz2, xenserver .vhd.bz2, hyperv .vhd.zip, vmware .ova, ovm3 .raw.bz2."""
    directory = Path(templates_dir)
    directory.mkdir(parents=True, exist_ok=True)

    def name(hv):
        return directory / canonical_filename(hv, version, form)

    with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as scratch:
        work = Path(scratch)
        compress(make_qcow2(work / "systemvm.qcow2", virtual_size), name("kvm"), "bz2")
        compress(make_vhd(work / "systemvm-xen.vhd", virtual_size, fixed_vhd), name("xenserver"),
                 "bz2")
        compress(make_vhd(work / "systemvm-hyperv.vhd", virtual_size, fixed_vhd),
                 name("hyperv"), "zip")
        make_ova(name("vmware"), virtual_size)
        compress(make_raw(work / "systemvm.raw", virtual_size), name("ovm3"), "bz2")
    entries = [MetadataEntry(hv, path=name(hv)) for hv in
               ("kvm", "vmware", "xenserver", "hyperv", "ovm3")]
    entries.append(MetadataEntry("lxc", path=name("kvm")))
    return write_metadata(directory, entries, version=version, form=form)
