"""Test bed for cloudstack-sysvm-seed: a throwaway MariaDB, era-shaped `cloud` schemas,
tiny template images and a bind-mount stand-in for `mount -t nfs`.

Used by the test suite (tests/conftest.py) and by the demo. Callers put `templates/` on
sys.path and import `sandbox`.
"""

from __future__ import annotations

from pathlib import Path

#: The stand-in mount command (see the script's docstring).
BIND_MOUNT = Path(__file__).resolve().parent / "bind-mount"
