"""Settings every adapter reads the same way: durations, keys and the store.

The Flask and Quart adapters read them from the app's config, the ASGI
middleware from its arguments; the checks and the error messages are these.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from ._lifecycle import Lifecycle
from ._logins import EVICT_OLDEST, check_limit
from ._settings import Settings
from ._sizes import parse_size
from .encryption import EncryptionKeys, keys_from
from .errors import ConfigError, LockTimeout, StoreUnavailable
from .migration import (
    CLAIM_PREFIX,
    DEFAULT_OVERLAP,
    SOURCES,
    FlaskCookieSource,
    FlaskSessionSource,
    Migration,
    Source,
    parse_until,
)
from .signals import security_log
from .signing import CookieSigner, weak_secret
from .stores import Store, from_url, url_prefix
from .stores.sqlite import SQLiteStore

log = logging.getLogger("satchel")

#: The SQLite file, in the app's instance folder, that Flask and Quart apps use by default.
DEFAULT_SQLITE_NAME = "satchel-sessions.sqlite3"

#: A session ends this long after it began, however active (``SATCHEL_ABSOLUTE_TIMEOUT``).
DEFAULT_ABSOLUTE_TIMEOUT = timedelta(days=90)
#: How long, in seconds, a renewed session's old ID still joins it (``SATCHEL_RENEWAL_GRACE``).
DEFAULT_RENEWAL_GRACE = 10.0
#: The largest serialised session, in bytes (``SATCHEL_MAX_SIZE``).
DEFAULT_MAX_SIZE = 1024 * 1024
#: The satchel keys of a Flask or Quart config, and their defaults.
CONFIG_DEFAULTS: dict[str, Any] = {
    "SATCHEL_STORE": None,
    "SATCHEL_IDLE_TIMEOUT": None,
    "SATCHEL_ABSOLUTE_TIMEOUT": DEFAULT_ABSOLUTE_TIMEOUT,
    "SATCHEL_MAX_SIZE": DEFAULT_MAX_SIZE,
    "SATCHEL_STRICT_SECRET": False,
    "SATCHEL_LOCKING": False,
    "SATCHEL_LOCK_TIMEOUT": 5.0,
    "SATCHEL_LOCK_LEASE": 30.0,
    "SATCHEL_TRACK_CLIENT": False,
    "SATCHEL_MAX_SESSIONS_PER_OWNER": None,
    "SATCHEL_MAX_SESSIONS_POLICY": EVICT_OLDEST,
    "SATCHEL_RENEWAL_INTERVAL": None,
    "SATCHEL_RENEWAL_GRACE": DEFAULT_RENEWAL_GRACE,
    "SATCHEL_KEY_PREFIX": None,
    "SATCHEL_ENCRYPTION_KEYS": None,
    "SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL": None,
    "SATCHEL_STRICT_STORE": False,
    "SATCHEL_CHECK_STORE": False,
    "SATCHEL_MIGRATE_FROM": None,
    "SATCHEL_MIGRATE_UNTIL": None,
    "SATCHEL_MIGRATE_OVERLAP": DEFAULT_OVERLAP,
    "SATCHEL_MIGRATE_FLASK_SESSION_STORE": None,
    "SATCHEL_MIGRATE_FLASK_SESSION_PREFIX": "session:",
}

#: What a request gets, with a 503, when the store does not answer.
UNAVAILABLE_MESSAGE = (
    "Service unavailable: the session store is not answering. Please try again shortly.\n"
)
#: ... and when strict mode waited too long for another request of its session.
BUSY_MESSAGE = (
    "Service unavailable: another request of this session is still running. "
    "Please try again shortly.\n"
)


def unavailable(error: StoreUnavailable) -> tuple[str, int, dict[str, str]]:
    """Every adapter's answer to a store error: a plain-text 503 that asks to retry, logged."""
    log.warning("answered 503: %s", error)
    headers = {"Content-Type": "text/plain; charset=utf-8", "Retry-After": "1"}
    message = BUSY_MESSAGE if isinstance(error, LockTimeout) else UNAVAILABLE_MESSAGE
    return message, 503, headers


