"""The Quart adapter: ``Satchel(app)`` makes ``quart.session`` a satchel session.

Quart is Flask's async twin, and this adapter reads exactly the Flask
adapter's configuration (``SECRET_KEY``, ``SECRET_KEY_FALLBACKS``,
``SESSION_COOKIE_*``, ``PERMANENT_SESSION_LIFETIME``,
``SESSION_REFRESH_EACH_REQUEST`` and every ``SATCHEL_*`` key of
:mod:`satchel.flask`), with the same meaning, on the same stores, awaited so
the event loop never blocks. A Flask app and a Quart app with the same
settings share their sessions.

One difference follows from ``quart.session`` being a plain mapping that a
view reads without awaiting: a request with a session cookie loads its
session before the view runs (one round trip; a request without one touches
no store). ``@locked`` views (:func:`satchel.quart.locked`), ``SATCHEL_LOCKING``
and ``SATCHEL_MIGRATE_FROM`` work as on Flask: an import is the same lifecycle
steps, awaited (only the old layer's own client, Flask-Session's redis-py, runs
on a worker thread).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from quart import abort, has_request_context, redirect
from quart.sessions import SessionInterface, SessionMixin

from ._config import (
    DEFAULT_SQLITE_NAME,
    config_defaults,
    migration_from_config,
    read_config,
    signer_for,
    unavailable,
)
from ._manager import AsyncSessionManager
from ._views import ViewT, locked, locked_endpoints
from .admin import SessionInfo, list_sessions_steps, revoke_all_steps, revoke_steps
from .admin import stats as _stats
from .errors import ConfigError, StoreUnavailable
from .session import AsyncSession
from .stores.aio import is_async, to_async
from .stores.base import Store

if TYPE_CHECKING:
    from quart import Quart
    from quart.wrappers import BaseRequestWebsocket, Response

__all__ = ["QuartSession", "Satchel", "current_session", "fresh_login_required", "locked"]

_log = logging.getLogger("satchel")

_PARTITIONED = hasattr(SessionInterface, "get_cookie_partitioned")


class QuartSession(AsyncSession, SessionMixin):  # type: ignore[override,misc]
    """A satchel :class:`~satchel.session.AsyncSession` that Quart accepts as its session."""

    #: The view of this request carries ``@locked`` (strict mode).
    _wants_lock = False
    #: The store failed to load this session: the request answers 503 before its view.
    _failed: StoreUnavailable | None = None

    def _lock_wanted(self) -> bool:
        return self._wants_lock


def current_session() -> QuartSession:
    """``quart.session``, typed as satchel's session, for ``regenerate()`` and ``owner``."""
    from quart import session

    held = session._get_current_object()  # type: ignore[attr-defined]
    if not isinstance(held, QuartSession):
        raise ConfigError("the current app's session is not a satchel session")
    return held


def fresh_login_required(
    max_age: float, *, redirect_to: str | Callable[[], str] | None = None
) -> Callable[[ViewT], ViewT]:
    """Run the (async) view only when the login is no older than ``max_age`` seconds;
    else a 303 to ``redirect_to`` (a URL, or a function that returns one) or a 401,
    as :func:`satchel.flask.fresh_login_required` does."""

    def decorate(view: ViewT) -> ViewT:
        @functools.wraps(view)
        async def fresh_only(*args: Any, **kwargs: Any) -> Any:
            if current_session().authenticated_within(max_age):
                return await view(*args, **kwargs)
            target = redirect_to() if callable(redirect_to) else redirect_to
            if target is None:
                abort(401)
            return redirect(target, 303)

        return fresh_only  # type: ignore[return-value]

    return decorate


def _manager(app: Quart | None) -> AsyncSessionManager:
    from quart import current_app

    target: Any = app if app is not None else current_app
    manager: AsyncSessionManager = target.extensions["satchel"]
    return manager


def _current() -> QuartSession | None:
    if not has_request_context():
        return None
    try:
        return current_session()
    except ConfigError:
        return None


def _endpoint(app: Quart, request: BaseRequestWebsocket) -> str | None:
    """The endpoint ``request`` will be routed to (Quart opens the session before routing)."""
    try:
        adapter: Any = app.create_url_adapter(request)
        rule, _args = adapter.match(return_rule=True)
    except Exception:  # a 404 or a redirect: no view of its own
        return None
    endpoint: str | None = rule.endpoint
    return endpoint


