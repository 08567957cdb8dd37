"""The hook alone, in a throwaway root whose `cloudstack-sysvm-seed` is a stub that records
its arguments and exits as told: whatever the seeder does, the hook exits 0."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

import pytest
from pkgtools import DIST_PACKAGES, HOOK, LOG, PACKAGING, PENDING, TEMPLATES_DIR, base_env, run

# Writes one argument a line, then PYTHONPATH, to $STUB_OUT and exits $STUB_EXIT.
STUB = """#!/bin/sh
printf '%s\\n' "$@" > "$STUB_OUT"
printf 'PYTHONPATH=%s\\n' "${PYTHONPATH:-}" >> "$STUB_OUT"
exit "${STUB_EXIT:-0}"
"""


class HookRoot:
    def __init__(self, path: Path):
        self.path = path
        self.calls = path.parent / "stub-calls"
        hook = path / HOOK
        hook.parent.mkdir(parents=True)
        shutil.copy(PACKAGING / "cloudstack-sysvm-seed-hook", hook)
        seeder = path / "usr/bin/cloudstack-sysvm-seed"
        seeder.parent.mkdir(parents=True)
        seeder.write_text(STUB)
        seeder.chmod(0o755)
        (path / TEMPLATES_DIR).mkdir(parents=True)
        (path / TEMPLATES_DIR / "metadata.ini").write_text("[default]\nversion = 4.20.0.0\n")

    def run(self, *args: str, code: int = 0, **env: str):
        self.calls.unlink(missing_ok=True)
        return run([self.path / HOOK, *args], cwd=self.path.parent, env=base_env(
            DPKG_ROOT=str(self.path), STUB_OUT=str(self.calls), STUB_EXIT=str(code), **env))

    def seeder_argv(self) -> List[str]:
        lines = self.calls.read_text().splitlines()
        return lines[:-1]

    def pending(self) -> Path:
        return self.path / PENDING


@pytest.fixture
def root(tmp_path: Path) -> HookRoot:
    return HookRoot(tmp_path / "root")


def test_success_runs_the_seeder_on_root_paths_and_clears_pending(root):
    root.pending().parent.mkdir(parents=True)
    root.pending().write_text("exit=4\n")
    done = root.run()
    assert done.returncode == 0
    r = str(root.path)
    assert root.seeder_argv() == [
        "seed", "--log-file", f"{r}/{LOG}",
        "--db-properties", f"{r}/etc/cloudstack/management/db.properties",
        "--key-file", f"{r}/etc/cloudstack/management/key",
        "--templates-dir", f"{r}/{TEMPLATES_DIR}",
        "--cache-dir", f"{r}/var/cache/cloudstack-sysvm-seed",
    ]
    # Un-chrooted, the host's python must import the package from the root.
    assert root.calls.read_text().splitlines()[-1].startswith(f"PYTHONPATH={r}/{DIST_PACKAGES}")
    assert (root.path / LOG).parent.is_dir()
    assert not root.pending().exists()


def test_failure_exits_0_records_pending_and_says_what_to_do(root):
    done = root.run(code=4)
    assert done.returncode == 0
    assert root.pending().read_text().startswith("exit=4\ntime=20")
    assert "SystemVM template seeding did not finish (exit 4)" in done.stderr
    assert f"see {root.path}/{LOG}" in done.stderr
    assert "retried when cloudstack-management starts, or run: cloudstack-sysvm-seed" in done.stderr


def test_extra_arguments_are_split_like_a_shell_and_never_evaluated(root):
    args = "--mount-command '/opt/bind mount --root /s' --debug $(touch PWNED) `touch PWNED` *"
    done = root.run(CLOUDSTACK_SYSVM_SEED_HOOK_ARGS=args)
    assert done.returncode == 0
    assert root.seeder_argv()[-8:] == [
        "--mount-command", "/opt/bind mount --root /s", "--debug", "$(touch", "PWNED)",
        "`touch", "PWNED`", "*"]
    assert not (root.path.parent / "PWNED").exists()


def test_unparsable_extra_arguments_count_as_a_failure(root):
    done = root.run(CLOUDSTACK_SYSVM_SEED_HOOK_ARGS="--mount-command 'unbalanced")
    assert done.returncode == 0
    assert not root.calls.exists()
    assert root.pending().read_text().startswith("exit=2\n")


def test_missing_seeder_counts_as_a_failure(root):
    (root.path / "usr/bin/cloudstack-sysvm-seed").unlink()
    done = root.run()
    assert done.returncode == 0
    assert root.pending().read_text().startswith("exit=127\n")


def test_no_templates_means_nothing_to_do(root):
    (root.path / TEMPLATES_DIR / "metadata.ini").unlink()
    root.pending().parent.mkdir(parents=True)
    root.pending().write_text("exit=4\n")
    done = root.run(code=4)
    assert done.returncode == 0
    assert not root.calls.exists()
    assert not root.pending().exists()
    assert "nothing to seed" in done.stderr


def test_defer_only_records_pending(root):
    done = root.run("--defer")
    assert done.returncode == 0
    assert not root.calls.exists()
    assert root.pending().read_text().startswith("exit=deferred\n")


def test_a_failure_is_explained_in_the_log_with_what_to_run_next(root):
    log = root.path / LOG
    log.parent.mkdir(parents=True)
    log.write_text("2024-01-01 00:00:00,000 1 INFO cloudstack_sysvm_seed: Done: earlier run\n")
    root.run(code=4)
    (line,) = log.read_text().splitlines()[1:]
    assert " hook: ERROR SystemVM template seeding did not finish (exit 4): the cloud " \
           "database is unreachable, or its schema does not fit (the errors above say " \
           "why);" in line
    assert line.endswith("it will be retried when cloudstack-management starts, or run: "
                         "cloudstack-sysvm-seed check (what is wrong now), then "
                         "cloudstack-sysvm-seed seed")


def test_a_seeder_that_cannot_run_is_named_in_the_log(root):
    (root.path / "usr/bin/cloudstack-sysvm-seed").unlink()
    root.run()
    text = (root.path / LOG).read_text()
    assert "(exit 127): the seeder could not be run (" in text
    assert f"{root.path}/usr/bin/cloudstack-sysvm-seed could not be run);" in text
