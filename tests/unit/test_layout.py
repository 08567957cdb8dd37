"""The template layout on a mounted store, on pyfakefs's `fs`: what a store copy looks like
(probe), our stage, aside and work directories, and what doctor lists.

What tests/unit/test_stores.py and test_properties.py already show on a real tmp_path (the
main probe states, publish with set-aside, unpublish, discard of a lone stage, reaping with
a real /proc/self/mountinfo) is not repeated here.

The fake file system has no /proc: stores.is_mounted() cannot read mountinfo and falls back
to os.path.ismount(), which pyfakefs answers from its own mount points (only "/" here). So
reap_leftovers() sees no mount at all unless a test puts a mountinfo into the fake fs, and
then stores._detach() must be replaced: it calls umount2 through ctypes, which would go
past pyfakefs to the real kernel.
"""

from __future__ import annotations

import os
import re
import socket

import pytest
from pyfakefs.fake_filesystem import reset_ids, set_uid

from cloudstack_sysvm_seed import layout, properties, stores

ROOT = "/mnt/store"
WORK = f"{ROOT}/{layout.WORK_DIR}"
STAGES = f"{WORK}/stage"
ASIDE = f"{WORK}/aside"
TMPL = f"{ROOT}/template/tmpl/1"


def props_text(template_id=7, ext="qcow2", name="a.qcow2", size=10, virtual=20) -> str:
    return properties.TemplateProperties(template_id, ext, name, size, virtual, "kvm").render()


@pytest.fixture
def store(fs):
    fs.create_dir(ROOT)
    return fs


# -- probe: the cases test_stores.py does not show ----------------------------------------


def test_probe_unreadable_properties_is_incomplete_with_the_cause(store):
    # As root on a root-squashed export: the file is there but cannot be read.
    store.create_file(f"{TMPL}/7/a.qcow2", contents=b"x" * 10)
    store.create_file(f"{TMPL}/7/template.properties", contents=props_text(), st_mode=0o100000)
    set_uid(1000)  # pyfakefs lets its root read anything, as the kernel does
    try:
        copy = stores.probe(ROOT, 7, "qcow2")
    finally:
        reset_ids()
    assert copy.state == "incomplete"
    assert copy.reason.startswith("unreadable template.properties: ")
    assert "Permission denied" in copy.reason


def test_probe_properties_not_utf8_is_incomplete(store):
    store.create_file(f"{TMPL}/7/template.properties", contents=b"filename=\xff\xfe.qcow2\n")
    copy = stores.probe(ROOT, 7, "qcow2")
    assert copy.state == "incomplete"
    assert copy.reason.startswith("unreadable template.properties: ") and "utf-8" in copy.reason


def test_probe_properties_that_is_a_directory_is_incomplete(store):
    store.create_dir(f"{TMPL}/7/template.properties")
    copy = stores.probe(ROOT, 7, "qcow2")
    assert copy.state == "incomplete" and copy.reason.startswith("unreadable template.properties")


@pytest.mark.parametrize("text", [
    "size=10\nvirtualsize=20\n",  # no filename at all
    "filename=a.qcow2\nvirtualsize=20\n",  # no size
    "filename=a.qcow2\nsize=ten\n",  # a size that is not a number
    "",  # empty file (a crash between create and write)
])
def test_probe_properties_naming_no_image_or_size_is_incomplete(store, text):
    store.create_file(f"{TMPL}/7/a.qcow2", contents=b"x" * 10)
    store.create_file(f"{TMPL}/7/template.properties", contents=text)
    copy = stores.probe(ROOT, 7, "qcow2")
    assert (copy.state, copy.reason) == (
        "incomplete", "template.properties names no image or size")


def test_probe_looks_for_the_image_only_inside_the_template_directory(store):
    # A name with directories in it is taken by its last part: a file of the recorded size
    # elsewhere on the store does not make the copy seeded.
    store.create_file(f"{ROOT}/elsewhere/a.qcow2", contents=b"x" * 10)
    store.create_file(f"{TMPL}/7/template.properties",
                      contents=props_text(name="../../../../elsewhere/a.qcow2"))
    copy = stores.probe(ROOT, 7, "qcow2")
    assert copy.state == "incomplete"
    assert copy.reason == ("../../../../elsewhere/a.qcow2 named in template.properties "
                           "is missing")


