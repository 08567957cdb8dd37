import pytest

from cloudstack_sysvm_seed import runner
from cloudstack_sysvm_seed.errors import CommandFailed


def test_output_and_exit_code():
    result = runner.run(["sh", "-c", "echo out; echo err >&2"], timeout=10)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "out\n", "err\n")


def test_failure_carries_exit_code_and_stderr_tail():
    with pytest.raises(CommandFailed) as info:
        runner.run(["sh", "-c", "echo first >&2; echo 'access denied' >&2; exit 32"], timeout=10)
    assert info.value.detail == "exit code 32: first | access denied"


def test_allowed_exit_codes():
    assert runner.run(["false"], timeout=10, ok_codes=(0, 1)).exit_code == 1


def test_timeout():
    with pytest.raises(CommandFailed, match="timed out after 0.3s"):
        runner.run(["sleep", "5"], timeout=0.3)


def test_missing_program_names_the_package():
    with pytest.raises(CommandFailed, match="program not found") as info:
        runner.run(["/nonexistent/qemu-img", "info"], timeout=5)
    assert "qemu-utils" in info.value.hint


def test_secrets_are_masked_in_messages():
    with pytest.raises(CommandFailed) as info:
        runner.run(["sh", "-c", "exit 3", "--password=hunter2"], timeout=5, secrets=["hunter2"])
    assert "hunter2" not in str(info.value) and "****" in str(info.value)


def test_no_shell_interpretation(tmp_path):
    marker = tmp_path / "pwned"
    result = runner.run(["echo", f"; touch {marker}"], timeout=5)
    assert result.stdout.strip() == f"; touch {marker}" and not marker.exists()


def test_a_program_that_cannot_start_is_named(tmp_path):
    script = tmp_path / "mount-helper"
    script.write_text("#!/bin/sh\necho never\n")  # not executable
    with pytest.raises(CommandFailed, match="cannot start: Permission denied") as info:
        runner.run([str(script)], timeout=5)
    assert str(script) in str(info.value)
