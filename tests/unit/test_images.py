"""The one-pass image reader, with real bytes: compressions, formats, OVA and zip safety."""

import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import struct
import tarfile
import zipfile

import pytest

from cloudstack_sysvm_seed import images
from cloudstack_sysvm_seed.errors import ImageFormatError, SourceError


def qcow2_header(virtual_size, version=3, backing_offset=0):
    header = b"QFI\xfb" + struct.pack(">IQIIQ", version, backing_offset, 0, 16, virtual_size)
    return header.ljust(512, b"\0")


def vhd_footer(current_size):
    footer = bytearray(512)
    footer[0:8] = b"conectix"
    footer[48:56] = struct.pack(">Q", current_size)
    return bytes(footer)


QCOW2 = qcow2_header(1 << 30) + bytes(range(256)) * 8000
DYNAMIC_VHD = vhd_footer(100 << 20) + b"\x01" * 4096 + vhd_footer(100 << 20)
FIXED_VHD = b"\x07" * (1 << 20) + vhd_footer(1 << 20)


class Collector:
    """A sink that keeps what it is given, members by name."""

    def __init__(self):
        self.image = bytearray()
        self.members = {}
        self.open = None
        self.largest = 0  # the longest chunk written

    def write(self, chunk):
        self.image += chunk
        self.largest = max(self.largest, len(chunk))

    def open_member(self, name):
        self.open = name
        self.members[name] = bytearray()

    def write_member(self, chunk):
        self.members[self.open] += chunk

    def close_member(self):
        self.open = None


def read(tmp_path, data, image_format="QCOW2", chunk_size=4096, **kw):
    path = tmp_path / "image"
    path.write_bytes(data)
    sinks = [Collector(), Collector()]
    hasher = hashlib.md5()
    info = images.read(str(path), image_format, [hasher], sinks, chunk_size=chunk_size, **kw)
    assert sinks[0].image == sinks[1].image and sinks[0].members == sinks[1].members
    assert hasher.hexdigest() == hashlib.md5(data).hexdigest()  # the raw file, hashed once
    return info, sinks[0]


@pytest.mark.parametrize("compress, name", [
    (bz2.compress, "bzip2"), (gzip.compress, "gzip"), (lambda d: d, "none")])
def test_decompresses_hashes_and_sizes_qcow2(tmp_path, compress, name):
    info, sink = read(tmp_path, compress(QCOW2))
    assert bytes(sink.image) == QCOW2
    assert info == images.ImageInfo(name, len(QCOW2), 1 << 30)


def test_concatenated_streams_as_pbzip2_and_multi_member_gzip_write_them(tmp_path):
    half = len(QCOW2) // 2
    for compress in (bz2.compress, gzip.compress):
        info, sink = read(tmp_path, compress(QCOW2[:half]) + compress(QCOW2[half:]), chunk_size=999)
        assert bytes(sink.image) == QCOW2


ZEROS_VHD = b"\0" * (16 << 20) + vhd_footer(16 << 20)  # a thousandfold for bzip2 and deflate


@pytest.mark.parametrize("compress", [
    bz2.compress, gzip.compress, lambda d: make_zip([("zeros.vhd", d)]),
    lambda d: bz2.compress(d[:5 << 20]) + bz2.compress(d[5 << 20:]),
    lambda d: gzip.compress(d[:5 << 20]) + gzip.compress(d[5 << 20:]),
], ids=["bzip2", "gzip", "zip", "bzip2 streams", "gzip members"])
def test_a_chunk_expands_to_chunks_no_longer_than_it(tmp_path, compress):
    # The copies' memory is counted in chunks: a 4 KiB chunk of zeros, decoded at once,
    # would be written as 4 MiB.
    info, sink = read(tmp_path, compress(ZEROS_VHD), "VHD")
    assert bytes(sink.image) == ZEROS_VHD and info.virtual_size == 16 << 20
    assert sink.largest <= 4096


