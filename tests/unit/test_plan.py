import hashlib

import pytest

from cloudstack_sysvm_seed import metadata, model, plan
from cloudstack_sysvm_seed.errors import SettingsError, StoreError
from cloudstack_sysvm_seed.model import Store, StoreCopy, StoreRef, StoreSurvey, Template, Zone

MD5 = hashlib.md5(b"x").hexdigest()
META = metadata.parse(f"""
[default]
version = 4.20.0.0
[kvm-x86_64]
templatename = systemvm-kvm-4.20.0-x86_64
checksum = {MD5}
filename = kvm.qcow2.bz2
[kvm-aarch64]
templatename = systemvm-kvm-4.20.0-aarch64
checksum =
filename = kvm-arm.qcow2.bz2
[xenserver]
templatename = systemvm-xenserver-4.20.0-x86_64
checksum = {MD5}
filename = xen.vhd.bz2
""", "/t/metadata.ini")
KVM = META.specs[0]

Z1, Z2, Z3 = Zone(1, "u-1", "east"), Zone(2, "u-2", "west"), Zone(3, "u-3", "objects")


def nfs(id, zone, readonly=False, url=None):
    return Store(id, f"s-{id}", f"store{id}", zone, url or f"nfs://10.0.0.{id}/export",
                 "nfs", "NFS", readonly)


STORES = (
    nfs(11, 1), nfs(12, 1), Store(13, "s-13", "s3", 1, "http://s3", "", "S3", False),
    nfs(21, 2, readonly=True), nfs(22, 2),
    Store(31, "s-31", "swift", 3, "http://swift", "", "Swift", False),
    nfs(40, None),
)
HYPERVISORS = {1: frozenset({("KVM", "x86_64")}),
               2: frozenset({("KVM", "x86_64"), ("XenServer", "x86_64"),
                             ("Simulator", "x86_64")}),
               3: frozenset({("KVM", "x86_64")})}


def snapshot(copies=None, mount_errors=None, **changes):
    """copies {(store, template): StoreCopy} and mount_errors {store: error} become the
    stores' surveys."""
    surveys = {store: StoreSurvey(store, error=error)
               for store, error in (mount_errors or {}).items()}
    for (store, template), copy in (copies or {}).items():
        surveys.setdefault(store, StoreSurvey(store)).copies[template] = copy
    base = dict(zones=(Z1, Z2, Z3), stores=STORES, zone_hypervisors=HYPERVISORS,
                surveys=surveys)
    base.update(changes)
    return model.Snapshot(**base)


def make_plan(snap, scope=None, metadata=None, **options):
    return plan.seed_plan(snap, metadata or META, scope or model.Scope(), **options)


def per_target(result):
    """The steps per (zone, store, hypervisor) target, and the skips: the copies' part of the
    plan, without the settings and system VM changes around it."""
    return [*(s for w in result.works for s in w.steps),
            *(s for s in result.steps if s.action in (plan.ADOPT, plan.SKIP, plan.FAIL))]


def of_work(result, work):
    """A work's target steps, its adoptions (row changes) among them."""
    return [*work.steps, *(s for s in result.steps
                           if s.action == plan.ADOPT and s.template_id == work.template.id)]


def notes(result):
    return [s for s in result.steps if s.action in (plan.SKIP, plan.FAIL)]


def zone_refs_added(result, work):
    """Zones given a template_zone_ref: with the first copy, or as row changes."""
    return work.zone_ids + tuple(s.change.zone_id for s in result.steps
                                 if isinstance(s.change, model.AddZoneRef))


def summary(steps):
    return sorted(
        (s.zone.id if s.zone else None, s.store.id if s.store else None, s.hypervisor, s.action)
        for s in steps)


