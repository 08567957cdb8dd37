"""The man page and the bash completion, generated from the argument parser: everything the
parser knows is in them, groff and man render the page without a warning, and real bash
completes with the script."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from cloudstack_sysvm_seed import cli, completion, errors, manpage


def need(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if not found:
        pytest.fail(f"{tool} not found: apt-get install {package} (scripts/setup installs it)",
                    pytrace=False)
    return found


def subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def plain(roff: str) -> str:
    """Roff source with the escapes this generator writes turned back into text."""
    return re.sub(r"\\f[BIR]", "", roff).replace("\\-", "-").replace("\\ ", " ").replace(
        "\\&", "").replace("\\e", "\\")


def sections(roff: str, macro: str) -> Dict[str, str]:
    """Text under each `.SH` (or `.SS`) heading, up to the next heading of that kind."""
    found: Dict[str, List[str]] = {}
    current = None
    for line in roff.splitlines():
        if line.startswith(f"{macro} ") or (macro == ".SS" and line.startswith(".SH ")):
            current = plain(line.split(" ", 1)[1]).strip('"')
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return {name: plain("\n".join(body)) for name, body in found.items()}


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return cli.build_parser()


@pytest.fixture(scope="module")
def page(parser) -> str:
    return manpage.render(parser)


def test_build_parser_has_one_subparser_per_command(parser):
    commands = subcommands(parser)
    assert list(commands) == list(cli.COMMANDS)
    for name, sub in commands.items():
        assert sub.description == cli.COMMANDS[name].description
    # The install parser keeps -h for the hypervisor, as the real command line does.
    install = {o: a.dest for a in commands["install"]._actions for o in a.option_strings}
    assert install["-h"] == "hypervisor" and install["--help"] == "help"


def test_page_has_every_section(page):
    assert page.startswith('.TH "CLOUDSTACK-SYSVM-SEED" "8" ')
    assert list(sections(page, ".SH")) == [
        "NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "GLOBAL OPTIONS", "EXIT STATUS",
        "FILES", "ENVIRONMENT", "SEE ALSO"]
    assert sections(page, ".SH")["NAME"].strip() == (
        "cloudstack-sysvm-seed - register and seed Apache CloudStack SystemVM templates")


def test_every_command_and_every_option_is_documented(parser, page):
    under = sections(page, ".SS")
    # The global options a command repeats (they may follow it) are under GLOBAL OPTIONS.
    global_options = {option for a in parser._actions for option in a.option_strings}
    for name, sub in subcommands(parser).items():
        assert name in under, f"command {name} has no section"
        synopsis = " ".join(sections(page, ".SH")["SYNOPSIS"].split())
        assert f"cloudstack-sysvm-seed [GLOBAL OPTIONS] {name} [OPTIONS]" in synopsis
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if set(action.option_strings) <= global_options and action.default is argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                assert re.search(rf"(?m)^(.*, )?{re.escape(option)}\b", under[name]), (name, option)
            if action.help:
                assert " ".join(action.help.split()[:4]) in " ".join(under[name].split())
    global_text = sections(page, ".SH")["GLOBAL OPTIONS"]
    for action in parser._actions:
        for option in action.option_strings:
            assert re.search(rf"(?m)^(.*, )?{re.escape(option)}\b", global_text), option


def test_exit_status_environment_files(page):
    text = sections(page, ".SH")
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    for code in codes:
        assert re.search(rf"(?m)^\b{code}\b", text["EXIT STATUS"]) or (
            f"; {code} " in text["EXIT STATUS"]), code
    for variable in ("CLOUDSTACK_SYSVM_SEED_MOUNT_COMMAND", "CLOUDSTACK_SYSVM_SEED_UMOUNT_COMMAND",
                     "CLOUD_SECRET_KEY"):
        assert re.search(rf"(?m)^{variable}$", text["ENVIRONMENT"]), variable
    for path in ("/etc/cloudstack/management/db.properties", "/etc/cloudstack/management/key",
                 "/var/lib/cloudstack-sysvm-seed/pending"):
        assert re.search(rf"(?m)^{re.escape(path)}$", text["FILES"]), path


def test_global_options_repeated_in_each_command_are_listed_once():
    """main's restructured parser may give every command the global options too."""
    parser = argparse.ArgumentParser(prog="cloudstack-sysvm-seed", description="d")
    parser.add_argument("--debug", action="store_true", help="log commands")
    commands = parser.add_subparsers(dest="command")
    sub = commands.add_parser("seed", description="Seed.")
    sub.add_argument("--debug", action="store_true", help="log commands")
    sub.add_argument("--zone", metavar="Z", help="only this zone")
    page = manpage.render(parser)
    assert sections(page, ".SS")["seed"].count("--debug") == 0
    assert "--zone Z" in sections(page, ".SS")["seed"]
    assert "--debug" in sections(page, ".SH")["GLOBAL OPTIONS"]


