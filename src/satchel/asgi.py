"""The ASGI adapter: ``request.session`` of Starlette and FastAPI as a satchel session.

``app.add_middleware(SessionMiddleware, secret_key=..., store=...)`` replaces
Starlette's own ``SessionMiddleware`` (a signed cookie holding the data): it
takes the same arguments, and ``request.session`` (``scope["session"]``, for
websockets too) is a mapping with the same methods, plus
:meth:`~satchel.session.Session.regenerate`, ``owner`` and ``clear()`` that ends
the session for good. With the same secret key, store, prefix and cookie name
as a Flask app using :class:`satchel.flask.Satchel`, both apps share their
sessions: the rules are the same code (:class:`satchel._manager.Lifecycle`).

Nothing blocks the event loop, from construction on: built on a running loop
(as Starlette builds its middleware, lazily), the middleware builds its store
on a worker thread at the lifespan start-up or the first request; the store is
an :class:`~satchel.stores.AsyncStore` (:func:`satchel.stores.aio.to_async`
wraps a sync one). It runs on asyncio and on trio. A request without a session
cookie touches no store; one with a cookie loads its session before the view
runs, one round trip, since ``request.session`` is a plain mapping a view reads without awaiting.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from . import _async
from ._config import (
    ASGI_COOKIE_NAMES,
    ASGI_KEY_NAMES,
    DEFAULT_ABSOLUTE_TIMEOUT,
    DEFAULT_MAX_SIZE,
    build_store,
    check_cookie_prefix,
    check_store,
    encrypted,
    make_settings,
    require_working_store,
    signer_for,
    unavailable,
)
from ._manager import AsyncSessionManager
from .admin import SessionInfo, list_sessions_steps, revoke_all_steps, revoke_steps
from .admin import stats as _stats
from .encryption import keys_from
from .errors import ConfigError, SatchelError, StoreUnavailable
from .session import AsyncSession
from .stores.aio import _Wrapper, to_async
from .stores.base import AsyncStore, Store

__all__ = [
    "DEFAULT_MAX_AGE",
    "SessionMiddleware",
    "fresh_login",
    "get_session",
    "list_sessions",
    "require_fresh_login",
    "revoke",
    "revoke_all",
    "stats",
]

_log = logging.getLogger("satchel")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Starlette's own default cookie lifetime: two weeks.
DEFAULT_MAX_AGE = 14 * 24 * 60 * 60
#: Where sessions live when no store is given: a SQLite file in the working directory.
DEFAULT_SQLITE_PATH = "satchel-sessions.sqlite3"
_SAME_SITE = ("lax", "strict", "none")
_EXPIRED = "Thu, 01 Jan 1970 00:00:00 GMT"


_ESCAPE = re.compile(r"\\(?:([0-3][0-7][0-7])|(.))")


def _unquote(value: str) -> str:
    """A cookie value as Werkzeug and Starlette read it: a ``"quoted"`` value loses its
    quotes and backslash escapes (``\\"``, ``\\\\``, octal ``\\073``)."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)) if m.group(1) else m.group(2), value[1:-1])