def test_fresh_database_registers_kvm_on_every_writable_nfs_store():
    result = make_plan(snapshot())
    (kvm, xen) = sorted(result.works, key=lambda w: w.spec.section)
    assert kvm.template is None and kvm.zone_ids == (1, 2, 3)
    assert summary(kvm.steps) == [(1, 11, "kvm", "register"), (1, 12, "kvm", "register"),
                                  (2, 22, "kvm", "register")]
    assert summary(xen.steps) == [(2, 22, "xenserver", "register")]
    reasons = {(s.zone and s.zone.id, s.store and s.store.id): s.reason for s in notes(result)}
    assert reasons[(1, 13)].startswith("S3 store: not seeded")
    assert reasons[(2, 21)] == "read-only store"
    assert reasons[(3, 31)].startswith("Swift store")
    assert reasons[(3, None)].startswith("no writable NFS image store")
    assert reasons[(None, 40)] == "region-wide store; not seeded"
    assert reasons[(2, None)] == "Simulator has no system VM template"
    assert all(s.action == plan.SKIP for s in notes(result))


def existing(id=300, **kw):
    values = dict(name=KVM.name, hypervisor="KVM", arch="x86_64", state="Active", size=4096,
                  uuid="t")
    values.update(kw)
    return Template(id, **values)


def ready_ref(id, store, template=300, path="/template/tmpl/1/300/a.qcow2", **kw):
    values = dict(state="Ready", download_state="DOWNLOADED", download_pct=100,
                  install_path=path, size=4096, physical_size=100)
    values.update(kw)
    return StoreRef(id, template, store, **values)


SEEDED = StoreCopy("seeded", "", "a.qcow2", 100, 4096)


def test_existing_template_is_reused_per_store_state():
    snap = snapshot(
        templates=(existing(),),
        store_refs=(ready_ref(1, 11), ready_ref(2, 22, path="template/tmpl/1/300/a.qcow2",
                                                 state="Allocated")),
        zone_refs=frozenset({(300, 1)}),
        copies={(11, 300): SEEDED, (12, 300): StoreCopy("incomplete", "no template.properties"),
                (22, 300): SEEDED},
    )
    result = make_plan(snap, model.Scope(hypervisors=("kvm",)))
    (work,) = result.works
    assert work.template.id == 300 and zone_refs_added(result, work) == (2, 3)
    assert not work.activate
    steps = {s.store.id: s for s in of_work(result, work)}
    assert steps[11].action == plan.NONE and steps[11].reason == "already seeded"
    assert steps[12].action == plan.SEED and "set aside" in steps[12].reason
    assert steps[22].action == plan.ADOPT and steps[22].store_ref.id == 2
    assert {s.template_id for s in of_work(result, work)} == {300}


def test_a_ref_with_the_ssvm_path_spelling_is_consistent():
    snap = snapshot(templates=(existing(),), copies={(11, 300): SEEDED},
                    store_refs=(ready_ref(1, 11, path="template/tmpl/1/300/a.qcow2"),))
    steps = {s.store.id: s.action for s in per_target(make_plan(snap, model.Scope(
             zones=("east",)))) if s.store and s.hypervisor == "kvm"}
    assert steps == {11: plan.NONE, 12: plan.SEED}


@pytest.mark.parametrize("ref", [
    None,
    ready_ref(1, 11, size=0),
    ready_ref(1, 11, physical_size=5),
    ready_ref(1, 11, download_pct=50),
    ready_ref(1, 11, path="/template/tmpl/1/300/other.qcow2"),
])
def test_rows_that_disagree_with_the_copy_are_adopted(ref):
    snap = snapshot(templates=(existing(),), copies={(11, 300): SEEDED},
                    store_refs=(ref,) if ref else ())
    step = next(s for s in per_target(make_plan(snap)) if s.store and s.store.id == 11)
    assert step.action == plan.ADOPT


def test_inactive_or_sizeless_template_is_activated():
    assert make_plan(snapshot(templates=(existing(state="Inactive"),))).works[0].activate
    assert make_plan(snapshot(templates=(existing(size=None),))).works[0].activate


def test_highest_id_of_duplicates_wins_and_other_names_arches_are_ignored():
    snap = snapshot(templates=(existing(301), existing(305), existing(310, arch="aarch64"),
                               existing(320, name="systemvm-kvm-4.19.0"),
                               existing(330, hypervisor="XenServer")))
    kvm = next(w for w in make_plan(snap).works if w.spec == KVM)
    assert kvm.template.id == 305


