"""Shared fixtures: the throwaway MariaDB, era-shaped `cloud` databases, fake NFS exports.

Fixture API (see tests/testbed for the pieces):
  mariadb_server      session-wide testbed.mariadb.MariaDB on 127.0.0.1:<random port>
  make_cloud(era)     factory -> testbed.cloud.CloudDB (fresh uniquely named database)
  cloud_db            one CloudDB; era "4.20" unless parametrized indirectly:
                        @pytest.mark.parametrize("cloud_db", ["4.11", "4.15"], indirect=True)
  stores_root         tmpfs playing every NFS server (exports are stores_root/HOST/PATH)
  make_export(h, p)   creates stores_root/h/p and returns it
  mount_command       "<tests>/testbed/bind-mount --root <stores_root>" for the tool

Tests using the DB fixtures get the `db` marker and tests using the mount fixtures the
`mounts` marker automatically. Mount tests need root and FAIL (never skip) without it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from testbed import mounts
from testbed.cloud import CloudDB, create_cloud
from testbed.mariadb import MariaDB

_DB_FIXTURES = {"mariadb_server", "make_cloud", "cloud_db"}
_MOUNT_FIXTURES = {"stores_root", "make_export", "mount_command"}


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    # So `-m db` / `-m "not mounts"` select by what a test really needs.
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & _DB_FIXTURES:
            item.add_marker(pytest.mark.db)
        if used & _MOUNT_FIXTURES:
            item.add_marker(pytest.mark.mounts)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(
            f"{what} needs root: bind mounts and the tmpfs server tree need CAP_SYS_ADMIN. "
            "Run the suite as root (CI does), e.g. `sudo scripts/test`.",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _mount_tests_need_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("mounts"):
        require_root(f"{request.node.nodeid} (marked `mounts`)")


# -- network ----------------------------------------------------------------------------------

_real_connect = socket.socket.connect


def _loopback_only(sock, address):
    """Tests talk to servers they start on this machine, never to anything else."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise OSError(f"test tried to connect to {host}: only loopback is allowed")
    return _real_connect(sock, address)


@pytest.fixture(autouse=True)
def _no_traffic_beyond_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)


# -- database ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    server = MariaDB(tmp_path_factory.mktemp("mariadb"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_cloud(mariadb_server: MariaDB, tmp_path: Path) -> Iterator[Callable[..., CloudDB]]:
    made: List[CloudDB] = []

    def factory(era: str = "4.20") -> CloudDB:
        name = f"cloud_{re.sub(r'[^0-9A-Za-z]', '', era)}_{uuid.uuid4().hex[:10]}"
        db = create_cloud(mariadb_server, era, name, tmp_path / f"{name}.db.properties")
        made.append(db)
        return db

    yield factory
    for db in made:
        db.close()
        mariadb_server.drop_database(db.name)


@pytest.fixture
def cloud_db(request: pytest.FixtureRequest, make_cloud: Callable[..., CloudDB]) -> CloudDB:
    return make_cloud(getattr(request, "param", "4.20"))


# -- fake NFS ---------------------------------------------------------------------------------


@pytest.fixture
def stores_root(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs standing in for every NFS server; mounts of it must be gone at teardown."""
    require_root("stores_root")
    root = mounts.mount_tmpfs(tmp_path / "nfs-server")
    yield root
    # Anything still showing this tmpfs besides its own mount point was left by the test
    # or by the tool under test: unmount it, then say so.
    leaked = sorted(set(mounts.points_of_device(root)) - {str(root)}, key=len, reverse=True)
    for point in leaked:
        mounts.umount(point)
    mounts.umount(root)
    if leaked:
        pytest.fail(f"mounts of the fake NFS server were left behind: {leaked}", pytrace=False)


@pytest.fixture
def make_export(stores_root: Path) -> Callable[[str, str], Path]:
    def make(host: str, path: str) -> Path:
        export = stores_root / host / path.strip("/")
        export.mkdir(parents=True, exist_ok=True)
        return export

    return make


@pytest.fixture
def mount_command(stores_root: Path) -> str:
    return mounts.mount_command(stores_root)
