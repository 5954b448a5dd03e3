"""Importing sessions from Flask's cookie session and Flask-Session, each at most once.

An app that switches to satchel already has visitors with sessions. With
``SATCHEL_MIGRATE_FROM`` set, a request whose session cookie is not a satchel
cookie but a genuine old one has that session's data imported into a new
satchel session (a new ID, created now, no owner) on that very request, so the
visitor notices nothing. Two sources are understood:

``"flask-cookie"``
    Flask's own signed cookie session, verified with ``SECRET_KEY`` or one of
    ``SECRET_KEY_FALLBACKS`` by Flask's own serializer and salt, and no older
    than ``PERMANENT_SESSION_LIFETIME``, as Flask would have checked it.
``"flask-session"``
    A Flask-Session 0.8 session ID (signed or not), whose record is read from
    the old Redis/Valkey, decoded from Flask-Session's msgpack (or JSON)
    format, and deleted. A legacy pickle record is never unpickled.

Each old cookie imports at most once. The import *claims* the cookie in the
store (under the store's prefix plus ``"migrated:"``): a record filed under a
hash of the cookie, which holds the new session's ID sealed with a key derived
from the secret key and the cookie itself, and which lives until the old cookie
would have expired anyway. A request with the same cookie that arrives while
the importing request runs, or up to ``SATCHEL_MIGRATE_OVERLAP`` seconds after
it answered (a browser's parallel requests, requests a busy server queued
behind it), joins the new session; after that the cookie imports nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from itsdangerous import BadSignature, Signer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, base64_encode

from ._ops import Delete, Fetch, Forget, LifeSteps, LoadClaim, SaveClaim
from .errors import ConfigError, StoreUnavailable
from .serialization import dumps
from .signals import security_log, session_migrated
from .stores.base import Change, Record, SaveResult, Store, size_of

if TYPE_CHECKING:
    from .session import Session
    from .signals import Counters


class _Life(Protocol):
    """What an import needs of the lifecycle (:class:`satchel._lifecycle.Lifecycle`)."""

    counters: Counters
    sender: object

    @property
    def settings(self) -> Any: ...

    def _create_record_steps(
        self, session: Session, fields: dict[str, bytes]
    ) -> LifeSteps[tuple[str, str, Record]]: ...

    def _locked_load_steps(
        self, session: Session, key: str, record: Record
    ) -> LifeSteps[Record]: ...

    def _load_steps(self, session: Session) -> LifeSteps[Record | None]: ...


__all__ = [
    "CLAIM_PREFIX",
    "DEFAULT_OVERLAP",
    "JOIN_WINDOW",
    "SOURCES",
    "FlaskCookieSource",
    "FlaskSessionSource",
    "Migration",
    "Source",
    "parse_until",
]

#: The sources ``SATCHEL_MIGRATE_FROM`` may name.
SOURCES = ("flask-cookie", "flask-session")
#: Claims of imported cookies live under the store's prefix plus this.
CLAIM_PREFIX = "migrated:"
#: How many seconds after an import answered a request with the same old cookie
#: still joins the imported session (``SATCHEL_MIGRATE_OVERLAP``): a browser's
#: parallel requests, and requests a busy server queued behind the import.
DEFAULT_OVERLAP = 5.0
#: The longest a request with an old cookie may join the session another request
#: is importing from it, should that request never answer (a crashed worker).
JOIN_WINDOW = 30.0
#: Old cookies longer than this are not even looked at (browsers stop at 4 KB).
MAX_OLD_COOKIE = 8192

_log = logging.getLogger("satchel")

_SID = re.compile(r"[A-Za-z0-9_-]{16,256}")
_SEAL = b"satchel.migration.seal"


def _canonical_signature(cookie: str) -> bool:
    """Whether the signature after the last dot is base64 as the signer writes it.

    Base64 lets the last character of a signature vary in its unused bits, so
    one genuine cookie has several spellings that verify; each would be a
    different old cookie to the once-only claim. Only the signer's own spelling
    is accepted.
    """
    signature = cookie.rpartition(".")[2]
    try:
        return base64_encode(base64_decode(signature)).decode("ascii") == signature
    except Exception:
        return False


def _as_bytes(keys: Sequence[str | bytes]) -> list[bytes]:
    return [k.encode("utf-8") if isinstance(k, str) else k for k in keys]


class Unimportable(Exception):
    """An old session that exists but cannot be imported; logged and counted, never raised."""


@dataclass(frozen=True, slots=True)
class Found:
    """An old session ready to import: its data, and when it would have expired."""

    values: Mapping[str, Any]
    expires_at: float


class Source:
    """Where old sessions come from: recognises old cookies and fetches their data."""

    #: The name ``SATCHEL_MIGRATE_FROM`` gives this source.
    name = ""

    def recognise(self, cookie: str) -> Any:
        """A token for ``cookie`` when it is genuinely this source's, else ``None``.

        Called for every request whose cookie is not a satchel cookie, so it
        only does local work (a signature check), never I/O.
        """
        raise NotImplementedError

    def identity(self, token: Any, cookie: str) -> str:
        """The old session ``token`` (from ``cookie``) names, whatever spelling carried it.

        Two cookies naming one old session (Flask-Session's signed ``sid.sig``
        and its bare ``sid``) must claim one import, so the claim is keyed on
        this. The cookie itself by default: it holds the whole session.
        """
        return cookie

    def fetch(self, token: Any) -> Found | None:
        """The session ``token`` names; ``None`` if it has ended.

        Raises :class:`Unimportable` for a session that exists but cannot be
        imported, and :class:`~satchel.errors.StoreUnavailable` when the old
        store cannot be read.
        """
        raise NotImplementedError

    def forget(self, token: Any) -> None:
        """Delete the old session after its import, where there is anything to delete."""

    def rekey(self, secret_key: str | bytes, fallbacks: Sequence[str | bytes]) -> None:
        """Verify with these keys from now on (the app's keys changed)."""


class FlaskCookieSource(Source):
    """Flask's signed cookie session (``SecureCookieSessionInterface``).

    Verified with Flask's own salt, key derivation, digest and tagged-JSON
    serializer, so tuples, bytes, datetimes, ``Markup`` and UUIDs come back
    as Flask would have given them; ``max_age`` (seconds) is
    ``PERMANENT_SESSION_LIFETIME``, which Flask checks on every cookie.
    """

    name = "flask-cookie"

    def __init__(
        self, secret_key: str | bytes, fallbacks: Sequence[str | bytes], max_age: int
    ) -> None:
        self.max_age = max_age
        self.rekey(secret_key, fallbacks)

    def rekey(self, secret_key: str | bytes, fallbacks: Sequence[str | bytes]) -> None:
        """Build Flask's serializer for these keys (any of them verifies)."""
        from flask.sessions import SecureCookieSessionInterface as Flask

        self._serializer = URLSafeTimedSerializer(
            _as_bytes([*fallbacks, secret_key]),
            salt=Flask.salt,
            serializer=Flask.serializer,
            signer_kwargs={"key_derivation": Flask.key_derivation, "digest_method": hashlib.sha1},
        )

    def recognise(self, cookie: str) -> Any:
        """The cookie's data and signing time, when a key of the app signed it recently."""
        # payload.timestamp.signature, the payload led by a dot when compressed
        if len(cookie) > MAX_OLD_COOKIE or cookie.lstrip(".").count(".") != 2:
            return None
        if not _canonical_signature(cookie):
            return None
        try:
            data, signed = self._serializer.loads(
                cookie, max_age=self.max_age, return_timestamp=True
            )
        except Exception:  # BadSignature, or signed by the app's key yet not Flask's JSON
            return None
        if not isinstance(data, dict):
            return None
        assert isinstance(signed, datetime)
        return Found(data, signed.timestamp() + self.max_age)

    def fetch(self, token: Any) -> Found | None:
        """The data is in the cookie itself."""
        assert isinstance(token, Found)
        return token


class FlaskSessionSource(Source):
    """Flask-Session 0.8 on Redis or Valkey: the cookie names a record under ``prefix``.

    ``use_signer`` is Flask-Session's ``SESSION_USE_SIGNER``: ``True`` accepts
    only signed IDs, ``False`` only plain ones, ``None`` either. ``lifetime``
    is how long a claim lasts when the record had no expiry.
    """

    name = "flask-session"

    def __init__(
        self,
        client: Any,
        prefix: str,
        secret_key: str | bytes,
        fallbacks: Sequence[str | bytes],
        *,
        use_signer: bool | None,
        lifetime: float,
    ) -> None:
        try:
            import msgspec
            import redis
        except ImportError as exc:
            raise ConfigError(
                "importing Flask-Session records needs msgspec (which Flask-Session itself "
                "uses) and redis-py: pip install 'satchel[migrate]'"
            ) from exc
        self.client = client
        self.prefix = prefix
        self.use_signer = use_signer
        self.lifetime = lifetime
        self._decoders = (msgspec.msgpack.Decoder(), msgspec.json.Decoder())
        self._decode_error: type[Exception] = msgspec.DecodeError
        self._redis_error: type[Exception] = redis.RedisError
        self.rekey(secret_key, fallbacks)

    @classmethod
    def from_url(cls, url: str, prefix: str, *args: Any, **kwargs: Any) -> FlaskSessionSource:
        """Connect to the old store by URL: ``redis://``, ``valkey://``, ``…+cluster://``."""
        try:
            import redis
        except ImportError as exc:
            raise ConfigError(
                "importing Flask-Session records needs redis-py: pip install 'satchel[migrate]'"
            ) from exc
        if not isinstance(url, str) or "://" not in url:
            raise ConfigError(
                f"SATCHEL_MIGRATE_FLASK_SESSION_STORE must be a Redis/Valkey URL, not {url!r}"
            )
        scheme, rest = url.split("://", 1)
        scheme = scheme.lower()
        if scheme.startswith("valkey"):
            scheme = "redis" + scheme[6:]
        options = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        try:
            if scheme.endswith("+cluster"):
                from redis.cluster import RedisCluster

                client: Any = RedisCluster.from_url(
                    scheme.removesuffix("+cluster") + "://" + rest, **options
                )
            else:
                client = redis.Redis.from_url(f"{scheme}://{rest}", **options)
        except (ValueError, redis.RedisError) as exc:
            raise ConfigError(f"SATCHEL_MIGRATE_FLASK_SESSION_STORE {url!r}: {exc}") from exc
        return cls(client, prefix, *args, **kwargs)

    def rekey(self, secret_key: str | bytes, fallbacks: Sequence[str | bytes]) -> None:
        """Flask-Session's signer (salt ``flask-session``) for these keys."""
        self._signer = Signer(
            _as_bytes([*fallbacks, secret_key]), salt="flask-session", key_derivation="hmac"
        )

    def __repr__(self) -> str:
        return f"Flask-Session store {self.client!r} (prefix {self.prefix!r})"

    def recognise(self, cookie: str) -> Any:
        """The session ID the cookie holds, signed or plain as ``use_signer`` allows."""
        if len(cookie) > 512:
            return None
        if self.use_signer is not False and cookie.count(".") == 1 and _canonical_signature(cookie):
            try:
                sid = self._signer.unsign(cookie).decode("ascii")
            except (BadSignature, UnicodeDecodeError):
                sid = ""
            if _SID.fullmatch(sid):
                return sid
        if self.use_signer is not True and _SID.fullmatch(cookie):
            return cookie
        return None

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(repr(self), f"{type(exc).__name__}: {exc}")

    def identity(self, token: Any, cookie: str) -> str:
        """The record's key: ``sid.sig`` and the bare ``sid`` name one session."""
        return f"{self.name}\0{self.prefix}{token}"

    def fetch(self, token: Any) -> Found | None:
        """Read and decode the record; a pickle is refused before anything reads it."""
        key = self.prefix + token
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(key)
            pipe.pttl(key)
            raw, ttl = pipe.execute()
        except self._redis_error as exc:
            raise self._unavailable(exc) from exc
        if raw is None:
            return None
        if raw[:1] == b"\x80":  # a pickle's PROTO opcode: Flask-Session before 0.7
            raise Unimportable("a legacy pickle record (never unpickled)")
        values = None
        for decoder in self._decoders:
            try:
                values = decoder.decode(raw)
                break
            except self._decode_error:
                continue
        if values is None:
            raise Unimportable("a record in neither msgpack nor JSON (a legacy pickle?)")
        if not isinstance(values, dict) or not all(type(k) is str for k in values):
            raise Unimportable("a record that is not a mapping of str keys")
        now = time.time()
        expires_at = now + ttl / 1000 if ttl and ttl > 0 else now + self.lifetime
        return Found(values, expires_at)

    def forget(self, token: Any) -> None:
        """Delete the old record, so that nothing reads it again."""
        try:
            self.client.delete(self.prefix + token)
        except self._redis_error as exc:
            # The claim still makes the cookie import nothing a second time.
            _log.warning("could not delete an imported Flask-Session record: %s", exc)


def parse_until(value: Any) -> float | None:
    """``SATCHEL_MIGRATE_UNTIL`` as seconds since the epoch (naive times are UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(
                f"SATCHEL_MIGRATE_UNTIL must be an ISO-8601 date and time, not {value!r}"
            ) from None
    if not isinstance(value, datetime):
        raise ConfigError(
            f"SATCHEL_MIGRATE_UNTIL must be a datetime or an ISO-8601 string, not {value!r}"
        )
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


@dataclass(frozen=True, slots=True)
class _Pending:
    """An old cookie recognised when the request opened its session."""

    source: Source
    cookie: str
    token: Any

    @property
    def identity(self) -> str:
        """What the once-only claim is keyed on: the old session, however spelt."""
        return self.source.identity(self.token, self.cookie)


class Migration:
    """Recognises old cookies, imports their sessions once, and lets overlaps join.

    ``sources`` are tried in order; ``claims`` is the store where imported
    cookies are claimed (the session store under another prefix); ``until``
    (seconds since the epoch) ends the migration window; ``seal_key`` returns
    the key the new session's ID is sealed with in a claim; ``overlap`` is how
    many seconds after the importing request answered a request with the same
    old cookie still joins its session (``SATCHEL_MIGRATE_OVERLAP``).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        claims: Store,
        until: float | None,
        seal_key: Callable[[], bytes],
        overlap: float = DEFAULT_OVERLAP,
    ) -> None:
        self.sources = tuple(sources)
        self.claims = claims
        self.until = until
        self.overlap = overlap
        self._seal_key = seal_key

    def rekey(self, secret_key: str | bytes, fallbacks: Sequence[str | bytes]) -> None:
        """The app's keys changed: every source verifies with the new ones."""
        for source in self.sources:
            source.rekey(secret_key, fallbacks)

    def recognise(self, cookies: Sequence[str]) -> _Pending | None:
        """The first cookie that is a genuine old one, while the window is open."""
        if self.until is not None and time.time() >= self.until:
            return None
        for cookie in cookies:
            for source in self.sources:
                token = source.recognise(cookie)
                if token is not None:
                    return _Pending(source, cookie, token)
        return None

    # -- claims ----------------------------------------------------------------

    @staticmethod
    def claim_key(cookie: str) -> str:
        """Where the claim of an old session (its :meth:`Source.identity`) is filed:
        a hash, never the cookie."""
        return hashlib.sha256(b"satchel.migration\0" + cookie.encode("utf-8")).hexdigest()

    def _pad(self, cookie: str) -> bytes:
        key = self._seal_key()
        return hmac.new(key, _SEAL + cookie.encode("utf-8"), hashlib.sha256).digest()

    def _seal(self, session_id: str, cookie: str) -> bytes:
        raw = base64.urlsafe_b64decode(session_id + "=")
        return base64.b64encode(bytes(a ^ b for a, b in zip(raw, self._pad(cookie), strict=True)))

    def _unseal(self, sealed: bytes, cookie: str) -> str | None:
        try:
            raw = base64.b64decode(sealed, validate=True)
        except ValueError:
            return None
        if len(raw) != 32:
            return None
        opened = bytes(a ^ b for a, b in zip(raw, self._pad(cookie), strict=True))
        return base64.urlsafe_b64encode(opened).rstrip(b"=").decode("ascii")

    def counts(self) -> dict[str, int]:
        """Claims held now, by source: old cookies imported and not yet expired."""
        records = getattr(self.claims, "records", None)
        found = {source.name: 0 for source in self.sources}
        if records is None:
            return found
        for _key, record in records():
            name = record.fields.get("src", b"").decode("utf-8", "replace")
            found[name] = found.get(name, 0) + 1
        return found

    # -- the import --------------------------------------------------------------

    def load_steps(self, life: _Life, session: Session) -> LifeSteps[Record | None]:
        """The record of the session an old cookie becomes: imported, joined, or none.

        Lifecycle steps (see :mod:`satchel._ops`): the claims and the new record go
        through the driver, so a sync and an async app import alike.
        """
        pending = session.state.migrating
        assert isinstance(pending, _Pending)
        session.state.migrating = None
        claim = self.claim_key(pending.identity)
        claimed, joined = yield from self._join_steps(life, session, pending, claim)
        if claimed:
            return joined
        source = pending.source
        try:
            found = yield Fetch(source, pending.token)
            if found is None:
                # Gone: an overlapping request imported it just now (it claims the
                # cookie before it deletes the record), or the old session ended.
                return (yield from self._join_steps(life, session, pending, claim))[1]
            fields = self._fields(found.values, life.settings.max_size)
        except Unimportable as exc:
            life.counters.add("migration_failures")
            security_log.warning("could not import a %s session: %s", source.name, exc)
            return None
        if fields is None:
            return None  # nothing but _permanent: nothing worth a session
        session_id, key, record = yield from life._create_record_steps(session, fields)
        now = time.time()
        expires_at = max(found.expires_at, now + JOIN_WINDOW)
        taken = yield SaveClaim(
            claim,
            Change(
                set={"to": self._seal(session_id, pending.identity), "src": source.name.encode()},
                created_at=now,
                touched_at=now,
                expires_at=expires_at,
                ends_by=expires_at,
            ),
            True,
        )
        if taken != SaveResult.SAVED:
            # An overlapping request imported the same cookie first: join its session.
            yield Delete(key)
            return (yield from self._join_steps(life, session, pending, claim))[1]
        yield Forget(source, pending.token)
        session.state.session_id = session_id
        session.state.resign = True  # send the new cookie even if nothing else changes
        session.state.claim = (claim, expires_at)
        life.counters.add("migrated")
        life.counters.add("creates")
        session_migrated.send(life.sender, session=session, fingerprint=key[:8], source=source.name)
        return (yield from life._locked_load_steps(session, key, record))

    def _fields(self, values: Mapping[str, Any], limit: int) -> dict[str, bytes] | None:
        fields: dict[str, bytes] = {}
        for name, value in values.items():
            if type(name) is not str:
                raise Unimportable(f"a key that is not a str: {name!r}")
            try:
                fields[name] = dumps(value, name)
            except Exception as exc:
                raise Unimportable(f"the value of {name!r}: {exc}") from exc
        if all(name == "_permanent" for name in fields):
            return None
        if size_of(fields) > limit:
            raise Unimportable(f"{size_of(fields)} bytes, over SATCHEL_MAX_SIZE ({limit})")
        return fields

    def _join_steps(
        self, life: _Life, session: Session, pending: _Pending, claim: str
    ) -> LifeSteps[tuple[bool, Record | None]]:
        """Whether the cookie was claimed, and the imported session's record to join.

        The record is there while the importing request is still running;
        afterwards (or without a claim) it is ``None``.
        """
        held = yield LoadClaim(claim)
        if held is None:
            return False, None
        settled = held.fields.get("settled")
        now = time.time()
        if settled is not None:
            try:
                joinable = now - float(settled) <= self.overlap
            except ValueError:  # only satchel writes claims; anything else joins nothing
                joinable = False
        else:  # the importing request is still running (or died: JOIN_WINDOW bounds it)
            joinable = now - held.created_at <= JOIN_WINDOW
        if not joinable:
            life.counters.add("migration_replays")
            security_log.info(
                "an old %s cookie came back after its import; it imports nothing",
                pending.source.name,
            )
            return True, None
        session_id = self._unseal(held.fields.get("to", b""), pending.identity)
        if session_id is None:
            return True, None
        session.state.session_id = session_id
        session.state.resign = True
        record = yield from life._load_steps(session)
        if record is None:
            session.state.session_id = None
            session.state.resign = False
        return True, record

    def settle_steps(self, claim: tuple[str, float]) -> LifeSteps[None]:
        """The importing request has answered: ``overlap`` seconds on, its cookie gets nothing."""
        key, expires_at = claim
        now = time.time()
        try:
            yield SaveClaim(
                key,
                Change(set={"settled": repr(now).encode()}, touched_at=now, expires_at=expires_at),
                False,
            )
        except StoreUnavailable as exc:
            # Joining stops JOIN_WINDOW seconds after the claim anyway.
            _log.warning("could not settle a migration claim: %s", exc)