def seconds(value: Any, name: str) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigError(f"{name} must be a timedelta or a number of seconds, not {value!r}")
    if not (seconds > 0 and math.isfinite(seconds)):  # NaN fails both comparisons
        raise ConfigError(f"{name} must be a positive, finite duration, not {value!r}")
    return seconds


#: The names the Flask and Quart adapters' errors give the keys and the strict switch.
FLASK_KEY_NAMES = ("SECRET_KEY", "SECRET_KEY_FALLBACKS", "SATCHEL_STRICT_SECRET")
#: ... and the ASGI middleware's (its own arguments).
ASGI_KEY_NAMES = ("secret_key", "secret_key_fallbacks", "strict_secret")


def signer_for(
    secret: Any,
    fallbacks: Any,
    *,
    strict: bool,
    names: tuple[str, str, str] = FLASK_KEY_NAMES,
) -> CookieSigner:
    """A signer for the app's keys, after checking them (weak keys: a warning, or refused).

    ``names`` are what the errors and warnings call the key, the fallbacks and the
    strict switch, in the words of the adapter's own settings.
    """
    key_name, fallbacks_name, strict_name = names
    if not secret or not isinstance(secret, str | bytes):
        if key_name == "SECRET_KEY":
            how = "set app.config['SECRET_KEY'], e.g. from an environment variable"
        else:
            how = f"pass {key_name}=..., e.g. from an environment variable"
        raise ConfigError(f"{key_name} is not set: satchel signs session cookies with it ({how})")
    fallbacks = fallbacks or []
    if isinstance(fallbacks, str | bytes) or not all(
        isinstance(k, str | bytes) and k for k in fallbacks
    ):
        raise ConfigError(f"{fallbacks_name} must be a list of keys")
    for name, key in [(key_name, secret)] + [
        (f"{fallbacks_name}[{i}]", k) for i, k in enumerate(fallbacks)
    ]:
        weakness = weak_secret(key)
        if weakness is None:
            continue
        if strict:
            raise ConfigError(f"{name} is {weakness} ({strict_name} is set)")
        security_log.warning(
            "%s is %s: anyone who guesses it can forge session cookies", name, weakness
        )
    return CookieSigner(secret, fallbacks)


def build_store(
    chosen: Any,
    prefix: Any,
    default_path: str,
    names: tuple[str, str] = ("SATCHEL_STORE", "SATCHEL_KEY_PREFIX"),
) -> Store:
    """The store ``chosen`` (a URL, a store, or ``None``: SQLite at ``default_path``) names.

    An async store object is accepted as it is; ``names`` are the settings the
    errors name (the ASGI middleware's are ``store`` and ``key_prefix``).
    """
    store_name, prefix_name = names
    if prefix is not None and not isinstance(prefix, str):
        raise ConfigError(f"{prefix_name} must be a str, not {prefix!r}")
    if chosen is None:
        path = default_path
        return SQLiteStore(path) if prefix is None else SQLiteStore(path, prefix=prefix)
    if isinstance(chosen, str):
        if prefix is not None:
            bare, named = url_prefix(chosen)
            if named is not None and named != prefix:
                raise ConfigError(
                    f"{prefix_name} is {prefix!r} but the store URL says prefix={named!r}"
                )
            joiner = "&" if "?" in bare else "?"
            chosen = f"{bare}{joiner}{urlencode({'prefix': prefix})}"
        chosen = from_url(chosen)
    elif prefix is not None and getattr(chosen, "prefix", None) != prefix:
        raise ConfigError(
            f"{prefix_name} is {prefix!r} but the store object was built with prefix "
            f"{getattr(chosen, 'prefix', None)!r}: pass prefix= when you build it"
        )
    if not isinstance(chosen, Store):
        raise ConfigError(f"{store_name} must be a store URL or a Store, not {chosen!r}")
    return chosen


