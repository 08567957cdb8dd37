"""cloudstack-sysvm-seed(8), generated from the argument parser so that it cannot drift.

    python3 -m cloudstack_sysvm_seed.manpage > cloudstack-sysvm-seed.8

`render(parser)` walks any argparse parser shaped like `cli.build_parser()`'s: global options
on the parser itself, and one subparsers action with a parser per command. The exit codes
come from the parser's epilog (its "exit codes:" block); the files and the environment from
the modules that own those defaults.
"""

from __future__ import annotations

import argparse
import re
from typing import Dict, Iterable, List, Optional, Tuple

from . import __version__, dbprops, settings

NAME = "cloudstack-sysvm-seed"
SUMMARY = "register and seed Apache CloudStack SystemVM templates"

FILES: Tuple[Tuple[str, str], ...] = (
    (settings.DEFAULT_DB_PROPERTIES,
     "The management server's database settings (--db-properties); ENC() values are "
     "decrypted."),
    (dbprops.DEFAULT_KEY_FILE,
     "The management server's key for ENC() values (--key-file), unless CLOUD_SECRET_KEY is "
     "set."),
    (settings.DEFAULT_TEMPLATES_DIR,
     "metadata.ini and the bundled template images, as cloudstack-management installs them "
     "(--templates-dir)."),
    (settings.DEFAULT_CACHE_DIR,
     "Downloaded images, and a slow store's backlog while it catches up (--cache-dir)."),
    ("/var/lib/cloudstack-sysvm-seed/pending",
     "Written by the package hook when seeding did not finish; while it exists, "
     "cloudstack-sysvm-seed.service retries before cloudstack-management starts."),
    (settings.DEFAULT_BACKUP_DIR,
     "JSON backups that repair writes before it changes rows (repair --undo)."),
    ("/var/log/cloudstack/management/sysvm-seed.log",
     "The log of the runs started by the package hook, and of the watch unit."),
    ("/usr/lib/systemd/system/cloudstack-sysvm-seed-watch.service",
     "Runs the watch command; installed but not enabled: systemctl enable --now "
     "cloudstack-sysvm-seed-watch.service."),
    ("/usr/lib/cloudstack-sysvm-seed/hook",
     "Run by the package triggers and by cloudstack-sysvm-seed.service; always exits 0."),
)

ENVIRONMENT: Tuple[Tuple[str, str], ...] = (
    (settings.ENV_MOUNT_COMMAND,
     f"The mount command when --mount-command is not given (default "
     f"'{settings.DEFAULT_MOUNT_COMMAND}'). It is run as CMD [-o OPTIONS] HOST:/PATH "
     "MOUNTPOINT."),
    (settings.ENV_UMOUNT_COMMAND,
     f"The unmount command when --umount-command is not given (default "
     f"'{settings.DEFAULT_UMOUNT_COMMAND}'). It is run as CMD MOUNTPOINT, and as a last "
     "resort as CMD -l MOUNTPOINT."),
    (dbprops.KEY_ENV,
     "The management server's key, used for ENC() values in db.properties instead of the "
     "key file."),
)

SEE_ALSO = ("mount(8)", "mount.nfs(8)", "umount(8)", "systemd.service(5)")


def text(value: str) -> str:
    """Running text for roff: backslashes shown, and no line starting with a control
    character (. or ')."""
    escaped = value.replace("\\", "\\e")
    return "\n".join(f"\\&{line}" if line.startswith((".", "'")) else line
                     for line in escaped.split("\n"))


def _dashes(value: str) -> str:
    return text(value).replace("-", "\\-")


def _options_in_text(value: str) -> str:
    """Running text, with the option names in it (--dry-run) as minus signs, not hyphens,
    so that they can be copied from the page."""
    return re.sub(r"(?<![\w-])--?[A-Za-z][\w-]*", lambda m: m.group().replace("-", "\\-"),
                  text(value))


def _subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _shown(parser: argparse.ArgumentParser) -> List[argparse.Action]:
    return [a for a in parser._actions if a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._SubParsersAction)]


