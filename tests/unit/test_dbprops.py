from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import traceback

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # cryptography < 43
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

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


# --- a reference encryptor, written apart from dbprops on purpose ------------------------------
# It encrypts (dbprops only decrypts) and builds each step its own way: the PKCS#5 padder of
# `cryptography`, the key/IV split by slicing a list of digests, Tink's layout by concatenation.

def encrypt_v1(plain: str, key: str, salt: bytes | None = None) -> str:
    """jasypt StandardPBEStringEncryptor, PBEWithMD5AndDES, 1000 iterations: salt || DES-CBC."""
    salt = os.urandom(8) if salt is None else salt
    digest = bytes(ord(c) & 0xFF for c in key) + salt
    for _ in range(1000):  # PBKDF1: MD5 applied 1000 times in all
        digest = hashlib.md5(digest).digest()
    des_key, iv = digest[:8], digest[8:]
    padder = padding.PKCS7(64).padder()
    padded = padder.update(plain.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(TripleDES(des_key + des_key + des_key), modes.CBC(iv)).encryptor()
    return base64.b64encode(salt + encryptor.update(padded) + encryptor.finalize()).decode()


def encrypt_v2(plain: str, key: str, nonce: bytes | None = None) -> str:
    """CloudStack AeadBase64Encryptor (Tink AesGcmJce): nonce || ciphertext || tag."""
    nonce = os.urandom(12) if nonce is None else nonce
    sealed = AESGCM(hashlib.sha256(key.encode("utf-8")).digest()).encrypt(
        nonce, plain.encode("utf-8"), b"")
    return base64.b64encode(nonce + sealed).decode()


ENCRYPTORS = {"V1": encrypt_v1, "V2": encrypt_v2}

# Fixed vectors. Both were produced by OpenJDK 17's SunJCE (Cipher "PBEWithMD5AndDES" with
# PBEParameterSpec(salt, 1000), and "AES/GCM/NoPadding" with SHA-256(key)), i.e. the engines
# under jasypt and Tink, and the reference encryptor above yields the same bytes.
KEY = "mgmt-Key_42"
PLAIN = "cl0ud-Pässword!"
V1_SALT = b"saltSALT"
V1_VECTOR = "c2FsdFNBTFSLd3FmIAZmvsVU+oquFbtFjP4FlSFDbxY="
V2_NONCE = b"nonceNONCE12"
V2_VECTOR = "bm9uY2VOT05DRTEywk9TzT1vwPcNt2NJEEamfvg5n17Sbc7OTcSznYLqORE="
# A value published by a CloudStack derivative's self-check: CloudStackEncryptor(
# "managementkey", "v2").decrypt(...) must give "mold".
UPSTREAM_V2 = ("DlTJUG8rWFjOd3aoHtbBGEcQ/piovBzRJ/bnQ1FACLg=", "managementkey", "mold")

PATH = "/etc/cloudstack/management/db.properties"


def encrypted_props(password_value: str, kind: str = "file", **extra: str) -> dict:
    values = {"db.cloud.username": "cloud", "db.cloud.password": f"ENC({password_value})",
              "db.cloud.encryption.type": kind}
    values.update(extra)
    return values


def key_file(tmp_path, content: str = KEY + "\n") -> str:
    path = tmp_path / "key"
    path.write_text(content, encoding="utf-8")
    return str(path)


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    """Not in the message, the repr, nor any exception chained to it (what --debug prints)."""
    shown = []
    while exc is not None:
        shown += [str(exc), repr(exc), *traceback.format_exception_only(type(exc), exc)]
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    for secret in secrets:
        for text in shown:
            assert secret not in text


# --- Java properties and plain values (unchanged behaviour) ------------------------------------

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
    assert config.ssl is False and config.ssl_trust_store is None


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


# --- the reference encryptor itself -----------------------------------------------------------

def test_reference_encryptor_reproduces_the_java_vectors():
    # Pins the test side: a change in the reference encryptor cannot hide a dbprops bug.
    assert encrypt_v1(PLAIN, KEY, V1_SALT) == V1_VECTOR
    assert encrypt_v2(PLAIN, KEY, V2_NONCE) == V2_VECTOR


# --- decrypt() ---------------------------------------------------------------------------------

@pytest.mark.parametrize("vector, version", [
    (V1_VECTOR, None), (V1_VECTOR, "V1"), (V1_VECTOR, "v1"),
    (V2_VECTOR, None), (V2_VECTOR, "V2"), (f"ENC({V2_VECTOR})", None),
])
def test_fixed_vectors(vector, version):
    assert dbprops.decrypt(vector, KEY, version) == PLAIN


def test_value_encrypted_by_a_cloudstack_build():
    value, key, plain = UPSTREAM_V2
    assert dbprops.decrypt(value, key, None) == plain


@pytest.mark.parametrize("version", ["V1", "V2"])
@pytest.mark.parametrize("plain", ["", "x", "8 bytes!", "sixteen bytes ok", "pässwörd €",
                                   "a" * 100])
def test_round_trip_with_random_salt_and_nonce(version, plain):
    for _ in range(3):
        value = ENCRYPTORS[version](plain, KEY)
        assert dbprops.decrypt(value, KEY, None) == plain
        assert dbprops.decrypt(value, KEY, version) == plain


def test_v2_key_is_utf8():
    key = "clé-ключ"
    assert dbprops.decrypt(encrypt_v2(PLAIN, key), key, None) == PLAIN


def test_empty_enc_is_empty():
    assert dbprops.decrypt("ENC()", KEY, None) == ""


def test_base64_without_padding_or_with_line_breaks():
    # jasypt's commons-codec decoder is lenient about both.
    assert dbprops.decrypt(V1_VECTOR.rstrip("="), KEY, None) == PLAIN
    assert dbprops.decrypt(V2_VECTOR[:20] + "\n" + V2_VECTOR[20:], KEY, None) == PLAIN


@pytest.mark.parametrize("vector, forced", [(V1_VECTOR, "V2"), (V2_VECTOR, "V1")])
def test_forced_version_does_not_fall_back(vector, forced):
    with pytest.raises(dbprops.DecryptionError, match=f"{forced} does not decrypt") as info:
        dbprops.decrypt(vector, KEY, forced)
    assert info.value.wrong_key


@pytest.mark.parametrize("vector", [V1_VECTOR, V2_VECTOR])
def test_wrong_key(vector):
    with pytest.raises(dbprops.DecryptionError, match="neither V2 nor V1") as info:
        dbprops.decrypt(vector, "not-the-key", None)
    assert info.value.wrong_key
    assert_no_secret(info.value, vector, "not-the-key", PLAIN)


def test_many_wrong_keys_are_all_refused():
    # V1 spots a wrong key by its padding (and UTF-8); a lucky pad byte must not pass.
    value = encrypt_v1("a fairly long password value", KEY)
    for n in range(300):
        with pytest.raises(dbprops.DecryptionError):
            dbprops.decrypt(value, f"wrong-{n}", "V1")


@pytest.mark.parametrize("value, words", [
    ("not*base64!", "not valid base64"),
    ("abc", "too short"),
    (base64.b64encode(b"12345678" + b"123").decode(), "too short or misaligned"),
])
def test_damaged_values(value, words):
    with pytest.raises(dbprops.DecryptionError, match=words) as info:
        dbprops.decrypt(value, KEY, None)
    assert not info.value.wrong_key
    assert_no_secret(info.value, value, KEY)


def test_unknown_version_argument():
    with pytest.raises(SettingsError, match="V3"):
        dbprops.decrypt(V1_VECTOR, KEY, "V3")


# --- database_config(): where the key comes from ----------------------------------------------

def test_key_file_first_line(tmp_path):
    keys = key_file(tmp_path, KEY + "\nsecond line is ignored\n")
    config = dbprops.database_config(encrypted_props(V1_VECTOR), PATH, keys)
    assert config.password == PLAIN


@pytest.mark.parametrize("content", [KEY + "\r\n", KEY + "  \t\n", KEY])
def test_key_file_trailing_whitespace(tmp_path, content):
    keys = key_file(tmp_path, content)
    config = dbprops.database_config(encrypted_props(V2_VECTOR), PATH, keys)
    assert config.password == PLAIN


def test_key_with_trailing_blank_kept_when_it_is_part_of_the_key(tmp_path):
    # Java uses the whole line; a key that really ends in a blank still works.
    key = KEY + " "
    keys = key_file(tmp_path, key + "\n")
    config = dbprops.database_config(encrypted_props(encrypt_v2(PLAIN, key)), PATH, keys)
    assert config.password == PLAIN


def test_key_from_environment(tmp_path):
    config = dbprops.database_config(
        encrypted_props(V1_VECTOR, "env"), PATH, str(tmp_path / "absent"),
        environ={"CLOUD_SECRET_KEY": KEY})
    assert config.password == PLAIN


def test_key_from_environment_missing():
    with pytest.raises(SettingsError, match="CLOUD_SECRET_KEY is not set") as info:
        dbprops.database_config(encrypted_props(V1_VECTOR, "env"), PATH, environ={})
    assert PATH in str(info.value) and "--preserve-env" in str(info.value)


def test_every_encrypted_key_is_decrypted(tmp_path):
    values = {key: f"ENC({encrypt_v2(plain, KEY)})" for key, plain in [
        ("db.cloud.username", "cloud"), ("db.cloud.host", "db.example.org"),
        ("db.cloud.port", "3307"), ("db.cloud.name", "cloud2"), ("db.cloud.password", PLAIN)]}
    values["db.cloud.encryption.type"] = "file"
    config = dbprops.database_config(values, PATH, key_file(tmp_path))
    assert (config.user, config.host, config.port, config.name, config.password) == (
        "cloud", "db.example.org", 3307, "cloud2", PLAIN)


def test_forced_version_from_properties(tmp_path):
    keys = key_file(tmp_path)
    values = encrypted_props(V1_VECTOR, **{"db.cloud.encryptor.version": "V1"})
    assert dbprops.database_config(values, PATH, keys).password == PLAIN
    values = encrypted_props(V1_VECTOR, **{"db.cloud.encryptor.version": "V2"})
    with pytest.raises(dbprops.DecryptionError, match="forced V2") as info:
        dbprops.database_config(values, PATH, keys)
    assert "db.cloud.encryptor.version" in str(info.value)


def test_wrong_key_names_file_key_and_next_step_but_no_secret(tmp_path):
    keys = key_file(tmp_path, "the-wrong-management-key\n")
    with pytest.raises(SettingsError) as info:
        dbprops.database_config(encrypted_props(V1_VECTOR), PATH, keys)
    message = str(info.value)
    assert PATH in message and "db.cloud.password" in message and keys in message
    assert "db.cloud.encryptor.version" in message and "tried V2, then V1" in message
    assert_no_secret(info.value, V1_VECTOR, "the-wrong-management-key", KEY, PLAIN)


def test_wrong_key_from_environment_says_so():
    with pytest.raises(SettingsError, match=r"\$CLOUD_SECRET_KEY") as info:
        dbprops.database_config(encrypted_props(V2_VECTOR, "env"), PATH,
                                environ={"CLOUD_SECRET_KEY": "nope-nope"})
    assert_no_secret(info.value, V2_VECTOR, "nope-nope")


def test_damaged_value_names_the_key(tmp_path):
    with pytest.raises(SettingsError, match="cannot decrypt db.cloud.password.*base64") as info:
        dbprops.database_config(encrypted_props("%%%%"), PATH, key_file(tmp_path))
    assert_no_secret(info.value, "%%%%", KEY)


def test_missing_key_file(tmp_path):
    missing = str(tmp_path / "no-such-key")
    with pytest.raises(SettingsError, match="cannot be read") as info:
        dbprops.database_config(encrypted_props(V1_VECTOR), PATH, missing)
    assert missing in str(info.value) and "--key-file" in str(info.value)
    assert info.value.__cause__ is None


def test_empty_key_file(tmp_path):
    with pytest.raises(SettingsError, match="is empty"):
        dbprops.database_config(encrypted_props(V1_VECTOR), PATH, key_file(tmp_path, "\n"))


def test_key_file_needed_only_for_encrypted_values(tmp_path):
    values = {"db.cloud.username": "cloud", "db.cloud.password": "plain",
              "db.cloud.encryption.type": "file"}
    config = dbprops.database_config(values, PATH, str(tmp_path / "absent"))
    assert config.password == "plain"


def test_web_is_refused_without_a_key_file(tmp_path):
    with pytest.raises(SettingsError, match="encryption.type=web") as info:
        dbprops.database_config(encrypted_props(V1_VECTOR, "web"), PATH,
                                str(tmp_path / "absent"))
    assert "--key-file" in str(info.value) and "8097" in str(info.value)


def test_web_uses_the_key_file_the_operator_passes(tmp_path):
    config = dbprops.database_config(encrypted_props(V1_VECTOR, "web"), PATH,
                                     key_file(tmp_path))
    assert config.password == PLAIN


@pytest.mark.parametrize("extra, words", [
    ({"db.cloud.encryption.type": "vault"}, "encryption.type 'vault' is unknown"),
    ({"db.cloud.encryptor.version": "V3"}, "encryptor.version 'V3' is unknown"),
])
def test_unknown_settings(extra, words):
    values = {"db.cloud.username": "cloud", **extra}
    with pytest.raises(SettingsError, match=words) as info:
        dbprops.database_config(values, PATH)
    assert PATH in str(info.value)


def test_decrypted_password_not_in_repr(tmp_path):
    config = dbprops.database_config(encrypted_props(V1_VECTOR), PATH, key_file(tmp_path))
    assert config.password == PLAIN
    assert PLAIN not in repr(config) and PLAIN not in config.describe()


# --- db.cloud.uri ------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, expected", [
    ("jdbc:mysql://db1.example.org:3307/cloudx", ("db1.example.org", 3307, "cloudx")),
    ("jdbc:mysql://db1.example.org/cloud?useSSL=false&serverTimezone=UTC",
     ("db1.example.org", 3306, "cloud")),
    ("jdbc:mysql:loadbalance://h1,h2:3306/cloud", ("h1", 3306, "cloud")),
    ("jdbc:mysql:loadbalance://h1:3310,h2:3311/cloud?x=1", ("h1", 3310, "cloud")),
    ("jdbc:mysql:replication://h1:3310,h2/cloud", ("h1", 3310, "cloud")),
    ("jdbc:mariadb://[fd00::5]:3308/cloud", ("fd00::5", 3308, "cloud")),
    ("jdbc:mysql://cloud:pw@db:3309/cloud", ("db", 3309, "cloud")),
    ("jdbc:mysql://db:3309", ("db", 3309, "fallback")),
    ("JDBC:MySQL://db/cloud", ("db", 3306, "cloud")),
])
def test_uri_overrides_host_port_and_name(uri, expected):
    values = {"db.cloud.username": "cloud", "db.cloud.uri": uri, "db.cloud.host": "ignored",
              "db.cloud.port": "ignored too", "db.cloud.name": "fallback"}
    config = dbprops.database_config(values, PATH)
    assert (config.host, config.port, config.name) == expected


