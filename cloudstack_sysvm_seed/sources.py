"""Where a template's image comes from: the file bundled with cloudstack-management."""

from __future__ import annotations

import os
from typing import Optional

from .metadata import TemplateSpec

DEFAULT_TEMPLATES_DIR = "/usr/share/cloudstack-management/templates/systemvm"


def bundled_path(templates_dir: str, spec: TemplateSpec) -> str:
    # metadata.parse guarantees a plain file name, so this stays inside templates_dir.
    return os.path.join(templates_dir, spec.filename)


def missing_reason(templates_dir: str, spec: TemplateSpec) -> Optional[str]:
    """Why the bundled file cannot be used, or None when it is there."""
    path = bundled_path(templates_dir, spec)
    if os.path.isfile(path):
        return None
    if os.path.lexists(path):
        return f"{path} is not a regular file"
    return (f"{path} is missing (metadata.ini [{spec.section}] names it); packages built "
            "without -Dnoredist ship no images: put the file there and rerun")
