"""One exception hierarchy: each error knows its exit code and the operator's next step."""

from __future__ import annotations

from typing import Optional

# Exit codes, documented in `cloudstack-sysvm-seed --help`.
EXIT_OK = 0
EXIT_FAILED = 1  # the run finished, but some store or hypervisor failed
EXIT_USAGE = 2
EXIT_METADATA = 3
EXIT_DATABASE = 4
EXIT_STORE = 5
EXIT_SOURCE = 6
EXIT_LOCKED = 7
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BUG = 70


class SeedError(Exception):
    """A failure the operator can act on: what failed, the values, and the next step."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class SettingsError(SeedError):
    exit_code = EXIT_USAGE


class NotRoot(SettingsError):
    """The command mounts stores, which needs root."""


class MetadataError(SeedError):
    """metadata.ini is unreadable or malformed; lists every problem found."""

    exit_code = EXIT_METADATA

    def __init__(self, path: str, problems: list[str]):
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{path} has {len(problems)} problem(s):\n{listing}",
            "Fix the file (it ships with cloudstack-management) or reinstall the package.",
        )
        self.problems = problems


class CatalogError(SeedError):
    """The cloud database is unreachable or does not look like CloudStack's."""

    exit_code = EXIT_DATABASE


class SchemaError(CatalogError):
    """A row the tool would write does not fit this database's schema."""


class StatementFailed(CatalogError):
    """The server refused a statement or did not answer it (it went away, a lock wait
    timed out, a privilege is missing); `statement` names its verb and table, never its
    values."""

    def __init__(self, statement: str, reason: str):
        super().__init__(
            f"The cloud database failed a statement ({statement}): {reason}.",
            "Check that MySQL/MariaDB is up and reachable, and that the db.properties user "
            "may do this; then rerun. A statement that fails changes nothing.")
        self.statement = statement
        self.reason = reason


class LockTimeout(SeedError):
    """Another run, or a management server upgrading the database, holds the lock."""

    exit_code = EXIT_LOCKED


class StoreError(SeedError):
    """A secondary store cannot be mounted, read or written."""

    exit_code = EXIT_STORE


class MountFailed(StoreError):
    pass


class StoreFull(StoreError):
    pass


class SourceError(SeedError):
    """A template image is missing, corrupt or of the wrong kind."""

    exit_code = EXIT_SOURCE


class ChecksumMismatch(SourceError):
    """also: what else went wrong with the file (decoding it failed), said after."""

    def __init__(self, path: str, algorithm: str, expected: str, actual: str,
                 also: str = ""):
        super().__init__(
            f"Checksum mismatch for {path} ({algorithm}):\n"
            f"  expected {expected}\n  actual   {actual}"
            + (f"\n  (and decoding it failed: {also})" if also else ""),
            "The file is corrupt or was modified; reinstall cloudstack-management "
            "(or fetch the file again). Do not bypass the check.",
        )


class ImageFormatError(SourceError):
    pass


class CommandFailed(SeedError):
    """An external command exited non-zero or timed out."""

    def __init__(self, argv: list[str], detail: str, hint: Optional[str] = None,
                 signal: Optional[int] = None):
        super().__init__(f"Command {' '.join(argv)!s} failed: {detail}", hint)
        self.argv = argv
        self.detail = detail
        self.signal = signal  # the signal that killed it, if one did


class Interrupted(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so that it passes every `except SeedError` and
    runs the same cleanup as Ctrl-C."""

    exit_code = EXIT_TERMINATED