def test_encrypted_uri(tmp_path):
    values = encrypted_props(V1_VECTOR, **{
        "db.cloud.uri": f"ENC({encrypt_v1('jdbc:mysql://vip:3307/cloud', KEY)})"})
    config = dbprops.database_config(values, PATH, key_file(tmp_path))
    assert (config.host, config.port, config.name) == ("vip", 3307, "cloud")


@pytest.mark.parametrize("uri", [
    "mysql://db/cloud",
    "jdbc:postgresql://db/cloud",
    "jdbc:mysql://db:port/cloud",
    "jdbc:mysql://address=(host=db)(port=3306)/cloud",
    "jdbc:mysql://secret-user:secret-pw@db:x/cloud",
])
def test_bad_uri(uri):
    values = {"db.cloud.username": "cloud", "db.cloud.uri": uri}
    with pytest.raises(SettingsError, match="db.cloud.uri is not a JDBC URL") as info:
        dbprops.database_config(values, PATH)
    assert PATH in str(info.value)
    assert_no_secret(info.value, uri, "secret-pw")


# --- SSL ---------------------------------------------------------------------------------------

SSL_VALUES = {
    "db.cloud.username": "cloud",
    "db.cloud.useSSL": "True",
    "db.cloud.keyStore": "/etc/cloudstack/management/cloud.jks",
    "db.cloud.keyStorePassword": "ks-pass-123",
    "db.cloud.trustStore": "/etc/cloudstack/management/trust.jks",
    "db.cloud.trustStorePassword": "ts-pass-456",
}


