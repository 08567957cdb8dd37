"""db.properties as the management server reads it: Java-properties syntax, db.cloud.* keys.

Values written as ENC(<base64>) are decrypted with the management key exactly as
CloudStack's CloudStackEncryptor does: V2 (AES-256-GCM, Tink AesGcmJce layout) and V1 (jasypt
PBEWithMD5AndDES). Secrets (passwords, keys, ciphertexts) never reach a message, log or repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional
from urllib.parse import unquote

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

try:  # cryptography >= 43 keeps DES here; the old location warns and goes away in 48
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # cryptography 3.4 - 42
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

from .errors import SettingsError

LOG = logging.getLogger(__name__)

DEFAULT_KEY_FILE = "/etc/cloudstack/management/key"
KEY_ENV = "CLOUD_SECRET_KEY"
DEFAULT_PORT = 3306

_SEPARATOR = re.compile(r"(?<!\\)[=:\s]")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
# Connector/J and MariaDB URLs, sub-protocols included (jdbc:mysql:loadbalance://...).
_JDBC_URL = re.compile(
    r"jdbc:(?:mysql|mariadb)(?:[:+][a-z]+)*://(?P<hosts>[^/?#;]*)(?:/(?P<name>[^?#;]*))?.*",
    re.IGNORECASE | re.DOTALL)
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<name>[^:\[\]()=]*))(?::(?P<port>[^:]*))?")

_V1_SALT = 8  # jasypt: salt size = DES block size
_V1_ITERATIONS = 1000  # jasypt DEFAULT_KEY_OBTENTION_ITERATIONS
_V2_NONCE = 12  # Tink AesGcmJce IV size
_V2_TAG = 16


class DecryptionError(SettingsError):
    """An ENC() value could not be decrypted. Never carries the value, the result or the key.

    `wrong_key` tells "no version decrypts it with this key" apart from "the value is damaged".
    """

    def __init__(self, message: str, hint: Optional[str] = None, wrong_key: bool = True):
        super().__init__(message, hint)
        self.wrong_key = wrong_key


@dataclass(frozen=True)
class DbConfig:
    host: str
    port: int
    user: str
    name: str
    password: str = field(repr=False)  # never shown: not in repr, logs or reports
    # db.cloud.useSSL and the JSSE stores the management server passes to Connector/J.
    ssl: bool = False
    ssl_key_store: Optional[str] = None
    ssl_key_store_password: Optional[str] = field(default=None, repr=False)
    ssl_trust_store: Optional[str] = None
    ssl_trust_store_password: Optional[str] = field(default=None, repr=False)

    def describe(self) -> str:
        where = f"{self.user}@{self.host}:{self.port}/{self.name}"
        return f"{where} (SSL)" if self.ssl else where


# --- Java properties -------------------------------------------------------------------------

def parse(text: str) -> dict[str, str]:
    """Parse Java properties text (java.util.Properties.load rules, minus exotic corners)."""
    values = {}
    for line in _logical_lines(text):
        match = _SEPARATOR.search(line)
        if match is None:
            key, value = line, ""
        else:
            key = line[: match.start()]
            rest = line[match.start():].lstrip(" \t\f")
            if rest[:1] in ("=", ":"):
                rest = rest[1:].lstrip(" \t\f")
            value = rest
        values[_unescape(key)] = _unescape(value)
    return values


def _logical_lines(text: str):
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")
        if not pending and (not line or line[0] in "#!"):
            continue
        # An odd number of trailing backslashes continues the line.
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            pending += line[:-1]
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _unescape(text: str) -> str:
    return _ESCAPE.sub(_unescape_one, text)


def _unescape_one(match: re.Match) -> str:
    escaped = match.group(1)
    if escaped.startswith("u") and len(escaped) == 5:
        return chr(int(escaped[1:], 16))
    return _ESCAPES.get(escaped, escaped)


def load(path: str) -> dict[str, str]:
    """:raises SettingsError: when the file cannot be read."""
    try:
        with open(path, encoding="latin-1") as stream:
            return parse(stream.read())
    except OSError as exc:
        raise SettingsError(
            f"Cannot read {path}: {exc.strerror}.",
            "Pass --db-properties with the management server's db.properties.",
        ) from exc


# --- decryption ------------------------------------------------------------------------------

def decrypt(value: str, key: str, version: Optional[str] = None) -> str:
    """Decrypt one CloudStack-encrypted value (the base64 text, with or without ENC(...)).

    `version` "V1" or "V2" (any case) forces that encryptor; None or "" tries V2, then V1,
    like CloudStackEncryptor.

    :raises DecryptionError: wrong key or damaged value; the message holds no secret.
    """
    versions = _versions(version)
    inner = _unwrap(value)
    if not inner:
        return inner  # CloudStackEncryptor returns an empty value unchanged
    data = _b64decode(inner)
    if not (_fits("V1", data) or _fits("V2", data)):
        raise DecryptionError(
            "the value is too short or misaligned to be a V1 or V2 value",
            "Copy the whole ENC(...) value again from the management server.", wrong_key=False)
    attempts = {"V1": _decrypt_v1, "V2": _decrypt_v2}
    for name in versions:
        # A value of the other version's shape is refused like a wrong key: the forced
        # version, not the value, is what to check then.
        plain = attempts[name](data, key) if _fits(name, data) else None
        if plain is not None:
            LOG.debug("Decrypted a value with encryptor %s", name)
            return plain
    raise DecryptionError("neither V2 nor V1 decrypts it with this key" if len(versions) > 1
                          else f"{versions[0]} does not decrypt it with this key")


def _versions(version: Optional[str]) -> tuple[str, ...]:
    forced = (version or "").strip().upper()
    if not forced:
        return ("V2", "V1")  # CloudStackEncryptor's order
    if forced in ("V1", "V2"):
        return (forced,)
    raise SettingsError(f"Unknown encryptor version {version!r}; valid are V1 and V2.")


def _unwrap(value: str) -> str:
    text = value.strip()
    if _is_encrypted(text):
        return text[4:-1].strip()
    return text


def _is_encrypted(value: str) -> bool:
    return value.startswith("ENC(") and value.endswith(")")


def _b64decode(text: str) -> bytes:
    # Tolerate line breaks and missing padding (jasypt's commons-codec decoder does).
    compact = "".join(text.split())
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        # from None: the decoder's error must not drag the value into a traceback.
        raise DecryptionError(
            "the value is not valid base64",
            "Copy the whole ENC(...) value again from the management server.",
            wrong_key=False) from None


def _fits(version: str, data: bytes) -> bool:
    if version == "V1":
        body = len(data) - _V1_SALT
        return body > 0 and body % 8 == 0
    return len(data) >= _V2_NONCE + _V2_TAG


def _decrypt_v1(data: bytes, key: str) -> Optional[str]:
    """jasypt StandardPBEStringEncryptor, PBEWithMD5AndDES: salt(8) || DES-CBC ciphertext."""
    salt, body = data[:_V1_SALT], data[_V1_SALT:]
    # SunJCE turns each password char into one byte; for printable ASCII keys that is the char.
    password = bytes(ord(c) & 0xFF for c in key)
    # usedforsecurity=False: the format dictates MD5, and FIPS-mode OpenSSL refuses it otherwise.
    material = hashlib.md5(password + salt, usedforsecurity=False).digest()
    for _ in range(_V1_ITERATIONS - 1):
        material = hashlib.md5(material, usedforsecurity=False).digest()
    # Single DES is 3DES with the same 8-byte key three times (EDE collapses to E).
    decryptor = Cipher(TripleDES(material[:8] * 3), modes.CBC(material[8:16])).decryptor()
    plain = _strip_pkcs5(decryptor.update(body) + decryptor.finalize())
    if plain is None:
        return None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        return None  # a wrong key that happened to leave valid padding: garbage bytes


def _strip_pkcs5(padded: bytes) -> Optional[bytes]:
    """The unpadded bytes, or None: bad padding is how a wrong V1 key shows."""
    count = padded[-1] if padded else 0
    if not 1 <= count <= 8 or padded[-count:] != bytes([count]) * count:
        return None
    return padded[:-count]


def _decrypt_v2(data: bytes, key: str) -> Optional[str]:
    """AeadBase64Encryptor: Tink AesGcmJce with SHA-256(key), nonce(12) || ciphertext || tag."""
    aead = AESGCM(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest())
    try:
        plain = aead.decrypt(data[:_V2_NONCE], data[_V2_NONCE:], b"")
    except InvalidTag:
        return None
    return plain.decode("utf-8", "replace")  # authenticated: decode as Java's new String does


# --- the management key ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Key:
    """The management key candidates and where they came from (for messages, never the key)."""

    source: str
    hint: str
    candidates: tuple[str, ...] = field(repr=False)


def _read_key_file(key_file: str, path: str, kind: str) -> _Key:
    hint = (f"Check that {key_file} holds the management key of the server that wrote "
            f"{path} (its /etc/cloudstack/management/key), or pass --key-file FILE.")
    try:
        # Java reads the key with the platform charset; UTF-8 with replacement matches it.
        with open(key_file, encoding="utf-8", errors="replace") as stream:
            line = stream.readline().rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(
            f"{path} has encrypted values (db.cloud.encryption.type={kind}) but the key file "
            f"{key_file} cannot be read: {exc.strerror}.", hint) from None
    if not line.strip():
        raise SettingsError(f"The key file {key_file} is empty (its first line holds the key).",
                            hint)
    return _Key(f"the key file {key_file}", hint, _candidates(line))


def _env_key(environ: Mapping[str, str], path: str) -> _Key:
    hint = (f"Set {KEY_ENV} to the management key (sudo drops it unless run with "
            f"--preserve-env={KEY_ENV}).")
    value = environ.get(KEY_ENV, "")
    if not value.strip():
        raise SettingsError(
            f"{path} has encrypted values (db.cloud.encryption.type=env) but {KEY_ENV} "
            "is not set or empty.", hint)
    return _Key(f"${KEY_ENV}", hint + " Check that it is this management server's key.",
                _candidates(value))


def _candidates(key: str) -> tuple[str, ...]:
    # Java uses the line as it is; an editor's stray trailing blank is tried stripped as well.
    stripped = key.strip()
    return (key,) if stripped == key else (key, stripped)


def _web_key(key_file: str, path: str) -> _Key:
    # The management server waits for the key on TCP 8097 at start-up; this tool cannot take
    # part in that, so the operator hands the key over in a file instead.
    if os.path.isfile(key_file):
        return _read_key_file(key_file, path, "web")
    raise SettingsError(
        f"{path} sets db.cloud.encryption.type=web: the management server receives its key "
        f"over TCP port 8097, which this tool does not support (no key file at {key_file}).",
        "Write the management key as the first line of a file (mode 0600) and pass it with "
        "--key-file FILE.")


def _management_key(kind: str, key_file: str, environ: Mapping[str, str], path: str) -> _Key:
    if kind == "file":
        return _read_key_file(key_file, path, kind)
    if kind == "env":
        return _env_key(environ, path)
    return _web_key(key_file, path)


# --- db.cloud.* ------------------------------------------------------------------------------

class _Values:
    """db.cloud.* values, ENC() ones decrypted on first use so that the key is only needed
    when something is actually encrypted."""

    def __init__(self, values: Mapping[str, str], path: str,
                 key: Callable[[], Optional[_Key]], version: Optional[str]):
        self._values = values
        self._path = path
        self._key_source = key
        self._key: Optional[_Key] = None
        self._version = version

    def get(self, name: str, default: str = "") -> str:
        value = self._values.get(name, default).strip()
        return self._decrypt(name, value) if _is_encrypted(value) else value

    def _decrypt(self, name: str, value: str) -> str:
        if self._key is None:
            self._key = self._key_source()
        if self._key is None:
            raise SettingsError(
                f"{self._path}: {name} is encrypted (ENC(...)) but db.cloud.encryption.type "
                "is none or missing, so the management server would not decrypt it either.",
                "Set db.cloud.encryption.type (file or env) as on the management server.")
        return self._try_candidates(name, value, self._key)

    def _try_candidates(self, name: str, value: str, key: _Key) -> str:
        for candidate in key.candidates:
            try:
                return decrypt(value, candidate, self._version)
            except DecryptionError as exc:
                if not exc.wrong_key:
                    raise DecryptionError(f"{self._path}: cannot decrypt {name}: {exc.message}.",
                                          exc.hint, wrong_key=False) from None
        tried = f"forced {self._version}" if self._version else "tried V2, then V1"
        raise DecryptionError(
            f"{self._path}: cannot decrypt {name} with {key.source} ({tried}).",
            f"{key.hint} If the value was encrypted with another encryptor, fix or remove "
            "db.cloud.encryptor.version.")


def database_config(values: Mapping[str, str], path: str, key_file: str = DEFAULT_KEY_FILE,
                    environ: Mapping[str, str] = os.environ) -> DbConfig:
    """The cloud database settings (db.cloud.*), ENC() values decrypted.

    :raises SettingsError: for a missing key, a bad port or URI, or a value that cannot be
        decrypted (DecryptionError); messages name the file and key, never a secret.
    """
    reader = _Values(values, path, _key_loader(values, path, key_file, environ),
                     _forced_version(values, path))
    user = reader.get("db.cloud.username")
    if not user:
        raise SettingsError(f"{path}: db.cloud.username is missing.",
                            "Is this the management server's db.properties?")
    host, port, name = _location(reader, path)
    return DbConfig(host=host, port=port, user=user, name=name,
                    password=reader.get("db.cloud.password"), **_ssl(reader))


def _key_loader(values: Mapping[str, str], path: str, key_file: str,
                environ: Mapping[str, str]) -> Callable[[], Optional[_Key]]:
    # Checked now, like the management server does, even if nothing turns out encrypted.
    kind = values.get("db.cloud.encryption.type", "").strip().lower() or "none"
    if kind not in ("none", "file", "env", "web"):
        raise SettingsError(f"{path}: db.cloud.encryption.type {kind!r} is unknown.",
                            "Valid types are none, file, env and web.")
    if kind == "none":
        return lambda: None
    return lambda: _management_key(kind, key_file, environ, path)


def _forced_version(values: Mapping[str, str], path: str) -> Optional[str]:
    version = values.get("db.cloud.encryptor.version", "").strip()
    try:
        _versions(version)
    except SettingsError:
        raise SettingsError(f"{path}: db.cloud.encryptor.version {version!r} is unknown.",
                            "Leave it empty (try V2, then V1) or set V1 or V2.") from None
    return version.upper() or None


def _location(reader: _Values, path: str) -> tuple[str, int, str]:
    uri = reader.get("db.cloud.uri")
    if uri:
        return _parse_jdbc_uri(uri, path, reader.get("db.cloud.name", "cloud"))
    port_text = reader.get("db.cloud.port", str(DEFAULT_PORT))
    if not port_text.isdigit():
        raise SettingsError(f"{path}: db.cloud.port {port_text!r} is not a number.")
    host = reader.get("db.cloud.host", "localhost")
    return host, int(port_text), reader.get("db.cloud.name", "cloud")


def _parse_jdbc_uri(uri: str, path: str, default_name: str) -> tuple[str, int, str]:
    """(host, port, database) of the first host of a Connector/J URL.

    The URL may carry user:password@, so it never appears in a message.
    """
    bad = SettingsError(
        f"{path}: db.cloud.uri is not a JDBC URL this tool reads.",
        "Use the form jdbc:mysql://host[:port]/dbname[?params] "
        "(or jdbc:mysql:loadbalance://host1,host2:port/dbname).")
    match = _JDBC_URL.fullmatch(uri)
    if match is None:
        raise bad
    hosts = match.group("hosts").rpartition("@")[2]
    # Connector/J gives each host its own port: in h1,h2:3307 the first host uses 3306.
    first = _HOST_PORT.fullmatch(hosts.split(",")[0].strip())
    if first is None or not (first.group("port") or "0").isdigit():
        raise bad
    host = first.group("v6") or first.group("name") or "localhost"
    port = int(first.group("port") or DEFAULT_PORT)
    # No database in the URL: fall back to db.cloud.name rather than connect to none.
    name = unquote(match.group("name") or "") or default_name
    return host, port, name


def _ssl(reader: _Values) -> dict:
    # Like the management server (Boolean.parseBoolean), only "true" in any case turns SSL on,
    # and the stores are read only then.
    if reader.get("db.cloud.useSSL").lower() != "true":
        return {}
    return {
        "ssl": True,
        "ssl_key_store": reader.get("db.cloud.keyStore") or None,
        "ssl_key_store_password": reader.get("db.cloud.keyStorePassword") or None,
        "ssl_trust_store": reader.get("db.cloud.trustStore") or None,
        "ssl_trust_store_password": reader.get("db.cloud.trustStorePassword") or None,
    }
