import bz2
import gzip
import hashlib
import struct

import pytest

from cloudstack_sysvm_seed import images
from cloudstack_sysvm_seed.errors import ImageFormatError, Unsupported


def qcow2_header(virtual_size, version=3, backing_offset=0):
    header = b"QFI\xfb" + struct.pack(">IQIIQ", version, backing_offset, 0, 16, virtual_size)
    return header.ljust(512, b"\0")


IMAGE = qcow2_header(1 << 30) + bytes(range(256)) * 8000


def expand_all(path, chunk_size=images.CHUNK_SIZE):
    hasher = hashlib.md5()
    out = b"".join(images.expand(str(path), hasher, chunk_size))
    return out, hasher.hexdigest()


@pytest.mark.parametrize("compress", [bz2.compress, gzip.compress, lambda data: data])
def test_expand_decompresses_and_hashes_the_raw_file(tmp_path, compress):
    raw = compress(IMAGE)
    path = tmp_path / "image"
    path.write_bytes(raw)
    out, digest = expand_all(path, chunk_size=4096)
    assert out == IMAGE
    assert digest == hashlib.md5(raw).hexdigest()


def test_concatenated_bzip2_streams_as_pbzip2_writes_them(tmp_path):
    half = len(IMAGE) // 2
    path = tmp_path / "multi.bz2"
    path.write_bytes(bz2.compress(IMAGE[:half]) + bz2.compress(IMAGE[half:]))
    assert expand_all(path, chunk_size=1000)[0] == IMAGE


def test_truncated_bzip2_is_named(tmp_path):
    raw = bz2.compress(IMAGE)
    path = tmp_path / "cut.qcow2.bz2"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageFormatError, match="cut.qcow2.bz2: the bzip2 stream is truncated"):
        expand_all(path)


def test_corrupt_bzip2_is_named(tmp_path):
    raw = bytearray(bz2.compress(IMAGE))
    raw[100:110] = b"\xff" * 10
    path = tmp_path / "bad.bz2"
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageFormatError, match="bad.bz2: corrupt bzip2 data"):
        expand_all(path)


def test_zip_is_not_supported_yet(tmp_path):
    path = tmp_path / "x.vhd.zip"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(Unsupported, match="zip"):
        expand_all(path)


def test_compression_is_detected_by_content_not_name():
    assert images.compression_of(bz2.compress(b"a")) == "bzip2"
    assert images.compression_of(gzip.compress(b"a")) == "gzip"
    assert images.compression_of(b"QFI\xfb...") == "none"


def test_qcow2_virtual_size_from_the_header():
    assert images.virtual_size(qcow2_header(5 * 2**30), "QCOW2", "p") == 5 * 2**30
    assert images.qcow2_virtual_size(qcow2_header(2**20, version=2), "p") == 2**20


@pytest.mark.parametrize("head, words", [
    (b"\0" * 512, "does not contain a qcow2 image"),
    (qcow2_header(2**20, backing_offset=528), "backing file"),
    (qcow2_header(2**20, version=9), "unknown qcow2 version 9"),
    (qcow2_header(0), "virtual size of 0"),
])
def test_bad_qcow2_headers_are_refused(head, words):
    with pytest.raises(ImageFormatError, match=words):
        images.virtual_size(head, "QCOW2", "/t/x.qcow2.bz2")


def test_other_formats_are_not_supported_yet():
    with pytest.raises(Unsupported, match="format VHD not supported yet"):
        images.virtual_size(b"conectix", "VHD", "p")
