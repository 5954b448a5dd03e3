"""The Flask adapter: ``Satchel(app)`` makes ``flask.session`` a satchel session.

Configuration, read once by :meth:`Satchel.init_app` (Flask's own keys keep
their meaning; cookie keys are read on every request, as Flask does):

==================================  ============================================================
key                                 meaning (default)
==================================  ============================================================
``SECRET_KEY``                      signs the cookie; required
``SECRET_KEY_FALLBACKS``            older keys still accepted (``[]``)
``SESSION_COOKIE_*``                name, domain, path, Secure, HttpOnly, Partitioned as in
                                    Flask; ``SAMESITE`` ``None`` means ``"Lax"`` here
``PERMANENT_SESSION_LIFETIME``      cookie lifetime of permanent sessions
``SESSION_REFRESH_EACH_REQUEST``    resend a permanent cookie on each request
``SATCHEL_STORE``                   a store URL or object (SQLite file in the instance folder)
``SATCHEL_IDLE_TIMEOUT``            end a session unused this long (seconds or ``timedelta``;
                                    ``PERMANENT_SESSION_LIFETIME``)
``SATCHEL_ABSOLUTE_TIMEOUT``        end a session this long after it began, however active (90
                                    days)
``SATCHEL_MAX_SIZE``                largest serialised session: bytes, or "512KiB" (1 MiB)
``SATCHEL_STRICT_SECRET``           refuse to start with a weak secret key instead of logging a
                                    warning (``False``)
``SATCHEL_LOCKING``                 strict mode for every request: one request of a session at a
                                    time (``False``; see :func:`locked`)
``SATCHEL_LOCK_TIMEOUT``            how long to wait for the lock before a 503 (5 s)
``SATCHEL_LOCK_LEASE``              how long a lock outlives a crashed holder (30 s)
``SATCHEL_MAX_SESSIONS_PER_OWNER``  the most live sessions one owner (login) may have (``None``:
                                    no limit); exact under overlapping logins
``SATCHEL_MAX_SESSIONS_POLICY``     a login over it: ``"evict-oldest"`` ends the owner's least
                                    recently seen session (the default); ``"refuse"`` raises
                                    :class:`~satchel.errors.TooManySessions` from ``regenerate``
``SATCHEL_RENEWAL_INTERVAL``        give a session a new ID once its ID is this old (seconds or
                                    ``timedelta``; ``None``: never), data and owner kept
``SATCHEL_RENEWAL_GRACE``           how long a renewed session's old ID still joins it, for the
                                    requests a browser sent at once (10 s; ``0``: none)
``SATCHEL_TRACK_CLIENT``            store the user agent and IP with each new session, for
                                    :meth:`Satchel.list_sessions` (``False``)
``SATCHEL_KEY_PREFIX``              the store's namespace: apps with different prefixes on one
                                    store never see each other's sessions (the store's own
                                    default)
``SATCHEL_STRICT_STORE``            refuse to start when the store's configuration can lose
                                    sessions (a Redis eviction policy) instead of logging a
                                    warning (``False``)
``SATCHEL_CHECK_STORE``             try the store at start-up (write, read and delete a
                                    record) and refuse to start, with the cause, if it
                                    fails (``False``; see ``satchel check``)
``SATCHEL_MIGRATE_FROM``            import sessions of the app's previous session layer:
                                    ``"flask-cookie"``, ``"flask-session"`` or a list of both
                                    (``None``; see :mod:`satchel.migration`)
``SATCHEL_MIGRATE_UNTIL``           stop importing at this ``datetime`` or ISO-8601 string
                                    (naive: UTC); ``None`` never stops
``SATCHEL_MIGRATE_OVERLAP``         seconds after an import answered during which a request with
                                    the same old cookie joins the imported session (5); ``0``:
                                    only while the importing request runs
``SATCHEL_MIGRATE_FLASK_SESSION_``  ``STORE``: the Redis/Valkey URL Flask-Session used;
                                    ``PREFIX``: its ``SESSION_KEY_PREFIX`` (``"session:"``)
==================================  ============================================================

``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS`` are read again on every request
(compared by identity, so it costs next to nothing), so app factories and tests
that set them after ``init_app`` are honoured.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import abort, current_app, has_request_context, redirect
from flask.sessions import SessionInterface, SessionMixin

from ._config import (
    DEFAULT_SQLITE_NAME,
    config_defaults,
    migration_from_config,
    read_config,
    signer_for,
    unavailable,
)
from ._manager import SessionManager
from ._views import ViewT, locked, locked_endpoints
from .admin import SessionInfo, list_sessions, revoke, revoke_all, stats
from .errors import ConfigError, StoreUnavailable
from .session import Session
from .stores import Store

if TYPE_CHECKING:
    from flask import Flask, Request
    from werkzeug.wrappers import Response as BaseResponse

__all__ = [
    "FlaskSession",
    "Satchel",
    "SatchelSessionInterface",
    "current_session",
    "fresh_login_required",
    "locked",
]

_log = logging.getLogger("satchel")


# Flask 3.0 has no SESSION_COOKIE_PARTITIONED (and no SECRET_KEY_FALLBACKS, which
# is read with .get); everything else satchel uses is there.
_PARTITIONED = hasattr(SessionInterface, "get_cookie_partitioned")


CookieNamer = Callable[["Request"], str]

# The session of this request that took a strict-mode lock, for the teardown handler
# to release if the request never got to save. A context variable, as Flask's own
# request state is: reading it costs a fraction of what reading ``g`` does, and the
# handler runs on every request.
_LOCKED: contextvars.ContextVar[FlaskSession | None] = contextvars.ContextVar(
    "satchel_locked", default=None
)


class FlaskSession(Session, SessionMixin):  # type: ignore[override]
    """A satchel :class:`~satchel.session.Session` that Flask accepts as its session."""

    #: The cookie this session was read from and is written to.
    cookie_name: str = "session"
    _app: Flask | None = None
    _request: Request | None = None

    def _lock_wanted(self) -> bool:
        app, request = self._app, self._request
        if app is None or request is None:
            return False
        known = app.extensions.get("satchel.locked")  # locked_endpoints()'s answer, if fresh
        if known is not None and known[0] == len(app.view_functions):
            endpoints: frozenset[str] = known[1]
        else:
            endpoints = locked_endpoints(app.view_functions, app.extensions)
        return bool(endpoints) and request.endpoint in endpoints

    def _on_lock(self) -> None:
        # The teardown handler releases the lock of a request that never saved.
        _LOCKED.set(self)


def current_session() -> FlaskSession:
    """``flask.session``, typed as satchel's session, for ``regenerate()`` and ``owner``.

    ``flask.session`` is typed as Flask's ``SessionMixin``, which has neither;
    this returns the same object with its real type. Raises ``ConfigError``
    when the current app does not use satchel.
    """
    from flask import session

    held = session._get_current_object()  # type: ignore[attr-defined]
    if not isinstance(held, FlaskSession):
        raise ConfigError("the current app's session is not a satchel session")
    return held


def fresh_login_required(
    max_age: float, *, redirect_to: str | Callable[[], str] | None = None
) -> Callable[[ViewT], ViewT]:
    """Run the view only when the login is no older than ``max_age`` seconds.

    For a sensitive action (changing a password, paying): a session whose owner
    logged in or re-authenticated (``session.reauthenticated()``) longer ago,
    or no login at all, gets a 303 redirect to ``redirect_to`` (a URL, or a
    function called in the request that returns one, such as
    ``lambda: url_for("login", next=request.path)``), or a 401 without it::

        @app.post("/close-account")
        @fresh_login_required(300, redirect_to="/confirm-password")
        def close_account(): ...
    """

    def decorate(view: ViewT) -> ViewT:
        @functools.wraps(view)
        def fresh_only(*args: Any, **kwargs: Any) -> Any:
            if current_session().authenticated_within(max_age):
                return view(*args, **kwargs)
            target = redirect_to() if callable(redirect_to) else redirect_to
            if target is None:
                abort(401)
            return redirect(target, 303)

        return fresh_only  # type: ignore[return-value]

    return decorate


def _manager(app: Flask | None) -> SessionManager:
    target = app if app is not None else current_app
    manager: SessionManager = target.extensions["satchel"]
    return manager


def _current() -> FlaskSession | None:
    """The request's satchel session, or None outside a request or another app's session."""
    if not has_request_context():
        return None
    try:
        return current_session()
    except ConfigError:
        return None


def _vary_on_cookie(response: BaseResponse) -> None:
    # What response.vary.add("Cookie") does, without parsing a header that is not there.
    # A loop over the few headers: "Vary" in headers raises and catches a KeyError
    # inside when it is absent, four times the cost, on every request that reads.
    headers = response.headers
    for name, _ in headers:
        if name.lower() == "vary":
            response.vary.add("Cookie")
            return
    headers.add("Vary", "Cookie")


def _answer_error(app: Flask, error: StoreUnavailable, response: BaseResponse) -> None:
    """Turn ``response`` into the app's answer to a store error raised by a save.

    Flask has already built the response when the session is saved, so the
    handler the app registered for ``StoreUnavailable`` (or a base class) is
    called here and its response copied into this one; without one, the 503.
    """
    from flask import request

    handler: Any = app._find_error_handler(error, request.blueprints)
    if handler is None or handler is unavailable:
        message, status, headers = unavailable(error)
        response.status_code = status
        response.set_data(message)
        response.headers.update(headers)
        return
    answer = app.make_response(handler(error))
    vary = response.headers.get("Vary")
    response.status_code = answer.status_code
    response.headers.clear()
    response.headers.extend(answer.headers)
    if vary is not None:
        response.vary.update(v.strip() for v in vary.split(","))
    response.set_data(answer.get_data())


def _refuse_other_frameworks(app: Any) -> None:
    """This adapter serves Flask; an async app (Quart) fails here, not at its first request."""
    from flask import Flask

    if isinstance(app, Flask):
        return
    kind = f"{type(app).__module__}.{type(app).__qualname__}"
    if type(app).__module__.split(".")[0] == "quart":
        raise ConfigError(
            f"satchel.Satchel is the Flask adapter and cannot serve a Quart app ({kind}); "
            "use the Quart adapter: from satchel.quart import Satchel"
        )
    raise ConfigError(f"satchel.Satchel needs a Flask app, not {kind}")


class SatchelSessionInterface(SessionInterface):
    """Flask's hook into satchel: opens sessions lazily and saves their changes."""

    def __init__(
        self,
        manager: SessionManager,
        cookie_name: CookieNamer | None = None,
        track_client: bool = False,
    ) -> None:
        self.manager = manager
        self.cookie_namer = cookie_name
        #: Whether new sessions record the client's user agent and IP.
        self.track_client = track_client
        self._secret: object = None
        self._fallbacks: Any = None
        self._fallback_keys: tuple[Any, ...] = ()

    def _read_keys(self, config: Any) -> None:
        """Sign with the keys the config holds now (they changed since the last request)."""
        self.manager.signer = signer_for(
            config.get("SECRET_KEY"), config.get("SECRET_KEY_FALLBACKS"), strict=False
        )
        if self.manager.migration is not None:
            self.manager.migration.rekey(
                config["SECRET_KEY"], list(config.get("SECRET_KEY_FALLBACKS") or ())
            )
        self._remember_keys(config)

    def _remember_keys(self, config: Any) -> None:
        """Note the keys the manager's signer was built from, to notice a change cheaply."""
        self._secret = config.get("SECRET_KEY")
        self._fallbacks = config.get("SECRET_KEY_FALLBACKS")
        self._fallback_keys = tuple(config.get("SECRET_KEY_FALLBACKS") or ())

    def cookie_name_for(self, app: Flask, request: Request) -> str:
        """The cookie name for this request: ``SESSION_COOKIE_NAME`` unless a namer is set."""
        if self.cookie_namer is None:
            return self.get_cookie_name(app)
        name = self.cookie_namer(request)
        if not isinstance(name, str) or not name or not name.isascii() or "=" in name:
            raise ConfigError(f"the cookie_name function returned {name!r}, not a cookie name")
        return name

    def get_cookie_samesite(self, app: Flask) -> str | None:
        """Flask's ``SESSION_COOKIE_SAMESITE``, with ``None`` read as ``"Lax"``."""
        return app.config["SESSION_COOKIE_SAMESITE"] or "Lax"

    def should_set_cookie(self, app: Flask, session: SessionMixin) -> bool:
        """Resend an unchanged ID only when its cookie's lifetime must move or change.

        A browser-session cookie holds the same value and attributes after a
        write, so resending it is wasted work; a permanent one is refreshed as
        Flask's ``SESSION_REFRESH_EACH_REQUEST`` says, and a change of
        ``session.permanent`` either way always resends.
        """
        assert isinstance(session, FlaskSession)
        if "_permanent" in session.state.touched or "_permanent" in session.state.deleted:
            return True
        return bool(
            session.permanent and (session.modified or app.config["SESSION_REFRESH_EACH_REQUEST"])
        )

    def open_session(self, app: Flask, request: Request) -> FlaskSession:
        """Verify the cookie; the store is read only when a view uses the session."""
        name = self.cookie_name_for(app, request)
        config = app.config
        fallbacks: Any = config.get("SECRET_KEY_FALLBACKS")
        if (
            config["SECRET_KEY"] is not self._secret
            or fallbacks is not self._fallbacks
            # changed in place (the common case, no fallbacks, costs one test)
            or (tuple(fallbacks) != self._fallback_keys if fallbacks else self._fallback_keys)
        ):
            self._read_keys(config)
        session = self.manager.open(request.cookies.getlist(name))
        assert isinstance(session, FlaskSession)
        session.cookie_name = name
        session._app = app
        session._request = request
        if self.track_client:
            session.state.client_meta = {
                "user_agent": request.headers.get("User-Agent", "")[:256],
                "ip": request.remote_addr or "",
            }
        return session

    def save_session(self, app: Flask, session: SessionMixin, response: BaseResponse) -> None:
        """Save the changes, then set, refresh or expire the cookie as needed."""
        assert isinstance(session, FlaskSession)
        varied = session.state.accessed
        if varied:
            _vary_on_cookie(response)
        try:
            outcome = self.manager.save(session)
        except StoreUnavailable as exc:
            _answer_error(app, exc, response)
            return
        if outcome.delete_cookie:
            if not varied:
                _vary_on_cookie(response)
            response.delete_cookie(session.cookie_name, **self._cookie_attributes(app))
            return
        if outcome.new_cookie is None and not (
            outcome.alive and self.should_set_cookie(app, session)
        ):
            return  # the common case: the browser's cookie stays as it is
        assert session.state.session_id is not None
        if not varied:
            _vary_on_cookie(response)
        response.set_cookie(
            session.cookie_name,
            outcome.new_cookie
            or session.state.cookie
            or self.manager.sign(session.state.session_id),
            expires=self.get_expiration_time(app, session),
            **self._cookie_attributes(app),
        )

    def _cookie_attributes(self, app: Flask) -> dict[str, Any]:
        # Read from the config on each use, as Flask does, so tests may change them.
        attributes = {
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "samesite": self.get_cookie_samesite(app),
            "httponly": self.get_cookie_httponly(app),
        }
        if _PARTITIONED:  # SESSION_COOKIE_PARTITIONED arrived in Flask 3.1
            attributes["partitioned"] = self.get_cookie_partitioned(app)
        return attributes