def test_probe_seeded_without_virtualsize_reports_the_physical_size(store):
    store.create_file(f"{TMPL}/7/u.vhd", contents=b"v" * 33)
    store.create_file(f"{TMPL}/7/template.properties",
                      contents="filename=u.vhd\nvhd.filename=u.vhd\nsize=33\n")
    copy = stores.probe(ROOT, 7, "vhd")
    assert (copy.state, copy.reason, copy.filename, copy.physical_size, copy.virtual_size) == (
        "seeded", "", "u.vhd", 33, 33)


def test_probe_prefers_the_extension_keys_over_the_plain_ones(store):
    store.create_file(f"{TMPL}/7/real.ova", contents=b"o" * 5)
    store.create_file(f"{TMPL}/7/template.properties",
                      contents="filename=other.ova\nsize=999\nova.filename=real.ova\nova.size=5\n")
    copy = stores.probe(ROOT, 7, "ova")
    assert (copy.state, copy.filename, copy.physical_size) == ("seeded", "real.ova", 5)


def test_probe_reads_the_extension_virtualsize_when_the_plain_one_is_missing(store):
    store.create_file(f"{TMPL}/7/a.qcow2", contents=b"x" * 10)
    store.create_file(f"{TMPL}/7/template.properties",
                      contents="filename=a.qcow2\nsize=10\nqcow2.virtualsize=4096\n")
    copy = stores.probe(ROOT, 7, "qcow2")
    assert (copy.state, copy.physical_size, copy.virtual_size) == ("seeded", 10, 4096)


# -- template.properties written by a stage, read back by probe ----------------------------


@pytest.mark.parametrize("ext", ["qcow2", "vhd", "ova", "raw"])
def test_properties_round_trip_through_a_published_stage(store, ext):
    name = f"0f0e.{ext}"
    props = properties.TemplateProperties(203, ext, name, 6, 4096, "kvm")
    stage = stores.Stage(ROOT)
    with stage.open_image(name) as stream:
        stream.write(b"abcdef")
    stage.write_properties(props)
    with open(os.path.join(stage.path, properties.FILENAME), encoding="utf-8") as stream:
        assert stream.read() == props.render()
    stage.publish(203)
    with open(f"{TMPL}/203/{properties.FILENAME}", encoding="utf-8") as stream:
        values = properties.parse(stream.read())
    assert properties.image_name(values, ext) == name
    assert properties.physical_size(values, ext) == 6
    assert properties.virtual_size(values, ext) == 4096
    assert values["id"] == "203" and values["uniquename"] == "routing-203"
    copy = stores.probe(ROOT, 203, ext)
    assert (copy.state, copy.filename, copy.physical_size, copy.virtual_size) == (
        "seeded", name, 6, 4096)


# -- Stage -------------------------------------------------------------------------------------


def test_stage_is_a_fresh_hidden_directory_under_the_work_dir(store):
    first, second = stores.Stage(ROOT), stores.Stage(ROOT)
    for stage in (first, second):
        assert os.path.dirname(stage.path) == STAGES
        # Whose it is: this host, this run's pid (so doctor tells a dead run's at once).
        name = os.path.basename(stage.path)
        assert re.fullmatch(rf"{re.escape(layout.host_label(socket.gethostname()))}-"
                            rf"{os.getpid()}-[0-9a-f]{{32}}", name)
        assert layout.stage_owner(name) == (layout.host_label(socket.gethostname()),
                                            os.getpid())
        assert os.path.isdir(stage.path) and os.listdir(stage.path) == []
    assert first.path != second.path
    assert not os.path.exists(f"{ROOT}/template")  # nothing the SSVM scans, yet


