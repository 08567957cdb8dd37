"""doctor.decide with plain records: findings, and what repair does about each or why not."""

from __future__ import annotations

import dataclasses
import datetime
import json

from cloudstack_sysvm_seed import backup, doctor, model
from cloudstack_sysvm_seed.model import (
    AddZoneRef,
    CopyTemplate,
    DropOverride,
    DropRef,
    FixRef,
    PointVms,
    RemoveStage,
    SetSetting,
    SetTemplate,
    Store,
    StoreCopy,
    StoreRef,
    Zone,
)

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5)
NAME = "systemvm-xenserver-4.5"
VIRTUAL, PHYSICAL = 2 << 30, 400 << 20
ZONES = tuple(Zone(z, f"u-{z}", f"zone{z}") for z in (1, 2, 3))
XEN = {z.id: frozenset({("XenServer", "x86_64")}) for z in ZONES}


def nfs(id, zone, readonly=False):
    return Store(id, f"s-{id}", f"store{id}", zone, f"nfs://10.0.0.{id}/export", "nfs", "NFS",
                 readonly)


def template(id, name=NAME, cross_zones=False, state="Active", size=VIRTUAL, hv="XenServer",
             arch="x86_64"):
    return model.Template(id, name, hv, arch, state, size, f"uuid-{id}", cross_zones, "VHD",
                          f"http://x/{id}.vhd")


def copy(template_id, filename=None):
    return StoreCopy("seeded", "", filename or f"file-{template_id}.vhd", PHYSICAL, VIRTUAL)


def ref(id, template_id, store_id, state="Ready", download_state="DOWNLOADED", filename=None,
        size=VIRTUAL, physical=PHYSICAL, last_updated=None):
    path = f"template/tmpl/1/{template_id}/{filename or f'file-{template_id}.vhd'}"
    return StoreRef(id, template_id, store_id, state, download_state, 100, path, size,
                      physical, None, last_updated)


def survey(store_id, *template_ids, copies=None, stages=()):
    found = {t: copy(t) for t in template_ids}
    found.update(copies or {})
    return model.StoreSurvey(store_id, "", tuple(sorted(set(template_ids) | set(found))), found,
                         stages)


def seeds(**changes) -> model.Snapshot:
    """The seeds' example: 634, 635, 636 each in its own zone and store, SSVM and CPVM."""
    vms = []
    for n, tid in enumerate((634, 635, 636), start=1):
        vms += [model.SystemVm(10 * n, f"s-{n}-VM", "SecondaryStorageVm", n, "XenServer",
                                "x86_64", tid),
                model.SystemVm(10 * n + 1, f"v-{n}-VM", "ConsoleProxy", n, "XenServer",
                                "x86_64", tid)]
    base = dict(
        zones=ZONES, stores=(nfs(1, 1), nfs(2, 2), nfs(3, 3)), zone_hypervisors=XEN,
        templates=(template(634), template(635), template(636)),
        store_refs=(ref(21, 634, 1), ref(32, 635, 2), ref(43, 636, 3)),
        zone_refs=frozenset({(634, 1), (635, 2), (636, 3)}),
        holdings=frozenset({(1, 634), (2, 635), (3, 636)}),
        settings={"router.template.xenserver": NAME},
        system_vms=tuple(vms),
        surveys={1: survey(1, 634), 2: survey(2, 635), 3: survey(3, 636)},
        now=NOW,
    )
    base.update(changes)
    return model.Snapshot(**base)


def by_code(result):
    found = {}
    for decision in result.decisions:
        found.setdefault(decision.finding.code, []).append(decision)
    return found


def test_seeds_example_findings():
    findings = doctor.diagnose(seeds())
    assert sorted(f.code for f in findings) == sorted([
        doctor.DUPLICATE_ZONE_TEMPLATES, doctor.STORE_MISSING_TEMPLATE,
        doctor.STORE_MISSING_TEMPLATE, doctor.MISSING_ZONE_REF, doctor.MISSING_ZONE_REF,
        doctor.SYSTEM_VMS_ON_OLD_TEMPLATE, doctor.SYSTEM_VMS_ON_OLD_TEMPLATE])
    (duplicate,) = [f for f in findings if f.code == doctor.DUPLICATE_ZONE_TEMPLATES]
    assert duplicate.rows == (("vm_template", 634), ("vm_template", 635), ("vm_template", 636))
    assert (duplicate.zones, duplicate.stores) == ((1, 2, 3), (1, 2, 3))
    assert duplicate.fix.startswith("Keep template 636: set cross_zones=1")
    record = duplicate.record()
    assert json.loads(json.dumps(record)) == record
    assert set(record) == {"code", "hypervisor", "arch", "message", "rows", "zones", "stores",
                           "fix"}
    assert record["rows"][0] == {"table": "vm_template", "id": 634}


