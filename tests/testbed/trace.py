"""What a command and every process it starts read from each file, counted by strace.

Exact byte counts, from the results of every read-family system call, per file: how the
tests and the benchmark show that a source image is read once however many stores it goes
to, and that a rerun with nothing to do reads no image at all. (/proc/self/io cannot tell
the source from pipes, sockets and Python's own modules.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Set, Union

# Each read-family call, and which of its descriptor arguments is the one read from.
READ_CALLS = {"read": 0, "pread64": 0, "readv": 0, "preadv": 0, "preadv2": 0,
              "copy_file_range": 0, "splice": 0, "sendfile": 1}
_FD = re.compile(r"(\d+)<([^>]*)>")  # strace -y: 3</path/of/the/file>
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+)")


@dataclass
class Reads:
    """Bytes read per path (pipes and sockets are named as strace names them, pipe:[N])."""

    by_path: Dict[str, int] = field(default_factory=dict)
    mapped: Set[str] = field(default_factory=set)  # files mmapped, which no read shows

    def of(self, path: Union[Path, str]) -> int:
        return self.by_path.get(os.path.realpath(path), 0)

    def under(self, directory: Union[Path, str]) -> Dict[str, int]:
        """Bytes read from each file below `directory`."""
        top = os.path.realpath(directory) + os.sep
        return {p: n for p, n in self.by_path.items() if p.startswith(top)}

    @property
    def pipes(self) -> int:
        return sum(n for p, n in self.by_path.items() if p.startswith("pipe:"))


def available() -> bool:
    return shutil.which("strace") is not None


def prefix(trace_dir: Union[Path, str]) -> List[str]:
    """strace, following every thread and child with one trace file each (so no call is
    split into unfinished and resumed halves), to put before a command's argv."""
    calls = ",".join([*READ_CALLS, "mmap"])
    return ["strace", "-ff", "-qq", "--seccomp-bpf", "-y", "-s", "0",
            "-e", f"trace={calls}", "-o", str(Path(trace_dir) / "t")]


def run(argv: Sequence[str], trace_dir: Union[Path, str], **kwargs) -> subprocess.CompletedProcess:
    """Run argv under strace; kwargs go to subprocess.run."""
    return subprocess.run([*prefix(trace_dir), *map(str, argv)], check=False, **kwargs)


def reads(trace_dir: Union[Path, str]) -> Reads:
    """Add up what the traces in `trace_dir` read."""
    totals = Reads()
    for line in _lines(Path(trace_dir)):
        call = _CALL.match(line)
        if not call:
            continue
        name, args, result = call.group(1), call.group(2), int(call.group(3))
        fds = _FD.findall(args)
        if name == "mmap":
            totals.mapped.update(path for _, path in fds)
        elif len(fds) > READ_CALLS[name] and result > 0:
            path = fds[READ_CALLS[name]][1]
            totals.by_path[path] = totals.by_path.get(path, 0) + result
    return totals


def _lines(trace_dir: Path) -> Iterator[str]:
    for path in sorted(trace_dir.iterdir()):
        with open(path, encoding="utf-8", errors="replace") as handle:
            yield from handle
