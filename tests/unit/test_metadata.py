import hashlib
import re

import pytest

from cloudstack_sysvm_seed import hypervisors, metadata
from cloudstack_sysvm_seed.errors import MetadataError

MD5 = hashlib.md5(b"x").hexdigest()


def without_lines(problems):
    """The problems with their line numbers taken out ("m.ini:7: [kvm]" -> "m.ini [kvm]")."""
    return [re.sub(r":\d+: ", " ", problem) for problem in problems]

SHA512 = hashlib.sha512(b"x").hexdigest()

FORM_416 = f"""
[default]
version = 4.16.0.0

[kvm]
templatename = systemvm-kvm-4.16.0
checksum = {MD5}
downloadurl = https://download.cloudstack.org/systemvm/4.16/systemvmtemplate-4.16.0-kvm.qcow2.bz2
filename = systemvmtemplate-4.16.0-kvm.qcow2.bz2

[vmware]
templatename = systemvm-vmware-4.16.0
checksum = {MD5}
downloadurl = https://download.cloudstack.org/systemvm/4.16/systemvmtemplate-4.16.0-vmware.ova
filename = systemvmtemplate-4.16.0-vmware.ova

[xenserver]
templatename = systemvm-xenserver-4.16.0
checksum = {MD5}
downloadurl = https://download.cloudstack.org/systemvm/4.16/systemvmtemplate-4.16.0-xen.vhd.bz2
filename = systemvmtemplate-4.16.0-xen.vhd.bz2

[hyperv]
templatename = systemvm-hyperv-4.16.0
checksum = {MD5}
downloadurl = https://download.cloudstack.org/systemvm/4.16/systemvmtemplate-4.16.0-hyperv.vhd.zip
filename = systemvmtemplate-4.16.0-hyperv.vhd.zip

[lxc]
templatename = systemvm-lxc-4.16.0
checksum = {MD5}
downloadurl = https://download.cloudstack.org/systemvm/4.16/systemvmtemplate-4.16.0-kvm.qcow2.bz2
filename = systemvmtemplate-4.16.0-kvm.qcow2.bz2

[ovm3]
templatename = systemvm-ovm3-4.16.0
checksum = {MD5}
downloadurl = https://download.cloudstack.org/systemvm/4.16/systemvmtemplate-4.16.0-ovm.raw.bz2
filename = systemvmtemplate-4.16.0-ovm.raw.bz2
"""

FORM_419 = f"""
[default]
version = 4.19.0.0

[kvm]
templatename = systemvm-kvm-4.19.0-x86_64
checksum = {MD5}
downloadurl = https://example.org/4.19/systemvmtemplate-4.19.0-x86_64-kvm.qcow2.bz2
filename = systemvmtemplate-4.19.0-x86_64-kvm.qcow2.bz2
arch = x86_64
"""

FORM_420 = f"""
[default]
version = 4.20.2.0

[kvm-x86_64]
templatename = systemvm-kvm-4.20.2-x86_64
checksum = {SHA512}
downloadurl = https://example.org/4.20/systemvmtemplate-4.20.2-x86_64-kvm.qcow2.bz2
filename = systemvmtemplate-4.20.2-x86_64-kvm.qcow2.bz2
arch = x86_64
guestos = Debian GNU/Linux 12 (64-bit)

[kvm-aarch64]
templatename = systemvm-kvm-4.20.2-aarch64
checksum =
downloadurl = https://example.org/4.20/systemvmtemplate-4.20.2-aarch64-kvm.qcow2.bz2
filename = systemvmtemplate-4.20.2-aarch64-kvm.qcow2.bz2
arch = aarch64
guestos = Debian GNU/Linux 12 (64-bit)

[vmware]
templatename = systemvm-vmware-4.20.2-x86_64
checksum = {SHA512}
downloadurl = https://example.org/4.20/systemvmtemplate-4.20.2-x86_64-vmware.ova
filename = systemvmtemplate-4.20.2-x86_64-vmware.ova
arch = x86_64
guestos = Other Linux (64-bit)
"""


def test_416_form_gives_one_spec_per_hypervisor():
    meta = metadata.parse(FORM_416, "/t/metadata.ini")
    assert meta.version == "4.16.0.0" and meta.release == "4.16.0"
    assert [s.hypervisor.key for s in meta.specs] == [
        "kvm", "vmware", "xenserver", "hyperv", "lxc", "ovm3"]
    kvm = meta.spec_for(hypervisors.by_key("kvm"), "x86_64")
    assert kvm.name == "systemvm-kvm-4.16.0"
    assert kvm.filename == "systemvmtemplate-4.16.0-kvm.qcow2.bz2"
    assert str(kvm.checksum) == "{MD5}" + MD5
    assert kvm.url.endswith("-kvm.qcow2.bz2") and kvm.guest_os is None


def test_419_form_reads_the_arch_key():
    (spec,) = metadata.parse(FORM_419).specs
    assert (spec.hypervisor.key, spec.arch, spec.name) == (
        "kvm", "x86_64", "systemvm-kvm-4.19.0-x86_64")


