"""A throwaway MariaDB server in a private directory, bound to 127.0.0.1 on a free port.

Recipe measured in /work/shared/reference/test-infrastructure.md section 2: install-db takes
about 0.7 s, the small-footprint server is ready about 0.1 s later and stops in under 0.1 s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, List, Optional

import pymysql

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
# Linux limits a unix socket path to 108 bytes including the NUL.
_MAX_SOCKET_PATH = 100
_DB_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")

# The same options go to install-db and the server: InnoDB refuses to start when the
# system tablespace it finds does not match what it is told.
_SMALL_FOOTPRINT = [
    "--innodb-log-file-size=8M",
    "--innodb-buffer-pool-size=32M",
    "--innodb-data-file-path=ibdata1:12M:autoextend",
    "--innodb-flush-log-at-trx-commit=2",
    "--skip-name-resolve",
    # Debian's my.cnf sets utf8mb4; --no-defaults skips that file, so say it here.
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
]


class MariaDBError(RuntimeError):
    """The throwaway server could not be started, reached or stopped."""


class _PortTaken(MariaDBError):
    """Someone bound our port between free_port() and mariadbd's bind()."""


def find_binary(name: str) -> str:
    """Path of a MariaDB binary; Debian keeps mariadbd in /usr/sbin, often not on PATH."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise MariaDBError(
            f"{name} not found on PATH or in /usr/sbin. "
            "Install it with: apt-get install mariadb-server (scripts/setup does this)."
        )
    return found


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free now, very likely free soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MariaDB:
    """One mariadbd process with its own datadir under `workdir`.

    Root has an empty password. Use as a context manager, or call start() and stop().
    """

    host = "127.0.0.1"
    user = "root"
    password = ""

    def __init__(self, workdir: os.PathLike | str) -> None:
        self.workdir = Path(workdir).resolve()
        self.datadir = self.workdir / "data"
        self.error_log = self.workdir / "error.log"
        self.port: Optional[int] = None
        self.socket = str(self._socket_path())
        self._proc: Optional[subprocess.Popen] = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> MariaDB:
        if self._proc is not None:
            raise MariaDBError("server already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._install_db()
        for attempt in range(3):
            self.port = free_port()
            self._proc = self._spawn()
            try:
                self._wait_ready()
                return self
            except _PortTaken:
                if attempt == 2:
                    raise
        return self

    def stop(self) -> None:
        """SIGTERM the one process we started, SIGKILL it if it outlives STOP_TIMEOUT."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        socket_dir = Path(self.socket).parent
        if socket_dir != self.workdir:  # the short fallback dir from _socket_path
            shutil.rmtree(socket_dir, ignore_errors=True)

    def __enter__(self) -> MariaDB:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    # -- use -----------------------------------------------------------------------------

    def connect(self, database: Optional[str] = None, **kw: Any) -> pymysql.Connection:
        """A TCP connection (autocommit on) as root; keyword arguments go to pymysql."""
        if self.port is None:
            raise MariaDBError("server not started")
        params = dict(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            autocommit=True,
            charset="utf8mb4",
            connect_timeout=5,
        )
        params.update(kw)
        return pymysql.connect(**params)

    def create_database(self, name: str) -> None:
        """(Re)create an empty utf8mb4 database."""
        if not _DB_NAME.match(name):
            raise ValueError(f"unsafe database name {name!r}")
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                cur.execute(
                    f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
                )
        finally:
            conn.close()

    def load_dump(self, name: str, path: os.PathLike | str) -> None:
        """Load a mysqldump file into database `name` with the mariadb client."""
        if not _DB_NAME.match(name):
            raise ValueError(f"unsafe database name {name!r}")
        with open(path, "rb") as dump:
            result = subprocess.run(
                [find_binary("mariadb"), "--no-defaults", f"--socket={self.socket}",
                 f"--user={self.user}", name],
                stdin=dump, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
                check=False)
        if result.returncode != 0:
            tail = result.stdout.decode(errors="replace")[-2000:]
            raise MariaDBError(f"loading {path} into {name} failed:\n{tail}")

    def drop_database(self, name: str) -> None:
        if not _DB_NAME.match(name):
            raise ValueError(f"unsafe database name {name!r}")
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()

    # -- internals -----------------------------------------------------------------------

    def _socket_path(self) -> Path:
        path = self.workdir / "mysqld.sock"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        # A deep pytest tmp dir can exceed the unix socket limit; use a short private dir.
        return Path(tempfile.mkdtemp(prefix="mdb-")) / "mysqld.sock"

    def _user_args(self) -> List[str]:
        # mariadbd refuses to run as root unless told to; as any other user it runs as itself.
        return ["--user=root"] if os.geteuid() == 0 else []

    def _install_db(self) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        argv = [
            find_binary("mariadb-install-db"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *self._user_args(),
            *_SMALL_FOOTPRINT,
        ]
        result = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, check=False
        )
        if result.returncode != 0:
            tail = result.stdout.decode(errors="replace")[-2000:]
            raise MariaDBError(f"mariadb-install-db failed (exit {result.returncode}):\n{tail}")

    def _spawn(self) -> subprocess.Popen:
        argv = [
            find_binary("mariadbd"),
            "--no-defaults",  # must be the first option
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.workdir / 'mariadbd.pid'}",
            f"--log-error={self.error_log}",
            "--skip-log-bin",
            *self._user_args(),
            *_SMALL_FOOTPRINT,
        ]
        # A fresh log per attempt, so _wait_ready judges this attempt's failure only.
        self.error_log.write_bytes(b"")
        Path(self.socket).parent.mkdir(parents=True, exist_ok=True)  # gone after a stop()
        with open(self.workdir / "mariadbd.out", "ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Optional[Exception] = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                tail = self._log_tail()
                kind = _PortTaken if "Address already in use" in tail else MariaDBError
                raise kind(f"mariadbd exited with {code} during start\n{tail}")
            try:
                self.connect(connect_timeout=1).close()
                return
            except pymysql.err.OperationalError as exc:
                last_error = exc
                time.sleep(0.05)
        self.stop()
        raise MariaDBError(
            f"mariadbd not reachable on 127.0.0.1:{self.port} after {START_TIMEOUT:.0f} s "
            f"(last error: {last_error})\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.error_log.read_text(errors="replace").splitlines()
        except OSError:
            return f"({self.error_log} not written)"
        return f"--- tail of {self.error_log} ---\n" + "\n".join(text[-lines:])
