"""Encryption at rest: the keys, and how one field of a session is sealed and opened.

Opt-in (``SATCHEL_ENCRYPTION_KEYS``, the ASGI middleware's ``encryption_keys=``):
the first key encrypts, every key decrypts, so a new key can be put first while
the old ones still read what they wrote (see ``satchel sessions rekey``).

The construction, and why (docs/security.md says more):

* Each process (each worker, after a fork too) draws a random 128-bit salt and
  derives its own writing key from the master key:
  ``HMAC-SHA256(master, "satchel/v1/save" || salt)``. It encrypts every field it
  writes with AES-256-GCM under that key, with a 64-bit counter as the nonce, and
  draws a new salt after 2^32 fields. A nonce is never used twice under one derived
  key, and two writers share a derived key only if they draw the same salt (about
  2^-32 after 2^48 of them), where AES-GCM with random 96-bit nonces under the
  master key itself would have to be retired after about 2^32 fields.
* The associated data binds each ciphertext to its session (a random 128-bit
  *seal* drawn when the session is created, which moves with it to each new ID)
  and to the name it is stored under, so a ciphertext copied into another session
  or another field does not open; the seal itself carries a tag binding it to the
  record's key, so a whole record copied under another key does not open either.
* A field's name is stored as an HMAC of the seal and the name (under a key
  derived from the master key): a key name may hold user data
  (``session["draft:" + email]``). The clear name travels inside the ciphertext.

The ``cryptography`` package does the cryptography (``pip install
'satchel[encryption]'``); satchel only derives keys and lays out bytes.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import itertools
import os
import secrets
import threading
import time
from base64 import urlsafe_b64decode, urlsafe_b64encode
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from .errors import ConfigError, SatchelError

__all__ = [
    "KEY_BYTES",
    "EncryptionKeys",
    "FieldCipher",
    "Unreadable",
    "generate_key",
    "parse_until",
]

#: How many random bytes a key is (AES-256).
KEY_BYTES = 32
#: The first byte of every sealed field: the format's version.
VERSION = b"\x01"
_SALT = 16
_IDENT = 4
_INDEX = 8
_HEAD = 1 + _IDENT + _SALT + _INDEX
_FIELD_AAD = b"satchel/v1/field\x00"
_CACHE_LIMIT = 4096
#: Fields one derived writing key encrypts before its writer draws a new salt.
FIELDS_PER_SALT = 1 << 32
_TAG = 16


class Unreadable(SatchelError):
    """A stored field that does not open: a key no longer configured, or tampering."""


def generate_key() -> str:
    """A new key, as ``SATCHEL_ENCRYPTION_KEYS`` takes it (32 random bytes, URL-safe base64)."""
    return secrets.token_urlsafe(KEY_BYTES)


def _decode(key: object, setting: str, position: int) -> bytes:
    where = f"{setting}[{position}]"
    if isinstance(key, bytes):
        raw = key
    elif isinstance(key, str):
        text = key.strip()
        try:
            raw = urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(
                f"{where} is not URL-safe base64 ({exc}); make a key with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            ) from None
        if urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text.rstrip("="):
            raise ConfigError(f"{where} is not URL-safe base64 (A-Z a-z 0-9 - _ only)")
    else:
        raise ConfigError(f"{where} must be a str (URL-safe base64), not {type(key).__name__}")
    if len(raw) != KEY_BYTES:
        raise ConfigError(
            f"{where} is {len(raw)} bytes; an encryption key is {KEY_BYTES} random bytes "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"
        )
    return raw


def parse_until(value: Any, setting: str) -> float | None:
    """``SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL`` as a UNIX time: a number, an aware
    :class:`~datetime.datetime`, or ISO 8601 text with a time zone; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{setting} must be a UNIX time, a datetime or ISO 8601 text")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigError(f"{setting} is not ISO 8601 text: {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigError(f"{setting} needs a time zone (say +00:00): {value.isoformat()}")
        return value.timestamp()
    raise ConfigError(f"{setting} must be a UNIX time, a datetime or ISO 8601 text")


def _mac(key: bytes, message: bytes, size: int) -> bytes:
    """Keyed BLAKE2b (a PRF and MAC by design, one pass where HMAC-SHA256 makes two): for
    stored names and seal tags, computed on every write of a new session."""
    return hashlib.blake2b(message, key=key, digest_size=size).digest()


class _Key:
    """One master key and what is derived from it."""

    __slots__ = ("binds", "ident", "names", "secret")

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.ident = hmac.digest(secret, b"satchel/v1/ident", "sha256")[:_IDENT]
        #: The key a stored field's name is an HMAC under.
        self.names = hmac.digest(secret, b"satchel/v1/names", "sha256")
        #: The key a seal's tag (binding it to its record's key) is an HMAC under.
        self.binds = hmac.digest(secret, b"satchel/v1/binds", "sha256")


class EncryptionKeys:
    """The configured keys: the first encrypts, all decrypt.

    ``keys`` are URL-safe base64 text of 32 bytes each (with or without ``=``
    padding), or one string of them separated by commas or spaces (an environment
    variable). Anything else is a :class:`~satchel.errors.ConfigError` naming
    ``setting``. ``accept_plaintext_until`` (a UNIX time) is when records stored
    before encryption was on stop being read.
    """

    def __init__(
        self,
        keys: str | Iterable[str],
        *,
        accept_plaintext_until: float | None = None,
        setting: str = "SATCHEL_ENCRYPTION_KEYS",
    ) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ConfigError(
                f"{setting} needs the cryptography package: pip install 'satchel[encryption]'"
            ) from None
        self._aead = AESGCM
        if isinstance(keys, str):
            keys = [part for part in keys.replace(",", " ").split() if part]
        elif isinstance(keys, bytes) or not isinstance(keys, Iterable):
            raise ConfigError(f"{setting} must be a list of keys, not {type(keys).__name__}")
        decoded = [_decode(key, setting, i) for i, key in enumerate(keys)]
        if not decoded:
            raise ConfigError(f"{setting} names no key")
        self.keys = tuple(_Key(raw) for raw in decoded)
        if len({key.ident for key in self.keys}) != len(self.keys):
            raise ConfigError(f"{setting} names the same key twice")
        self.first = self.keys[0]
        self._by_ident = {key.ident: key for key in self.keys}
        self.accept_plaintext_until = accept_plaintext_until
        self._ciphers: dict[bytes, Any] = {}
        self._writer: FieldCipher | None = None
        self._guard = threading.Lock()
        self._names: dict[tuple[bytes, str], tuple[str, ...]] = {}

    def __repr__(self) -> str:
        return f"<EncryptionKeys: {len(self.keys)} key(s), never shown>"

    def accepts_plaintext(self, now: float | None = None) -> bool:
        """Whether a record stored in clear (before encryption was on) is still read."""
        until = self.accept_plaintext_until
        return until is not None and (time.time() if now is None else now) < until

    # -- names -----------------------------------------------------------------

    def stored_names(self, seal: bytes, name: str) -> tuple[str, ...]:
        """The names ``name`` is stored under in the session sealed by ``seal``, one per
        key, the first key's first: ``~`` and 22 URL-safe characters (132 bits)."""
        cache_key = (seal, name)
        found = self._names.get(cache_key)
        if found is None:
            message = seal + name.encode("utf-8", "surrogatepass")
            found = tuple(
                "~" + urlsafe_b64encode(_mac(key.names, message, 17)).decode("ascii")[:22]
                for key in self.keys
            )
            if len(self._names) >= _CACHE_LIMIT * 4:
                self._names.clear()
            self._names[cache_key] = found
        return found

    # -- fields ----------------------------------------------------------------

    def _cipher(self, key: _Key, salt: bytes) -> Any:
        """The AEAD under the key ``key`` derives for ``salt`` (a writer's), kept."""
        found = self._ciphers.get(key.ident + salt)
        if found is None:
            derived = hmac.digest(key.secret, b"satchel/v1/save" + salt, "sha256")
            found = self._aead(derived)
            if len(self._ciphers) >= _CACHE_LIMIT:
                self._ciphers.clear()
            self._ciphers[key.ident + salt] = found
        return found

    def cipher(self) -> FieldCipher:
        """This process's writing cipher (see the module): made at the first write, and
        again after a fork or once it has sealed :data:`FIELDS_PER_SALT` fields."""
        writer = self._writer
        if writer is None or writer.pid != os.getpid() or writer.spent():
            with self._guard:
                writer = self._writer
                if writer is None or writer.pid != os.getpid() or writer.spent():
                    salt = os.urandom(_SALT)
                    key = self.first
                    # The same derivation (and cached AEAD) that reads these fields back.
                    writer = FieldCipher(key.ident + salt, self._cipher(key, salt))
                    self._writer = writer
        return writer

    # -- seals -----------------------------------------------------------------

    def seal_field(self, seal: bytes, record_key: str) -> bytes:
        """The stored form of ``seal`` in the record filed under ``record_key``: its
        version, the first key's identifier, the seal, and a tag binding the two."""
        key = self.first
        tag = _mac(key.binds, seal + record_key.encode("utf-8"), _TAG)
        return VERSION + key.ident + seal + tag

    def open_seal(self, stored: bytes, record_key: str) -> bytes:
        """The seal a record filed under ``record_key`` holds; :class:`Unreadable` when its
        tag does not match (the record was copied from another key) or is malformed."""
        if len(stored) != 1 + _IDENT + _SALT + _TAG or stored[:1] != VERSION:
            raise Unreadable("its seal is malformed")
        key = self._by_ident.get(stored[1 : 1 + _IDENT])
        if key is None:
            raise Unreadable("its seal is under a key that is not configured")
        seal = stored[1 + _IDENT : 1 + _IDENT + _SALT]
        tag = _mac(key.binds, seal + record_key.encode("utf-8"), _TAG)
        if not hmac.compare_digest(tag, stored[1 + _IDENT + _SALT :]):
            raise Unreadable("its seal belongs to another record")
        return seal

    def open(self, seal: bytes, stored: str, sealed: bytes) -> tuple[str, bytes]:
        """The name and value ``sealed`` (stored as ``stored`` in the session ``seal``
        seals) holds; :class:`Unreadable` when it does not open."""
        if len(sealed) < _HEAD + 16 or sealed[:1] != VERSION:
            raise Unreadable("not a sealed value")
        key = self._by_ident.get(sealed[1 : 1 + _IDENT])
        if key is None:
            raise Unreadable("sealed under a key that is not configured")
        cipher = self._cipher(key, sealed[1 + _IDENT : 1 + _IDENT + _SALT])
        nonce = b"\x00" * 4 + sealed[_HEAD - _INDEX : _HEAD]
        aad = _FIELD_AAD + seal + stored.encode("utf-8", "surrogatepass")
        try:
            plain: bytes = cipher.decrypt(nonce, sealed[_HEAD:], aad)
        except Exception:  # cryptography's InvalidTag: moved, altered or another key's
            raise Unreadable("does not open under its session and name") from None
        size = int.from_bytes(plain[:4], "big")
        return plain[4 : 4 + size].decode("utf-8", "surrogatepass"), plain[4 + size :]

    def ident_of(self, sealed: bytes) -> bytes:
        """The identifier of the key that sealed ``sealed``."""
        return sealed[1 : 1 + _IDENT]

    def is_current(self, sealed: bytes) -> bool:
        """Whether ``sealed`` (a field or a seal) is under the first key (``rekey`` leaves it)."""
        return self.ident_of(sealed) == self.first.ident


class FieldCipher:
    """One writer's cipher: a derived key, and a counter for its nonces."""

    __slots__ = ("_aead", "_count", "_head", "last", "pid")

    def __init__(self, head: bytes, aead: Any) -> None:
        self._head = VERSION + head
        self._aead = aead
        self._count = itertools.count()  # next() is atomic: threads never share a nonce
        #: The process that made it (a forked child makes its own).
        self.pid = os.getpid()
        #: The last nonce index handed out (read without a lock: only ever grows).
        self.last = 0

    def spent(self) -> bool:
        """Whether it has sealed its share of fields (it then gets a new salt)."""
        return self.last >= FIELDS_PER_SALT

    def seal(self, seal: bytes, stored: str, name: str, value: bytes) -> bytes:
        """``name`` and ``value``, sealed to be stored as ``stored`` in ``seal``'s session."""
        count = next(self._count)
        self.last = count
        index = count.to_bytes(_INDEX, "big")
        encoded = name.encode("utf-8", "surrogatepass")
        aad = _FIELD_AAD + seal + stored.encode("utf-8", "surrogatepass")
        body: bytes = self._aead.encrypt(
            b"\x00" * 4 + index, len(encoded).to_bytes(4, "big") + encoded + value, aad
        )
        return self._head + index + body


def keys_from(
    value: Sequence[str] | str | None, until: Any, setting: str, until_setting: str
) -> EncryptionKeys | None:
    """The :class:`EncryptionKeys` a config names, or ``None`` when encryption is off."""
    if value is None or value == "" or (isinstance(value, list | tuple) and not value):
        if until is not None:
            raise ConfigError(f"{until_setting} is set but {setting} is not")
        return None
    return EncryptionKeys(
        value, accept_plaintext_until=parse_until(until, until_setting), setting=setting
    )