def test_seeds_example_repair_plan():
    result = doctor.decide(seeds())
    assert result.left == []
    assert result.actions == [
        SetTemplate(636, cross_zones=1),
        SetTemplate(634, retire=True, needs=((636, 1),)),
        SetTemplate(635, retire=True, needs=((636, 2),)),
        CopyTemplate(636, 1, 1, None, 3),
        AddZoneRef(636, 1),
        CopyTemplate(636, 2, 2, None, 3),
        AddZoneRef(636, 2),
        PointVms(636, 1, (10, 11), ((636, 1),)),
        PointVms(636, 2, (20, 21), ((636, 2),)),
    ]
    assert result.ready == frozenset()  # zones 1 and 2 get 636 only from the copies


def test_bundled_file_is_preferred_as_the_source():
    result = doctor.decide(seeds(), bundled=frozenset({636}))
    copies = [a for a in result.actions if isinstance(a, CopyTemplate)]
    assert {a.source_store for a in copies} == {None}


def test_survivor_has_the_most_ready_copies_then_the_highest_id():
    snap = seeds(stores=(nfs(1, 1), nfs(2, 2), nfs(3, 3), nfs(4, 1)),
                 store_refs=seeds().store_refs + (ref(50, 634, 4),),
                 holdings=seeds().holdings | {(4, 634)},
                 surveys={**seeds().surveys, 4: survey(4, 634)})
    (group,) = by_code(doctor.decide(snap))[doctor.DUPLICATE_ZONE_TEMPLATES]
    assert group.actions[0] == SetTemplate(634, cross_zones=1)
    assert {a.template_id for a in group.actions if getattr(a, "retire", False)} == {635, 636}


def test_cross_zone_or_inactive_templates_are_not_duplicates():
    healthy = seeds(templates=(template(634, cross_zones=True), template(635, state="Inactive"),
                               template(636, state="Inactive")))
    assert doctor.DUPLICATE_ZONE_TEMPLATES not in by_code(doctor.decide(healthy))
    # Same version, other names: still one template per zone.
    renamed = seeds(templates=(template(634, "sysvm-zone1-4.5"), template(635),
                               template(636, "xen-4.5-z3")))
    (group,) = by_code(doctor.decide(renamed))[doctor.DUPLICATE_ZONE_TEMPLATES]
    assert "of version 4.5 are registered zone by zone" in group.finding.message


def test_without_a_source_the_copy_is_left_and_duplicates_stay():
    # 636's only copy is on a store doctor could not mount.
    surveys = {**seeds().surveys, 3: model.StoreSurvey(3, error="Cannot mount")}
    result = doctor.decide(seeds(surveys=surveys))
    found = by_code(result)
    assert found[doctor.STORE_UNREACHABLE][0].left == "the store cannot be mounted"
    assert all("no source for template 636" in d.left
               for d in found[doctor.STORE_MISSING_TEMPLATE])
    (group,) = found[doctor.DUPLICATE_ZONE_TEMPLATES]
    assert group.actions == (SetTemplate(636, cross_zones=1),)
    assert "template 634 stays until 636 can be Ready in zone 1" in group.left
    assert not [a for a in result.actions if isinstance(a, PointVms)]


def one_kvm_store(**changes) -> model.Snapshot:
    """A healthy zone: KVM template 200 on store 1, with router.template.kvm pointing at it."""
    kvm = template(200, "systemvm-kvm-4.20.0", cross_zones=True, hv="KVM")
    base = dict(
        zones=ZONES[:1], stores=(nfs(1, 1),),
        zone_hypervisors={1: frozenset({("KVM", "x86_64")})},
        templates=(template(3, "SystemVM Template (KVM)", cross_zones=True, size=None, hv="KVM"),
                   kvm),
        store_refs=(ref(7, 200, 1),), zone_refs=frozenset({(200, 1)}),
        holdings=frozenset({(1, 200)}),
        settings={"router.template.kvm": kvm.name}, surveys={1: survey(1, 200)}, now=NOW)
    base.update(changes)
    return model.Snapshot(**base)