class SatchelSessionInterface(SessionInterface):
    """Quart's hook into satchel: loads the session before the view and saves its changes."""

    def __init__(self, manager: AsyncSessionManager, track_client: bool = False) -> None:
        self.manager = manager
        #: Whether new sessions record the client's user agent and IP.
        self.track_client = track_client
        self._keys: tuple[object, object] = (None, None)
        self._fallback_keys: tuple[Any, ...] = ()

    def get_cookie_samesite(self, app: Quart) -> str:
        """Quart's ``SESSION_COOKIE_SAMESITE``, with ``None`` read as ``"Lax"``."""
        return app.config["SESSION_COOKIE_SAMESITE"] or "Lax"

    def should_set_cookie(self, app: Quart, session: SessionMixin) -> bool:
        """Resend an unchanged ID only when its cookie's lifetime must move (as on Flask)."""
        assert isinstance(session, QuartSession)
        if "_permanent" in session.state.touched or "_permanent" in session.state.deleted:
            return True
        return bool(
            session.permanent and (session.modified or app.config["SESSION_REFRESH_EACH_REQUEST"])
        )

    async def open_session(self, app: Quart, request: BaseRequestWebsocket) -> QuartSession:
        """Verify the cookie and, when there is one, load the session it names."""
        config = app.config
        keys = (config.get("SECRET_KEY"), config.get("SECRET_KEY_FALLBACKS"))
        fallbacks = tuple(keys[1] or ())
        if (
            keys[0] is not self._keys[0]
            or keys[1] is not self._keys[1]
            or fallbacks != self._fallback_keys  # a list changed in place
        ):
            self.manager.signer = signer_for(keys[0], keys[1], strict=False)
            if self.manager.migration is not None and keys[0] is not None:
                self.manager.migration.rekey(keys[0], list(fallbacks))
            self._keys, self._fallback_keys = keys, fallbacks
        name = self.get_cookie_name(app)
        session = self.manager.open(request.cookies.getlist(name))
        assert isinstance(session, QuartSession)
        if self.track_client:
            session.state.client_meta = {
                "user_agent": request.headers.get("User-Agent", "")[:256],
                "ip": request.remote_addr or "",
            }
        if not session.state.loaded:
            endpoints = locked_endpoints(app.view_functions, app.extensions)
            if endpoints and _endpoint(app, request) in endpoints:
                session._wants_lock = True
            try:
                await self.manager.fill(session)
            except StoreUnavailable as exc:
                # Quart opens the session outside its error handling: the request's
                # first hook raises this again, so the app's handler answers (a 503).
                session._failed = exc
                session.state.loaded = True
        return session

    async def save_session(
        self, app: Quart, session: SessionMixin, response: Response | Any | None
    ) -> None:
        """Save the changes, then set, refresh or expire the cookie as needed."""
        assert isinstance(session, QuartSession)
        if session._failed is not None:
            return  # nothing was loaded, so nothing is saved
        if response is None:  # a websocket: no cookie can go out any more
            if session.modified and session.state.session_id is None:
                _log.warning(
                    "a websocket stored data in a session that had no cookie; "
                    "the browser cannot be given one now, so it was not saved"
                )
                await self.manager.release(session)
                return
            try:
                await self.manager.save(session)
            except StoreUnavailable as exc:
                _log.warning("could not save a websocket's session: %s", exc)
            return
        if session.state.accessed:
            response.vary.add("Cookie")
        try:
            outcome = await self.manager.save(session)
        except StoreUnavailable as exc:
            message, response.status_code, headers = unavailable(exc)
            response.set_data(message)
            response.headers.update(headers)
            return
        attributes: dict[str, Any] = {
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "samesite": self.get_cookie_samesite(app),
            "httponly": self.get_cookie_httponly(app),
        }
        if _PARTITIONED:  # SESSION_COOKIE_PARTITIONED arrived in Quart 0.20
            attributes["partitioned"] = self.get_cookie_partitioned(app)
        name = self.get_cookie_name(app)
        if outcome.delete_cookie:
            response.vary.add("Cookie")
            response.delete_cookie(name, **attributes)
            return
        if outcome.new_cookie is None and not (
            outcome.alive and self.should_set_cookie(app, session)
        ):
            return
        assert session.state.session_id is not None
        response.vary.add("Cookie")
        response.set_cookie(
            name,
            outcome.new_cookie
            or session.state.cookie
            or self.manager.sign(session.state.session_id),
            expires=self.get_expiration_time(app, session),
            **attributes,
        )