def test_mount_errors_missing_sources_and_empty_checksums_fail_only_what_needs_them():
    hyps = {1: frozenset({("KVM", "x86_64"), ("KVM", "aarch64")})}
    snap = snapshot(zones=(Z1,), stores=STORES[:2], zone_hypervisors=hyps,
                    templates=(existing(),), store_refs=(ready_ref(1, 11),),
                    copies={(11, 300): SEEDED},
                    mount_errors={12: "Cannot mount 10.0.0.12:/export"},
                    missing_sources={"kvm-x86_64": "kvm.qcow2.bz2 is missing"})
    result = make_plan(snap)
    actions = {(s.store.id, s.arch): (s.action, s.reason) for s in per_target(result)}
    assert actions[(11, "x86_64")] == (plan.NONE, "already seeded")  # needs no source
    assert actions[(12, "x86_64")] == (plan.FAIL, "Cannot mount 10.0.0.12:/export")
    assert actions[(11, "aarch64")][0] == plan.FAIL
    assert "[kvm-aarch64] checksum is empty" in actions[(11, "aarch64")][1]

    snap = snapshot(zones=(Z1,), stores=STORES[:2], zone_hypervisors=hyps,
                    missing_sources={"kvm-x86_64": "kvm.qcow2.bz2 is missing"})
    x86 = [s for s in per_target(make_plan(snap)) if s.arch == "x86_64"]
    assert {(s.action, s.reason) for s in x86} == {(plan.FAIL, "kvm.qcow2.bz2 is missing")}


def test_a_hypervisor_without_a_metadata_section_is_skipped():
    snap = snapshot(zones=(Z1,), zone_hypervisors={1: frozenset({("Ovm3", "x86_64")})})
    (step,) = [s for s in notes(make_plan(snap)) if s.hypervisor]
    assert step.reason == "/t/metadata.ini has no section for ovm3 x86_64"


def test_scope_by_id_uuid_or_name_and_hypervisor():
    for wanted in ("2", "u-2", "west"):
        result = make_plan(snapshot(), model.Scope(zones=(wanted,), hypervisors=("KVM",)))
        assert {s.zone.id for s in per_target(result)} == {2}
        assert {s.hypervisor for s in per_target(result)} <= {"kvm", ""}
    with pytest.raises(SettingsError, match="No zone 'north'") as info:
        make_plan(snapshot(), model.Scope(zones=("north",)))
    assert "1 (east), 2 (west), 3 (objects)" in info.value.hint
    with pytest.raises(SettingsError, match="Unknown hypervisor 'hyperkit'"):
        make_plan(snapshot(), model.Scope(hypervisors=("hyperkit",)))


def test_a_malformed_nfs_url_stops_the_run_before_any_change():
    stores = (nfs(11, 1, url="nfs://10.0.0.1"),)
    with pytest.raises(StoreError, match="Image store 11 .* names no export path"):
        make_plan(snapshot(stores=stores))
    # Out of scope, it is not our business.
    assert make_plan(snapshot(stores=stores), model.Scope(zones=("west",))).works == ()


def test_guest_os_from_metadata_or_the_hypervisor_default():
    meta_guest = snapshot(guest_os_ids={"Debian GNU/Linux 12 (64-bit)": 363})
    assert make_plan(meta_guest).works[0].guest_os_id == 15  # this spec names none
    spec_with_guest = metadata.parse(
        f"[default]\nversion=4.20.0.0\n[kvm-x86_64]\ntemplatename=t\nchecksum={MD5}\n"
        "filename=f\nguestos=Debian GNU/Linux 12 (64-bit)\n")
    assert make_plan(meta_guest, metadata=spec_with_guest).works[0].guest_os_id == 363


def test_an_empty_checksum_is_seeded_only_when_allowed():
    hyps = {1: frozenset({("KVM", "aarch64")})}
    snap = snapshot(zones=(Z1,), stores=STORES[:1], zone_hypervisors=hyps)
    assert [s.action for s in per_target(make_plan(snap))] == [plan.FAIL]
    allowed = make_plan(snap, allow_unverified=True)
    assert [s.action for s in per_target(allowed)] == [plan.REGISTER]
