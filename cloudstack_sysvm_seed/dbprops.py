"""db.properties as the management server reads it: Java-properties syntax, db.cloud.* keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SettingsError

_SEPARATOR = re.compile(r"(?<!\\)[=:\s]")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)


@dataclass(frozen=True)
class DbConfig:
    host: str
    port: int
    user: str
    name: str
    password: str = field(repr=False)  # never shown: not in repr, logs or reports

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.name}"


def parse(text: str) -> dict[str, str]:
    """Parse Java properties text (java.util.Properties.load rules, minus exotic corners)."""
    values = {}
    for line in _logical_lines(text):
        match = _SEPARATOR.search(line)
        if match is None:
            key, value = line, ""
        else:
            key = line[: match.start()]
            rest = line[match.start():].lstrip(" \t\f")
            if rest[:1] in ("=", ":"):
                rest = rest[1:].lstrip(" \t\f")
            value = rest
        values[_unescape(key)] = _unescape(value)
    return values


def _logical_lines(text: str):
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")
        if not pending and (not line or line[0] in "#!"):
            continue
        # An odd number of trailing backslashes continues the line.
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            pending += line[:-1]
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _unescape(text: str) -> str:
    return _ESCAPE.sub(_unescape_one, text)


def _unescape_one(match: re.Match) -> str:
    escaped = match.group(1)
    if escaped.startswith("u") and len(escaped) == 5:
        return chr(int(escaped[1:], 16))
    return _ESCAPES.get(escaped, escaped)


def load(path: str) -> dict[str, str]:
    """:raises SettingsError: when the file cannot be read."""
    try:
        with open(path, encoding="latin-1") as stream:
            return parse(stream.read())
    except OSError as exc:
        raise SettingsError(
            f"Cannot read {path}: {exc.strerror}.",
            "Pass --db-properties with the management server's db.properties.",
        ) from exc


def database_config(values: dict[str, str], path: str) -> DbConfig:
    """The cloud database settings (db.cloud.*).

    :raises SettingsError: for a missing key, a bad port or an encrypted value.
    """
    def get(key: str, default: str = "") -> str:
        value = values.get(key, default).strip()
        if value.startswith("ENC(") and value.endswith(")"):
            raise SettingsError(
                f"{path}: {key} is encrypted (ENC(...)); this version reads plain values only.",
                "Decryption of ENC() values is planned; until then use a db.properties copy "
                "with plain values (mode 0600) and pass it with --db-properties.",
            )
        return value

    user = get("db.cloud.username")
    if not user:
        raise SettingsError(f"{path}: db.cloud.username is missing.",
                            "Is this the management server's db.properties?")
    port_text = get("db.cloud.port", "3306")
    if not port_text.isdigit():
        raise SettingsError(f"{path}: db.cloud.port {port_text!r} is not a number.")
    return DbConfig(
        host=get("db.cloud.host", "localhost"),
        port=int(port_text),
        user=user,
        name=get("db.cloud.name", "cloud"),
        password=get("db.cloud.password"),
    )