def encrypted(store: Any, keys: EncryptionKeys | None) -> Any:
    """``store`` with its records sealed under ``keys`` (sync or async, as it is);
    ``store`` itself when ``keys`` is ``None`` (encryption off)."""
    if keys is None:
        return store
    from .stores.aio import is_async
    from .stores.encrypted import AsyncEncryptedStore, EncryptedStore

    if is_async(store):
        return AsyncEncryptedStore(store, keys)
    return EncryptedStore(store, keys)


def encrypted_from_environment(store: Store) -> Store:
    """``store`` sealed under ``$SATCHEL_ENCRYPTION_KEYS``, if set (the session commands
    without an app read the app's keys from the environment, never a command line)."""
    keys = keys_from(
        os.environ.get("SATCHEL_ENCRYPTION_KEYS") or None,
        os.environ.get("SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL") or None,
        "SATCHEL_ENCRYPTION_KEYS",
        "SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL",
    )
    answer: Store = encrypted(store, keys)
    return answer


def check_store(store: Store, *, strict: bool) -> None:
    """Warn about (or refuse) a store configured so that it can lose sessions."""
    check = getattr(store, "config_problems", None)
    if check is None:
        return
    for problem in check():
        if strict:
            raise ConfigError(f"{store!r}: {problem} (SATCHEL_STRICT_STORE is set)")
        log.warning("%r: %s", store, problem)


def require_working_store(store: Any, setting: str) -> None:
    """At start-up (``setting`` is on): try the store as the app will, and refuse to start,
    with the cause and what to do, when it fails (see :mod:`satchel.check`)."""
    from .check import check, failures

    if not isinstance(store, Store):  # an async store object: checked by its own calls
        log.warning("%s: %r is an async store object; pass its URL to check it", setting, store)
        return
    failed = failures(check(store, reads=1))
    if failed:
        causes = "; ".join(f"{finding.what}: {finding.detail}" for finding in failed)
        raise ConfigError(f"the session store {store!r} failed its check ({setting}): {causes}")


def config_defaults(config: Any) -> None:
    """Give a Flask or Quart config every satchel key it does not set."""
    for key, value in CONFIG_DEFAULTS.items():
        config.setdefault(key, value)


def make_settings(
    *,
    idle_timeout: Any,
    absolute_timeout: Any,
    max_size: Any,
    locking: Any,
    lock_timeout: Any,
    lock_lease: Any,
    max_sessions_per_owner: Any = None,
    max_sessions_policy: Any = EVICT_OLDEST,
    renewal_interval: Any = None,
    renewal_grace: Any = DEFAULT_RENEWAL_GRACE,
    names: Callable[[str], str] = lambda name: name,
) -> Settings:
    """Checked :class:`Settings`; ``names`` turns an argument's name into the one users set."""
    try:
        if isinstance(max_size, bool) or not isinstance(max_size, int | str):
            raise ValueError(max_size)
        size = parse_size(max_size)
    except ValueError:
        size = 0
    if size <= 0:
        raise ConfigError(
            f"{names('max_size')} must be a positive size (bytes, or '1MB', '512KiB'),"
            f" not {max_size!r}"
        )
    limit, policy = check_limit(
        max_sessions_per_owner,
        max_sessions_policy,
        (names("max_sessions_per_owner"), names("max_sessions_policy")),
    )
    renew = (
        None if renewal_interval is None else seconds(renewal_interval, names("renewal_interval"))
    )
    if isinstance(renewal_grace, int | float) and renewal_grace == 0:
        grace = 0.0  # the old ID is dead at once: overlapping requests start anew
    else:
        grace = seconds(renewal_grace, names("renewal_grace"))
    if renew is not None and grace >= renew:
        raise ConfigError(
            f"{names('renewal_grace')} ({grace:g}s) must be shorter than"
            f" {names('renewal_interval')} ({renew:g}s)"
        )
    return Settings(
        idle_timeout=seconds(idle_timeout, names("idle_timeout")),
        absolute_timeout=seconds(absolute_timeout, names("absolute_timeout")),
        max_size=size,
        locking=bool(locking),
        lock_timeout=seconds(lock_timeout, names("lock_timeout")),
        lock_lease=seconds(lock_lease, names("lock_lease")),
        max_sessions_per_owner=limit,
        max_sessions_policy=policy,
        renewal_interval=renew,
        renewal_grace=grace,
    )