def test_ssl_fields():
    config = dbprops.database_config(SSL_VALUES, PATH)
    assert config.ssl is True
    assert config.ssl_key_store == "/etc/cloudstack/management/cloud.jks"
    assert config.ssl_key_store_password == "ks-pass-123"
    assert config.ssl_trust_store == "/etc/cloudstack/management/trust.jks"
    assert config.ssl_trust_store_password == "ts-pass-456"
    assert "ks-pass" not in repr(config) and "ts-pass" not in repr(config)
    assert "trust.jks" in repr(config)
    assert config.describe() == "cloud@localhost:3306/cloud (SSL)"


def test_ssl_passwords_may_be_encrypted(tmp_path):
    values = {**SSL_VALUES, "db.cloud.encryption.type": "file",
              "db.cloud.trustStorePassword": f"ENC({encrypt_v1('ts-pass-456', KEY)})"}
    config = dbprops.database_config(values, PATH, key_file(tmp_path))
    assert config.ssl_trust_store_password == "ts-pass-456"


@pytest.mark.parametrize("flag", ["false", "", "yes", "1"])
def test_ssl_off_unless_true(flag):
    # Boolean.parseBoolean: only "true" (any case) is true.
    config = dbprops.database_config({**SSL_VALUES, "db.cloud.useSSL": flag}, PATH)
    assert config.ssl is False
    assert config.ssl_key_store is None and config.ssl_trust_store_password is None


