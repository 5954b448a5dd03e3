"""Session IDs, cookies and store keys (satchel.signing), each computed here independently.

Every value checked below is derived in the test from its definition (itsdangerous's
signer, HMAC-SHA256, SHA-256, base64), never read back from the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from itsdangerous import Signer

from satchel import signing
from satchel.signing import CookieSigner, new_id, store_key, weak_secret

NEW = "a new key of at least thirty-two random bytes: 7f3a9c"
OLD = "an old key of at least thirty-two random bytes: 02be4d"


def reference_signer(key: str) -> Signer:
    return Signer(key, salt="satchel.session", digest_method=hashlib.sha256)


def test_a_cookie_is_itsdangerous_signature_of_the_id_under_the_newest_key() -> None:
    session_id = new_id()
    signer = CookieSigner(NEW, fallbacks=[OLD])
    assert signer.sign(session_id) == reference_signer(NEW).sign(session_id).decode()
    assert signer.derived_key() == reference_signer(NEW).derive_key()
    old_cookie = reference_signer(OLD).sign(session_id).decode()
    assert signer.unsign(old_cookie) == session_id
    assert signer.signed_by_fallback(old_cookie) is True
    assert signer.signed_by_fallback(signer.sign(session_id)) is False
    alone = CookieSigner(NEW)
    assert alone.unsign(old_cookie) is None
    assert alone.signed_by_fallback(alone.sign(session_id)) is False


def test_fallbacks_are_tried_whichever_way_they_are_listed() -> None:
    session_id = new_id()
    keys = ["a third key of at least thirty-two random bytes: 99", OLD]
    signer = CookieSigner(NEW, fallbacks=keys)
    for key in keys:
        assert signer.unsign(reference_signer(key).sign(session_id).decode()) == session_id
    assert CookieSigner(NEW.encode(), [OLD.encode()]).sign(session_id) == signer.sign(session_id)


def renewal(key: str, session_id: str) -> str:
    derived = reference_signer(key).derive_key()
    mac = hmac.new(derived, b"satchel-renewal\x00" + session_id.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def test_a_renewed_id_is_a_mac_of_the_old_one_under_each_key_newest_first() -> None:
    session_id = new_id()
    signer = CookieSigner(NEW, fallbacks=[OLD])
    assert signer.renewed_ids(session_id) == [renewal(NEW, session_id), renewal(OLD, session_id)]
    assert CookieSigner(NEW).renewed_ids(session_id) == [renewal(NEW, session_id)]
    for _ in range(500):  # every ending of the text, "X" and "=" look-alikes among them
        other = new_id()
        assert CookieSigner(NEW).renewed_ids(other) == [renewal(NEW, other)]
    (renewed,) = CookieSigner(NEW).renewed_ids(session_id)
    assert len(renewed) == 43 and signer.unsign(signer.sign(renewed)) == renewed


def test_a_store_key_is_the_sha256_of_the_id_however_full_the_memo() -> None:
    """The memo of recent keys never grows past KEY_CACHE_SIZE (it empties when full)."""
    signing._keys.clear()
    ids = [new_id() for _ in range(signing.KEY_CACHE_SIZE + 10)]
    for session_id in ids:
        assert store_key(session_id) == hashlib.sha256(session_id.encode()).hexdigest()
        assert len(signing._keys) <= signing.KEY_CACHE_SIZE
    assert store_key(ids[0]) == hashlib.sha256(ids[0].encode()).hexdigest()


def test_a_new_id_is_256_random_bits_in_url_safe_text() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for session_id in ids:
        assert len(base64.urlsafe_b64decode(session_id + "=")) == 32


def test_only_the_canonical_text_of_a_genuine_cookie_is_accepted() -> None:
    signer = CookieSigner(NEW)
    session_id = new_id()
    cookie = signer.sign(session_id)
    assert signer.unsign(cookie) == session_id
    assert signer.unsign(cookie + "=") is None
    assert signer.unsign("") is None
    assert signer.unsign(cookie[:-1] + ("A" if cookie[-1] != "A" else "E")) is None
    long = reference_signer(NEW).sign("x" * 300).decode()
    assert len(long) > signing.MAX_COOKIE_LENGTH and signer.unsign(long) is None


@pytest.mark.parametrize(
    "key,why",
    [
        ("dev", "a sample key from documentation or a tutorial"),
        (b"secret", "a sample key from documentation or a tutorial"),
        ("  Change-Me \n", "a sample key from documentation or a tutorial"),
        ("SECRET_KEY", "a sample key from documentation or a tutorial"),
        (b'_5#y2L"F4Q8z\n\xec]/', "a sample key from documentation or a tutorial"),
        ("x" * 31, "only 31 bytes long (use at least 32 random bytes)"),
        ("é" * 15, "only 30 bytes long (use at least 32 random bytes)"),  # bytes, not letters
        ("abcdefg" * 5, "made of very few distinct characters"),
        ("abcdefgh" * 4, None),
        (NEW, None),
    ],
)
def test_weak_secret_says_why(key: str | bytes, why: str | None) -> None:
    assert weak_secret(key) == why