def test_stage_files_are_created_exclusively(store):
    stage = stores.Stage(ROOT)
    with stage.open_image("n.qcow2") as stream:
        stream.write(b"image")
    with pytest.raises(FileExistsError):
        stage.open_image("n.qcow2")
    props = properties.TemplateProperties(12, "qcow2", "n.qcow2", 5, 5, "kvm")
    stage.write_properties(props)
    with pytest.raises(FileExistsError):
        stage.write_properties(props)


def test_publish_makes_the_template_tree_and_removes_the_work_dir(store):
    stage = stores.Stage(ROOT)
    with stage.open_image("n.qcow2") as stream:
        stream.write(b"image")
    assert stage.publish(12) == f"{TMPL}/12"
    assert stage.published_to == f"{TMPL}/12"
    assert os.listdir(f"{TMPL}/12") == ["n.qcow2"]
    assert open(f"{TMPL}/12/n.qcow2", "rb").read() == b"image"
    assert not os.path.exists(WORK)  # the stage was the last thing in it


def test_publish_sets_aside_whatever_is_in_the_way_and_keeps_the_aside_dir(store):
    store.create_file(f"{TMPL}/12", contents=b"a file where the directory goes")
    stage = stores.Stage(ROOT)
    stage.publish(12)
    assert os.path.isdir(f"{TMPL}/12")
    (kept,) = os.listdir(ASIDE)
    assert open(f"{ASIDE}/{kept}", "rb").read() == b"a file where the directory goes"
    assert os.listdir(WORK) == ["aside"]  # stage/ is gone, aside/ stays


def test_publish_keeps_the_other_stages(store):
    busy, done = stores.Stage(ROOT), stores.Stage(ROOT)
    done.publish(12)
    assert os.listdir(STAGES) == [os.path.basename(busy.path)]


def test_discard_removes_its_stage_and_prunes_only_empty_work_dirs(store):
    store.create_file(f"{ASIDE}/12-old/x.qcow2")
    one, two = stores.Stage(ROOT), stores.Stage(ROOT)
    with one.open_image("n.qcow2") as stream:
        stream.write(b"partial")
    one.discard()
    assert os.listdir(STAGES) == [os.path.basename(two.path)]
    two.discard()
    assert not os.path.exists(STAGES)
    assert os.listdir(WORK) == ["aside"]  # set-aside copies are not ours to prune
    assert os.path.exists(f"{ASIDE}/12-old/x.qcow2")


def test_discard_twice_is_harmless(store):
    stage = stores.Stage(ROOT)
    stage.discard()
    stage.discard()
    assert os.listdir(ROOT) == []


# -- set_aside ----------------------------------------------------------------------------------


def test_set_aside_moves_the_copy_whole_under_a_unique_name(store):
    store.create_file(f"{TMPL}/9/half.qcow2", contents=b"half")
    first = stores.set_aside(ROOT, f"{TMPL}/9")
    store.create_file(f"{TMPL}/9/again.qcow2", contents=b"again")
    second = stores.set_aside(ROOT, f"{TMPL}/9")
    assert not os.path.exists(f"{TMPL}/9")
    for destination in (first, second):
        assert os.path.dirname(destination) == ASIDE
        assert re.fullmatch(r"9-\d{8}T\d{6}-[0-9a-f]{8}", os.path.basename(destination))
    assert first != second
    assert open(f"{first}/half.qcow2", "rb").read() == b"half"
    assert open(f"{second}/again.qcow2", "rb").read() == b"again"
    assert os.path.isdir(f"{TMPL}")  # only the copy moved, not its parents


# -- what doctor lists: template_ids_on, stages_on ---------------------------------------------


def test_template_ids_on_lists_numeric_directories_in_number_order(store):
    for name in ("10", "9", "200", "abc", "12a"):
        store.create_dir(f"{TMPL}/{name}")
    store.create_file(f"{TMPL}/11")  # a file, not a copy
    assert stores.template_ids_on(ROOT) == [9, 10, 200]


def test_template_ids_on_a_store_without_templates(store):
    assert stores.template_ids_on(ROOT) == []
    store.create_dir(f"{TMPL}")
    assert stores.template_ids_on(ROOT) == []


