import hashlib

import pytest

from cloudstack_sysvm_seed import checksum
from cloudstack_sysvm_seed.errors import ChecksumMismatch

DATA = b"system vm template bytes\n" * 1000


@pytest.mark.parametrize("algorithm, name", [
    ("MD5", "md5"), ("SHA-1", "sha1"), ("SHA-224", "sha224"), ("SHA-256", "sha256"),
    ("SHA-384", "sha384"), ("SHA-512", "sha512"),
])
def test_prefixed_values_name_their_algorithm(algorithm, name):
    digest = hashlib.new(name, DATA).hexdigest()
    parsed = checksum.parse(f"{{{algorithm}}}{digest.upper()}")
    assert parsed == checksum.Checksum(algorithm, digest)
    assert str(parsed) == f"{{{algorithm}}}{digest}"


def test_bare_32_digits_are_md5_as_cloudstack_reads_them():
    digest = hashlib.md5(DATA).hexdigest()
    assert checksum.parse(f"  {digest}\n") == checksum.Checksum("MD5", digest)


def test_bare_128_digits_from_422_metadata_are_sha512():
    digest = hashlib.sha512(DATA).hexdigest()
    assert checksum.parse(digest).algorithm == "SHA-512"


def test_prefix_is_case_insensitive():
    digest = hashlib.sha256(DATA).hexdigest()
    assert checksum.parse("{sha-256}" + digest).algorithm == "SHA-256"


@pytest.mark.parametrize("text, words", [
    ("{SHA-3}abcd", "unknown checksum algorithm"),
    ("{SHA-256}" + "a" * 32, "must have 64 hex digits"),
    ("abc", "3 hex digits"),
    ("z" * 32, "not hexadecimal"),
])
def test_malformed_values_are_explained(text, words):
    with pytest.raises(ValueError, match=words):
        checksum.parse(text)


def test_verify_streams_and_reports_expected_and_actual():
    good = checksum.parse(hashlib.sha512(DATA).hexdigest())
    hasher = good.new_hasher()
    for i in range(0, len(DATA), 4096):
        hasher.update(DATA[i:i + 4096])
    good.verify(hasher, "/x/file")  # no exception

    bad = checksum.Checksum("SHA-512", "0" * 128)
    hasher = bad.new_hasher()
    hasher.update(DATA)
    with pytest.raises(ChecksumMismatch) as info:
        bad.verify(hasher, "/x/file.qcow2.bz2")
    message = str(info.value)
    assert "/x/file.qcow2.bz2" in message and "SHA-512" in message
    assert "0" * 128 in message and hashlib.sha512(DATA).hexdigest() in message


def test_of_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(DATA)
    assert checksum.of_file(str(path), "MD5").hexdigest == hashlib.md5(DATA).hexdigest()
