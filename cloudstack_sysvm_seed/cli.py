"""Command line: arguments, logging, signals and exit codes. The work happens elsewhere."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from . import __version__, apply, check, dbprops, errors, report, session, settings, sources
from . import repair as repair_command

LOG = logging.getLogger(__name__)
PROG = "cloudstack-sysvm-seed"

EPILOG = f"""\
exit codes:
  {errors.EXIT_OK}    every store in scope is Ready, or there was nothing to do
  {errors.EXIT_FAILED}    the run finished, but some store or hypervisor failed (see the report)
  {errors.EXIT_USAGE}    bad arguments or settings (db.properties)
  {errors.EXIT_METADATA}    metadata.ini is missing or malformed
  {errors.EXIT_DATABASE}    the cloud database is unreachable or not CloudStack's
  {errors.EXIT_STORE}    a store cannot be used at all (e.g. a malformed URL); nothing changed
  {errors.EXIT_SOURCE}    a template image is missing or broken (install)
  {errors.EXIT_LOCKED}    another run or a management server upgrade holds the lock
  {errors.EXIT_BUG}   internal error (a bug: please report it with --debug output)
  {errors.EXIT_INTERRUPTED}  interrupted (Ctrl-C); {errors.EXIT_TERMINATED} terminated (SIGTERM)

