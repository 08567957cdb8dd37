"""The commands, one module each (seed and on-store-added, watch, install, check, doctor,
repair), each holding its options, its confirmation and its output; and what they share: the
option groups, the connection to the database, and the question before a change."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from .. import dbprops, errors, metadata
from ..catalog import Catalog
from ..errors import SettingsError
from ..settings import DEFAULT_CACHE_DIR, Settings

PROG = "cloudstack-sysvm-seed"

# What every exit code means, for each command's help.
EXIT_MEANINGS = {
    errors.EXIT_OK: "success",
    errors.EXIT_FAILED: "the run finished, but something failed (see the report)",
    errors.EXIT_USAGE: "bad arguments or settings (db.properties), not root, or not "
                      "confirmed",
    errors.EXIT_METADATA: "metadata.ini is missing or malformed",
    errors.EXIT_DATABASE: "the cloud database is unreachable, or its schema does not fit",
    errors.EXIT_STORE: "a store cannot be used at all (e.g. a malformed URL); nothing changed",
    errors.EXIT_SOURCE: "a template image is missing or broken",
    errors.EXIT_LOCKED: "another run or a management server upgrade holds the lock",
    errors.EXIT_BUG: "internal error (a bug: please report it with --debug output)",
    errors.EXIT_INTERRUPTED: "interrupted (Ctrl-C); partial work was undone",
    errors.EXIT_TERMINATED: "terminated (SIGTERM); partial work was undone",
}
ALWAYS = (errors.EXIT_USAGE, errors.EXIT_DATABASE, errors.EXIT_BUG, errors.EXIT_INTERRUPTED,
          errors.EXIT_TERMINATED)


@dataclass(frozen=True)
class Command:
    """A subcommand: its options and what it runs; `run` returns the exit code."""

    name: str
    summary: str  # one line, for the list of commands
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Settings], int]
    exit_codes: dict  # code -> what it means for this command
    mounts: bool = False  # mounts the stores, so needs root

    def epilog(self) -> str:
        width = max(len(str(code)) for code in self.exit_codes)
        lines = [f"  {code:<{width}}  {meaning}" for code, meaning in self.exit_codes.items()]
        return "exit codes:\n" + "\n".join(lines)


def exit_codes(*codes: int, meaning: Optional[dict] = None) -> dict:
    """This command's exit codes, in order, with those every command has; `meaning` says
    what a code means for this command where that is not the general sense."""
    meaning = meaning or {}
    return {code: meaning.get(code, EXIT_MEANINGS[code])
            for code in sorted({errors.EXIT_OK, *codes, *ALWAYS})}


def scope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zone", action="append", metavar="Z",
                        help="only this zone (id, uuid or name); repeatable")
    parser.add_argument("--hypervisor", action="append", metavar="HV",
                        help="only this hypervisor (kvm, vmware, xenserver, ...); repeatable")


def store_arguments(parser: argparse.ArgumentParser) -> None:
    """How stores are reached: mounting, NFS version, parallelism."""
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="stores mounted at once (default: 4 per CPU, at most 16)")
    parser.add_argument("--nfs-version", metavar="V",
                        help="mount stores with -o vers=V (default: the store's nfs.version "
                             "detail, else secstorage.nfs.version, else the system's)")
    parser.add_argument("--mount-timeout", type=float, metavar="SECONDS",
                        help="give up mounting a store after this long (default 60)")


def source_arguments(parser: argparse.ArgumentParser) -> None:
    """Where images come from, and how copies are written."""
    parser.add_argument("--download-repository", metavar="PREFIX",
                        help="fetch images that are not bundled from this mirror (upstream's "
                             "layout: PREFIX/<X.Y>/<file>)")
    parser.add_argument("--download-attempts", type=int, metavar="N",
                        help="tries per download, with backoff (default 5)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="where downloads are kept, and a slow store's backlog while "
                             f"it catches up (default {DEFAULT_CACHE_DIR})")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="seed images whose metadata.ini checksum is empty, recording "
                             "their SHA-512")
    parser.add_argument("--max-image-size", type=float, metavar="GIB",
                        help="refuse images that expand beyond this (default 64)")
    parser.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                        help="fail a store whose writes make no progress for this long "
                             "(default 120)")


def lock_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lock-timeout", type=float, metavar="SECONDS",
                        help="wait this long for the registration lock (default 1200)")


def open_catalog(config: Settings) -> Catalog:
    """A connection to the cloud database named by db.properties.

    :raises SettingsError: for unreadable db.properties; CatalogError: unreachable.
    """
    db_config = dbprops.database_config(dbprops.load(config.db_properties),
                                        config.db_properties, config.key_file, os.environ)
    return Catalog.connect(db_config)


@contextlib.contextmanager
def connected(config: Settings) -> Iterator[Catalog]:
    """The cloud database named by db.properties; closed when the block ends."""
    catalog = open_catalog(config)
    try:
        yield catalog
    finally:
        catalog.close()


def load_metadata(config: Settings) -> metadata.Metadata:
    return metadata.load(os.path.join(config.templates_dir, "metadata.ini"))


def confirm(yes: bool, question: str, what: str) -> None:
    """Ask on a terminal before a change; without one, --yes is the consent.

    :raises SettingsError: when not confirmed; nothing has changed then.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise SettingsError(f"{what}; without a terminal it needs --yes.",
                            "Review it with --dry-run, then pass --yes.")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise SettingsError("Nothing was changed (not confirmed).")