class SessionMiddleware:
    """ASGI middleware that gives every HTTP and websocket request a satchel session.

    The first seven arguments are those of Starlette's ``SessionMiddleware``:
    ``max_age`` is the cookie's lifetime in seconds, renewed by each response
    that loaded the session (``None``: the cookie ends with the browser; 0 or less: the
    cookie is sent already expired, as Starlette sends it, and the session ends
    with the response);
    ``https_only`` marks it ``Secure``. The rest are satchel's:

    * ``store``: a store URL (``sqlite:///…``, ``redis://…``, ``valkey://…``,
      ``redis+cluster://…``, ``postgresql://…``, ``memory://``), a
      :class:`~satchel.stores.Store` or an :class:`~satchel.stores.AsyncStore`;
      ``None`` (the default) is the SQLite file ``satchel-sessions.sqlite3`` in the
      process's working directory, created on first use (pass ``store=`` to choose
      where; every worker of the app must name the same file or server);
    * ``secret_key_fallbacks``: older keys still accepted, as Flask's
      ``SECRET_KEY_FALLBACKS``;
    * ``idle_timeout`` (default ``max_age``, or two weeks), ``absolute_timeout``
      (90 days), ``max_size`` (1 MiB), ``key_prefix``, ``locking``,
      ``lock_timeout``, ``lock_lease``, ``max_sessions_per_owner``,
      ``max_sessions_policy``, ``renewal_interval``, ``renewal_grace``,
      ``track_client``, ``strict_secret``, ``strict_store``, ``check_store``: as the
      Flask adapter's ``SATCHEL_*`` settings of the same names;
    * ``encryption_keys``, ``encryption_accept_plaintext_until``: as
      ``SATCHEL_ENCRYPTION_KEYS`` and ``SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL``
      (encryption at rest; see docs/security.md);
    * ``partitioned``: add the cookie's ``Partitioned`` attribute;
    * ``cookie_name``: a function of the ASGI scope that returns the cookie's
      name for that request, for apps that keep several independent sessions
      in one browser (one per URL prefix, say); ``session_cookie`` otherwise.

    A store that does not answer gives a 503 with ``Retry-After`` (a websocket:
    a close with code 1011), never a traceback.
    """

    def __init__(
        self,
        app: ASGIApp,
        secret_key: Any,
        session_cookie: str = "session",
        max_age: int | None = DEFAULT_MAX_AGE,
        path: str = "/",
        same_site: str = "lax",
        https_only: bool = False,
        domain: str | None = None,
        *,
        store: str | Store | AsyncStore | None = None,
        secret_key_fallbacks: Sequence[str | bytes] = (),
        idle_timeout: float | timedelta | None = None,
        absolute_timeout: float | timedelta = DEFAULT_ABSOLUTE_TIMEOUT,
        max_size: int | str = DEFAULT_MAX_SIZE,
        key_prefix: str | None = None,
        locking: bool = False,
        lock_timeout: float | timedelta = 5.0,
        lock_lease: float | timedelta = 30.0,
        max_sessions_per_owner: int | None = None,
        max_sessions_policy: str = "evict-oldest",
        renewal_interval: float | timedelta | None = None,
        renewal_grace: float | timedelta = 10.0,
        track_client: bool = False,
        strict_secret: bool = False,
        strict_store: bool = False,
        check_store: bool = False,
        partitioned: bool = False,
        cookie_name: Callable[[Scope], str] | None = None,
        encryption_keys: Sequence[str] | str | None = None,
        encryption_accept_plaintext_until: float | datetime | str | None = None,
    ) -> None:
        self.app = app
        if secret_key is not None and not isinstance(secret_key, str | bytes):
            secret_key = str(secret_key)  # Starlette's Secret
        fallbacks = secret_key_fallbacks
        if not isinstance(fallbacks, str | bytes):  # one key given bare is refused, not split
            fallbacks = list(fallbacks)
        signer = signer_for(secret_key, fallbacks, strict=strict_secret, names=ASGI_KEY_NAMES)
        if not isinstance(session_cookie, str) or not _is_token(session_cookie):
            raise ConfigError(f"session_cookie must be a cookie name, not {session_cookie!r}")
        check_cookie_prefix(
            session_cookie, secure=bool(https_only), domain=domain, path=path,
            names=ASGI_COOKIE_NAMES,
        )  # fmt: skip
        if max_age is not None and (not isinstance(max_age, int) or isinstance(max_age, bool)):
            raise ConfigError(f"max_age must be an int (seconds) or None, not {max_age!r}")
        if not isinstance(same_site, str) or same_site.lower() not in _SAME_SITE:
            raise ConfigError(f"same_site must be 'lax', 'strict' or 'none', not {same_site!r}")
        settings = make_settings(
            # As long as the cookie lives; a cookie Starlette would send already expired
            # (max_age 0 or less) ends the session with its response.
            idle_timeout=idle_timeout
            if idle_timeout is not None
            else (max_age if max_age is not None and max_age > 0 else DEFAULT_MAX_AGE),
            absolute_timeout=absolute_timeout,
            max_size=max_size,
            locking=locking,
            lock_timeout=lock_timeout,
            lock_lease=lock_lease,
            max_sessions_per_owner=max_sessions_per_owner,
            max_sessions_policy=max_sessions_policy,
            renewal_interval=renewal_interval,
            renewal_grace=renewal_grace,
        )
        self._signer, self._settings = signer, settings
        keys = (encryption_keys, encryption_accept_plaintext_until)
        self._keys = keys_from(*keys, "encryption_keys", "encryption_accept_plaintext_until")
        self._store_args = (store, key_prefix, bool(strict_store), bool(check_store))
        self._sync_store: Store | AsyncStore | None = None
        self._manager: AsyncSessionManager | None = None
        self._native = False  # whether the manager's store is an asyncio-only twin
        #: The manager requests use, once checked against the loop serving them.
        self._serving: AsyncSessionManager | None = None
        self._building = threading.Lock()
        if not _async.running():
            # Built here, off any event loop: a bad store fails at start-up.
            self._make_manager(True)
        self.session_cookie = session_cookie
        self.max_age = max_age
        self._dies_at_once = max_age is not None and max_age <= 0
        self.track_client = bool(track_client)
        # Written as Starlette's own middleware writes its cookie (lower-case attributes,
        # in its order), so an app's tests that read the header keep passing.
        flags = f"httponly; samesite={same_site.lower()}"
        if https_only:
            flags += "; secure"
        if domain:
            flags += f"; domain={domain}"
        if partitioned:
            flags += "; partitioned"
        lifetime = "" if max_age is None else f"Max-Age={max_age}; "
        self._set_tail = f"; path={path}; {lifetime}{flags}".encode("latin-1")
        self._delete_tail = f"; path={path}; expires={_EXPIRED}; Max-Age=0; {flags}".encode(
            "latin-1"
        )
        self._prefix = session_cookie.encode("latin-1") + b"="
        #: A function of the scope that names the request's cookie (several
        #: independent sessions in one browser); ``session_cookie`` when ``None``.
        self.cookie_name = cookie_name

    def _build(self) -> Store | AsyncStore:
        """Build and check the store (blocking: file and network I/O), once."""
        with self._building:
            if self._sync_store is None:
                store, prefix, strict, check = self._store_args
                self._sync_store = _sync_store(store, prefix, strict=strict, check=check)
            return self._sync_store

    async def _ready(self) -> AsyncSessionManager:
        """The manager requests use, made at the first request (or lifespan) when the
        middleware was built on the event loop, as Starlette builds it: the store's I/O
        (and its clients' set-up, which reads files) runs on a thread. On trio, a store
        whose async twin speaks asyncio runs its sync self on threads instead."""
        native = _async.on_asyncio()
        manager = self._manager
        if manager is None or (self._native and not native):
            manager = await _async.to_thread(self._make_manager, native)
        self._serving = manager
        return manager

    def _make_manager(self, native: bool) -> AsyncSessionManager:
        """Build the store and the manager on it (blocking), once; again if it must
        give up its asyncio twin. ``native``: the store may use its asyncio twin."""
        store = self._build()
        with self._building:
            manager = self._manager
            if manager is None or (self._native and not native):
                chosen = to_async(store, native=native)
                manager = AsyncSessionManager(
                    encrypted(chosen, self._keys), self._signer, self._settings, AsyncSession, self
                )
                self._native = native and chosen is not store and not isinstance(chosen, _Wrapper)
                self._manager = manager
            return manager

    async def _start(self, scope: Scope, receive: Receive, send: Send) -> None:
        """At the app's start-up, build the store; if it fails, the server is told so."""
        try:
            await self._ready()
        except SatchelError as exc:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            raise
        await self.app(scope, receive, send)

    @property
    def manager(self) -> AsyncSessionManager:
        """The session lifecycle on the store; its ``counters`` are this app's figures.

        Read outside the event loop (a test, a script); the first request makes it
        if the middleware was built on the loop.
        """
        return self._manager or self._make_manager(True)

    @property
    def store(self) -> AsyncStore:
        """The async store sessions live in (see :attr:`manager`)."""
        return self.manager.store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan" and self._serving is None:
                await self._start(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        manager = self._serving
        if manager is None:
            manager = await self._ready()
        prefix = self._prefix if self.cookie_name is None else self._named(scope)
        session: Any = manager.open(self._cookies(scope, prefix))
        if self.track_client:
            client = scope.get("client")
            session.state.client_meta = {
                "user_agent": _header(scope, b"user-agent")[:256],
                "ip": client[0] if client else "",
            }
        scope["session"] = session
        scope["satchel"] = manager
        if not session.state.loaded:
            try:
                await manager.fill(session)
            except StoreUnavailable as exc:
                await _refuse(kind, send, exc)
                return
        if kind == "http":
            await self._http(scope, receive, send, session, prefix)
        else:
            await self._websocket(scope, receive, send, session, prefix)

    def _named(self, scope: Scope) -> bytes:
        """``name=`` for the cookie the ``cookie_name`` function picks for this request."""
        assert self.cookie_name is not None
        name = self.cookie_name(scope)
        if not isinstance(name, str) or not _is_token(name):
            raise ConfigError(f"the cookie_name function returned {name!r}, not a cookie name")
        return name.encode("latin-1") + b"="

    def _cookies(self, scope: Scope, prefix: bytes) -> list[str]:
        """Every value the request sent under the session cookie's name, in order."""
        found: list[str] = []
        for name, value in scope["headers"]:
            if name == b"cookie" and prefix in value:
                for part in value.split(b";"):
                    part = part.strip()
                    if part.startswith(prefix):
                        found.append(_unquote(part[len(prefix) :].decode("latin-1")))
        return found

    async def _commit(
        self, session: AsyncSession, name: bytes, *, vary: bool
    ) -> list[tuple[bytes, bytes]]:
        """Save ``session``; the headers the response needs for its cookie."""
        outcome = await self.manager.save(session)
        headers: list[tuple[bytes, bytes]] = []
        if self._dies_at_once and session.state.session_id is not None and outcome.alive:
            # max_age 0 or less: Starlette sends a cookie the browser drops at once, so the
            # session cannot outlive this response; a replay of the cookie opens nothing.
            value = outcome.new_cookie or self.manager.cookie_of(session.state)
            await self.manager.end(session)
            if outcome.new_cookie is not None or outcome.wrote:
                headers.append((b"set-cookie", name + value.encode("latin-1") + self._set_tail))
            if vary and session.state.accessed:
                headers.append((b"vary", b"Cookie"))
            return headers
        if outcome.delete_cookie:
            headers.append((b"set-cookie", name + self._delete_tail))
        elif outcome.new_cookie is not None or (
            # Same ID: the cookie goes out again only to renew its Max-Age, when the save
            # wrote or moved the idle expiry (at most once a refresh interval), not on
            # every response, so shared caches can keep responses that send none.
            outcome.alive
            and self.max_age is not None
            and session.state.session_id is not None
            and (outcome.wrote or outcome.refreshed)
        ):
            value = outcome.new_cookie or self.manager.cookie_of(session.state)
            headers.append((b"set-cookie", name + value.encode("latin-1") + self._set_tail))
        if vary and session.state.accessed:  # as Starlette: only a response that used the session
            headers.append((b"vary", b"Cookie"))
        return headers

    async def _http(
        self, scope: Scope, receive: Receive, send: Send, session: Any, name: bytes
    ) -> None:
        started = replaced = False

        async def send_with_cookie(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the app's own answer, after the 503 that replaced it
            if message["type"] == "http.response.start":
                started = True
                try:
                    headers = await self._commit(session, name, vary=True)
                except StoreUnavailable as exc:
                    replaced = True
                    await _refuse("http", send, exc)
                    return
                if headers:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        try:
            await self.app(scope, receive, send_with_cookie)
        except StoreUnavailable as exc:  # raised by a view (an admin call, say)
            if started:
                raise
            await _refuse("http", send, exc)
        finally:
            if session.state.lock_held is not None:  # the view failed before any save
                await _release(self.manager, session)

    async def _websocket(
        self, scope: Scope, receive: Receive, send: Send, session: Any, name: bytes
    ) -> None:
        """Save at the accept (its cookie goes with it) and again when the socket ends."""
        accepted = refused = False

        async def send_with_cookie(message: Message) -> None:
            nonlocal accepted, refused
            if refused:
                return  # closed with 1011 already: the app's later messages go nowhere
            if message["type"] == "websocket.accept" and not accepted:
                try:
                    headers = await self._commit(session, name, vary=False)
                except StoreUnavailable as exc:
                    refused = True
                    await _refuse("websocket", send, exc)
                    return
                accepted = True
                session.state.settle()
                if headers:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        try:
            await self.app(scope, receive, send_with_cookie)
        finally:
            await self._after_socket(session, accepted)

    async def _after_socket(self, session: Any, accepted: bool) -> None:
        """Store what the socket changed after its accept (no cookie can go out now)."""
        if session.state.lock_held is not None:
            await _release(self.manager, session)
        if not (accepted and session.modified and session.state.loaded):
            return
        if session.state.session_id is None:
            _log.warning(
                "a websocket stored data in a session that had no cookie at its accept; "
                "the browser cannot be given one now, so it was not saved"
            )
            return
        try:
            await self.manager.save(session)
        except StoreUnavailable as exc:
            _log.warning("could not save a websocket's session after it closed: %s", exc)


def _is_token(name: str) -> bool:
    return (
        bool(name) and name.isascii() and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)
    )


def _header(scope: Scope, wanted: bytes) -> str:
    for name, value in scope["headers"]:
        if name == wanted:
            text: str = value.decode("latin-1")
            return text
    return ""


def _sync_store(store: Any, prefix: Any, *, strict: bool, check: bool) -> Store | AsyncStore:
    """The store ``store`` names (a URL, a sync or async store, or the SQLite default)."""
    default = os.path.abspath(DEFAULT_SQLITE_PATH)
    chosen = build_store(store, prefix, default, ("store", "key_prefix"))
    check_store(chosen, strict=strict)
    if check:  # before any request: the blocking check runs once, off the loop
        require_working_store(chosen, "check_store")
    return chosen


async def _release(manager: AsyncSessionManager, session: AsyncSession) -> None:
    try:
        await manager.release(session)
    except StoreUnavailable as error:
        _log.warning("could not release a session lock: %s", error)


async def _refuse(kind: str, send: Send, error: StoreUnavailable) -> None:
    """Answer 503 (close a websocket with 1011): the store is down or the session busy."""
    message, status, headers = unavailable(error)
    if kind == "websocket":
        await send({"type": "websocket.close", "code": 1011, "reason": "session store unavailable"})
        return
    body = message.encode()
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _manager(connection: HTTPConnection) -> AsyncSessionManager:
    manager = connection.scope.get("satchel")
    if not isinstance(manager, AsyncSessionManager):
        raise ConfigError("this app has no satchel SessionMiddleware")
    return manager


def get_session(connection: HTTPConnection) -> AsyncSession:
    """The request's session, typed as satchel's (for ``regenerate()`` and ``owner``).

    Usable as a FastAPI dependency: ``session: AsyncSession = Depends(get_session)``.
    Raises :class:`~satchel.errors.ConfigError` without the middleware.
    """
    session = connection.scope.get("session")
    if not isinstance(session, AsyncSession):
        raise ConfigError("this request has no satchel session: add satchel's SessionMiddleware")
    return session


def fresh_login(
    connection: HTTPConnection,
    max_age: float,
    *,
    redirect_to: str | Callable[[HTTPConnection], str] | None = None,
) -> Response | None:
    """``None`` when the login is no older than ``max_age`` seconds; else the answer to
    send instead of the view: a 303 to ``redirect_to`` (a URL, or a function of the
    request that returns one), or a 401 without it. For Starlette views::

        async def close_account(request):
            if (answer := fresh_login(request, 300, redirect_to="/confirm")) is not None:
                return answer
            ...
    """
    if get_session(connection).authenticated_within(max_age):
        return None
    target = redirect_to(connection) if callable(redirect_to) else redirect_to
    if target is None:
        return PlainTextResponse("A recent login is required.", 401)
    return RedirectResponse(target, 303)


def require_fresh_login(
    max_age: float, *, redirect_to: str | Callable[[HTTPConnection], str] | None = None
) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that lets the route run only after a login no older than
    ``max_age`` seconds; else it answers as :func:`fresh_login` does (by raising
    Starlette's ``HTTPException``, which FastAPI turns into that response)::

        @app.post("/close-account", dependencies=[Depends(require_fresh_login(300))])
    """

    async def fresh_only(request: Request) -> None:
        answer = fresh_login(request, max_age, redirect_to=redirect_to)
        if answer is not None:
            headers = (
                {"Location": answer.headers["location"]} if answer.status_code == 303 else None
            )
            raise HTTPException(answer.status_code, "A recent login is required.", headers)

    return fresh_only


async def list_sessions(
    connection: HTTPConnection, owner: str | int | None = None
) -> list[SessionInfo]:
    """The live sessions of ``owner`` (everyone's when ``None``), most recent first.

    The requester's own session is marked ``current``.
    """
    manager = _manager(connection)
    current = get_session(connection)
    return await manager.run(list_sessions_steps(manager, owner, current))


async def revoke(connection: HTTPConnection, reference: str) -> bool:
    """End the session ``reference`` names; ``False`` if it did not exist."""
    manager = _manager(connection)
    return await manager.run(revoke_steps(manager, reference, get_session(connection)))


async def revoke_all(
    connection: HTTPConnection, owner: str | int, keep_current: bool = True
) -> int:
    """End ``owner``'s sessions ("log out my other devices"); return how many.

    With ``keep_current`` the requester's own session lives on.
    """
    manager = _manager(connection)
    current = get_session(connection)
    keep = current if keep_current else None
    return await manager.run(revoke_all_steps(manager, owner, keep, current))


def stats(connection: HTTPConnection) -> dict[str, int]:
    """This process's counters for the app (see :class:`satchel.signals.Counters`)."""
    return _stats(_manager(connection))
