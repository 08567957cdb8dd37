"""The demo: a throwaway MariaDB with a CloudStack-like `cloud` database (three zones, five
image stores backed by local directories), tiny real images and a metadata.ini; then the tool
runs twice: the first run registers and seeds, the second finds nothing to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from testbed import BIND_MOUNT, cloud, images, mounts
from testbed.mariadb import MariaDB

TOOL = str(Path(sys.executable).with_name("cloudstack-sysvm-seed"))


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 86 - len(text)), flush=True)


def build_cloud(db: cloud.CloudDB, nfs_root: Path) -> None:
    """east: two NFS stores; west: NFS + read-only NFS, KVM and LXC; objects: S3 only."""
    b = db.builder

    def nfs(zone, host, path, **kw):
        (nfs_root / host / path.strip("/")).mkdir(parents=True)
        b.store(zone, f"nfs://{host}{path}", **kw)

    east, west, objects = b.zone("Zone-East"), b.zone("Zone-West"), b.zone("Zone-Objects")
    for zone in (east, west, objects):
        b.cluster(zone, "KVM")
    b.cluster(west, "LXC")
    nfs(east, "10.1.0.5", "/export/secondary", name="east-nfs-1")
    nfs(east, "10.1.0.6", "/export/secondary", name="east-nfs-2")
    nfs(west, "10.2.0.5", "/export/secondary", name="west-nfs-1")
    nfs(west, "10.2.0.6", "/export/archive", name="west-readonly", readonly=True)
    b.store(objects, "http://s3.example.org/cloudstack", name="objects-s3", protocol="http",
            provider="S3")



def show(db: cloud.CloudDB, nfs_root: Path) -> None:
    banner("What CloudStack will read")
    for row in db.query("SELECT id, name, unique_name, state, cross_zones, size, checksum "
                        "FROM vm_template WHERE type = 'SYSTEM' AND id >= 200"):
        print("vm_template       ", row)
    for row in db.query("SELECT store_id, template_id, state, download_state, size, "
                        "physical_size, install_path FROM template_store_ref ORDER BY id"):
        print("template_store_ref", row)
    store = nfs_root / "10.1.0.5" / "export" / "secondary"
    for properties in sorted(store.rglob("template.properties")):
        print(f"\n{properties.relative_to(nfs_root)}:")
        print(properties.read_text().rstrip())


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="sysvm-seed-demo-"))
    nfs_root = work / "nfs"
    try:
        with MariaDB(work / "mariadb") as server:
            banner("A CloudStack-like database with three zones and five image stores")
            db = cloud.create_cloud(server, "4.20", "cloud", work / "db.properties")
            build_cloud(db, nfs_root)
            meta = images.build_kvm_bundle(work / "templates", "4.20.2.0", 256 << 20)
            print(f"templates dir: {meta.path.parent}")
            print(meta.path.read_text().strip())
            args = ["--db-properties", str(db.db_properties),
                    "--templates-dir", str(meta.path.parent),
                    "--mount-command", f"{BIND_MOUNT} --root {nfs_root}"]
            banner("First run: register and seed every NFS store")
            first = subprocess.run([TOOL, *args], check=False).returncode
            print(f"(exit code {first})")
            banner("Second run: nothing to do")
            second = subprocess.run([TOOL, *args], check=False).returncode
            print(f"(exit code {second})")
            banner("doctor: the read-only consistency check")
            healthy = subprocess.run([TOOL, "doctor", *args], check=False).returncode
            print(f"(exit code {healthy})")
            show(db, nfs_root)
            db.close()
        return 0 if first == second == healthy == 0 else 1
    finally:
        # Remove the work tree only when nothing of it is mounted any more.
        if any(p.startswith(str(work)) for p in mounts.mountinfo_points()):
            print(f"Leaving {work}: something under it is still mounted", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("The demo bind-mounts local directories as stores: run it as root.")
    sys.exit(main())
