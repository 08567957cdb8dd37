"""Command line: assemble the commands, set up logging and signals, map errors to exit codes.
The work happens in the commands."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import pwd
import sys
import textwrap
from typing import Mapping, Optional, Sequence

from . import __version__, errors, report, settings, signals
from .commands import EXIT_MEANINGS, PROG, Command
from .commands.check import CHECK
from .commands.doctor import DOCTOR
from .commands.install import INSTALL
from .commands.prune import PRUNE_COMMAND
from .commands.repair import REPAIR
from .commands.seed import ON_STORE_ADDED, SEED
from .commands.watch import WATCH
from .dbprops import DEFAULT_KEY_FILE

LOG = logging.getLogger(__name__)

COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (SEED, ON_STORE_ADDED, WATCH, CHECK, INSTALL, DOCTOR, REPAIR, PRUNE_COMMAND)}
DEFAULT_COMMAND = SEED.name

DESCRIPTION = (
    "Register Apache CloudStack SystemVM templates in the cloud database and seed them onto "
    "every NFS secondary store of every zone: what the management server does at upgrade "
    "time, as a re-runnable tool that shows every change before making it and fails one "
    "store at a time. Without a command, `seed` runs.")

EPILOG = (
    "The mount command is run as: CMD [-o OPTIONS] HOST:/PATH MOUNTPOINT\n"
    f"`{PROG} COMMAND --help` shows a command's options, and what its exit codes mean for "
    "it.\n\nexit codes:\n"
    + "\n".join(f"  {code:<3}  {meaning}" for code, meaning in sorted(EXIT_MEANINGS.items())))

# Global options that take a value: their values are never taken for the command's name.
_GLOBAL_VALUES = ("--db-properties", "--key-file", "--templates-dir", "--mount-command",
                  "--umount-command", "--log-file")


def _add_global_options(parser: argparse.ArgumentParser, default) -> None:
    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument("--db-properties", default=default, metavar="FILE",
                       help=f"management server db.properties (default "
                            f"{settings.DEFAULT_DB_PROPERTIES})")
    group.add_argument("--key-file", default=default, metavar="FILE",
                       help=f"management server key, for ENC() values in db.properties "
                            f"(default {DEFAULT_KEY_FILE})")
    group.add_argument("--templates-dir", default=default, metavar="DIR",
                       help=f"directory with metadata.ini and the bundled images (default "
                            f"{settings.DEFAULT_TEMPLATES_DIR})")
    group.add_argument("--mount-command", default=default, metavar="CMD",
                       help=f"mount command (default '{settings.DEFAULT_MOUNT_COMMAND}', or "
                            f"${settings.ENV_MOUNT_COMMAND})")
    group.add_argument("--umount-command", default=default, metavar="CMD",
                       help=f"unmount command (default '{settings.DEFAULT_UMOUNT_COMMAND}', "
                            f"or ${settings.ENV_UMOUNT_COMMAND})")
    group.add_argument("--log-file", default=default, metavar="FILE",
                       help="also append the log to FILE")
    group.add_argument("--json", action="store_true", default=default,
                       help="print the report as JSON")
    group.add_argument("--debug", action="store_true", default=default,
                       help="log commands and show tracebacks")


class UsageError(Exception):
    def __init__(self, message: str, usage: str):
        super().__init__(message)
        self.usage = usage


class _Formatter(argparse.HelpFormatter):
    """Each line of a description or an epilog wrapped to the terminal on its own, so that
    prose flows while the lines of the exit codes table stay as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            hanging = indent + " " * (len(line) - len(line.lstrip()) + 5 * line.startswith("  "))
            lines += textwrap.wrap(line, width, initial_indent=indent,
                                   subsequent_indent=hanging, break_on_hyphens=False) or [""]
        return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors main reports (as JSON too, with --json)."""

    def error(self, message: str):
        raise UsageError(message, self.format_usage())


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global options, and a subparser per command."""
    parser = _Parser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False,
        formatter_class=_Formatter)
    _add_global_options(parser, None)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for command in COMMANDS.values():
        sub = commands.add_parser(
            command.name, help=command.summary, description=command.description,
            epilog=command.epilog(), allow_abbrev=False, conflict_handler="resolve",
            formatter_class=_Formatter)
        # Global options may also follow the command; SUPPRESS keeps values given before it.
        _add_global_options(sub, argparse.SUPPRESS)
        command.add_arguments(sub)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """`seed` is the default command, so `cloudstack-sysvm-seed --zone Z` works."""
    parser = build_parser()
    argv = list(argv)
    position = _command_position(argv)
    if position == len(argv) or argv[position].startswith("-"):
        if not any(arg in ("-h", "--help", "--version") for arg in argv[:position + 1]):
            argv.insert(position, DEFAULT_COMMAND)
    elif argv[position] not in COMMANDS:
        near = difflib.get_close_matches(argv[position], list(COMMANDS), n=1)
        parser.error(f"unknown command {argv[position]!r}"
                     + (f"; did you mean {near[0]!r}?" if near else "")
                     + f" (commands: {', '.join(COMMANDS)})")
    return parser.parse_args(argv)