def test_a_healthy_zone_has_no_findings_and_legacy_rows_are_not_noise():
    assert doctor.diagnose(one_kvm_store()) == []


def test_ref_not_ready_with_complete_files_is_recorded_keeping_the_path_spelling():
    snap = one_kvm_store(store_refs=(ref(7, 200, 1, state="Creating",
                                   download_state="DOWNLOAD_ERROR"),))
    (decision,) = doctor.decide(snap).decisions
    assert decision.finding.code == doctor.STORE_REF_NOT_READY
    assert decision.actions == (FixRef(200, 1, 7, "template/tmpl/1/200/file-200.vhd", VIRTUAL,
                                       PHYSICAL),)


def test_a_recent_download_in_progress_is_left_and_an_old_one_redone():
    recent = one_kvm_store(store_refs=(ref(7, 200, 1, state="Creating",
                                     download_state="DOWNLOAD_IN_PROGRESS",
                                     last_updated=NOW - datetime.timedelta(minutes=5)),),
                           surveys={1: model.StoreSurvey(1)})
    (decision,) = doctor.decide(recent).decisions
    assert decision.left.startswith("a download was reported in progress")
    old = dataclasses.replace(recent, store_refs=(dataclasses.replace(
        recent.store_refs[0], last_updated=NOW - datetime.timedelta(days=1)),))
    (decision,) = doctor.decide(old, bundled=frozenset({200})).decisions
    assert decision.actions == (CopyTemplate(200, 1, 1, 7, None),)


def test_incomplete_copy_of_an_old_template_is_left():
    snap = one_kvm_store(
        templates=one_kvm_store().templates + (template(150, "systemvm-kvm-4.19.0", hv="KVM",
                                                        cross_zones=True),),
        store_refs=(ref(7, 200, 1), ref(6, 150, 1)), holdings=frozenset({(1, 200), (1, 150)}),
        surveys={1: survey(1, 200, copies={
            150: StoreCopy("incomplete", "no template.properties")})})
    (decision,) = doctor.decide(snap).decisions
    assert decision.finding.code == doctor.INSTALL_PATH_MISMATCH
    assert "incomplete (no template.properties)" in decision.finding.message
    assert "not the current system template" in decision.left


def test_install_path_and_sizes_that_disagree_with_the_files():
    wrong_path = one_kvm_store(store_refs=(ref(7, 200, 1, filename="other.vhd"),))
    (decision,) = doctor.decide(wrong_path).decisions
    assert decision.finding.code == doctor.INSTALL_PATH_MISMATCH
    assert decision.actions == (FixRef(200, 1, 7, "/template/tmpl/1/200/file-200.vhd", VIRTUAL,
                                       PHYSICAL),)
    wrong_size = one_kvm_store(store_refs=(ref(7, 200, 1, size=VIRTUAL + 1),))
    (decision,) = doctor.decide(wrong_size).decisions
    assert "template.properties says" in decision.finding.message


def test_size_zero_in_the_template_and_the_ref():
    snap = one_kvm_store(
        templates=(one_kvm_store().templates[0],
                   dataclasses.replace(one_kvm_store().templates[1], size=0)),
        store_refs=(ref(7, 200, 1, size=None, physical=0),))
    found = by_code(doctor.decide(snap))
    assert [d.finding.rows for d in found[doctor.SIZE_ZERO]] == [
        (("template_store_ref", 7),), (("vm_template", 200),)]
    assert found[doctor.SIZE_ZERO][1].actions == (SetTemplate(200, size=VIRTUAL),)
    assert doctor.INSTALL_PATH_MISMATCH not in found


def test_duplicate_store_refs_keep_the_one_matching_the_files():
    snap = one_kvm_store(store_refs=(ref(5, 200, 1, state="Allocated",
                                   download_state="NOT_DOWNLOADED"), ref(7, 200, 1)))
    (decision,) = doctor.decide(snap).decisions
    assert decision.finding.code == doctor.DUPLICATE_STORE_REF
    assert decision.actions == (DropRef(5, 200, 1),)