def test_stages_on_gives_each_stage_its_newest_mtime(store):
    store.create_dir(f"{STAGES}/aaa")
    store.create_file(f"{STAGES}/bbb/deep/x.qcow2")
    store.create_file(f"{STAGES}/bbb/template.properties")
    os.utime(f"{STAGES}/aaa", (1000, 1000))
    os.utime(f"{STAGES}/bbb", (1000, 1000))
    os.utime(f"{STAGES}/bbb/deep", (1000, 1000))
    os.utime(f"{STAGES}/bbb/deep/x.qcow2", (5000, 5000))  # still being written
    os.utime(f"{STAGES}/bbb/template.properties", (3000, 3000))
    assert stores.stages_on(ROOT) == [("aaa", 1000), ("bbb", 5000)]


def test_stages_on_a_store_without_stages(store):
    assert stores.stages_on(ROOT) == []


# -- sweep_stages, remove_stage -------------------------------------------------------------


def test_sweep_stages_removes_every_stage_and_the_empty_work_dir(store):
    store.create_file(f"{STAGES}/aaa/x.qcow2", contents=b"x")
    store.create_dir(f"{STAGES}/bbb")
    store.create_file(f"{TMPL}/7/a.qcow2")
    assert stores.sweep_stages(ROOT) == 2
    assert not os.path.exists(WORK)
    assert os.path.exists(f"{TMPL}/7/a.qcow2")
    assert stores.sweep_stages(ROOT) == 0


def test_sweep_stages_removes_the_probe_files_of_killed_runs_and_nothing_else(store):
    store.create_file(f"{ROOT}/{stores.PROBE_PREFIX}0123abcd", contents=b"probe")
    store.create_file(f"{ROOT}/.cloudstack-sysvm-seed-notes", contents=b"theirs")
    store.create_file(f"{TMPL}/7/a.qcow2")
    assert stores.sweep_stages(ROOT) == 0
    assert sorted(os.listdir(ROOT)) == [".cloudstack-sysvm-seed-notes", "template"]


def test_a_probe_swept_away_by_a_run_holding_the_lock_is_made_again(store, monkeypatch):
    real_stat, swept = os.stat, []

    def stat_after_a_sweep(path, *args, **kwargs):
        if stores.PROBE_PREFIX in str(path) and not swept:
            swept.append(path)
            os.remove(path)  # as sweep_stages in another run would
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_after_a_sweep)
    stores.check_writable(ROOT, "store 1")
    assert len(swept) == 1
    assert [n for n in os.listdir(ROOT) if n.startswith(stores.PROBE_PREFIX)] == []


def test_sweep_stages_keeps_aside(store):
    store.create_dir(f"{STAGES}/aaa")
    store.create_file(f"{ASIDE}/7-x/a.qcow2")
    assert stores.sweep_stages(ROOT) == 1
    assert os.listdir(WORK) == ["aside"]


def test_remove_stage_removes_one_and_prunes(store):
    store.create_file(f"{STAGES}/aaa/x.qcow2")
    store.create_dir(f"{STAGES}/bbb")
    stores.remove_stage(ROOT, "aaa")
    assert os.listdir(STAGES) == ["bbb"]
    stores.remove_stage(ROOT, "bbb")
    assert not os.path.exists(WORK)


@pytest.mark.parametrize("name", [
    "", ".", "..", "../aside", "../../template", "aaa/../../aside", "aaa/sub", "/mnt/store",
    f"{STAGES}/../aside",
])
def test_remove_stage_refuses_names_that_escape(store, name):
    store.create_file(f"{STAGES}/aaa/sub/x.qcow2")
    store.create_file(f"{ASIDE}/7-x/a.qcow2")
    store.create_file(f"{TMPL}/7/a.qcow2")
    with pytest.raises(ValueError, match="is not a stage directory"):
        stores.remove_stage(ROOT, name)
    for path in (f"{STAGES}/aaa/sub/x.qcow2", f"{ASIDE}/7-x/a.qcow2", f"{TMPL}/7/a.qcow2"):
        assert os.path.exists(path)


def test_remove_stage_of_a_missing_stage_raises(store):
    store.create_dir(STAGES)
    with pytest.raises(FileNotFoundError):
        stores.remove_stage(ROOT, "gone")


