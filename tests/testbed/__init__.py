"""Test bed for cloudstack-sysvm-seed: a throwaway MariaDB, era-shaped `cloud` schemas,
tiny template images, a bind-mount stand-in for `mount -t nfs`, mount helpers, strace read
counts, and (in `testbed.nfs`) a real NFS server with a FUSE bridge.

Used by the test suite (tests/conftest.py), the demo and the benchmark. `tests/` is on the
import path: pytest's `pythonpath` in pyproject.toml, PYTHONPATH=tests in scripts/demo and
scripts/bench; import `testbed`.
"""

from __future__ import annotations

from pathlib import Path

#: The stand-in mount command (see the script's docstring).
BIND_MOUNT = Path(__file__).resolve().parent / "bind-mount"