def test_router_template_and_zone_overrides():
    snap = one_kvm_store(settings={"router.template.kvm": "SystemVM Template (KVM)"},
                         overrides=(model.Override(9, 1, "router.template.kvm", "old"),
                                    model.Override(10, 1, "router.template.kvm",
                                                    "systemvm-kvm-4.20.0")))
    (decision,) = doctor.decide(snap).decisions
    assert decision.finding.code == doctor.ROUTER_TEMPLATE_MISMATCH
    assert decision.actions == (
        SetSetting("router.template.kvm", "SystemVM Template (KVM)", "systemvm-kvm-4.20.0"),
        DropOverride(9, 1, "router.template.kvm", "old"))


def test_router_template_prefers_x86_64_when_two_arches_share_the_key():
    arm = template(300, "systemvm-kvm-4.20.0-aarch64", cross_zones=True, hv="KVM",
                   arch="aarch64")
    snap = one_kvm_store(
        zone_hypervisors={1: frozenset({("KVM", "x86_64"), ("KVM", "aarch64")})},
        templates=one_kvm_store().templates + (arm,),
        store_refs=(ref(7, 200, 1), ref(8, 300, 1)), zone_refs=frozenset({(200, 1), (300, 1)}),
        holdings=frozenset({(1, 200), (1, 300)}), surveys={1: survey(1, 200, 300)})
    assert doctor.diagnose(snap) == []


def test_system_vms_on_old_templates_by_arch():
    vms = (model.SystemVm(1, "s-1-VM", "SecondaryStorageVm", 1, "KVM", "x86_64", 3),
           model.SystemVm(2, "r-2-VM", "DomainRouter", 1, "KVM", "x86_64", 200),
           model.SystemVm(3, "r-3-VM", "DomainRouter", 1, "KVM", "aarch64", 3))
    (decision,) = doctor.decide(one_kvm_store(system_vms=vms)).decisions
    assert decision.finding.rows == (("vm_instance", 1),)  # no aarch64 template: not judged
    assert decision.actions == (PointVms(200, 1, (1,), ()),)
    assert "s-1-VM: destroy it" in decision.finding.fix


def test_orphan_directory_stale_stage_and_fresh_stage():
    surveys = {1: survey(1, 200, stages=(("old", 7200.0), ("fresh", 60.0)))}
    surveys[1] = dataclasses.replace(surveys[1], directories=(200, 999))
    found = by_code(doctor.decide(one_kvm_store(surveys=surveys)))
    (orphan,) = found[doctor.ORPHAN_DIRECTORY]
    assert "template/tmpl/1/999" in orphan.finding.message and orphan.left
    (stale,) = found[doctor.STALE_STAGING]
    assert stale.actions == (RemoveStage(1, "old"),)


def test_store_missing_a_copy_that_is_already_there_is_recorded_not_orphaned():
    snap = one_kvm_store(stores=(nfs(1, 1), nfs(2, 1)),
                         surveys={1: survey(1, 200), 2: survey(2, 200)})
    (decision,) = doctor.decide(snap).decisions
    assert decision.finding.code == doctor.STORE_MISSING_TEMPLATE
    assert decision.finding.message.endswith("a complete copy is on the store.")
    assert decision.actions == (FixRef(200, 2, None, "/template/tmpl/1/200/file-200.vhd",
                                       VIRTUAL, PHYSICAL),)


def test_read_only_stores_are_not_targets_and_no_template_means_seed():
    snap = one_kvm_store(stores=(nfs(1, 1), nfs(2, 1, readonly=True)),
                         surveys={1: survey(1, 200), 2: survey(2)})
    assert doctor.diagnose(snap) == []
    nothing = one_kvm_store(templates=(), store_refs=(), zone_refs=frozenset(), settings={})
    (decision,) = doctor.decide(nothing).decisions
    assert decision.finding.code == doctor.STORE_MISSING_TEMPLATE
    assert decision.left == "registering templates is seed's job"


def test_backup_values_survive_json():
    row = {"id": 1, "created": datetime.datetime(2020, 1, 2, 3, 4, 5), "flag": b"\x01",
           "day": datetime.date(2020, 1, 2), "name": "x", "none": None}
    encoded = json.loads(json.dumps({k: backup._encode(v) for k, v in row.items()}))
    assert {k: backup._decode(v) for k, v in encoded.items()} == row


# --- what a dead run left, what a live one is writing, and who fixes what ----------------------

