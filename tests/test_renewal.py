"""Renewal (issue 24, part 3): a session whose ID is older than SATCHEL_RENEWAL_INTERVAL gets
a new one at its next request; the old ID joins it for SATCHEL_RENEWAL_GRACE seconds.

The ``clock`` fixture makes IDs look old, or time pass, for the renewal rules alone, so
no test waits out an interval or races a grace period.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from flask import Flask, session

import satchel._renewal
from satchel import Satchel, locked
from satchel.errors import ConfigError
from satchel.signals import session_regenerated
from satchel.stores import MemoryStore, Store

from .conftest import SECRET

INTERVAL = 3600.0
GRACE = 10.0


class Clock:
    """The renewal rules' clocks: IDs issued before ``age`` was set look that many seconds
    older than they are when a renewal is considered, and ``later`` seconds have passed
    when a grace is checked."""

    def __init__(self) -> None:
        self._age = 0.0
        self.since = 0.0
        self.later = 0.0

    @property
    def age(self) -> float:
        return self._age

    @age.setter
    def age(self, value: float) -> None:
        self._age, self.since = value, time.time()

    def now_for(self, record: Any, now: float) -> float:
        return now + self._age if satchel._renewal.issued_at(record) < self.since else now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    due = satchel._renewal.due
    monkeypatch.setattr(
        satchel._renewal,
        "due",
        lambda settings, record, now: due(settings, record, fake.now_for(record, now)),
    )
    monkeypatch.setattr(
        satchel._renewal, "time", SimpleNamespace(time=lambda: time.time() + fake.later)
    )
    return fake


def make(store: Store, **config: Any) -> Flask:
    app = Flask("renewal")
    app.config.update(
        SECRET_KEY=SECRET,
        SATCHEL_RENEWAL_INTERVAL=INTERVAL,
        SATCHEL_RENEWAL_GRACE=GRACE,
        SATCHEL_IDLE_TIMEOUT=4 * INTERVAL,
    )
    app.config.update(config)
    Satchel(app, store=store)

    @app.get("/set/<key>")
    def set_key(key: str) -> str:
        session[key] = True
        return "ok"

    @app.get("/login/<user>")
    def login(user: str) -> str:
        session.regenerate(owner=user)  # type: ignore[attr-defined]
        return "ok"

    @app.get("/read")
    def read() -> dict[str, Any]:
        return {"data": dict(session), "owner": session.owner}  # type: ignore[attr-defined]

    return app


def cookie(client: Any) -> str:
    found = client.get_cookie("session")
    assert found is not None
    return str(found.value)


def test_an_old_id_is_renewed_with_data_and_owner_kept(store: Store, clock: Clock) -> None:
    app = make(store)
    reasons: list[str] = []
    session_regenerated.connect(lambda _a, **kw: reasons.append(kw["reason"]), app, weak=False)
    client = app.test_client()
    client.get("/set/a")
    client.get("/login/ann")
    first = cookie(client)
    assert client.get("/read").get_json() == {"data": {"a": True}, "owner": "ann"}
    assert cookie(client) == first  # not due yet: the same ID
    clock.age = INTERVAL + 1
    assert client.get("/read").get_json() == {"data": {"a": True}, "owner": "ann"}
    renewed = cookie(client)
    assert renewed != first
    assert reasons == ["login", "renewal"]
    assert Satchel.stats(app)["renewals"] == 1
    with app.test_request_context():
        infos = Satchel.list_sessions("ann")
    assert len(infos) == 1  # moved, not copied


def test_the_old_id_joins_within_the_grace_and_is_dead_after(store: Store, clock: Clock) -> None:
    app = make(store)
    browser = app.test_client()
    browser.get("/set/a")
    old = cookie(browser)
    clock.age = INTERVAL + 1
    browser.get("/set/b")  # renews, and writes b into the renewed session
    new = cookie(browser)
    clock.age = 0  # the renewed ID is new
    late = app.test_client()  # a request the browser sent with the old cookie
    late.set_cookie("session", old)
    assert late.get("/set/c").status_code == 200
    assert cookie(late) == new  # it took home the renewed session's cookie
    assert browser.get("/read").get_json()["data"] == {"a": True, "b": True, "c": True}
    assert Satchel.stats(app)["renewal_joins"] == 1
    clock.later = GRACE + 1  # after the grace
    stale = app.test_client()
    stale.set_cookie("session", old)
    assert stale.get("/read").get_json() == {"data": {}, "owner": None}
    assert browser.get("/read").get_json()["data"] == {"a": True, "b": True, "c": True}


def test_overlapping_renewals_give_one_id_and_lose_nothing(store: Store, clock: Clock) -> None:
    """Two requests of one session, both loaded before either saves, both due: one new ID
    (the second's move is refused and it joins the first's), both keys kept."""
    app = make(store)
    barrier = threading.Barrier(2)

    @app.get("/slow/<key>")
    def slow(key: str) -> str:
        session.get("a")  # loaded
        barrier.wait()  # both have loaded the old record before either saves
        session[key] = True
        return "ok"

    client = app.test_client()
    client.get("/set/a")
    old = cookie(client)
    clock.age = INTERVAL + 1
    cookies: dict[str, str] = {}

    def run(key: str) -> None:
        browser = app.test_client()
        browser.set_cookie("session", old)
        assert browser.get(f"/slow/{key}").status_code == 200
        cookies[key] = cookie(browser)

    threads = [threading.Thread(target=run, args=(key,)) for key in ("x", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cookies["x"] == cookies["y"] != old  # one new ID
    stats = Satchel.stats(app)
    assert stats["renewals"] == 1 and stats["renewal_joins"] >= 1  # the overlap happened
    clock.age = 0
    reader = app.test_client()
    reader.set_cookie("session", cookies["x"])
    assert reader.get("/read").get_json()["data"] == {"a": True, "x": True, "y": True}


def test_strict_mode_and_the_owner_limit_work_with_renewal(store: Store, clock: Clock) -> None:
    app = make(store, SATCHEL_MAX_SESSIONS_PER_OWNER=1)
    app.add_url_rule("/locked/<key>", "locked_set", locked(lambda key: set_in(key)))
    client = app.test_client()
    client.get("/login/bo")
    clock.age = INTERVAL + 1
    assert client.get("/locked/k").text == "ok"  # renewed under the lock
    clock.age = 0
    assert client.get("/read").get_json() == {"data": {"k": True}, "owner": "bo"}
    with app.test_request_context():
        assert len(Satchel.list_sessions("bo")) == 1  # a renewal is not a second login
    assert Satchel.stats(app)["evictions"] == 0
    assert Satchel.stats(app)["renewals"] == 1


def set_in(key: str) -> str:
    session[key] = True
    return "ok"


def test_off_by_default_and_checked() -> None:
    app = Flask("plain")
    app.config["SECRET_KEY"] = SECRET
    Satchel(app, store=MemoryStore())
    assert app.extensions["satchel"].settings.renewal_interval is None
    with pytest.raises(ConfigError, match=r"SATCHEL_RENEWAL_GRACE .* must be shorter"):
        make(MemoryStore(), SATCHEL_RENEWAL_INTERVAL=5, SATCHEL_RENEWAL_GRACE=5)
    with pytest.raises(ConfigError, match="SATCHEL_RENEWAL_INTERVAL must be"):
        make(MemoryStore(), SATCHEL_RENEWAL_INTERVAL=-1)


def test_renewal_on_the_asgi_middleware_and_quart(store: Store, clock: Clock) -> None:
    """The same rules on the async adapters: renewed at the next request after the interval,
    and a request with the old cookie within the grace joins the renewed session."""
    from quart import Quart
    from quart import session as quart_session
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from satchel.asgi import SessionMiddleware
    from satchel.quart import Satchel as QuartSatchel

    async def write(request: Request) -> JSONResponse:
        request.session[request.path_params["key"]] = True
        return JSONResponse(dict(request.session))

    starlette = SessionMiddleware(
        Starlette(routes=[Route("/set/{key}", write)]),
        secret_key=SECRET,
        store=store,
        renewal_interval=INTERVAL,
        renewal_grace=GRACE,
    )
    quart = Quart("renewal")
    quart.config.update(
        SECRET_KEY=SECRET, SATCHEL_RENEWAL_INTERVAL=INTERVAL, SATCHEL_RENEWAL_GRACE=GRACE
    )
    QuartSatchel(quart, store=store)

    @quart.get("/set/<key>")
    async def quart_write(key: str) -> dict[str, Any]:
        quart_session[key] = True
        return dict(quart_session)

    async def scenario(app: Any) -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://t") as browser,
            httpx.AsyncClient(transport=transport, base_url="http://t") as late,
        ):
            await browser.get("/set/a")
            old = browser.cookies["session"]
            clock.age = INTERVAL + 1
            await browser.get("/set/b")
            new = browser.cookies["session"]
            assert new != old
            clock.age = 0
            answer = await late.get("/set/c", headers={"cookie": f"session={old}"})
            assert answer.json() == {"a": True, "b": True, "c": True}
            assert answer.cookies["session"] == new
        close = getattr(app, "store", None) or app.extensions["satchel"].store
        await close.close()

    asyncio.run(scenario(starlette))
    asyncio.run(scenario(quart))
