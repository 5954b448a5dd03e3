"""Session IDs: making them, signing them for the cookie, hashing them for the store.

An ID is 256 random bits. The cookie carries the ID signed with the app's
secret key (itsdangerous, HMAC-SHA256, compared in constant time); older keys
are still accepted so that keys rotate without logging anyone out. Only the
canonical text of a signed ID is accepted: exactly the 43 URL-safe base64
characters of the ID, a dot, and the 43 of the signature, as :meth:`CookieSigner.sign`
writes them, so one ID never verifies under several cookie strings. The store
only ever sees :func:`store_key`, a SHA-256 hash of the ID, so a copy of the
store cannot be turned back into working cookies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from typing import Any

from itsdangerous import BadSignature, Signer, want_bytes

__all__ = [
    "MAX_COOKIE_LENGTH",
    "MIN_SECRET_LENGTH",
    "CookieSigner",
    "new_id",
    "store_key",
    "weak_secret",
]

#: A signed ID is under 100 characters; anything much longer is not ours.
MAX_COOKIE_LENGTH = 256

_SALT = "satchel.session"

# 32 bytes in URL-safe base64 without padding: 43 characters, the last of which
# carries 4 bits and two zero bits, so only 16 letters can end it. Anything else
# (padding, '+' or '/', other final letters, extra characters) is not canonical.
_B64_32 = r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]"
_CANONICAL = re.compile(rf"{_B64_32}\.{_B64_32}")

#: A secret key shorter than this many bytes draws a warning.
MIN_SECRET_LENGTH = 32

# Keys copied from tutorials and documentation, Flask's own among them.
_SAMPLE_KEYS = frozenset(
    {
        b'_5#y2L"F4Q8z\n\xec]/',
        b"dev",
        b"development key",
        b"secret",
        b"secret-key",
        b"secret_key",
        b"changeme",
        b"change-me",
        b"change me",
        b"your-secret-key",
        b"your_secret_key",
        b"super-secret-key",
        b"supersecretkey",
        b"mysecretkey",
        b"replace-me",
        # satchel's own README and docs use this one in their examples.
        b"an-example-key-of-32-random-bytes-or-more!",
    }
)


#: How many verified cookies a signer remembers (about 150 bytes each).
VERIFIED_CACHE_SIZE = 4096


def weak_secret(key: str | bytes) -> str | None:
    """Say why ``key`` is a weak secret key, or return ``None`` when it looks fine."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    if raw.strip().lower() in _SAMPLE_KEYS or raw in _SAMPLE_KEYS:
        return "a sample key from documentation or a tutorial"
    if len(raw) < MIN_SECRET_LENGTH:
        return f"only {len(raw)} bytes long (use at least {MIN_SECRET_LENGTH} random bytes)"
    if len(set(raw)) < 8:
        return "made of very few distinct characters"
    return None


def new_id() -> str:
    """Return a fresh session ID: 256 bits from :mod:`secrets`, URL-safe text."""
    return secrets.token_urlsafe(32)


#: How many IDs' keys :func:`store_key` remembers (emptied when full), as the signer
#: remembers the cookies it verified: a returning visitor's key costs a dict lookup.
KEY_CACHE_SIZE = 4096
_keys: dict[str, str] = {}


def store_key(session_id: str) -> str:
    """Return the key a store files a session under: the hex SHA-256 of its ID."""
    key = _keys.get(session_id)
    if key is None:
        key = hashlib.sha256(session_id.encode("ascii")).hexdigest()
        if len(_keys) >= KEY_CACHE_SIZE:
            _keys.clear()
        _keys[session_id] = key
    return key


class _Signer(Signer):
    """itsdangerous's signer, deriving each key once instead of on every call.

    The derivation (an HMAC of the salt) depends only on the key, so its
    result is kept; signatures are byte for byte those of :class:`Signer`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[bytes, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        """Return the derived key for ``secret_key`` (the newest key by default)."""
        raw = self.secret_keys[-1] if secret_key is None else want_bytes(secret_key)
        derived = self._derived.get(raw)
        if derived is None:
            derived = self._derived[raw] = super().derive_key(raw)
        return derived


class CookieSigner:
    """Signs session IDs with the newest key, accepts any of the keys given.

    ``secret_key`` signs; each of ``fallbacks`` (oldest or newest first, as
    Flask's ``SECRET_KEY_FALLBACKS`` lists them) is still accepted.
    """

    def __init__(self, secret_key: str | bytes, fallbacks: Iterable[str | bytes] = ()) -> None:
        # itsdangerous signs with the last key of the list and tries them all.
        keys = [
            k.encode("utf-8") if isinstance(k, str) else k
            for k in [*reversed(list(fallbacks)), secret_key]
        ]
        self._signer = _Signer(keys, salt=_SALT, digest_method=hashlib.sha256)
        self._fallbacks = len(keys) > 1
        # Cookies already verified with these keys, and the IDs they carry: a visitor
        # sends the same cookie request after request, and a lookup costs a tenth of
        # the HMAC. Only genuine cookies go in; a new signer (new keys) starts empty.
        self._verified: dict[str, str] = {}

    def sign(self, session_id: str) -> str:
        """Return the cookie value for ``session_id``."""
        return self._signer.sign(session_id).decode("ascii")

    def derived_key(self) -> bytes:
        """The key derived from the current secret key, for other MACs than the cookie's."""
        return self._signer.derive_key()

    def renewed_ids(self, session_id: str) -> list[str]:
        """The ID a renewal gives ``session_id``, under the current key first, then under
        each fallback key (a worker still on an older key renewed it).

        A MAC of the old ID under the app's key: every worker that renews one session
        at once arrives at the same new ID (one session, never two), and a request
        still holding the old ID finds the renewed session, but no one without the
        key can tell the new ID from the old.
        """
        message = b"satchel-renewal\x00" + session_id.encode("ascii")
        return [
            base64.urlsafe_b64encode(
                hmac.new(self._signer.derive_key(key), message, hashlib.sha256).digest()
            )
            .rstrip(b"=")
            .decode("ascii")
            for key in reversed(self._signer.secret_keys)
        ]

    def unsign(self, cookie: str) -> str | None:
        """Return the session ID in ``cookie``, or ``None`` when it is not genuine."""
        known = self._verified.get(cookie)
        if known is not None:
            return known
        if not cookie or len(cookie) > MAX_COOKIE_LENGTH or not _CANONICAL.fullmatch(cookie):
            return None
        try:
            raw = self._signer.unsign(cookie.encode("ascii"))
        except BadSignature:
            return None
        session_id = raw.decode("ascii")
        verified = self._verified
        if len(verified) >= VERIFIED_CACHE_SIZE:
            verified.clear()  # cheaper than tracking age, and refilled at once
        verified[cookie] = session_id
        return session_id

    def signed_by_fallback(self, cookie: str) -> bool:
        """Whether a cookie that :meth:`unsign` accepted was signed by a fallback key.

        Such a cookie is signed anew with the current key when it is used, so
        the fallback can be dropped once the old cookies have been seen again.
        """
        if not self._fallbacks:
            return False
        value, _, signature = cookie.encode("ascii").rpartition(b".")
        expected = self._signer.get_signature(value)
        return not hmac.compare_digest(expected, signature)
