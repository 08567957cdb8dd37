"""Template images: decompress while hashing in one pass, and read sizes from image headers."""

from __future__ import annotations

import bz2
import struct
import zlib
from typing import Iterator

from .errors import ImageFormatError, Unsupported

CHUNK_SIZE = 1 << 20
HEAD_SIZE = 512  # enough for every header we read

_QCOW2_MAGIC = b"QFI\xfb"
_COMPRESSION_MAGIC = (
    (b"BZh", "bzip2"),
    (b"\x1f\x8b", "gzip"),
    (b"PK\x03\x04", "zip"),
)


def compression_of(head: bytes) -> str:
    """Name the compression by content, never by file name."""
    for magic, name in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            return name
    return "none"


def expand(path: str, hasher, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the decompressed image, hashing the file's raw bytes as they are read.

    The file is read once, however many stores receive the output.

    :raises ImageFormatError: for a truncated or corrupt compressed stream.
    :raises Unsupported: for zip, which arrives with the formats issue.
    """
    with open(path, "rb") as stream:
        first = stream.read(chunk_size)
        kind = compression_of(first)
        if kind == "zip":
            raise Unsupported(f"{path} is a zip archive; zip sources are not supported yet.")
        decoder = _Decoder(kind, path)
        chunk = first
        while chunk:
            hasher.update(chunk)
            output = decoder.feed(chunk)
            if output:
                yield output
            chunk = stream.read(chunk_size)
        decoder.finish()


class _Decoder:
    """bzip2/gzip/identity decoding that also handles concatenated streams (pbzip2 output)."""

    def __init__(self, kind: str, path: str):
        self.kind = kind
        self.path = path
        self.engine = self._new_engine()
        self.pending_end = False  # an engine reached its end and no more input has come yet

    def _new_engine(self):
        if self.kind == "bzip2":
            return bz2.BZ2Decompressor()
        if self.kind == "gzip":
            return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        return None

    def feed(self, data: bytes) -> bytes:
        if self.engine is None:
            return data
        parts = []
        while data:
            if self.pending_end:
                self.engine = self._new_engine()
                self.pending_end = False
            try:
                parts.append(self.engine.decompress(data))
            except (OSError, EOFError, zlib.error) as exc:
                raise ImageFormatError(f"{self.path}: corrupt {self.kind} data ({exc}).",
                                       "Reinstall or fetch the file again.") from exc
            if not self.engine.eof:
                break
            self.pending_end = True
            data = self.engine.unused_data
        return b"".join(parts)

    def finish(self) -> None:
        if self.engine is not None and not self.pending_end:
            raise ImageFormatError(
                f"{self.path}: the {self.kind} stream is truncated.",
                "The file is incomplete; reinstall or fetch it again.",
            )


def virtual_size(head: bytes, image_format: str, path: str) -> int:
    """Check the image's format by content and return its virtual size in bytes.

    :raises ImageFormatError: when the content is not `image_format` or is unsafe.
    :raises Unsupported: for formats this version cannot seed yet.
    """
    if image_format == "QCOW2":
        return qcow2_virtual_size(head, path)
    raise Unsupported(f"format {image_format} not supported yet")


def qcow2_virtual_size(head: bytes, path: str) -> int:
    """Virtual size from the qcow2 header (big-endian u64 at offset 24)."""
    if len(head) < 32 or not head.startswith(_QCOW2_MAGIC):
        raise ImageFormatError(f"{path} does not contain a qcow2 image (bad magic).",
                               "Check that metadata.ini names the right file.")
    version, backing_offset = struct.unpack(">IQ", head[4:16])
    if version not in (2, 3):
        raise ImageFormatError(f"{path}: unknown qcow2 version {version}.")
    if backing_offset:
        # A system template must stand alone; a backing file would point off the store.
        raise ImageFormatError(f"{path}: the qcow2 image has a backing file; refusing it.")
    (size,) = struct.unpack(">Q", head[24:32])
    if size == 0:
        raise ImageFormatError(f"{path}: the qcow2 header gives a virtual size of 0.")
    return size