def _command_position(argv: list[str]) -> int:
    """Where the command is, or would go: after the global options that precede it."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in _GLOBAL_VALUES:
            index += 2
        elif arg.split("=", 1)[0] in _GLOBAL_VALUES or arg in ("--json", "--debug"):
            index += 1
        else:
            return index
    return index


def main(argv: Optional[Sequence[str]] = None,
         environ: Optional[Mapping[str, str]] = None) -> int:
    """Run one command; every error is logged at ERROR (so stderr and --log-file have the
    same words) and, with --json, is also a JSON object on stdout."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(exc.usage)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        if "--json" in argv:
            print(report.fatal_json(str(exc), errors.EXIT_USAGE, f"See {PROG} --help."))
        raise SystemExit(errors.EXIT_USAGE) from None
    config = settings.from_args(args, os.environ if environ is None else environ)
    _setup_logging(config.log_file, bool(args.debug))
    restore_signals = signals.install()
    try:
        command = COMMANDS[args.command]
        if command.mounts:
            _need_root(command.name)
        return command.run(args, config)
    except errors.SeedError as exc:
        LOG.debug("Failure", exc_info=True)
        return _failed(config, exc.message, exc.exit_code, exc.hint)
    except errors.Interrupted:
        return _failed(config, "terminated; partial work was undone.", errors.EXIT_TERMINATED)
    except KeyboardInterrupt:
        return _failed(config, "interrupted; partial work was undone.",
                       errors.EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: say so, with the traceback
        LOG.exception("internal error (bug)")
        if config.json:
            print(report.fatal_json(f"internal error (bug): {exc}", errors.EXIT_BUG,
                                    "Please report it, with the output of --debug."))
        return errors.EXIT_BUG
    finally:
        restore_signals()


def _failed(config: settings.Settings, message: str, code: int,
            hint: Optional[str] = None) -> int:
    LOG.error("%s", f"{message}\n{hint}" if hint else message)
    if config.json:
        print(report.fatal_json(message, code, hint))
    return code


def _need_root(command: str) -> None:
    """:raises NotRoot: before anything is read or mounted, when not root. Each store
    would otherwise fail on its own, with mount's "must be superuser"."""
    uid = os.geteuid()
    if uid == 0:
        return
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = "no name"
    raise errors.NotRoot(
        f"`{command}` mounts the NFS secondary stores, which needs root; this is uid {uid} "
        f"({user}). Nothing was mounted or changed.",
        f"Run it as root, e.g. sudo {PROG} {command} ...")


def _setup_logging(log_file: Optional[str], debug: bool) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(EveryLine(f"{PROG}: %(levelname)s: %(message)s"))
    root.addHandler(stderr)
    if log_file:
        try:
            handler = logging.FileHandler(log_file)
        except OSError as exc:
            LOG.warning("Cannot write the log file %s: %s", log_file, exc)
            return
        handler.setFormatter(EveryLine(
            "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


class EveryLine(logging.Formatter):
    """Each line of a message gets the prefix: a multi-line error (metadata.ini's problems,
    a checksum's expected and actual) stays one record, and `grep ERROR` finds every line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if "\n" not in message:
            return super().format(record)
        lines = [super(EveryLine, self).format(logging.makeLogRecord(
            {**record.__dict__, "msg": line, "args": None, "exc_info": None,
             "exc_text": None, "stack_info": None})) for line in message.split("\n")]
        if record.exc_info:
            lines.append(self.formatException(record.exc_info))
        return "\n".join(lines)