#: The settings that make a cookie, as a Flask or Quart config names them.
FLASK_COOKIE_NAMES = (
    "SESSION_COOKIE_NAME", "SESSION_COOKIE_SECURE", "SESSION_COOKIE_DOMAIN", "SESSION_COOKIE_PATH"
)  # fmt: skip
#: ... and as the ASGI middleware's arguments name them.
ASGI_COOKIE_NAMES = ("session_cookie", "https_only", "domain", "path")


def check_cookie_prefix(
    name: str,
    *,
    secure: bool,
    domain: str | None,
    path: str,
    names: tuple[str, str, str, str] = FLASK_COOKIE_NAMES,
) -> None:
    """Refuse, at start-up, a ``__Host-`` or ``__Secure-`` cookie the browser would drop.

    Browsers set a ``__Secure-`` cookie only when it is ``Secure``, and a ``__Host-``
    one only when it is ``Secure``, has no ``Domain`` and has ``Path=/`` (RFC 6265bis,
    matched case-insensitively); otherwise every response's cookie is silently ignored
    and no visitor keeps a session. ``names`` are the settings the message names.
    """
    lowered = name.lower()
    host = lowered.startswith("__host-")
    if not (host or lowered.startswith("__secure-")):
        return
    name_setting, secure_setting, domain_setting, path_setting = names
    prefix = "__Host-" if host else "__Secure-"
    rejected = f"{name_setting} is {name!r}, a {prefix} cookie, which browsers drop"
    if not secure:
        raise ConfigError(f"{rejected} unless it is Secure: set {secure_setting} (HTTPS only)")
    if host and domain:
        raise ConfigError(
            f"{rejected} if it names a Domain ({domain_setting} is {domain!r}): unset it, "
            "or use a __Secure- name to share the cookie across subdomains"
        )
    if host and path != "/":
        raise ConfigError(f"{rejected} unless its Path is '/' ({path_setting} is {path!r})")


def read_config(
    config: Any, store: Store | None, default_path: str
) -> tuple[CookieSigner, Settings, Store]:
    """The signer, settings and store a Flask or Quart config (with defaults) asks for."""
    check_cookie_prefix(
        str(config.get("SESSION_COOKIE_NAME") or "session"),
        secure=bool(config.get("SESSION_COOKIE_SECURE")),
        domain=config.get("SESSION_COOKIE_DOMAIN") or None,
        path=config.get("SESSION_COOKIE_PATH") or config.get("APPLICATION_ROOT") or "/",
    )
    signer = signer_for(
        config.get("SECRET_KEY"),
        config.get("SECRET_KEY_FALLBACKS"),
        strict=bool(config["SATCHEL_STRICT_SECRET"]),
    )
    idle = config["SATCHEL_IDLE_TIMEOUT"]
    seconds(config["PERMANENT_SESSION_LIFETIME"], "PERMANENT_SESSION_LIFETIME")
    if idle is None:
        idle = config["PERMANENT_SESSION_LIFETIME"]
    settings = make_settings(
        idle_timeout=idle,
        absolute_timeout=config["SATCHEL_ABSOLUTE_TIMEOUT"],
        max_size=config["SATCHEL_MAX_SIZE"],
        locking=config["SATCHEL_LOCKING"],
        lock_timeout=config["SATCHEL_LOCK_TIMEOUT"],
        lock_lease=config["SATCHEL_LOCK_LEASE"],
        max_sessions_per_owner=config["SATCHEL_MAX_SESSIONS_PER_OWNER"],
        max_sessions_policy=config["SATCHEL_MAX_SESSIONS_POLICY"],
        renewal_interval=config["SATCHEL_RENEWAL_INTERVAL"],
        renewal_grace=config["SATCHEL_RENEWAL_GRACE"],
        names=lambda name: "SATCHEL_" + name.upper(),
    )
    chosen = build_store(
        store or config["SATCHEL_STORE"], config["SATCHEL_KEY_PREFIX"], default_path
    )
    keys = keys_from(
        config["SATCHEL_ENCRYPTION_KEYS"],
        config["SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL"],
        "SATCHEL_ENCRYPTION_KEYS",
        "SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL",
    )
    check_store(chosen, strict=bool(config["SATCHEL_STRICT_STORE"]))
    if config["SATCHEL_CHECK_STORE"]:
        require_working_store(chosen, "SATCHEL_CHECK_STORE")
    return signer, settings, encrypted(chosen, keys)