def test_vhd_sizes_come_from_the_footer_dynamic_and_fixed(tmp_path):
    assert read(tmp_path, bz2.compress(DYNAMIC_VHD), "VHD")[0].virtual_size == 100 << 20
    assert read(tmp_path, bz2.compress(FIXED_VHD), "VHD")[0].virtual_size == 1 << 20
    old_tool = FIXED_VHD[:-1]  # some tools wrote a 511-byte footer
    assert read(tmp_path, old_tool, "VHD")[0].virtual_size == 1 << 20


def test_raw_virtual_size_is_its_length(tmp_path):
    data = b"\x42" * 70000
    assert read(tmp_path, bz2.compress(data), "RAW")[0].virtual_size == 70000


@pytest.mark.parametrize("data, image_format, words", [
    (QCOW2, "VHD", "holds qcow2 data, but this hypervisor needs VHD"),
    (DYNAMIC_VHD, "QCOW2", "holds vhd data, but this hypervisor needs QCOW2"),
    (QCOW2, "RAW", "holds qcow2 data, but this hypervisor needs RAW"),
    (b"\x07" * 70000, "VHD", "does not contain a VHD image"),
    (b"\x07" * 70000, "OVA", "holds no known image data, but this hypervisor needs OVA"),
    (qcow2_header(1 << 20, backing_offset=528), "QCOW2", "backing file"),
    (qcow2_header(1 << 20, version=9), "QCOW2", "unknown qcow2 version 9"),
    (qcow2_header(0), "QCOW2", "virtual size of 0"),
], ids=lambda value: value if isinstance(value, str) and len(value) < 12 else None)
def test_wrong_or_unsafe_images_are_refused(tmp_path, data, image_format, words):
    with pytest.raises(ImageFormatError, match=words):
        read(tmp_path, bz2.compress(data), image_format)


