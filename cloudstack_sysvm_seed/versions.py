"""CloudStack release versions, compared as numbers: what keeps a run from going backwards.

A templates directory carries its release in metadata.ini (`[default] version = 4.20.2.0`); a
registered template carries it in its name (`systemvm-kvm-4.20.2-x86_64`, `systemvm-kvm-4.16`).
Versions compare part by part as numbers (4.20.10 > 4.20.9) and trailing zeros do not count
(4.20.0 = 4.20.0.0). A name with no version, such as the install-time
'SystemVM Template (KVM)', is older than any versioned one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# Two or more dot-separated numbers not glued to other digits or dots: "4.20.2" in
# "systemvm-kvm-4.20.2-x86_64", never the "86" of x86_64.
_IN_TEXT = re.compile(r"(?<![\d.])\d+(?:\.\d+)+(?![\d.])")


@dataclass(frozen=True, order=True)
class Version:
    parts: tuple[int, ...]  # trailing zeros dropped, so equal versions compare equal

    def __str__(self) -> str:
        return ".".join(map(str, self.parts or (0,)))


def parse(text: Optional[str]) -> Optional[Version]:
    """The first version in `text` ("4.20.2.0", a template name, a setting's value), or None."""
    match = _IN_TEXT.search(text or "")
    if match is None:
        return None
    parts = [int(part) for part in match.group(0).split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return Version(tuple(parts))


def newer(a: Optional[Version], b: Optional[Version]) -> bool:
    """a > b, where no version is older than any version."""
    return order(a) > order(b)


def newest(versions) -> Optional[Version]:
    return max(versions, key=order, default=None)


def describe(version: Optional[Version]) -> str:
    return str(version) if version is not None else "no version"


def order(version: Optional[Version]) -> tuple:
    """A sort key: no version first, then by number."""
    return (0, ()) if version is None else (1, version.parts)