def test_420_form_with_arch_sections_guest_os_and_empty_checksum():
    meta = metadata.parse(FORM_420)
    kvm_arm = meta.spec_for(hypervisors.by_key("kvm"), "aarch64")
    assert kvm_arm.checksum is None
    assert kvm_arm.guest_os == "Debian GNU/Linux 12 (64-bit)"
    kvm_x86 = meta.spec_for(hypervisors.by_key("kvm"), "x86_64")
    assert kvm_x86.checksum.algorithm == "SHA-512"
    assert meta.spec_for(hypervisors.by_key("vmware"), "x86_64").guest_os == "Other Linux (64-bit)"


def test_every_problem_is_reported_at_once_naming_file_section_and_key():
    text = """
[default]
version = four

[kvm]
checksum = 123
filename = ../../etc/passwd

[xenserver-x86_64]
templatename = t
filename = f.vhd.bz2
checksum = {MD5}00000000000000000000000000000000
arch = aarch64
"""
    with pytest.raises(MetadataError) as info:
        metadata.parse(text, "/usr/share/x/metadata.ini")
    problems = without_lines(info.value.problems)
    assert "/usr/share/x/metadata.ini [default] version: 'four' is not X.Y.Z[.S]" in problems
    assert "/usr/share/x/metadata.ini [kvm] templatename: missing" in problems
    assert any("[kvm] checksum:" in p and "3 hex digits" in p for p in problems)
    assert any("[kvm] filename:" in p and "plain file name" in p for p in problems)
    assert any("[xenserver-x86_64] arch:" in p and "contradicts" in p for p in problems)
    assert len(problems) == 5
    assert "5 problem(s)" in str(info.value)


def test_missing_default_section_and_duplicate_pairs():
    text = f"""
[kvm]
templatename = a
checksum = {MD5}
filename = a.qcow2.bz2

[kvm-x86_64]
templatename = b
checksum = {MD5}
filename = b.qcow2.bz2
"""
    with pytest.raises(MetadataError) as info:
        metadata.parse(text, "m.ini")
    assert without_lines(info.value.problems) == [
        "m.ini: missing section [default]",
        "m.ini [kvm-x86_64]: kvm-x86_64 is also described by [kvm]",
    ]


def test_unknown_sections_are_ignored_with_a_warning(caplog):
    text = "[default]\nversion = 4.22.0.0\n[proxmox]\ntemplatename = p\n"
    meta = metadata.parse(text)
    assert meta.specs == ()
    assert "unknown hypervisor section" in caplog.text


def test_syntax_errors_and_missing_file(tmp_path):
    with pytest.raises(MetadataError, match="no section headers|MissingSectionHeader"):
        metadata.parse("version = 1\n", "m.ini")
    with pytest.raises(MetadataError, match="file not found"):
        metadata.load(str(tmp_path / "metadata.ini"))


def test_download_repository_is_kept():
    text = "[default]\nversion = 4.22.0.0\ndownloadrepository = https://mirror/systemvm/\n"
    assert metadata.parse(text).download_repository == "https://mirror/systemvm/"


def test_an_unclosed_header_is_named_on_its_line_and_blames_no_other_section():
    text = FORM_420.replace("[kvm-aarch64]", "[kvm-aarch64")
    with pytest.raises(MetadataError) as info:
        metadata.parse(text, "m.ini")
    assert info.value.problems == [
        "m.ini:13: '[kvm-aarch64' is not a section header: the closing ']' is missing (the "
        "lines up to the next header are not read)"]


def test_every_syntax_problem_at_once_each_with_its_line():
    text = f"""\
templatename = early
[default]
version = 4.20.0.0
[kvm]
templatename = a
checksum = {MD5}
filename = a.qcow2.bz2
templatename = b
just some words
[kvm]
templatename = again
= no key
"""
    with pytest.raises(MetadataError) as info:
        metadata.parse(text, "m.ini")
    assert info.value.problems == [
        "m.ini:1: 'templatename = early' is outside any section: no section headers come "
        "before it",
        "m.ini:8: [kvm] templatename: given again (first on line 5); only the first is read",
        "m.ini:9: 'just some words' is neither a [section] header nor a `key = value` line",
        "m.ini:10: section [kvm] again (it starts on line 4); this one is not read",
    ]
    message = str(info.value)
    assert message.startswith("m.ini has 4 problem(s):\n  - m.ini:1: ")
    assert "configparser" not in message and "already exists" not in message


def test_what_configparser_reads_is_read_the_same():
    text = f"""\
# a comment
[default]
Version: 4.20.0.0
; another
[kvm]
templatename = systemvm-kvm-4.20.0
checksum = {MD5}
filename = kvm.qcow2.bz2
downloadurl = https://example.org/a=b:c
"""
    meta = metadata.parse(text)
    (spec,) = meta.specs
    assert meta.version == "4.20.0.0"  # keys are case-insensitive, ':' works as '='
    assert spec.url == "https://example.org/a=b:c"


def test_a_checksum_continued_on_a_second_line_is_named_with_its_line():
    text = f"[default]\nversion = 4.20.0.0\n[kvm]\ntemplatename = a\nfilename = a.bz2\n" \
           f"checksum = {MD5}\n  {MD5}\n"
    with pytest.raises(MetadataError) as info:
        metadata.parse(text, "m.ini")
    assert info.value.problems == ["m.ini:6: [kvm] checksum: several values on several lines"]
