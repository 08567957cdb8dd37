import os
import subprocess

import pytest

from cloudstack_sysvm_seed import layout, properties, stores
from cloudstack_sysvm_seed.model import StoreCopy


@pytest.mark.parametrize("url, export, port", [
    ("nfs://10.0.0.5/export/secondary", "10.0.0.5:/export/secondary", None),
    ("nfs://nfs.example.org:2049/exports/sec/", "nfs.example.org:/exports/sec", 2049),
    ("NFS://[fd00::5]/data", "[fd00::5]:/data", None),
])
def test_parse_url(url, export, port):
    nfs = layout.parse_url(url)
    assert nfs.export == export and nfs.port == port


@pytest.mark.parametrize("url, words", [
    ("s3://bucket/x", "not an nfs:// URL"),
    ("nfs:///export", "names no host"),
    ("nfs://host", "names no export path"),
    ("nfs://host:99999/x", "invalid port"),
    ("/export/secondary", "not an nfs:// URL"),
])
def test_bad_urls(url, words):
    with pytest.raises(ValueError, match=words):
        layout.parse_url(url)


def test_mountinfo_escapes():
    line = r"42 27 254:0 /a /tmp/with\040space rw - ext4 /dev/vda rw"
    assert stores._mountinfo_target(line) == "/tmp/with space"


def test_is_mounted_sees_real_mount_points(tmp_path):
    assert stores.is_mounted("/proc")
    assert not stores.is_mounted(str(tmp_path))


def write_copy(root, template_id, name="u.qcow2", data=b"x" * 100, recorded=None):
    directory = layout.template_dir(str(root), template_id)
    os.makedirs(directory)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)
    props = properties.TemplateProperties(template_id, "qcow2", name, recorded or len(data),
                                          4096, "kvm")
    with open(os.path.join(directory, "template.properties"), "w") as f:
        f.write(props.render())
    return directory


def test_probe_states(tmp_path):
    assert stores.probe(str(tmp_path), 5, "qcow2").state == "absent"
    write_copy(tmp_path, 6)
    seeded = stores.probe(str(tmp_path), 6, "qcow2")
    assert seeded == StoreCopy("seeded", "", "u.qcow2", 100, 4096)
    write_copy(tmp_path, 7, recorded=999)
    short = stores.probe(str(tmp_path), 7, "qcow2")
    assert short.state == "incomplete" and "100 bytes, template.properties says 999" in short.reason
    os.makedirs(layout.template_dir(str(tmp_path), 8))
    assert stores.probe(str(tmp_path), 8, "qcow2").reason == "no template.properties"
    directory = write_copy(tmp_path, 9)
    os.remove(os.path.join(directory, "u.qcow2"))
    assert "missing" in stores.probe(str(tmp_path), 9, "qcow2").reason


def test_install_path_is_upstreams():
    assert layout.install_path(203, "a.qcow2") == "/template/tmpl/1/203/a.qcow2"


def test_stage_publishes_by_rename_and_sets_incomplete_copies_aside(tmp_path):
    root = str(tmp_path)
    old = layout.template_dir(root, 12)
    os.makedirs(old)
    with open(os.path.join(old, "partial.qcow2"), "wb") as f:
        f.write(b"half")
    stage = stores.Stage(root)
    with stage.open_image("n.qcow2") as f:
        f.write(b"image")
    stage.write_properties(properties.TemplateProperties(12, "qcow2", "n.qcow2", 5, 5, "kvm"))
    assert stage.publish(12) == old
    assert sorted(os.listdir(old)) == ["n.qcow2", "template.properties"]
    assert not os.path.exists(stage.path)
    aside = os.path.join(root, layout.WORK_DIR, "aside")
    (kept,) = os.listdir(aside)
    assert kept.startswith("12-")
    assert open(os.path.join(aside, kept, "partial.qcow2"), "rb").read() == b"half"
    stage.unpublish()
    assert not os.path.exists(old)


def test_stage_discard_leaves_nothing(tmp_path):
    stage = stores.Stage(str(tmp_path))
    with stage.open_image("n.qcow2") as f:
        f.write(b"image")
    stage.discard()
    assert os.listdir(str(tmp_path)) == []


def test_reap_leftovers_removes_only_what_dead_runs_left(tmp_path, caplog):
    dead = _dead_pid()
    (tmp_path / f"sysvm-seed-{dead}-store1-abc").mkdir()  # killed before or after mounting
    (tmp_path / f"sysvm-seed-{dead}-store2-def").mkdir()
    (tmp_path / f"sysvm-seed-{dead}-store2-def" / "not-ours").write_text("x")
    (tmp_path / f"sysvm-seed-{os.getpid()}-store3-ghi").mkdir()  # a live run's
    (tmp_path / "sysvm-seed-unrelated").mkdir()
    assert stores.reap_leftovers(str(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == sorted([
        f"sysvm-seed-{dead}-store2-def", f"sysvm-seed-{os.getpid()}-store3-ghi",
        "sysvm-seed-unrelated"])
    assert f"Cannot remove {tmp_path}/sysvm-seed-{dead}-store2-def" in caplog.text


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid
