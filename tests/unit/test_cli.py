"""The CLI in-process: argument handling and the exit code of each failure before the run."""

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from cloudstack_sysvm_seed import cli, errors

REPO = Path(__file__).resolve().parents[2]


def test_seed_is_the_default_command_and_globals_go_anywhere():
    args = cli.parse_args(["--db-properties", "/a", "--zone", "z1", "--zone", "2", "--json"])
    assert (args.command, args.db_properties, args.zone, args.json) == (
        "seed", "/a", ["z1", "2"], True)
    args = cli.parse_args(["--templates-dir", "/t", "seed", "--db-properties", "/b",
                           "--dry-run"])
    assert (args.templates_dir, args.db_properties, args.dry_run) == ("/t", "/b", True)


def test_help_lists_exit_codes(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "CMD [-o OPTIONS] HOST:/PATH MOUNTPOINT" in out


def test_bad_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--frobnicate"])
    assert info.value.code == 2


@pytest.fixture
def templates(tmp_path):
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "metadata.ini").write_text("[default]\nversion = 4.20.0.0\n")
    return directory


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_props(path, port, password="hunter2"):
    path.write_text(f"db.cloud.host=127.0.0.1\ndb.cloud.port={port}\ndb.cloud.username=cloud\n"
                    f"db.cloud.password={password}\ndb.cloud.name=cloud\n")


def test_malformed_metadata_exits_3_naming_the_file(tmp_path, templates, capsys):
    (templates / "metadata.ini").write_text("[kvm]\ntemplatename = x\n")
    code = cli.main(["--templates-dir", str(templates), "--db-properties", str(tmp_path / "x")])
    assert code == errors.EXIT_METADATA
    err = capsys.readouterr().err
    assert f"{templates}/metadata.ini has 3 problem(s)" in err
    assert "[kvm] checksum: missing" in err


def test_missing_db_properties_exits_2(tmp_path, templates, capsys):
    code = cli.main(["--templates-dir", str(templates),
                     "--db-properties", str(tmp_path / "db.properties")])
    assert code == errors.EXIT_USAGE
    assert "Cannot read" in capsys.readouterr().err


def test_unreachable_database_exits_4_without_the_password(tmp_path, templates, capsys):
    props = tmp_path / "db.properties"
    write_props(props, closed_port())
    log = tmp_path / "seed.log"
    code = cli.main(["--templates-dir", str(templates), "--db-properties", str(props),
                     "--log-file", str(log), "--debug"])
    assert code == errors.EXIT_DATABASE
    err = capsys.readouterr().err
    assert "Cannot connect to the cloud database cloud@127.0.0.1:" in err
    assert "hunter2" not in err and "hunter2" not in log.read_text()


