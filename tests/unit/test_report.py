"""The text report: 80 columns without a lost word, each failure once with what it hit,
copies, stores and the changes around them counted apart, and a zone that can get no copy
shown as the warning it is."""

import json
import re

from cloudstack_sysvm_seed import apply, report
from cloudstack_sysvm_seed.model import Scope, Store
from cloudstack_sysvm_seed.plan import seed_plan

from .test_plan import META, STORES, Z1, Z2, snapshot

LONG = Store(14, "s-14", "long", 1, "nfs://nfs-secondary-storage-01.datacenter-east.example.org"
                                     "/exports/cloudstack/secondary/primary-zone", "nfs", "NFS",
             False)
MISSING = ("/usr/share/cloudstack-management/templates/systemvm/systemvmtemplate-4.20.0-x86_64-"
           "kvm.qcow2.bz2 is missing (metadata.ini [kvm-x86_64] names it) and there is no "
           "downloadurl: put the file there, or pass --download-repository")
UNMOUNTABLE = ("Cannot mount 10.0.0.22:/export for store 22: exit code 32: mount.nfs: access "
               "denied by server while mounting 10.0.0.22:/export. Check that the NFS server "
               "is reachable and exports the path to this host.")


def outcomes():
    """A dry run: KVM's image missing (a failure on every store of zones 1 and 2), one store
    that does not mount, a zone (3) with no NFS store, a store with a long URL."""
    snap = snapshot(stores=(*STORES, LONG), missing_sources={"kvm-x86_64": MISSING},
                    mount_errors={22: UNMOUNTABLE})
    return apply.dry_run(seed_plan(snap, META, Scope()), {})


def unwrapped(text):
    return re.sub(r"\n\s+", " ", text)


def test_the_text_fits_80_columns_and_loses_no_word():
    found = outcomes()
    text = report.to_table(found, dry_run=True)
    for line in text.splitlines():
        # Only a word too long for any line (a path, a URL) may stand out.
        assert len(line) <= 80 or max(len(word) for word in line.split()) > 60, line
    words = set(unwrapped(text).split())
    for rec in report.records(found):
        for field in ("error", "detail", "store_url"):
            missing = set((rec[field] or "").split()) - words
            assert not missing, (field, rec[field], missing)


def test_each_distinct_failure_is_told_once_with_what_it_hit():
    text = unwrapped(report.to_table(outcomes()))
    assert text.count("is missing (metadata.ini [kvm-x86_64] names it)") == 1
    assert text.count("Cannot mount 10.0.0.22:/export") == 1
    assert ("(kvm x86_64 on stores 11 (nfs://10.0.0.11/export), 12 (nfs://10.0.0.12/export), "
            f"14 ({LONG.url}) in zone east)") in text
    failed = report.failures(report.records(outcomes()))
    assert [where for _, where in failed] == [
        f"kvm x86_64 on stores 11 (nfs://10.0.0.11/export), 12 (nfs://10.0.0.12/export), 14 "
        f"({LONG.url}) in zone east",
        "kvm x86_64, xenserver x86_64 on store 22 (nfs://10.0.0.22/export) in zone west"]
    assert report.failure_line(*failed[1]) == (
        "Failed for kvm x86_64, xenserver x86_64 on store 22 (nfs://10.0.0.22/export) in zone "
        f"west: {UNMOUNTABLE}")


def test_copies_stores_and_changes_are_counted_apart():
    assert report.summary(outcomes()) == (
        "copies 5 failed; stores 4 failed, 4 skipped; settings and other changes 3 held; "
        "zones and hypervisors 1 skipped, 1 warning.")
    assert " ".join(report.to_table(outcomes()).split()).endswith(
        "Copies 5 failed; stores 4 failed, 4 skipped; settings and other changes 3 held; "
        "zones and hypervisors 1 skipped, 1 warning.")


def test_a_zone_without_an_nfs_store_is_a_warning_that_says_what_it_means():
    text = unwrapped(report.to_table(outcomes()))
    assert ("Zone objects (3) warning: no writable NFS image store in this zone: it gets no "
            "copy of the system VM templates, and its secondary storage VM cannot start until "
            "one is added") in text
    (rec,) = [r for r in report.records(outcomes()) if report.is_zone_warning(r)]
    assert (rec["zone_id"], rec["status"]) == (3, "skipped")  # JSON keeps its record
    assert report.warnings([rec]) == [f"zone objects (3): {rec['detail']}"]


def test_a_fatal_error_is_a_json_object():
    assert json.loads(report.fatal_json("Cannot connect.", 4, "Check db.properties.")) == {
        "error": "Cannot connect.", "exit_code": 4, "hint": "Check db.properties."}


def test_zones_and_stores_are_named_once_each():
    text = report.to_table(outcomes())
    assert text.count(f"Zone {Z1.name} ({Z1.id})") == 1 and text.count(f"Zone {Z2.name}") == 1
    assert text.count("Store 22 ") == 1