class Satchel:
    """The Flask extension: ``Satchel(app)`` or ``Satchel().init_app(app)``.

    ``store`` is a :class:`~satchel.stores.Store` to use instead of the one
    ``SATCHEL_STORE`` names. ``cookie_name`` is a function of the request that
    returns the session cookie's name, for apps that keep several independent
    sessions in one browser (one per URL prefix, say); by default every
    request uses ``SESSION_COOKIE_NAME``. Flask opens the session before it
    routes the request, so the function should look at ``request.path``, not
    ``request.view_args``. The extension keeps no reference to
    the app; its per-app state is ``app.extensions["satchel"]``, a
    ``SessionManager``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        store: Store | None = None,
        cookie_name: CookieNamer | None = None,
    ) -> None:
        self.store = store
        self.cookie_name = cookie_name
        if app is not None:
            self.init_app(app)

    @staticmethod
    def list_sessions(
        owner: str | int | None = None, app: Flask | None = None
    ) -> list[SessionInfo]:
        """The live sessions of ``owner`` (every session when ``None``), most recent first.

        ``owner`` is a ``str`` or an ``int``, as given to ``regenerate(owner=...)``
        (an ``int`` is matched as its decimal text); anything else raises
        :class:`TypeError`. Inside a request, the visitor's own session is marked
        ``current``.
        """
        return list_sessions(_manager(app), owner, _current())

    @staticmethod
    def revoke(reference: str, app: Flask | None = None) -> bool:
        """End the session ``reference`` names; ``False`` if it did not exist."""
        return revoke(_manager(app), reference, _current())

    @staticmethod
    def revoke_all(owner: str | int, keep_current: bool = True, app: Flask | None = None) -> int:
        """End ``owner``'s sessions ("log out my other devices"); return how many.

        ``owner`` is a ``str`` or an ``int``; anything else raises :class:`TypeError`.

        With ``keep_current`` (inside a request) the visitor's own session lives on.
        """
        current = _current()
        return revoke_all(_manager(app), owner, current if keep_current else None, current)

    @staticmethod
    def stats(app: Flask | None = None) -> dict[str, int]:
        """This process's counters for ``app`` (the current app by default).

        Loads, saves, creates, deletes, idle refreshes, rejected cookies, store
        errors and lock waits since the app started; see
        :class:`satchel.signals.Counters`. With a Redis store's record cache on,
        also its ``cache_hits``, ``cache_misses``, ``cache_invalidations``,
        ``cache_evictions``, ``cache_flushes``, ``cache_entries`` and ``cache_bytes``.
        """
        return stats(_manager(app))

    def init_app(
        self, app: Flask, *, store: Store | None = None, cookie_name: CookieNamer | None = None
    ) -> None:
        """Check the configuration, build the store and install the session interface.

        Raises :class:`~satchel.errors.ConfigError` when ``SECRET_KEY`` is
        missing, a setting is malformed, or satchel is already set up on ``app``.
        """
        if "satchel" in app.extensions:
            raise ConfigError("satchel is already set up on this app")
        config_defaults(app.config)
        config = app.config
        _refuse_other_frameworks(app)
        signer, settings, chosen = read_config(
            config,
            store or self.store,
            os.path.join(app.instance_path, DEFAULT_SQLITE_NAME),
        )
        manager = SessionManager(chosen, signer, settings, FlaskSession, sender=app)
        manager.migration = migration_from_config(config, chosen, manager)
        app.extensions["satchel"] = manager
        interface = SatchelSessionInterface(
            manager, cookie_name or self.cookie_name, bool(config["SATCHEL_TRACK_CLIENT"])
        )
        interface._remember_keys(config)
        app.session_interface = interface
        from ._flask_cli import admin

        app.cli.add_command(admin)
        app.register_error_handler(StoreUnavailable, unavailable)

        @app.teardown_request
        def _release_lock(exc: BaseException | None) -> None:
            # save_session releases it; this covers requests that never got there.
            held = _LOCKED.get()
            if held is not None and held._app is app:
                _LOCKED.set(None)
                try:
                    manager.release(held)
                except StoreUnavailable as error:
                    _log.warning("could not release a session lock: %s", error)