class Satchel:
    """The Quart extension: ``Satchel(app)`` or ``Satchel().init_app(app)``.

    ``store`` is a store (sync or async) to use instead of the one
    ``SATCHEL_STORE`` names. The per-app state is ``app.extensions["satchel"]``,
    an :class:`~satchel._manager.AsyncSessionManager`.
    """

    def __init__(self, app: Quart | None = None, *, store: Store | None = None) -> None:
        self.store = store
        if app is not None:
            self.init_app(app)

    @staticmethod
    async def list_sessions(
        owner: str | int | None = None, app: Quart | None = None
    ) -> list[SessionInfo]:
        """The live sessions of ``owner`` (everyone's when ``None``), most recent first."""
        manager = _manager(app)
        return await manager.run(list_sessions_steps(manager, owner, _current()))

    @staticmethod
    async def revoke(reference: str, app: Quart | None = None) -> bool:
        """End the session ``reference`` names; ``False`` if it did not exist."""
        manager = _manager(app)
        return await manager.run(revoke_steps(manager, reference, _current()))

    @staticmethod
    async def revoke_all(
        owner: str | int, keep_current: bool = True, app: Quart | None = None
    ) -> int:
        """End ``owner``'s sessions; with ``keep_current`` the requester's own lives on."""
        manager = _manager(app)
        current = _current()
        keep = current if keep_current else None
        return await manager.run(revoke_all_steps(manager, owner, keep, current))

    @staticmethod
    def stats(app: Quart | None = None) -> dict[str, int]:
        """This process's counters for ``app`` (see :class:`satchel.signals.Counters`)."""
        return _stats(_manager(app))

    def init_app(self, app: Quart, *, store: Store | None = None) -> None:
        """Check the configuration, build the store and install the session interface.

        Raises :class:`~satchel.errors.ConfigError` as the Flask adapter does.
        """
        if "satchel" in app.extensions:
            raise ConfigError("satchel is already set up on this app")
        config_defaults(app.config)
        config = app.config
        signer, settings, chosen = read_config(
            config, store or self.store, os.path.join(app.instance_path, DEFAULT_SQLITE_NAME)
        )
        manager = AsyncSessionManager(to_async(chosen), signer, settings, QuartSession, app)
        if config["SATCHEL_MIGRATE_FROM"] is not None:
            if is_async(chosen):
                raise ConfigError(
                    "SATCHEL_MIGRATE_FROM keeps its claims through the sync store's "
                    "with_prefix(): pass a sync store (or a URL), not an async one"
                )
            manager.migration = migration_from_config(config, chosen, manager)
        app.extensions["satchel"] = manager
        interface = SatchelSessionInterface(manager, bool(config["SATCHEL_TRACK_CLIENT"]))
        interface._keys = (config.get("SECRET_KEY"), config.get("SECRET_KEY_FALLBACKS"))
        interface._fallback_keys = tuple(config.get("SECRET_KEY_FALLBACKS") or ())
        app.session_interface = interface  # type: ignore[assignment]
        app.register_error_handler(StoreUnavailable, unavailable)

        async def _raise_load_failure() -> None:
            from quart.globals import request_ctx, websocket_ctx

            context: Any = request_ctx if has_request_context() else websocket_ctx
            held = context.session
            if isinstance(held, QuartSession) and held._failed is not None:
                raise held._failed

        app.before_request_funcs.setdefault(None, []).insert(0, _raise_load_failure)
        app.before_websocket_funcs.setdefault(None, []).insert(0, _raise_load_failure)

        @app.teardown_request
        async def _release_lock(exc: BaseException | None) -> None:
            from quart.globals import request_ctx

            held = request_ctx.session
            if isinstance(held, QuartSession) and held.state.lock_held is not None:
                try:
                    await manager.release(held)
                except StoreUnavailable as error:
                    _log.warning("could not release a session lock: %s", error)