The mount command is run as: CMD [-o OPTIONS] HOST:/PATH MOUNTPOINT
"""


def _add_global_options(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--db-properties", default=default, metavar="FILE",
                        help=f"management server db.properties (default "
                             f"{settings.DEFAULT_DB_PROPERTIES})")
    parser.add_argument("--key-file", default=default, metavar="FILE",
                        help=f"management server key, for ENC() values in db.properties "
                             f"(default {dbprops.DEFAULT_KEY_FILE})")
    parser.add_argument("--templates-dir", default=default, metavar="DIR",
                        help="directory with metadata.ini and the bundled images (default "
                             "/usr/share/cloudstack-management/templates/systemvm)")
    parser.add_argument("--mount-command", default=default, metavar="CMD",
                        help=f"mount command (default '{settings.DEFAULT_MOUNT_COMMAND}', or "
                             f"${settings.ENV_MOUNT_COMMAND})")
    parser.add_argument("--umount-command", default=default, metavar="CMD",
                        help=f"unmount command (default '{settings.DEFAULT_UMOUNT_COMMAND}', "
                             f"or ${settings.ENV_UMOUNT_COMMAND})")
    parser.add_argument("--log-file", default=default, metavar="FILE",
                        help="also append the log to FILE")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="log commands and show tracebacks")


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, add_help=False, allow_abbrev=False)
    _add_global_options(parser, None)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


@dataclass(frozen=True)
class Command:
    """A subcommand: its options and what it runs; `run` returns the exit code."""

    name: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, settings.Settings], int]


def _scope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zone", action="append", metavar="Z",
                        help="only this zone (id, uuid or name); repeatable")
    parser.add_argument("--hypervisor", action="append", metavar="HV",
                        help="only this hypervisor (kvm, vmware, xenserver, ...); repeatable")


def _seed_arguments(parser: argparse.ArgumentParser) -> None:
    _scope_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="change nothing; print the plan")
    _source_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the report as JSON, one record per (zone, store, "
                             "hypervisor)")


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--download-repository", metavar="PREFIX",
                        help="fetch images that are not bundled from this mirror (upstream's "
                             "layout: PREFIX/<X.Y>/<file>)")
    parser.add_argument("--download-attempts", type=int, metavar="N",
                        help="tries per download, with backoff (default 5)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="where downloads are kept, and a slow store's backlog while "
                             f"it catches up (default {sources.DEFAULT_CACHE_DIR})")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="seed images whose metadata.ini checksum is empty, recording "
                             "their SHA-512")
    parser.add_argument("--max-image-size", type=float, metavar="GIB",
                        help="refuse images that expand beyond this (default 64)")
    parser.add_argument("--lock-timeout", type=float, metavar="SECONDS",
                        help="wait this long for the registration lock (default 1200)")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="stores mounted at once (default: 4 per CPU, at most 16)")
    parser.add_argument("--nfs-version", metavar="V",
                        help="mount stores with -o vers=V (default: the store's nfs.version "
                             "detail, else secstorage.nfs.version, else the system's)")
    parser.add_argument("--mount-timeout", type=float, metavar="SECONDS",
                        help="give up mounting a store after this long (default 60)")
    parser.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                        help="fail a store whose writes make no progress for this long "
                             "(default 120)")


def _run_seed(args: argparse.Namespace, config: settings.Settings) -> int:
    outcomes = session.seed(config)
    print(report.to_json(outcomes) if config.json else
          report.to_table(outcomes, dry_run=config.dry_run))
    LOG.info("Done: %s", report.summary(outcomes))
    failed = any(o.status == apply.FAILED for o in outcomes)
    return errors.EXIT_FAILED if failed else errors.EXIT_OK


SEED = Command(
    "seed",
    "Register the SystemVM templates described by metadata.ini and seed them onto every NFS "
    "image store of each zone. The default command.",
    _seed_arguments, _run_seed)


def _store_added_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store-id", type=int, required=True, metavar="N",
                        help="the image store just added (image_store.id)")
    parser.add_argument("--strict", action="store_true",
                        help="exit non-zero when seeding fails (default: report and exit 0)")
    _source_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_store_added(args: argparse.Namespace, config: settings.Settings) -> int:
    code = _run_seed(args, config)
    if code and not args.strict:
        # Like upstream, adding a store never fails because of templates; say what to do.
        LOG.warning("Seeding store %d did not finish; the store is added all the same. "
                    "Rerun: %s on-store-added --store-id %d", args.store_id, PROG,
                    args.store_id)
        return errors.EXIT_OK
    return code


ON_STORE_ADDED = Command(
    "on-store-added",
    "Seed one newly added image store with the system template of every hypervisor of its "
    "zone. Exits 0 even when seeding fails (the report says why), unless --strict.",
    _store_added_arguments, _run_store_added)


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    _scope_arguments(parser)
    _source_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the problems as JSON")


def _run_check(args: argparse.Namespace, config: settings.Settings) -> int:
    problems = check.run(config)
    if config.json:
        print(json.dumps([{"where": p.where, "problem": p.what} for p in problems], indent=2))
    elif problems:
        print(f"{len(problems)} problem(s):")
        print("\n".join(f"- {p}" for p in problems))
    else:
        print("ready")
    return errors.EXIT_FAILED if problems else errors.EXIT_OK


CHECK = Command(
    "check",
    "Check, without changing anything, that seeding would succeed now: a valid bundled or "
    "downloadable image for every hypervisor in use, names that line up, every store "
    "mountable and writable with room, and the lock free. Prints the problems, or 'ready'.",
    _check_arguments, _run_check)


def _install_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--mountpoint", required=True, help="the mounted store")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--file", help="the template image (compressed or not)")
    source.add_argument("-u", "--url", help="download the image from this URL")
    # -h is the hypervisor, as in cloud-install-sys-tmplt; help stays on --help.
    parser.add_argument("-h", "--hypervisor", required=True, help="kvm, vmware, xenserver, ...")
    parser.add_argument("--arch", default="x86_64", help="x86_64 (default) or aarch64")
    parser.add_argument("-t", "--template-id", type=int,
                        help="the SYSTEM template to install (default: the newest one)")
    parser.add_argument("-s", "--store-id", type=int,
                        help="image_store.id of the mounted store (default: found from the mount)")
    parser.add_argument("-c", "--checksum", help="{ALG}hex of the file (default: metadata.ini)")
    parser.add_argument("-F", "--force", action="store_true",
                        help="replace an existing copy (it is set aside, not deleted)")
    _source_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_install(args: argparse.Namespace, config: settings.Settings) -> int:
    outcomes = session.install(config, session.InstallRequest(
        args.mountpoint, args.hypervisor, args.file, args.url, args.checksum,
        args.template_id, args.store_id, args.arch, args.force))
    print(report.to_json(outcomes) if config.json else report.to_table(outcomes))
    return errors.EXIT_FAILED if any(o.status == apply.FAILED for o in outcomes) else 0


INSTALL = Command(
    "install",
    "Install one template image onto one store you mounted, safely: the successor of "
    "cloud-install-sys-tmplt. Refuses a mountpoint that is not mounted, verifies the "
    "checksum, writes template.properties with true sizes, and records the copy in "
    "template_store_ref.",
    _install_arguments, _run_install)

DOCTOR = Command("doctor", repair_command.DOCTOR_DESCRIPTION, repair_command.doctor_arguments,
                 repair_command.run_doctor)
REPAIR = Command("repair", repair_command.REPAIR_DESCRIPTION, repair_command.repair_arguments,
                 repair_command.run_repair)


COMMANDS: dict[str, Command] = {
    command.name: command for command in (SEED, ON_STORE_ADDED, CHECK, INSTALL, DOCTOR, REPAIR)}


def _command_parser(command: Command) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} {command.name}", allow_abbrev=False, epilog=EPILOG,
        conflict_handler="resolve",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=command.description + f"\n\nCommands: {', '.join(COMMANDS)}.",
    )
    # Global options may also follow the command; SUPPRESS keeps values given before it.
    _add_global_options(parser, argparse.SUPPRESS)
    command.add_arguments(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line as one parser, for the man page and the shell completion
    (manpage.py, completion.py): the global options, then a subparsers action with one
    parser per command and that command's options. Parsing stays with parse_args.
    Temporary: main's restructured cli provides the real one."""
    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Register the Apache CloudStack SystemVM templates that "
                    "cloudstack-management ships in the cloud database and seed them onto "
                    "every NFS secondary store of every zone. seed is the default command; "
                    "the global options may also follow the command.")
    _add_global_options(parser, None)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for command in COMMANDS.values():
        sub = commands.add_parser(
            command.name, description=command.description, help=command.description,
            allow_abbrev=False, conflict_handler="resolve",
            formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(sub)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """`seed` is the default command, so `cloudstack-sysvm-seed --zone Z` works."""
    known, rest = _top_parser().parse_known_args(list(argv))
    command = SEED
    if rest and rest[0] in COMMANDS:
        command, rest = COMMANDS[rest[0]], rest[1:]
    args = _command_parser(command).parse_args(rest, namespace=known)
    args.command = command.name
    return args


def main(argv: Optional[Sequence[str]] = None,
         environ: Optional[Mapping[str, str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    config = settings.from_args(args, os.environ if environ is None else environ)
    _setup_logging(config.log_file, args.debug)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command].run(args, config)
    except errors.SeedError as exc:
        LOG.debug("Failure", exc_info=True)
        _print_error(exc.message, exc.hint)
        return exc.exit_code
    except errors.Interrupted:
        _print_error("terminated; partial work was undone.")
        return errors.EXIT_TERMINATED
    except KeyboardInterrupt:
        _print_error("interrupted; partial work was undone.")
        return errors.EXIT_INTERRUPTED
    except Exception:  # a bug: say so, with the traceback
        LOG.exception("internal error (bug)")
        return errors.EXIT_BUG
    finally:
        signal.signal(signal.SIGTERM, previous)


def _on_sigterm(signum, frame):
    raise errors.Interrupted()


def _setup_logging(log_file: Optional[str], debug: bool) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    root.addHandler(stderr)
    # sh announces every process at INFO; the runner already logs commands at DEBUG.
    logging.getLogger("sh").setLevel(logging.WARNING)
    if log_file:
        try:
            handler = logging.FileHandler(log_file)
        except OSError as exc:
            LOG.warning("Cannot write the log file %s: %s", log_file, exc)
            return
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


def _print_error(message: str, hint: Optional[str] = None) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    if hint:
        print(f"{PROG}: {hint}", file=sys.stderr)