def _metavar(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """What argparse's usage shows after the option (FILE, {a,b}, [N ...]), or ''."""
    if action.nargs == 0:
        return ""
    formatter = parser._get_formatter()
    if action.option_strings:
        default = formatter._get_default_metavar_for_optional(action)
    else:
        default = formatter._get_default_metavar_for_positional(action)
    return formatter._format_args(action, default)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    return parser._get_formatter()._expand_help(action)


def _invocation(parser: argparse.ArgumentParser, action: argparse.Action,
                names: Optional[Iterable[str]] = None) -> str:
    """\\fB\\-\\-zone\\fR\\ \\fIZ\\fR: an option's names in bold, its argument in italics."""
    metavar = _metavar(parser, action)
    if not action.option_strings:
        return f"\\fI{text(metavar)}\\fR"
    argument = f"\\ \\fI{text(metavar)}\\fR" if metavar else ""
    return ", ".join(f"\\fB{_dashes(name)}\\fR{argument}"
                     for name in (names or action.option_strings))


def _synopsis(parser: argparse.ArgumentParser, skip: Iterable[argparse.Action] = ()) -> str:
    """The command's options as its usage line shows them: brackets unless required,
    mutually exclusive groups as (a | b)."""
    skipped = set(skip)
    group_of = {action: group for group in parser._mutually_exclusive_groups
                for action in group._group_actions}
    items: List[str] = []
    done = set()
    for action in _shown(parser):
        if action in skipped or isinstance(action, argparse._HelpAction):
            continue
        group = group_of.get(action)
        if group is not None:
            if id(group) in done:
                continue
            done.add(id(group))
            members = [_invocation(parser, a, a.option_strings[:1]) for a in group._group_actions
                       if a.help != argparse.SUPPRESS]
            joined = " | ".join(members)
            items.append(f"({joined})" if group.required else f"[{joined}]")
            continue
        shown = _invocation(parser, action, action.option_strings[:1])
        items.append(shown if action.required or not action.option_strings else f"[{shown}]")
    return "\n".join(items)


def _option_list(parser: argparse.ArgumentParser, actions: Iterable[argparse.Action]) -> List[str]:
    lines: List[str] = []
    for action in actions:
        lines += [".TP", _invocation(parser, action)]
        lines.append(_options_in_text(_help(parser, action)) or "\\&")
    return lines


def exit_codes(parser: argparse.ArgumentParser) -> List[Tuple[str, str]]:
    """(code, meaning) from the "exit codes:" block of the parser's epilog (or of its
    commands'), e.g. "  130  interrupted (Ctrl-C); 143 terminated (SIGTERM)"."""
    epilogs = [parser.epilog] + [p.epilog for p in _subcommands(parser).values()]
    epilog = next((e for e in epilogs if e and "exit codes:" in e), "")
    codes: List[Tuple[str, str]] = []
    in_block = False
    for line in epilog.splitlines():
        if line.strip() == "exit codes:":
            in_block = True
            continue
        if in_block:
            found = re.match(r"\s+(\d+)\s+(.*)$", line)
            if not found:
                break
            codes.append((found.group(1), found.group(2).strip()))
    return codes


def render(parser: argparse.ArgumentParser) -> str:
    """The man page, in roff (man macros), for section 8."""
    commands = _subcommands(parser)
    global_actions = _shown(parser)
    global_names = {name for action in global_actions for name in action.option_strings}
    lines = [
        f'.TH "{NAME.upper()}" "8" "" "{NAME} {__version__}" "System Administration"',
        # No hyphenation and ragged right: option names stay whole and copyable.
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{_dashes(NAME)} \\- {text(SUMMARY)}",
        ".SH SYNOPSIS",
    ]
    for name in commands:
        lines += [f"\\fB{_dashes(parser.prog)}\\fR", "[\\fIGLOBAL OPTIONS\\fR]",
                  f"\\fB{_dashes(name)}\\fR", "[\\fIOPTIONS\\fR]", ".br"]
    lines += [f"\\fB{_dashes(parser.prog)}\\fR \\fB\\-\\-version\\fR | \\fB\\-\\-help\\fR",
              ".SH DESCRIPTION", _options_in_text(parser.description or SUMMARY)]
    lines.append(".SH COMMANDS")
    for name, sub in commands.items():
        # A command's parser may repeat the global options (they can follow the command):
        # those are listed once, under GLOBAL OPTIONS.
        own = [a for a in _shown(sub) if not isinstance(a, argparse._HelpAction)
               and not set(a.option_strings) <= global_names]
        repeated = [a for a in _shown(sub) if a not in own]
        lines += [f".SS {_dashes(name)}", f"\\fB{_dashes(parser.prog)} {_dashes(name)}\\fR",
                  _synopsis(sub, skip=repeated)]
        if sub.description:
            lines += [".PP", _options_in_text(sub.description)]
        if own:
            lines += [".PP", "Options:"] + _option_list(sub, own)
    lines += [".SH GLOBAL OPTIONS",
              "These options apply to every command; they may be given before or after it."]
    lines += _option_list(parser, global_actions)
    codes = exit_codes(parser)
    if codes:
        lines.append(".SH EXIT STATUS")
        for code, meaning in codes:
            lines += [".TP", f"\\fB{code}\\fR", _options_in_text(meaning)]
    lines.append(".SH FILES")
    for path, what in FILES:
        lines += [".TP", f"\\fI{_dashes(path)}\\fR", _options_in_text(what)]
    lines.append(".SH ENVIRONMENT")
    for variable, what in ENVIRONMENT:
        lines += [".TP", f"\\fB{text(variable)}\\fR", _options_in_text(what)]
    lines += [".SH SEE ALSO",
              ",\n".join(f"\\fB{_dashes(page.split('(')[0])}\\fR({page.split('(')[1]}"
                         for page in SEE_ALSO)]
    return "\n".join(lines) + "\n"


def main() -> int:
    from . import cli

    print(render(cli.build_parser()), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
