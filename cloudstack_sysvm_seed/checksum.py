"""CloudStack checksum strings (`{ALG}hex` or bare hex) and streaming verification."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import ChecksumMismatch

# CloudStack's names (ChecksumValue / DigestHelper) -> hashlib names and hex lengths.
ALGORITHMS = {
    "MD5": ("md5", 32),
    "SHA-1": ("sha1", 40),
    "SHA-224": ("sha224", 56),
    "SHA-256": ("sha256", 64),
    "SHA-384": ("sha384", 96),
    "SHA-512": ("sha512", 128),
}
_BY_LENGTH = {length: name for name, (_, length) in ALGORITHMS.items()}
_PREFIXED = re.compile(r"^\{([^}]+)\}(.*)$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # a key of ALGORITHMS
    hexdigest: str  # lower case

    def __str__(self) -> str:
        # Always prefixed: CloudStack reads a bare value as MD5 whatever its length (#12042).
        return f"{{{self.algorithm}}}{self.hexdigest}"

    def new_hasher(self) -> hashlib._Hash:
        return hashlib.new(ALGORITHMS[self.algorithm][0])

    def verify(self, hasher: hashlib._Hash, path: str) -> None:
        """Compare a finished digest with this one.

        :raises ChecksumMismatch: naming the file, algorithm, expected and actual values.
        """
        actual = hasher.hexdigest()
        if actual != self.hexdigest:
            raise ChecksumMismatch(path, self.algorithm, self.hexdigest, actual)


def parse(text: str) -> Checksum:
    """Parse `{ALG}hex` or bare hex.

    A bare 32-digit value is MD5, CloudStack's rule for unprefixed checksums. Other bare
    lengths occur only in metadata.ini files, where 4.22 writes a bare SHA-512 (and validates
    it as SHA-512): there the length names the algorithm, since MD5 could never match it.

    :raises ValueError: with a sentence fit for an error message.
    """
    value = text.strip()
    match = _PREFIXED.match(value)
    if match:
        algorithm, digest = match.group(1).upper(), match.group(2).strip()
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"unknown checksum algorithm {match.group(1)!r} "
                f"(expected one of {', '.join(ALGORITHMS)})"
            )
    else:
        digest = value
        algorithm = _BY_LENGTH.get(len(digest), "")
        if not algorithm:
            raise ValueError(
                f"checksum {value!r} has {len(digest)} hex digits; expected 32 (MD5), 40, 56, "
                "64, 96 or 128, or an {ALG} prefix"
            )
    if not _HEX.match(digest):
        raise ValueError(f"checksum {value!r} is not hexadecimal")
    expected_length = ALGORITHMS[algorithm][1]
    if len(digest) != expected_length:
        raise ValueError(
            f"{algorithm} checksum must have {expected_length} hex digits, got {len(digest)}"
        )
    return Checksum(algorithm, digest.lower())


def of_file(path: str, algorithm: str = "SHA-512", chunk_size: int = 1 << 20) -> Checksum:
    """Digest a whole file (used when a caller has no streaming pass of its own)."""
    hasher = hashlib.new(ALGORITHMS[algorithm][0])
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            hasher.update(chunk)
    return Checksum(algorithm, hasher.hexdigest())
