"""Bash completion for cloudstack-sysvm-seed, generated from the argument parser.

    python3 -m cloudstack_sysvm_seed.completion \
        > /usr/share/bash-completion/completions/cloudstack-sysvm-seed

`render(parser)` walks any argparse parser shaped like `cli.build_parser()`'s (global options
on the parser, one subparsers action with a parser per command) and writes a self-contained
bash function: it completes command names, each command's options and the global ones (which
may follow the command), files after an option taking a FILE, directories after a DIR or
MOUNTPOINT, command names after a CMD, and an option's choices. It needs neither Python nor
the bash-completion package at completion time.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Dict, Iterable, List

NAME = "cloudstack-sysvm-seed"
FUNCTION = "_cloudstack_sysvm_seed"


def _subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> List[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


def _value_kind(action: argparse.Action) -> str:
    """How to complete the value of an option that takes one."""
    if action.choices:
        return "choices"
    name = str(action.metavar or action.dest).upper()
    if "DIR" in name or "MOUNTPOINT" in name:
        return "dirs"
    if "FILE" in name or "BACKUP" in name or "PATH" in name:
        return "files"
    if name in ("CMD", "COMMAND"):
        return "commands"
    return "none"


def _words(items: Iterable[str]) -> str:
    return shlex.quote(" ".join(items))


def _value_cases(actions: Iterable[argparse.Action], indent: str) -> List[str]:
    """`case "$prev"` arms for the options among `actions` that take a value."""
    by_kind: Dict[str, List[str]] = {}
    lines: List[str] = []
    for action in actions:
        if action.nargs == 0:
            continue
        kind = _value_kind(action)
        if kind == "choices":
            lines.append(f"{indent}{'|'.join(action.option_strings)}) "
                         f"_cloudstack_sysvm_seed_words {_words(map(str, action.choices))}; "
                         "return;;")
        else:
            by_kind.setdefault(kind, []).extend(action.option_strings)
    actions_of = {"dirs": "_cloudstack_sysvm_seed_paths -d",
                  "files": "_cloudstack_sysvm_seed_paths -f",
                  "commands": "_cloudstack_sysvm_seed_commands",
                  "none": "COMPREPLY=()"}
    for kind in ("dirs", "files", "commands", "none"):
        if by_kind.get(kind):
            lines.append(f"{indent}{'|'.join(sorted(set(by_kind[kind])))}) "
                         f"{actions_of[kind]}; return;;")
    return lines


def render(parser: argparse.ArgumentParser) -> str:
    commands = _subcommands(parser)
    global_options = _options(parser)
    global_names = [n for a in global_options for n in a.option_strings]
    takes_value = sorted({n for a in global_options if a.nargs != 0 for n in a.option_strings})
    lines = [
        f"# bash completion for {NAME}(8)",
        "# Generated from the argument parser by python3 -m cloudstack_sysvm_seed.completion;",
        "# do not edit.",
        "",
        "_cloudstack_sysvm_seed_words() {  # $1: the candidates, one string",
        "    local IFS=$' \\t\\n'",
        '    mapfile -t COMPREPLY < <(compgen -W "$1" -- "$cur")',
        "}",
        "",
        "_cloudstack_sysvm_seed_paths() {  # $1: -f files or -d directories",
        "    compopt -o filenames 2>/dev/null",
        '    mapfile -t COMPREPLY < <(compgen "$1" -- "$cur")',
        "}",
        "",
        "_cloudstack_sysvm_seed_commands() {",
        '    mapfile -t COMPREPLY < <(compgen -c -- "$cur")',
        "}",
        "",
        f"{FUNCTION}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" command="" word i',
        '    [ "$COMP_CWORD" -gt 0 ] && prev="${COMP_WORDS[COMP_CWORD-1]}"',
        f"    local commands={_words(commands)}",
        f"    local global={_words(global_names)}",
        "    # The command is the first word that names one, skipping the global options' values.",
        '    for ((i = 1; i < COMP_CWORD; i++)); do',
        '        word="${COMP_WORDS[i]}"',
        '        case "$word" in',
        f"            {'|'.join(takes_value) or '--'}) ((i++)); continue;;",
        "        esac",
        '        case " $commands " in',
        '            *" $word "*) command="$word"; break;;',
        "        esac",
        "    done",
        "",
        "    local options=\"\"",
        '    case "$command" in',
    ]
    for name, sub in commands.items():
        own = [a for a in _options(sub) if not set(a.option_strings) <= set(global_names)]
        names = [n for a in own for n in a.option_strings]
        lines.append(f"        {shlex.quote(name)})")
        lines.append(f"            options={_words(names)}")
        arms = _value_cases(own, " " * 16)
        if arms:
            lines.append('            case "$prev" in')
            lines += arms
            lines.append("            esac")
        lines.append("            ;;")
    lines += [
        "    esac",
        '    case "$prev" in',
        *_value_cases(global_options, " " * 8),
        "    esac",
        "",
        '    if [[ "$cur" == -* ]]; then',
        '        _cloudstack_sysvm_seed_words "$options $global"',
        '    elif [ -z "$command" ]; then',
        '        _cloudstack_sysvm_seed_words "$commands"',
        "    else",
        "        COMPREPLY=()",
        "    fi",
        "}",
        "",
        f"complete -F {FUNCTION} {NAME}",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    from . import cli

    print(render(cli.build_parser()), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