def test_a_wrong_format_is_refused_before_the_rest_is_written(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(DYNAMIC_VHD + b"\0" * (4 << 20))
    sink = Collector()
    with pytest.raises(ImageFormatError):
        images.read(str(path), "QCOW2", [], [sink], chunk_size=4096)
    assert len(sink.image) == 0


def half(data):
    return data[: len(data) // 2]


@pytest.mark.parametrize("data, words", [
    (lzma.compress(QCOW2), "xz compression is not supported"),
    (half(bz2.compress(QCOW2)), "the bzip2 stream is truncated"),
    (half(gzip.compress(QCOW2)), "the gzip stream is truncated"),
], ids=["xz", "bzip2", "gzip"])
def test_unknown_and_truncated_compression(tmp_path, data, words):
    with pytest.raises(ImageFormatError, match=words):
        read(tmp_path, data)


def test_corrupt_bzip2_is_named(tmp_path):
    raw = bytearray(bz2.compress(QCOW2))
    raw[100:110] = b"\xff" * 10
    with pytest.raises(ImageFormatError, match="image: corrupt bzip2 data"):
        read(tmp_path, bytes(raw))


def test_size_cap(tmp_path):
    with pytest.raises(ImageFormatError, match="expands to more than 100000 bytes"):
        read(tmp_path, bz2.compress(QCOW2), max_size=100000)


# --- zip (Hyper-V) -------------------------------------------------------------------------


def make_zip(members, method=zipfile.ZIP_DEFLATED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members:
            if isinstance(name, zipfile.ZipInfo):
                archive.writestr(name, data)
            else:
                archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_zip_with_one_vhd(tmp_path, method):
    info, sink = read(tmp_path, make_zip([("systemvm-hyperv.vhd", DYNAMIC_VHD)], method), "VHD")
    assert bytes(sink.image) == DYNAMIC_VHD and info.compression == "zip"
    assert info.virtual_size == 100 << 20


def link_info(name):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("members, words", [
    ([("a.vhd", DYNAMIC_VHD), ("b.vhd", DYNAMIC_VHD)], "more than one member"),
    ([("../../etc/a.vhd", DYNAMIC_VHD)], "absolute or parent path"),
    ([("/etc/a.vhd", DYNAMIC_VHD)], "absolute or parent path"),
    ([(link_info("a.vhd"), DYNAMIC_VHD)], "not a regular file"),
])
def test_unsafe_zips_are_refused(tmp_path, members, words):
    with pytest.raises(ImageFormatError, match=words):
        read(tmp_path, make_zip(members), "VHD")


def test_truncated_zip(tmp_path):
    with pytest.raises(ImageFormatError, match="zip"):
        read(tmp_path, half(make_zip([("a.vhd", FIXED_VHD)])), "VHD")


# --- OVA (VMware) --------------------------------------------------------------------------

OVF = b"""<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="disk1.vmdk" ovf:id="file1"/></References>
  <DiskSection><Disk ovf:capacity="200" ovf:capacityAllocationUnits="byte * 2^20"
    ovf:diskId="vmdisk1" ovf:fileRef="file1"/></DiskSection>
</Envelope>"""
VMDK = b"KDMV" + b"\x09" * 30000


def make_tar(members, tar_format=tarfile.USTAR_FORMAT):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as archive:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                info.linkname = "disk1.vmdk"
                archive.addfile(info)
    return buffer.getvalue()


REG = tarfile.REGTYPE
GOOD_OVA = [("vm.ovf", OVF, REG), ("vm.mf", b"SHA256(disk1.vmdk)= ab\n", REG),
            ("disk1.vmdk", VMDK, REG), ("notes.txt", b"not referenced", REG)]


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT,
                                        tarfile.GNU_FORMAT])
def test_ova_keeps_the_archive_and_extracts_ovf_manifest_and_disks(tmp_path, tar_format):
    data = make_tar(GOOD_OVA, tar_format)
    info, sink = read(tmp_path, data, "OVA", chunk_size=700)
    assert bytes(sink.image) == data
    assert info == images.ImageInfo("none", len(data), 200 << 20,
                                    ("vm.ovf", "vm.mf", "disk1.vmdk"))
    assert {k: bytes(v) for k, v in sink.members.items()} == {
        "vm.ovf": OVF, "vm.mf": b"SHA256(disk1.vmdk)= ab\n", "disk1.vmdk": VMDK}


def test_long_member_names_via_pax_and_gnu_headers(tmp_path):
    long_name = "d" * 120 + ".vmdk"
    ovf = OVF.replace(b"disk1.vmdk", long_name.encode())
    for tar_format in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        data = make_tar([("vm.ovf", ovf, REG), (long_name, VMDK, REG)], tar_format)
        assert read(tmp_path, data, "OVA")[1].members[long_name] == VMDK


@pytest.mark.parametrize("members, words", [
    ([("disk1.vmdk", VMDK, REG), ("vm.ovf", OVF, REG)], "the first member is 'disk1.vmdk'"),
    ([("vm.ovf", OVF, REG)], "references disk1.vmdk, which the OVA does not contain"),
    ([("vm.ovf", OVF, REG), ("../disk1.vmdk", VMDK, REG)], "absolute or parent path"),
    ([("/vm.ovf", OVF, REG)], "absolute or parent path"),
    ([("vm.ovf", OVF, REG), ("disk1.vmdk", b"", tarfile.SYMTYPE)], "link or a device"),
    ([("vm.ovf", OVF, REG), ("disk1.vmdk", b"", tarfile.LNKTYPE)], "link or a device"),
    ([("vm.ovf", OVF, REG), ("disk1.vmdk", b"", tarfile.CHRTYPE)], "link or a device"),
    ([("vm.ovf", OVF, REG), ("sub/disk1.vmdk", VMDK, REG)], "subdirectory"),
    ([("vm.ovf", b"<!DOCTYPE x [<!ENTITY a 'b'>]><Envelope/>", REG)], "DTD"),
    ([("vm.ovf", OVF.replace(b"byte * 2^20", b"furlongs"), REG), ("disk1.vmdk", VMDK, REG)],
     "units 'furlongs'"),
])
def test_unsafe_or_broken_ovas_are_refused(tmp_path, members, words):
    with pytest.raises(ImageFormatError, match=words):
        read(tmp_path, make_tar(members), "OVA")


def test_truncated_ova(tmp_path):
    data = make_tar(GOOD_OVA)
    with pytest.raises(ImageFormatError, match="truncated"):
        read(tmp_path, data[:2048 + 512], "OVA")


# --- through lbzip2 (parallel decoding), as large files go -----------------------------------


@pytest.fixture
def through_lbzip2(monkeypatch):
    assert images._parallel_bzip2(), "lbzip2 is missing: apt-get install lbzip2 (scripts/setup)"
    monkeypatch.setattr(images, "PARALLEL_BZIP2_MIN", 0)


def test_lbzip2_gives_the_same_bytes_and_hash(tmp_path, through_lbzip2):
    half = len(QCOW2) // 2
    for data in (bz2.compress(QCOW2), bz2.compress(QCOW2[:half]) + bz2.compress(QCOW2[half:])):
        info, sink = read(tmp_path, data, chunk_size=999)
        assert bytes(sink.image) == QCOW2 and info.virtual_size == 1 << 30


@pytest.mark.parametrize("damage", [half, lambda d: d[:100] + b"\xff" * 10 + d[110:]],
                         ids=["truncated", "corrupt"])
def test_lbzip2_refuses_damaged_files(tmp_path, through_lbzip2, damage):
    with pytest.raises(ImageFormatError, match="image: corrupt or truncated bzip2 data"):
        read(tmp_path, damage(bz2.compress(QCOW2)))


def test_lbzip2_wrong_format_stops_early(tmp_path, through_lbzip2):
    with pytest.raises(ImageFormatError, match="holds vhd data"):
        read(tmp_path, bz2.compress(DYNAMIC_VHD + b"\0" * (8 << 20)), "QCOW2")


class Counter:
    """A Progress that adds up what it hears."""

    def __init__(self):
        self.count = 0

    def advance(self, count):
        self.count += count


@pytest.mark.parametrize("parallel", [False, True], ids=["in-process", "lbzip2"])
def test_progress_hears_every_source_byte_once(tmp_path, monkeypatch, parallel):
    monkeypatch.setattr(images, "PARALLEL_BZIP2_MIN", 0 if parallel else 1 << 62)
    data = bz2.compress(QCOW2)
    counter = Counter()
    read(tmp_path, data, chunk_size=999, progress=counter)
    assert counter.count == len(data)


# lbzip2 checks a block's CRC before it hands the block on. In process, a block comes out a
# chunk at a time, so its first bytes (garbled by the damage) are seen before its CRC is
# checked: the damage shows as a wrong header. Either way the caller names the checksum
# mismatch (apply._cause), which is what makes the damage certain.
@pytest.mark.parametrize("parallel, words", [
    (False, "holds no known image data"), (True, "corrupt")], ids=["in-process", "lbzip2"])
def test_a_damaged_file_is_hashed_whole_before_it_is_refused(tmp_path, monkeypatch, parallel,
                                                             words):
    """So that the caller can name the checksum mismatch, which makes the damage certain."""
    monkeypatch.setattr(images, "PARALLEL_BZIP2_MIN", 0 if parallel else 1 << 62)
    data = bytearray(bz2.compress(QCOW2))
    data[len(data) // 3] ^= 0xFF
    path = tmp_path / "image"
    path.write_bytes(bytes(data))
    hasher = hashlib.md5()
    with pytest.raises(ImageFormatError, match=words):
        images.read(str(path), "QCOW2", [hasher], [Collector()], chunk_size=999)
    assert hasher.hexdigest() == hashlib.md5(data).hexdigest()


def test_a_killed_decompressor_is_named_and_not_blamed_on_the_file(tmp_path, monkeypatch):
    """A stand-in lbzip2 that reads a little and is killed as the OOM killer would."""
    monkeypatch.setattr(images, "PARALLEL_BZIP2_MIN", 0)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "lbzip2").write_text("#!/bin/sh\nhead -c 4096 >/dev/null\nkill -KILL $$\n")
    (bindir / "lbzip2").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    path = tmp_path / "image"
    path.write_bytes(bz2.compress(QCOW2))
    with pytest.raises(SourceError) as info:
        images.read(str(path), "QCOW2", [hashlib.md5()], [Collector()], chunk_size=999)
    assert not isinstance(info.value, ImageFormatError)
    assert info.value.message == (f"Decompressing {path} failed: lbzip2 was killed by SIGKILL "
                                  "(out of memory?). The file is not known to be damaged.")
    assert "OOM killer" in info.value.hint