def migration_from_config(config: Any, store: Store, manager: Lifecycle) -> Migration | None:
    """The import of old sessions ``SATCHEL_MIGRATE_FROM`` asks for, or ``None``."""
    chosen = config["SATCHEL_MIGRATE_FROM"]
    if chosen is None:
        if config["SATCHEL_MIGRATE_UNTIL"] is not None:
            raise ConfigError("SATCHEL_MIGRATE_UNTIL is set but SATCHEL_MIGRATE_FROM is not")
        return None
    names = [chosen] if isinstance(chosen, str) else chosen
    if not isinstance(names, list | tuple) or not names:
        raise ConfigError(
            f"SATCHEL_MIGRATE_FROM must be a source or a list of them, not {chosen!r}"
        )
    for name in names:
        if name not in SOURCES:
            known = ", ".join(repr(s) for s in SOURCES)
            raise ConfigError(f"SATCHEL_MIGRATE_FROM names {name!r}; the sources are {known}")
    secret = config["SECRET_KEY"]
    fallbacks = list(config.get("SECRET_KEY_FALLBACKS") or ())
    lifetime = seconds(config["PERMANENT_SESSION_LIFETIME"], "PERMANENT_SESSION_LIFETIME")
    sources: list[Source] = []
    if "flask-cookie" in names:
        sources.append(FlaskCookieSource(secret, fallbacks, int(lifetime)))
    if "flask-session" in names:
        url = config["SATCHEL_MIGRATE_FLASK_SESSION_STORE"]
        if url is None:
            raise ConfigError(
                "SATCHEL_MIGRATE_FROM names 'flask-session': set "
                "SATCHEL_MIGRATE_FLASK_SESSION_STORE to the Redis/Valkey URL it used"
            )
        prefix = config["SATCHEL_MIGRATE_FLASK_SESSION_PREFIX"]
        if not isinstance(prefix, str):
            raise ConfigError(f"SATCHEL_MIGRATE_FLASK_SESSION_PREFIX must be a str, not {prefix!r}")
        signed = config.get("SESSION_USE_SIGNER")  # Flask-Session's own setting, if still set
        sources.append(
            FlaskSessionSource.from_url(
                url,
                prefix,
                secret,
                fallbacks,
                use_signer=None if signed is None else bool(signed),
                lifetime=lifetime,
            )
        )
    with_prefix = getattr(store, "with_prefix", None)
    if with_prefix is None:
        raise ConfigError(
            f"SATCHEL_MIGRATE_FROM keeps its claims in the store under another prefix, "
            f"through with_prefix(), which {store!r} does not have"
        )
    claims = with_prefix(getattr(store, "prefix", "") + CLAIM_PREFIX)
    overlap = config["SATCHEL_MIGRATE_OVERLAP"]
    if overlap != 0:  # 0: only while the importing request runs
        overlap = seconds(overlap, "SATCHEL_MIGRATE_OVERLAP")
    return Migration(
        sources,
        claims,
        parse_until(config["SATCHEL_MIGRATE_UNTIL"]),
        lambda: manager.signer.derived_key(),
        float(overlap),
    )