# -- reap_leftovers -------------------------------------------------------------------------

RUNTIME = "/run/sysvm-seed-test"


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """A pid no process can have: one above the kernel's pid_max (read before the fake fs)."""
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as stream:
        return int(stream.read()) + 1


def test_without_mountinfo_is_mounted_falls_back_to_pyfakefs_ismount(fs):
    fs.create_dir(f"{RUNTIME}/sysvm-seed-1-store1-abc")
    assert not os.path.exists("/proc/self/mountinfo")
    with pytest.raises(OSError):
        stores.mount_source(f"{RUNTIME}/sysvm-seed-1-store1-abc")
    assert stores.is_mounted("/")  # pyfakefs's one mount point
    assert not stores.is_mounted(f"{RUNTIME}/sysvm-seed-1-store1-abc")


def test_reap_leftovers_removes_a_dead_runs_empty_dirs_only(fs, dead_pid, caplog):
    live = os.getpid()
    names = [f"sysvm-seed-{dead_pid}-store1-abc", f"sysvm-seed-{dead_pid}-store2-def",
             f"sysvm-seed-{live}-store3-ghi", "sysvm-seed-unrelated", f"x-sysvm-seed-{dead_pid}-a",
             f"sysvm-seed-{dead_pid}"]
    for name in names:
        fs.create_dir(f"{RUNTIME}/{name}")
    fs.create_file(f"{RUNTIME}/sysvm-seed-{dead_pid}-store2-def/not-ours")
    assert stores.reap_leftovers(RUNTIME) == 1
    assert sorted(os.listdir(RUNTIME)) == sorted(names[1:])
    assert f"Cannot remove {RUNTIME}/sysvm-seed-{dead_pid}-store2-def" in caplog.text


def test_reap_leftovers_detaches_a_dead_runs_stacked_mounts_first(fs, dead_pid, monkeypatch):
    dead = f"{RUNTIME}/sysvm-seed-{dead_pid}-store1-abc"
    live = f"{RUNTIME}/sysvm-seed-{os.getpid()}-store2-def"
    fs.create_dir(dead)
    fs.create_dir(live)
    table = ["1 0 0:1 / / rw - ext4 /dev/vda rw\n",
             f"2 1 0:40 / {live} rw - nfs 10.0.0.6:/export rw\n",
             f"3 1 0:41 / {dead} rw - nfs 10.0.0.5:/export rw\n",
             f"4 3 0:41 / {dead} rw - nfs 10.0.0.5:/export rw\n"]  # mounted twice
    fs.create_file("/proc/self/mountinfo", contents="".join(table))
    assert stores.is_mounted(dead) and stores.is_mounted(live)
    detached = []

    def detach(path, why="a store stopped answering"):
        # Stands in for umount2(MNT_DETACH): takes the top mount off the fake table.
        detached.append((path, why))
        top = max(i for i, line in enumerate(table) if f" {path} " in line)
        del table[top]
        with open("/proc/self/mountinfo", "w", encoding="utf-8") as stream:
            stream.write("".join(table))
        return True

    monkeypatch.setattr(stores, "_detach", detach)
    assert stores.reap_leftovers(RUNTIME) == 1
    assert detached == [(dead, f"left by run {dead_pid}, which was killed")] * 2
    assert os.listdir(RUNTIME) == [os.path.basename(live)]
    assert stores.is_mounted(live)  # a live run's mount is never touched


def test_a_stage_name_says_whose_it_is():
    name = layout.stage_name("ms-1.example.org", 4242, "a" * 32)
    assert name == f"ms-1.example.org-4242-{'a' * 32}"
    assert layout.stage_name("we/ird host", 7, "b" * 32) == f"we_ird_host-7-{'b' * 32}"
    assert layout.stage_owner(f"ms-1.example.org-4242-{'a' * 32}") == ("ms-1.example.org", 4242)
    assert layout.stage_owner("0123456789abcdef0123456789abcdef") is None  # an older name
    assert layout.stage_owner("old") is None
