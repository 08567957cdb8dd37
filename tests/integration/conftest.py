"""`world`: a CloudStack-like database, NFS exports and a templates dir, plus the CLI to run."""

from __future__ import annotations

import bz2
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from testbed import images

from cloudstack_sysvm_seed import cli, properties

VIRTUAL_SIZE = 64 * 1024**2
# The metadata.ini form each era's package would ship.
FORM_OF_ERA = {"4.11": "4.16", "4.15": "4.19", "4.20": "4.20", "upstream-4.20.2": "4.20",
               "upstream-4.22.0": "4.20"}


def place_copy(export, template_id, image, virtual, ext, hv_key):
    """A complete copy as the SSVM or our seeding leaves it; returns (install_path, physical)."""
    filename = f"{uuid.uuid4()}.{ext}"
    directory = export / "template" / "tmpl" / "1" / str(template_id)
    directory.mkdir(parents=True)
    shutil.copyfile(image, directory / filename)
    physical = (directory / filename).stat().st_size
    (directory / "template.properties").write_text(properties.TemplateProperties(
        template_id, ext, filename, physical, virtual, hv_key).render())
    return f"template/tmpl/1/{template_id}/{filename}", physical


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """One templates dir per metadata.ini form, built once; tests get copies."""
    made = {}
    for form in ("4.16", "4.19", "4.20"):
        directory = tmp_path_factory.mktemp(f"templates-{form}")
        version = {"4.16": "4.16.0.0", "4.19": "4.19.0.0", "4.20": "4.20.0.0"}[form]
        made[form] = (directory, images.build_kvm_bundle(directory, version, VIRTUAL_SIZE,
                                                         form=form))
    return made


COPY_MIB = 24  # random data: about a second of decompression, long enough to interrupt


@pytest.fixture(scope="session")
def slow_bundle(tmp_path_factory):
    directory = tmp_path_factory.mktemp("slow")
    raw = directory / "disk.raw"
    raw.write_bytes(os.urandom(COPY_MIB << 20))
    qcow2 = directory / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
                   check=True)
    bundle = directory / "disk.qcow2.bz2"
    bundle.write_bytes(bz2.compress(qcow2.read_bytes(), 1))
    return bundle


ALL_FORMATS_SIZE = 48 << 20
CLUSTERS = ("KVM", "LXC", "XenServer", "Hyperv", "VMware", "Ovm3")  # one for each image


@pytest.fixture(scope="session", params=["dynamic-vhd", "fixed-vhd"])
def all_bundle(request, tmp_path_factory):
    """Every hypervisor's image bundled, as upstream packages them (a fixed VHD's size is
    in its footer only, at the very end)."""
    directory = tmp_path_factory.mktemp(request.param)
    meta = images.build_all_bundle(directory, "4.20.0.0", ALL_FORMATS_SIZE,
                                   fixed_vhd=request.param == "fixed-vhd")
    return directory, meta


class World:
    def __init__(self, cloud, templates: Path, meta, make_export, mount_command, capsys,
                 runtime: Path):
        self.cloud = cloud
        self.builder = cloud.builder
        self.templates = templates
        self.meta = meta
        self.make_export = make_export
        self.mount_command = mount_command
        self.capsys = capsys
        self.runtime = runtime

    @property
    def kvm(self):
        return next(s for s in self.meta.sections.values()
                    if s.hypervisor == "kvm" and s.arch == "x86_64")

    @property
    def bundle(self) -> Path:
        return self.templates / self.kvm.filename

    def use_bundle(self, image: Path) -> None:
        """Ship `image` as the KVM file, with metadata.ini's checksum updated to match."""
        data = Path(image).read_bytes()
        self.bundle.write_bytes(data)
        metadata = self.templates / "metadata.ini"
        metadata.write_text(metadata.read_text().replace(
            self.kvm.checksum, hashlib.md5(data).hexdigest()))

    def image_digest(self) -> str:
        """sha256 of the decompressed KVM image, the bytes every store must hold."""
        return hashlib.sha256(bz2.decompress(self.bundle.read_bytes())).hexdigest()

    def nfs_store(self, zone_id, host, path, port=None, **kw):
        export = self.make_export(host, path)
        netloc = f"{host}:{port}" if port else host
        return self.builder.store(zone_id, f"nfs://{netloc}{path}", **kw), export

    def argv(self, *args, mount_command=None) -> list:
        """The CLI's arguments for this world, then `args` (and, for the commands that
        read or write images, a private cache directory)."""
        cache = ([] if args[:1] in (("doctor",), ("prune",))
                 else ["--cache-dir", str(self.runtime.parent / "cache")])
        return [
            "--db-properties", str(self.cloud.db_properties),
            "--templates-dir", str(self.templates),
            "--mount-command", mount_command or self.mount_command,
            *args, *cache,
        ]

    def command(self, *args, mount_command=None) -> list:
        """The CLI as a process of its own (see `env`), for runs to watch, stop or trace."""
        return [sys.executable, "-m", "cloudstack_sysvm_seed",
                *self.argv(*args, mount_command=mount_command)]

    @property
    def env(self) -> dict:
        """The environment for `command`: private mountpoints under `runtime`, as in-process."""
        return dict(os.environ, TMPDIR=str(self.runtime))

    def run(self, *args, mount_command=None) -> Run:
        self.capsys.readouterr()
        code = cli.main(self.argv(*args, mount_command=mount_command), environ=self.env)
        captured = self.capsys.readouterr()
        return Run(code, captured.out, captured.err)

    def rows(self, table, where="1=1", args=()):
        return self.cloud.query(f"SELECT * FROM {table} WHERE {where} ORDER BY id", args)

    def state(self, stores_root: Path):
        """Every row the tool may touch, and every file under the NFS tree with size+mtime."""
        tables = {t: self.rows(t) for t in (
            "vm_template", "template_zone_ref", "template_store_ref")}
        tables["sequence"] = self.cloud.query("SELECT * FROM sequence ORDER BY name")
        files = {}
        for directory, _, names in os.walk(stores_root):
            for name in names:
                path = os.path.join(directory, name)
                info = os.stat(path)
                files[os.path.relpath(path, stores_root)] = (info.st_size, info.st_mtime_ns)
        return tables, files

    def leftover_mountpoints(self):
        return sorted(os.listdir(self.runtime))


@pytest.fixture
def world(request, make_cloud, bundles, make_export, mount_command, capsys, tmp_path):
    era = getattr(request, "param", "4.20")
    form = FORM_OF_ERA[era]
    source, meta = bundles[form]
    templates = tmp_path / "templates"
    shutil.copytree(source, templates)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    return World(make_cloud(era), templates, meta, make_export, mount_command, capsys, runtime)
