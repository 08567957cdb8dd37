"""Settings rows as CloudStack defines them, on our own DDL and on real 4.20.2 and
4.22.0-snapshot databases (where `configuration.scope` is a BIGINT bitmask): a missing row is
inserted as its ConfigKey would create it, a present one changes only its value, and a value
that does not fit its column stops the run before anything is written."""

from __future__ import annotations

import datetime
import json

import pytest

from cloudstack_sysvm_seed import errors

ERAS = ["4.20", "upstream-4.20.2", "upstream-4.22.0"]
MINREQ = "minreq.sysvmtemplate.version"
KEYS = ("router.template.kvm", MINREQ)


def rows(world, names=KEYS):
    found = world.cloud.query(
        "SELECT * FROM configuration WHERE name IN (%s, %s) ORDER BY name", names)
    return {r["name"]: r for r in found}


def integer_scope(world) -> bool:
    (column,) = world.cloud.query(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = DATABASE() "
        "AND table_name = 'configuration' AND column_name = 'scope'")
    return column["data_type"] == "bigint"


def one_zone(world):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    world.nfs_store(zone, "10.1.0.1", "/export/s1")
    return zone


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_missing_rows_are_inserted_as_cloudstack_defines_them(world, stores_root):
    zone = one_zone(world)
    ssvm = world.builder.system_vm(zone, "SecondaryStorageVm", "KVM", 3)
    world.cloud.query("DELETE FROM configuration WHERE name IN (%s, %s)", KEYS)
    run = world.run("--json")
    assert run.code == 0, run.out + run.err
    (template,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    assert world.rows("vm_instance", "id = %s", (ssvm,))[0]["vm_template_id"] == template["id"]
    found = rows(world)
    zone_scope = 2 if integer_scope(world) else "Zone"
    assert integer_scope(world) == (world.cloud.era == "upstream-4.22.0")
    expected = {
        "router.template.kvm": dict(
            category="Advanced", instance="DEFAULT", component="NetworkManager",
            value=world.kvm.templatename, default_value="SystemVM Template (KVM)",
            description="Name of the default router template on KVM.", is_dynamic=1,
            scope=zone_scope),
        MINREQ: dict(
            category="Advanced", instance="DEFAULT", component="NetworkOrchestrationService",
            value=world.meta.version.rsplit(".", 1)[0], default_value="4.10.0",
            description="What version should the Virtual Routers report", is_dynamic=1,
            scope=zone_scope),
    }
    for name, values in expected.items():
        row = found[name]
        assert {k: row[k] for k in values if k in row} == {k: v for k, v in values.items()
                                                             if k in row}, name
        assert isinstance(row["updated"], datetime.datetime)
    if world.cloud.era.startswith("upstream"):
        # Every other column at its default, as the schema defines it.
        assert (found[MINREQ]["group_id"], found[MINREQ]["subgroup_id"]) == (1, 1)
        assert found[MINREQ]["display_text"] is None and found[MINREQ]["parent"] is None


@pytest.mark.parametrize("world", ERAS, indirect=True)
def test_present_rows_change_their_value_only(world, stores_root):
    one_zone(world)
    world.builder.config("router.template.kvm", "SystemVM Template (KVM)")
    world.builder.config(MINREQ, "4.10.0")
    before = rows(world)
    assert world.run().code == 0
    after = rows(world)
    for name in KEYS:
        changed = {k for k in after[name] if after[name][k] != before[name][k]}
        assert changed <= {"value", "updated"} and "value" in changed, (name, changed)
    assert after["router.template.kvm"]["value"] == world.kvm.templatename


@pytest.mark.parametrize("world", ["upstream-4.22.0"], indirect=True)
def test_a_value_that_does_not_fit_stops_the_run_before_anything_is_written(world, stores_root):
    one_zone(world)
    metadata = world.templates / "metadata.ini"
    long_name = "systemvm-kvm-4.20.0-x86_64-" + "x" * 300  # vm_template.name is varchar(255)
    metadata.write_text(metadata.read_text().replace(world.kvm.templatename, long_name, 1))
    before = world.state(stores_root)
    run = world.run("--json")
    assert run.code == errors.EXIT_DATABASE, run.out + run.err
    assert "Cannot write vm_template.name = 'systemvm-kvm-4.20.0-x86_64-xxx" in run.err
    assert "do not fit varchar(255)" in run.err and "nothing was written" in run.err
    assert world.state(stores_root) == before
    assert world.leftover_mountpoints() == []


@pytest.mark.parametrize("world", ["upstream-4.22.0"], indirect=True)
def test_copies_stay_recorded_when_a_setting_fails_and_the_rerun_finishes(world, stores_root):
    one_zone(world)
    world.cloud.query("DELETE FROM configuration WHERE name = %s", (MINREQ,))
    # A trigger stands in for whatever makes the write fail (a locked row, a full disk).
    world.cloud.query(
        "CREATE TRIGGER no_minreq BEFORE INSERT ON configuration FOR EACH ROW "
        "IF NEW.name = 'minreq.sysvmtemplate.version' THEN "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'; END IF")
    run = world.run("--json")
    assert run.code == errors.EXIT_FAILED
    records = json.loads(run.out)
    (failed,) = [r for r in records if r["status"] == "failed"]
    assert failed["action"] == "configure" and "refused by the test" in failed["error"]
    assert {r["status"] for r in records if r["action"] != "configure"} == {"ready"}
    assert [r["state"] for r in world.rows("template_store_ref")] == ["Ready"]
    assert rows(world)["router.template.kvm"]["value"] == world.kvm.templatename
    world.cloud.query("DROP TRIGGER no_minreq")
    again = world.run("--json")
    assert again.code == 0, again.out + again.err
    assert rows(world)[MINREQ]["value"] == world.meta.version.rsplit(".", 1)[0]