def test_ssl_with_only_a_trust_store():
    values = {"db.cloud.username": "cloud", "db.cloud.useSSL": "true",
              "db.cloud.trustStore": "/t.jks"}
    config = dbprops.database_config(values, PATH)
    assert (config.ssl, config.ssl_trust_store, config.ssl_key_store,
            config.ssl_trust_store_password) == (True, "/t.jks", None, None)


# --- packaging --------------------------------------------------------------------------------

def test_import_raises_no_deprecation_warning():
    # TripleDES moved in cryptography 43; importing the old name warns (and will fail).
    subprocess.run([sys.executable, "-W", "error", "-c", "import cloudstack_sysvm_seed.dbprops"],
                   check=True)


def test_tls_options_follow_use_ssl_and_the_trust_store():
    import ssl

    from cloudstack_sysvm_seed.catalog import tls_options
    base = {"db.cloud.username": "u"}
    plain = dbprops.database_config(base, "p")
    assert tls_options(plain) is None
    jks = dbprops.database_config({**base, "db.cloud.useSSL": "true",
                                   "db.cloud.trustStore": "/etc/cloudstack/trust.jks"}, "p")
    assert tls_options(jks) == {"verify_mode": ssl.CERT_NONE}
    pem = dbprops.database_config({**base, "db.cloud.useSSL": "true",
                                   "db.cloud.trustStore": "/etc/ssl/ca.pem"}, "p")
    assert tls_options(pem) == {"ca": "/etc/ssl/ca.pem"}
