"""Template images, read in one pass: hash the file, decompress it, check the image format by
content, extract an OVA's members, and find the virtual size, while sinks write the output.

Layers of the pass, each fed by the one before:
  file bytes -> hashers -> decoder (bzip2, gzip, zip member, or none) -> image bytes
  image bytes -> sinks (one per target store) and, for OVA, a tar reader that hands the OVF,
  the manifest and the disks the OVF references to the sinks as separate members.
"""

from __future__ import annotations

import bz2
import logging
import os
import shutil
import signal
import struct
import tarfile
import threading
import xml.etree.ElementTree as ElementTree
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol

from . import runner
from .errors import CommandFailed, ImageFormatError, SourceError
from .progress import Progress
from .settings import DEFAULT_MAX_IMAGE_SIZE

LOG = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
HEAD_SIZE = 512  # enough for every header we read
PARALLEL_BZIP2_MIN = 4 << 20  # smaller files decode faster in-process than via lbzip2
_OVF_MAX = 16 << 20

_QCOW2_MAGIC = b"QFI\xfb"
_VHD_COOKIE = b"conectix"
_VMDK_MAGIC = b"KDMV"
_COMPRESSIONS = (
    (b"BZh", "bzip2"),
    (b"\x1f\x8b", "gzip"),
    (b"PK\x03\x04", "zip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
_DECODABLE = ("bzip2", "gzip", "zip", "none")


class Sink(Protocol):
    """What a pass writes to: the image file, and for OVA its extracted members."""

    def write(self, chunk: bytes) -> None: ...

    def open_member(self, name: str) -> None: ...

    def write_member(self, chunk: bytes) -> None: ...

    def close_member(self) -> None: ...


@dataclass(frozen=True)
class ImageInfo:
    compression: str
    image_size: int  # bytes of the image file written (physical size)
    virtual_size: int
    members: tuple[str, ...] = ()  # OVA members extracted beside the image


def read(path: str, image_format: str, hashers: list, sinks: list[Sink],
         max_size: int = DEFAULT_MAX_IMAGE_SIZE, chunk_size: int = CHUNK_SIZE,
         progress: Optional[Progress] = None) -> ImageInfo:
    """Read `path` once: hash it, decode it, check it is `image_format`, feed every sink;
    `progress` hears of every source byte read.

    :raises ImageFormatError: naming the file and the problem (bad compression, truncated
        stream, wrong format, unsafe archive member, image too large). The whole file is
        hashed by then all the same, so that the caller can tell a damaged file (its
        checksum does not match) from a bad image.
    :raises SourceError: when the decompressor was killed (the OOM killer, say).
    """
    with open(path, "rb") as stream:
        first = stream.read(chunk_size)
        compression = compression_of(first)
        if compression not in _DECODABLE:
            raise ImageFormatError(f"{path}: {compression} compression is not supported.",
                                   "Use a bzip2, gzip or zip file, or an uncompressed image.")
        inspector = _Inspector(path, image_format, sinks, max_size)
        source = _Source(stream, first, hashers, progress, chunk_size)
        try:
            tool = _parallel_bzip2() if compression == "bzip2" else None
            if tool and os.fstat(stream.fileno()).st_size >= PARALLEL_BZIP2_MIN:
                _through_tool(tool, source, inspector, path, chunk_size)
            else:
                decoder = _decoder(compression, path, chunk_size)
                for chunk in source:
                    for piece in decoder.feed(chunk):
                        inspector.feed(piece)
                decoder.finish()
            return inspector.finish(compression)
        except ImageFormatError:
            source.drain()
            raise


def _parallel_bzip2() -> Optional[str]:
    # lbzip2 decodes any bzip2 file on every core, from a pipe (2x Python's bz2 on two
    # cores, scripts/bench). pbzip2 parallelizes only its own multi-stream files. The
    # indexed_bzip2 package is as fast, but seeks about the file and reads it 3 times
    # over, so the file could not be hashed in the same single pass.
    return shutil.which("lbzip2")


class _Source:
    """The file's chunks, each hashed and counted as it goes by."""

    def __init__(self, stream, first: bytes, hashers: list, progress: Optional[Progress],
                 chunk_size: int):
        self.stream = stream
        self.first = first
        self.hashers = hashers
        self.progress = progress
        self.chunk_size = chunk_size

    def __iter__(self):
        chunk = self.first
        while chunk:
            for hasher in self.hashers:
                hasher.update(chunk)
            if self.progress:
                self.progress.advance(len(chunk))
            yield chunk
            chunk = self.stream.read(self.chunk_size)

    def drain(self) -> None:
        """Hash the rest of the file, which nobody decodes any more. Only once the reading
        thread is done: each chunk it read was hashed before it was handed on."""
        for chunk in iter(lambda: self.stream.read(self.chunk_size), b""):
            for hasher in self.hashers:
                hasher.update(chunk)
            if self.progress:
                self.progress.advance(len(chunk))


def _through_tool(tool: str, source: _Source, inspector: _Inspector, path: str,
                  chunk_size: int) -> None:
    """Decode through lbzip2: a thread reads the file once, hashing it, into the tool's stdin;
    this thread takes the tool's output to the sinks."""
    process = runner.Filter([tool, "-d", "-c", "-n", str(max(1, os.cpu_count() or 1))])
    failures: list[BaseException] = []

    def feed() -> None:
        try:
            for chunk in source:
                process.stdin.write(chunk)
        except BrokenPipeError:
            pass  # the tool stopped early; its exit status says why
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            failures.append(exc)
        finally:
            try:
                process.stdin.close()
            except OSError:
                pass

    feeder = threading.Thread(target=feed, name="source-reader", daemon=True)
    feeder.start()
    try:
        for chunk in iter(lambda: process.stdout.read(chunk_size), b""):
            inspector.feed(chunk)
        feeder.join()
        if failures:
            raise failures[0]
        process.finish()
    except CommandFailed as exc:
        if exc.signal is not None:  # the decoder was killed: nothing says the file is bad
            raise _killed(tool, path, exc) from exc
        raise ImageFormatError(f"{path}: corrupt or truncated bzip2 data ({exc.detail}).",
                               "The file is damaged or incomplete; reinstall or fetch it "
                               "again.") from exc
    except BaseException:
        process.kill()
        feeder.join()
        raise


def _killed(tool: str, path: str, exc: CommandFailed) -> SourceError:
    name = os.path.basename(tool)
    if exc.signal == signal.SIGKILL:
        hint = ("Check the kernel log (journalctl -k, dmesg) for the OOM killer, free memory "
                "on this host, and rerun.")
    else:
        hint = f"Rerun; if it happens again, check {name} and the kernel log."
    return SourceError(f"Decompressing {path} failed: {name} was {exc.detail}. The file is "
                       "not known to be damaged.", hint)


def expanded_size_estimate(path: str) -> int:
    """Bytes a source will take on a store, known before reading it: gzip records its size
    (modulo 4 GiB); for bzip2 and zip, system VM images compress to about a quarter."""
    size = os.path.getsize(path)
    # Unbuffered: a peek of a few bytes, not a buffer's worth, before the one pass.
    with open(path, "rb", buffering=0) as stream:
        kind = compression_of(stream.read(8))
        if kind == "gzip":
            stream.seek(-4, os.SEEK_END)
            recorded = struct.unpack("<I", stream.read(4))[0]
            return max(recorded, size)
    return size if kind == "none" else 4 * size


def compression_of(head: bytes) -> str:
    """Name the compression by content, never by file name."""
    for magic, name in _COMPRESSIONS:
        if head.startswith(magic):
            return name
    return "none"


def format_of(head: bytes) -> str:
    """The image format the first bytes show: qcow2, vhd (dynamic), vmdk, tar, or unknown."""
    if head.startswith(_QCOW2_MAGIC):
        return "qcow2"
    if head.startswith(_VHD_COOKIE):
        return "vhd"
    if head.startswith(_VMDK_MAGIC):
        return "vmdk"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return "unknown"


# --- decoders: file bytes -> image bytes --------------------------------------------------
#
# Each decoder's feed() yields the image bytes a chunk of the file holds, in pieces of at
# most `limit` bytes: a chunk of a highly compressible image (a VHD's runs of zeros) can
# expand a thousandfold, and what the copies hold in memory is counted in chunks (copies.py).


def _decoder(compression: str, path: str, limit: int):
    if compression == "zip":
        return _ZipMember(path, limit)
    if compression == "none":
        return _Identity()
    return _Stream(compression, path, limit)


def _pieces(engine, data: bytes, limit: int) -> Iterator[bytes]:
    """What a zlib or bz2 `engine` decodes of `data`, at most `limit` bytes at a time."""
    while True:
        out = engine.decompress(data, limit)
        if out:
            yield out
        if engine.eof:
            return
        if hasattr(engine, "needs_input"):  # bz2 keeps the input it has not decoded yet
            if engine.needs_input:
                return
            data = b""
        else:  # zlib hands it back; a full piece may leave more output pending
            data = engine.unconsumed_tail
            if not data and len(out) < limit:
                return


class _Identity:
    def feed(self, data: bytes) -> Iterator[bytes]:
        yield data

    def finish(self) -> None:
        pass


class _Stream:
    """bzip2 or gzip, including concatenated streams (pbzip2 output, gzip members)."""

    def __init__(self, kind: str, path: str, limit: int):
        self.kind = kind
        self.path = path
        self.limit = limit
        self.engine = self._new_engine()
        self.ended = False  # the last engine reached its end and no more input came yet

    def _new_engine(self):
        if self.kind == "bzip2":
            return bz2.BZ2Decompressor()
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self.ended:
                self.engine, self.ended = self._new_engine(), False
            try:
                yield from _pieces(self.engine, data, self.limit)
            except (OSError, EOFError, zlib.error) as exc:
                raise ImageFormatError(f"{self.path}: corrupt {self.kind} data ({exc}).",
                                       "Reinstall or fetch the file again.") from exc
            if not self.engine.eof:
                return
            self.ended = True
            data = self.engine.unused_data

    def finish(self) -> None:
        if not self.ended:
            raise ImageFormatError(f"{self.path}: the {self.kind} stream is truncated.",
                                   "The file is incomplete; reinstall or fetch it again.")


class _ZipMember:
    """The single member of a zip (Hyper-V's .vhd.zip), decoded while the file streams by.

    Sequential: the local header, then the member's data, then the central directory, which
    is checked at the end (one member only; not a link).
    """

    _LOCAL = struct.Struct("<4sHHHHHIIIHH")
    _CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")

    def __init__(self, path: str, limit: int):
        self.path = path
        self.limit = limit
        self.buffer = b""
        self.name: Optional[str] = None
        self.engine = None
        self.remaining: Optional[int] = None  # for stored members
        self.done = False
        self.trailer = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.done:
            self._keep_trailer(data)
            return
        if self.name is None:
            self.buffer += data
            if not self._read_header():
                return
            data, self.buffer = self.buffer, b""
        yield from self._member_data(data)

    def _read_header(self) -> bool:
        fixed = self._LOCAL.size
        if len(self.buffer) < fixed:
            return False
        (_, _, flags, method, _, _, _, compressed, _, name_len,
         extra_len) = self._LOCAL.unpack_from(self.buffer)
        if len(self.buffer) < fixed + name_len + extra_len:
            return False
        name = self.buffer[fixed:fixed + name_len].decode("utf-8", "replace")
        _check_member_name(self.path, name)
        if method == 8:
            self.engine = zlib.decompressobj(-zlib.MAX_WBITS)
        elif method == 0 and not flags & 0x08 and compressed != 0xFFFFFFFF:
            self.remaining = compressed
        else:
            raise ImageFormatError(f"{self.path}: zip member {name!r} uses compression method "
                                   f"{method}; only deflate and stored are supported.")
        self.name = name
        self.buffer = self.buffer[fixed + name_len + extra_len:]
        return True

    def _member_data(self, data: bytes) -> Iterator[bytes]:
        if self.engine is not None:
            try:
                yield from _pieces(self.engine, data, self.limit)
            except zlib.error as exc:
                raise ImageFormatError(f"{self.path}: corrupt zip data ({exc}).") from exc
            if self.engine.eof:
                self.done = True
                self._keep_trailer(self.engine.unused_data)
            return
        out, rest = data[: self.remaining], data[self.remaining:]
        self.remaining -= len(out)
        if self.remaining == 0:
            self.done = True
            self._keep_trailer(rest)
        yield out

    def _keep_trailer(self, data: bytes) -> None:
        # Data descriptor + central directory + end record: small for a one-member zip.
        self.trailer += data
        if len(self.trailer) > (1 << 20):
            raise ImageFormatError(f"{self.path}: the zip has more than one member.")

    def finish(self) -> None:
        if not self.done:
            raise ImageFormatError(f"{self.path}: the zip stream is truncated.",
                                   "The file is incomplete; fetch it again.")
        start = self.trailer.find(b"PK\x01\x02")
        if self.trailer.find(b"PK\x03\x04", 0, start if start >= 0 else None) >= 0:
            raise ImageFormatError(f"{self.path}: the zip has more than one member.")
        if start < 0 or len(self.trailer) < start + self._CENTRAL.size:
            raise ImageFormatError(f"{self.path}: the zip's central directory is missing.")
        entries = self.trailer.count(b"PK\x01\x02")
        fields = self._CENTRAL.unpack_from(self.trailer, start)
        mode = fields[15] >> 16  # external attributes: the unix mode in the high half
        if entries != 1:
            raise ImageFormatError(f"{self.path}: the zip has {entries} members; expected one.")
        if (mode & 0o170000) not in (0, 0o100000):
            raise ImageFormatError(f"{self.path}: zip member {self.name!r} is not a regular "
                                   "file (a link or a device); refusing it.")


# --- inspection: image bytes -> sinks, format checks, sizes -------------------------------


class _Inspector:
    def __init__(self, path: str, image_format: str, sinks: list[Sink], max_size: int):
        self.path = path
        self.image_format = image_format
        self.sinks = sinks
        self.max_size = max_size
        self.size = 0
        self.head = b""
        self.tail = b""
        self.checked = False
        self.ova = _OvaReader(path, sinks) if image_format == "OVA" else None

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.max_size:
            raise ImageFormatError(f"{self.path} expands to more than {self.max_size} bytes; "
                                   "refusing it.", "Raise --max-image-size if it is genuine.")
        if not self.checked:
            self.head += data[: HEAD_SIZE - len(self.head)]
            if len(self.head) >= HEAD_SIZE:
                # Refuse a wrong image before writing gigabytes of it.
                self._check_head()
        self.tail = (self.tail + data[-HEAD_SIZE:])[-HEAD_SIZE:]
        if self.ova:
            self.ova.feed(data)
        for sink in self.sinks:
            sink.write(data)

    def _check_head(self) -> None:
        self.checked = True
        found = format_of(self.head)
        expected = {"QCOW2": "qcow2", "VHD": "vhd", "OVA": "tar"}.get(self.image_format)
        if self.image_format == "VHD" and found == "unknown":
            return  # a fixed VHD keeps its only footer at the end; checked in finish()
        if self.image_format == "RAW":
            if found != "unknown":
                raise self._wrong(found)
            return
        if found != expected:
            raise self._wrong(found)

    def _wrong(self, found: str) -> ImageFormatError:
        shown = {"tar": "tar (OVA)", "unknown": "no known image"}.get(found, found)
        return ImageFormatError(
            f"{self.path} holds {shown} data, but this hypervisor needs "
            f"{self.image_format}.", "Check that metadata.ini names the right file.")

    def finish(self, compression: str) -> ImageInfo:
        if not self.checked:
            self._check_head()
        if self.image_format == "QCOW2":
            virtual = qcow2_virtual_size(self.head, self.path)
        elif self.image_format == "VHD":
            virtual = vhd_virtual_size(self.tail, self.path)
        elif self.image_format == "OVA":
            return ImageInfo(compression, self.size, *self.ova.finish())
        else:
            virtual = self.size
        if virtual <= 0:
            raise ImageFormatError(f"{self.path}: the image has a virtual size of 0.")
        return ImageInfo(compression, self.size, virtual)


def qcow2_virtual_size(head: bytes, path: str) -> int:
    """Virtual size from the qcow2 header (big-endian u64 at offset 24).

    :raises ImageFormatError: for a bad header or a backing file.
    """
    if len(head) < 32 or not head.startswith(_QCOW2_MAGIC):
        raise ImageFormatError(f"{path} does not contain a qcow2 image (bad magic).")
    version, backing_offset = struct.unpack(">IQ", head[4:16])
    if version not in (2, 3):
        raise ImageFormatError(f"{path}: unknown qcow2 version {version}.")
    if backing_offset:
        # A system template must stand alone; a backing file would point off the store.
        raise ImageFormatError(f"{path}: the qcow2 image has a backing file; refusing it.")
    return struct.unpack(">Q", head[24:32])[0]


def vhd_virtual_size(tail: bytes, path: str) -> int:
    """"Current size" from the VHD footer (the last 512 bytes; 511 for some old tools)."""
    for length in (512, 511):
        footer = tail[-length:]
        if len(footer) == length and footer.startswith(_VHD_COOKIE):
            return struct.unpack(">Q", footer[48:56])[0]
    raise ImageFormatError(f"{path} does not contain a VHD image (no footer).",
                           "Check that metadata.ini names the right file.")


# --- OVA: a tar with an OVF first ----------------------------------------------------------


class _OvaReader:
    """Walks the tar as it streams by; hands the OVF, the manifest and the files the OVF
    references to the sinks, and refuses unsafe members."""

    _META_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE)

    def __init__(self, path: str, sinks: list[Sink]):
        self.path = path
        self.sinks = sinks
        self.buffer = b""  # header bytes not yet complete
        self.left = 0  # data bytes of the current member still to come
        self.padding = 0  # then this many bytes to the next 512 boundary
        self.current: Optional[str] = None  # member being extracted
        self.meta_type: Optional[bytes] = None  # long-name or pax header being read
        self.meta = b""
        self.long_name: Optional[str] = None  # applies to the next member
        self.ovf = b""
        self.wanted: Optional[set[str]] = None  # known once the OVF is read
        self.disks: list[int] = []
        self.extracted: list[str] = []
        self.ended = False

    def feed(self, data: bytes) -> None:
        while data:
            if self.left:
                data = self._member_bytes(data)
            elif self.padding:
                skip = min(self.padding, len(data))
                self.padding -= skip
                data = data[skip:]
            else:
                self.buffer += data
                if len(self.buffer) < 512:
                    return
                block, data, self.buffer = self.buffer[:512], self.buffer[512:], b""
                self._header(block)

    def _header(self, block: bytes) -> None:
        if self.ended or block == bytes(512):
            self.ended = True  # end-of-archive blocks; anything after them is ignored
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise ImageFormatError(f"{self.path}: bad tar header ({exc}).") from exc
        self.left, self.padding = info.size, -info.size % 512
        if info.type in self._META_TYPES:
            self.meta_type, self.meta = info.type, b""
        else:
            self._start_member(info)
        if not self.left:
            self._end_member()

    def _start_member(self, info: tarfile.TarInfo) -> None:
        name, self.long_name = self.long_name or info.name, None
        if not info.isreg():
            raise ImageFormatError(f"{self.path}: OVA member {name!r} is a link or a device; "
                                   "refusing it.")
        _check_member_name(self.path, name)
        name = name[2:] if name.startswith("./") else name
        if "/" in name:
            raise ImageFormatError(f"{self.path}: OVA member {name!r} is in a subdirectory; "
                                   "an OVA keeps its files at the top.")
        if self.wanted is None and not name.lower().endswith(".ovf"):
            raise ImageFormatError(f"{self.path}: the first member is {name!r}, not the OVF "
                                   "descriptor; an OVA starts with its .ovf.")
        if self.wanted is None or name in self.wanted or name.lower().endswith(".mf"):
            self.current = name
            self.extracted.append(name)
            for sink in self.sinks:
                sink.open_member(name)

    def _member_bytes(self, data: bytes) -> bytes:
        part, rest = data[: self.left], data[self.left:]
        self.left -= len(part)
        if self.meta_type is not None:
            self.meta += part
        elif self.current is not None:
            if self.wanted is None:
                self.ovf += part
                if len(self.ovf) > _OVF_MAX:
                    raise ImageFormatError(f"{self.path}: the OVF descriptor is too large.")
            for sink in self.sinks:
                sink.write_member(part)
        if not self.left:
            self._end_member()
        return rest

    def _end_member(self) -> None:
        if self.meta_type is not None:
            self._read_meta()
        elif self.current is not None:
            for sink in self.sinks:
                sink.close_member()
            if self.wanted is None:
                self.wanted, self.disks = _read_ovf(self.ovf, self.path)
            self.current = None

    def _read_meta(self) -> None:
        kind, data, self.meta_type = self.meta_type, self.meta, None
        if kind == tarfile.GNUTYPE_LONGNAME:
            self.long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind == tarfile.XHDTYPE:
            for record in data.decode("utf-8", "surrogateescape").split("\n"):
                key, _, value = record.partition(" ")[2].partition("=")
                if key == "path":
                    self.long_name = value
                elif key == "linkpath":
                    raise ImageFormatError(f"{self.path}: OVA has a link member; refusing it.")

    def finish(self) -> tuple[int, tuple[str, ...]]:
        if self.wanted is None:
            raise ImageFormatError(f"{self.path}: the OVA holds no OVF descriptor.")
        if self.left or self.current is not None or not self.ended:
            raise ImageFormatError(f"{self.path}: the OVA (tar) is truncated.")
        missing = sorted(self.wanted - set(self.extracted))
        if missing:
            raise ImageFormatError(f"{self.path}: the OVF references {', '.join(missing)}, "
                                   "which the OVA does not contain.")
        if not self.disks:
            raise ImageFormatError(f"{self.path}: the OVF describes no disk with a capacity.")
        # The system VM has one disk: the first is the root disk CloudStack sizes.
        return self.disks[0], tuple(self.extracted)


def _read_ovf(text: bytes, path: str) -> tuple[set[str], list[int]]:
    """Files the OVF references, and each disk's capacity in bytes."""
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        # An OVF needs neither; entities are how XML bombs and external reads get in.
        raise ImageFormatError(f"{path}: the OVF descriptor declares a DTD or entities; "
                               "refusing it.")
    try:
        root = ElementTree.fromstring(text)  # noqa: S314 - no DTD, so no entity expansion
    except ElementTree.ParseError as exc:
        raise ImageFormatError(f"{path}: the OVF descriptor is not valid XML ({exc}).") from exc
    files, disks = set(), []
    for element in root.iter():
        tag = _local(element.tag)
        attrs = {_local(k): v for k, v in element.attrib.items()}
        if tag == "File" and "href" in attrs:
            href = attrs["href"]
            _check_member_name(path, href)
            files.add(os.path.basename(href))
        elif tag == "Disk" and "capacity" in attrs:
            disks.append(_capacity(attrs["capacity"], attrs.get("capacityAllocationUnits"),
                                   path))
    return files, disks


def _capacity(value: str, units: Optional[str], path: str) -> int:
    try:
        amount = int(value)
    except ValueError:
        raise ImageFormatError(f"{path}: OVF disk capacity {value!r} is not a number.") from None
    if not units:
        return amount
    # Units look like "byte * 2^20"; anything else is refused rather than guessed.
    compact = units.replace(" ", "")
    if compact == "byte":
        return amount
    if compact.startswith("byte*2^") and compact[7:].isdigit():
        return amount << int(compact[7:])
    raise ImageFormatError(f"{path}: OVF capacity units {units!r} are not understood.")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _check_member_name(path: str, name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise ImageFormatError(f"{path}: archive member {name!r} has an absolute or parent "
                               "path; refusing it.")