@pytest.fixture(scope="module")
def readable_copy():
    """The package where `nobody` can read it, for Debian's python3 (which has its
    dependencies: scripts/setup installs them): a checkout under /root is not readable."""
    directory = Path(tempfile.mkdtemp(prefix="sysvm-seed-nobody-"))
    try:
        directory.chmod(0o755)
        shutil.copytree(REPO / "cloudstack_sysvm_seed", directory / "cloudstack_sysvm_seed",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for path in directory.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize("command", ["seed", "check", "doctor", "repair", "on-store-added",
                                     "watch", "prune"])
def test_without_root_a_command_that_mounts_stops_before_anything(tmp_path, command,
                                                                   readable_copy):
    """As `nobody`, for real: one message and exit 2, before db.properties or metadata.ini
    (which `nobody` cannot even read here) and before any mount."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root, to become nobody", pytrace=False)
    extra = ["--store-id", "1"] if command == "on-store-added" else []
    done = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "/usr/bin/python3", "-m", "cloudstack_sysvm_seed", command, *extra,
         "--db-properties", str(tmp_path / "db.properties"),
         "--templates-dir", str(tmp_path), "--mount-command", str(tmp_path / "never")],
        capture_output=True, text=True, timeout=60, cwd=readable_copy,
        env=dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(readable_copy)))
    assert done.returncode == errors.EXIT_USAGE, done.stderr
    uid = pwd.getpwnam("nobody").pw_uid
    assert done.stderr.splitlines() == [
        f"cloudstack-sysvm-seed: ERROR: `{command}` mounts the NFS secondary stores, which "
        f"needs root; this is uid {uid} (nobody). Nothing was mounted or changed.",
        f"cloudstack-sysvm-seed: ERROR: Run it as root, e.g. sudo cloudstack-sysvm-seed "
        f"{command} ...",
    ]


def messages(text, prefix):
    """The messages of the lines that start with `prefix` (up to the message)."""
    return [line.split(prefix, 1)[1] for line in text.splitlines() if prefix in line]


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_an_early_failure_is_logged_at_error_in_the_same_words_everywhere(
        tmp_path, templates, capsys, as_json):
    props = tmp_path / "db.properties"
    write_props(props, closed_port())
    log = tmp_path / "seed.log"
    log.write_text("2024-01-01 00:00:00,000 1 INFO cloudstack_sysvm_seed: Done: earlier run\n")
    code = cli.main(["--templates-dir", str(templates), "--db-properties", str(props),
                     "--log-file", str(log)] + (["--json"] if as_json else []))
    assert code == errors.EXIT_DATABASE
    captured = capsys.readouterr()
    on_stderr = messages(captured.err, "cloudstack-sysvm-seed: ERROR: ")
    in_log = messages(log.read_text(), " ERROR cloudstack_sysvm_seed.cli: ")
    assert on_stderr == in_log and len(in_log) == 2
    assert in_log[0].startswith("Cannot connect to the cloud database cloud@127.0.0.1:")
    assert in_log[1] == "Check db.properties (--db-properties) and that MySQL/MariaDB is running."
    if as_json:
        assert json.loads(captured.out) == {"error": in_log[0], "exit_code": 4,
                                            "hint": in_log[1]}
    else:
        assert captured.out == ""


def test_a_usage_error_with_json_is_a_json_object_too(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--json", "docter"])
    assert info.value.code == errors.EXIT_USAGE
    captured = capsys.readouterr()
    reply = json.loads(captured.out)
    assert reply["exit_code"] == 2 and "did you mean 'doctor'?" in reply["error"]
    assert "did you mean 'doctor'?" in captured.err


# --- the command line, as git, apt and systemctl users expect it ------------------------------


def help_of(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command_on_one_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    lines = help_of(capsys).splitlines()
    for name, command in cli.COMMANDS.items():
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        assert line.split(None, 1)[1] == command.summary
    assert max(len(line) for line in lines) <= 80


GLOBALS = [("--db-properties", "/x/db.properties"), ("--key-file", "/x/key"),
           ("--templates-dir", "/x/t"), ("--mount-command", "bind-mount --root /s"),
           ("--umount-command", "umount -f"), ("--log-file", "/x/log"), ("--json", True),
           ("--debug", True)]


@pytest.mark.parametrize("command", list(cli.COMMANDS))
@pytest.mark.parametrize("option, value", GLOBALS, ids=[o for o, _ in GLOBALS])
def test_global_options_work_before_and_after_the_command(command, option, value):
    given = [option] if value is True else [option, str(value)]
    required = {"on-store-added": ["--store-id", "1"],
                "install": ["-m", "/mnt", "-f", "x", "-h", "kvm"]}.get(command, [])
    dest = option.lstrip("-").replace("-", "_")
    before = cli.parse_args([*given, command, *required])
    after = cli.parse_args([command, *required, *given])
    assert before.command == after.command == command
    assert getattr(before, dest) == getattr(after, dest) == value


def test_an_unknown_command_is_named_with_the_nearest_one(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["docter"])
    assert info.value.code == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert "error: unknown command 'docter'; did you mean 'doctor'?" in err
    assert "unrecognized arguments" not in err


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_shows_its_own_options_and_exit_codes(capsys, name):
    command = cli.COMMANDS[name]
    text = help_of(capsys, name)
    assert text.startswith(f"usage: cloudstack-sysvm-seed {name} ")
    table = text.split("\nexit codes:\n", 1)[1].splitlines()
    codes = [int(line.split()[0]) for line in table if line[2:3].isdigit()]
    assert codes == list(command.exit_codes)
    joined = text.replace("\n       ", " ")  # a long meaning wraps under itself
    for code, meaning in command.exit_codes.items():
        assert f"  {code:<3}  {meaning}" in joined
    own = {"seed": "--dry-run", "on-store-added": "--strict", "check": "--allow-downgrade",
           "install": "--mountpoint", "doctor": "--jobs", "repair": "--undo",
           "watch": "--interval", "prune": "--keep"}
    assert own[name] in text
    assert ("--dry-run" in text) == (name in ("seed", "repair", "prune"))


def test_doctor_has_no_metadata_or_lock_exit_codes(capsys):
    text = help_of(capsys, "doctor")
    assert "metadata.ini" not in text.split("\nexit codes:\n", 1)[1]
    assert "holds the lock" not in text
