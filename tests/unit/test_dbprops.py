import pytest

from cloudstack_sysvm_seed import dbprops
from cloudstack_sysvm_seed.errors import SettingsError

SAMPLE = r"""
# db.properties as shipped
cluster.node.IP=127.0.0.1
db.cloud.username=cloud
db.cloud.password=s3cr\=et\u0021
db.cloud.host : db.example.org
db.cloud.port 3307
db.cloud.name=cloud
db.cloud.url.params=prepStmtCacheSize=517&cachePrepStmts=true&\
    sessionVariables=sql_mode='STRICT_TRANS_TABLES'
! another comment style
db.cloud.encryption.type=none
"""


def test_java_properties_syntax():
    values = dbprops.parse(SAMPLE)
    assert values["db.cloud.password"] == "s3cr=et!"
    assert values["db.cloud.host"] == "db.example.org"
    assert values["db.cloud.port"] == "3307"
    assert values["db.cloud.url.params"].endswith(
        "&sessionVariables=sql_mode='STRICT_TRANS_TABLES'")
    assert "! another comment style" not in values


def test_database_config_and_password_never_in_repr():
    config = dbprops.database_config(dbprops.parse(SAMPLE), "db.properties")
    assert (config.host, config.port, config.user, config.name) == (
        "db.example.org", 3307, "cloud", "cloud")
    assert config.password == "s3cr=et!"
    assert "s3cr" not in repr(config) and "s3cr" not in config.describe()


def test_defaults_for_host_port_and_name():
    config = dbprops.database_config({"db.cloud.username": "u"}, "p")
    assert (config.host, config.port, config.name, config.password) == (
        "localhost", 3306, "cloud", "")


@pytest.mark.parametrize("values, words", [
    ({}, "db.cloud.username is missing"),
    ({"db.cloud.username": "u", "db.cloud.port": "x"}, "db.cloud.port 'x' is not a number"),
    ({"db.cloud.username": "u", "db.cloud.password": "ENC(abc)"}, "encrypted"),
])
def test_bad_values_name_the_file_and_key(values, words):
    with pytest.raises(SettingsError, match=words) as info:
        dbprops.database_config(values, "/etc/cloudstack/management/db.properties")
    assert "/etc/cloudstack/management/db.properties" in str(info.value)
    assert "abc" not in str(info.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(SettingsError, match="Cannot read .*missing.properties"):
        dbprops.load(str(tmp_path / "missing.properties"))