HERE = "ms1"
TOKEN = "0" * 32


def test_a_dead_runs_stage_is_stale_at_once_and_a_live_runs_is_in_progress():
    dead, live, elsewhere = (f"{HERE}-111-{TOKEN}", f"{HERE}-222-{TOKEN}",
                             f"ms2-333-{TOKEN}")
    base = survey(1, 200, stages=((dead, 60.0), (live, 60.0), (elsewhere, 60.0)))
    surveys = {1: dataclasses.replace(base, stage_runs={dead: False, live: True})}
    snap = one_kvm_store(surveys=surveys)
    (stale,) = by_code(doctor.decide(snap))[doctor.STALE_STAGING]
    # A minute old: the dead run's only; another host's waits for the hour.
    assert stale.actions == (RemoveStage(1, dead),)
    assert f"{dead} (run 111 on this host is no longer running)" in stale.finding.message
    assert stale.finding.command == doctor.REPAIR
    assert doctor.in_progress(snap) == [
        f"Store 1: stage {live} is being written by run 222 on this host; left alone."]


def test_mounts_a_dead_run_left_are_reported_with_the_command_that_removes_them():
    snap = one_kvm_store(surveys={1: survey(1, 200)}, leftover_mounts=(
        model.LeftoverMount("/tmp/sysvm-seed-111-store1-x", 111, "10.0.0.1:/export"),
        model.LeftoverMount("/tmp/sysvm-seed-111-store2-y", 111)))
    found = by_code(doctor.decide(snap))[doctor.STALE_MOUNT]
    assert [d.finding.message for d in found] == [
        "/tmp/sysvm-seed-111-store1-x was left by run 111, which is no longer running: "
        "10.0.0.1:/export is still mounted there.",
        "/tmp/sysvm-seed-111-store2-y was left by run 111, which is no longer running: "
        "nothing is mounted there any more."]
    assert found[0].finding.fix.endswith(
        "by hand: umount -l /tmp/sysvm-seed-111-store1-x; rmdir /tmp/sysvm-seed-111-store1-x.")
    assert {d.finding.command for d in found} == {doctor.SEED} and all(d.left for d in found)


def test_seed_is_recommended_where_seeding_fixes_it():
    """Store 2 lacks the current template, which metadata.ini describes (seedable): seed
    copies it. Without metadata.ini's word, repair does."""
    snap = one_kvm_store(stores=(nfs(1, 1), nfs(2, 1)),
                         surveys={1: survey(1, 200), 2: survey(2)})
    (decision,) = doctor.decide(snap, seedable=frozenset({200})).decisions
    assert decision.finding.code == doctor.STORE_MISSING_TEMPLATE
    assert decision.finding.command == doctor.SEED
    assert "(`cloudstack-sysvm-seed seed` does)" in decision.finding.fix
    (decision,) = doctor.decide(snap).decisions
    assert decision.finding.command == doctor.REPAIR
    assert "(`cloudstack-sysvm-seed repair` does)" in decision.finding.fix


def test_no_finding_says_none():
    """NULL columns in every place a finding names one."""
    broken = dataclasses.replace(ref(21, 200, 1), state="Allocated", download_state=None,
                                 install_path=None, size=None, physical_size=None)
    snap = one_kvm_store(
        templates=(template(200, "systemvm-kvm-4.20.0", cross_zones=True, size=None,
                            hv="KVM"),),
        store_refs=(broken,), settings={"router.template.kvm": None},
        overrides=(model.Override(5, 1, "router.template.kvm", None),),
        system_vms=(model.SystemVm(9, "s-9-VM", "SecondaryStorageVm", 1, "KVM", "x86_64",
                                   None),),
        surveys={1: survey(1, 200)})
    findings = doctor.diagnose(snap)
    codes = {f.code for f in findings}
    assert {doctor.SIZE_ZERO, doctor.STORE_REF_NOT_READY, doctor.ROUTER_TEMPLATE_MISMATCH,
            doctor.SYSTEM_VMS_ON_OLD_TEMPLATE} <= codes
    for finding in findings:
        assert "None" not in finding.message and "None" not in finding.fix, finding
    text = " ".join(f.message for f in findings)
    assert "has no size (NULL)" in text and "is Allocated/not set (100%)" in text
    assert "router.template.kvm is not set; zone 1 overrides it with an empty value" in text