def test_groff_and_man_render_it_without_a_warning(page, tmp_path):
    source = tmp_path / "cloudstack-sysvm-seed.8"
    source.write_text(page)
    groff = need("groff", "groff-base")
    done = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", source],
                          capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    # As lintian's manpages check runs it.
    man = need("man", "man-db")
    env = dict(os.environ, LC_ALL="C.UTF-8", MANROFFSEQ="", MANWIDTH="80")
    done = subprocess.run([man, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", source],
                          capture_output=True, text=True, check=False, env=env)
    assert (done.returncode, done.stderr) == (0, "")
    rendered = subprocess.run([man, "-l", source], capture_output=True, text=True, check=True,
                              env=dict(env, MANPAGER="cat", PAGER="cat")).stdout
    assert "cloudstack-sysvm-seed install -m MOUNTPOINT (-f FILE | -u URL)" in " ".join(
        re.sub(r".\x08", "", rendered).split())


def test_modules_print_them():
    for module, start in (("manpage", '.TH "CLOUDSTACK-SYSVM-SEED"'),
                          ("completion", "# bash completion for cloudstack-sysvm-seed(8)")):
        done = subprocess.run([sys.executable, "-m", f"cloudstack_sysvm_seed.{module}"],
                              capture_output=True, text=True, check=True)
        assert done.stdout.startswith(start)


# -- bash completion ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def script(parser, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "cloudstack-sysvm-seed"
    path.write_text(completion.render(parser))
    return path


def complete(script: Path, *words: str, cwd: Path = None) -> List[str]:
    """COMPREPLY after TAB on the line `words` (the last one being completed), in real bash."""
    need("bash", "bash")
    program = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
               'complete -p cloudstack-sysvm-seed >/dev/null || exit 3; '
               '_cloudstack_sysvm_seed; printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program, "bash", str(script),
                           "cloudstack-sysvm-seed", *words], capture_output=True, text=True,
                          check=False, cwd=cwd)
    assert (done.returncode, done.stderr) == (0, "")
    return [line for line in done.stdout.splitlines() if line]


def test_completion_script_is_valid_bash(script):
    done = subprocess.run(["bash", "-n", script], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")


def test_completes_command_names(script):
    assert complete(script, "on") == ["on-store-added"]
    assert complete(script, "") == list(cli.COMMANDS)
    # A global option's value is not taken for the command.
    assert complete(script, "--templates-dir", "/x", "re") == ["repair"]


def test_completes_each_commands_options_and_the_global_ones(script, parser):
    assert complete(script, "on-store-added", "--str") == ["--strict"]
    assert complete(script, "install", "") == []  # no positional arguments after a command
    assert complete(script, "repair", "--un") == ["--undo"]
    assert complete(script, "doctor", "--db") == ["--db-properties"]
    for name, sub in subcommands(parser).items():
        offered = set(complete(script, name, "-"))
        for action in sub._actions:
            assert set(action.option_strings) <= offered, (name, action.option_strings)


def test_completes_option_values(script, tmp_path):
    (tmp_path / "store-a").mkdir()
    (tmp_path / "backup-1.json").write_text("{}")
    assert complete(script, "repair", "--undo", "back", cwd=tmp_path) == ["backup-1.json"]
    assert complete(script, "install", "-m", "st", cwd=tmp_path) == ["store-a"]
    assert complete(script, "install", "-m", "b", cwd=tmp_path) == []  # directories only
    assert complete(script, "install", "-h", "") == []  # -h is the hypervisor there
    assert complete(script, "--mount-command", "bas") and all(
        word.startswith("bas") for word in complete(script, "--mount-command", "bas"))
