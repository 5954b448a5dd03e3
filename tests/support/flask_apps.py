"""Flask apps and clients that several test modules share (owners logging in, cookies)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flask import Flask, session

from satchel import Satchel, current_session
from satchel.stores import Store

from ..conftest import SECRET

AppFactory = Callable[..., Flask]


def cookie_of(client: Any) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return str(cookie.value)


def run_together(*jobs: Callable[[], Any]) -> list[Any]:
    """Run each job in its own thread; return their results in order."""
    results: list[Any] = [None] * len(jobs)

    def run(i: int) -> None:
        results[i] = jobs[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def client_with(app: Flask, cookie: str) -> Any:
    client = app.test_client()
    client.set_cookie("session", cookie)
    return client


def logged_in(app: Flask) -> tuple[Any, str]:
    """A client that has visited /login, and its session cookie."""
    client = app.test_client()
    client.get("/login")
    return client, cookie_of(client)


def change_settings(app: Flask, **changes: Any) -> None:
    """Change the manager's settings after init_app, as a lowered limit would."""
    manager = app.extensions["satchel"]
    manager.settings = replace(manager.settings, **changes)


def logins_race_listings(app: Flask, owner: str, logins: int = 300) -> list[str]:
    """``logins`` logins of one owner on 6 threads while 2 threads list the owner's sessions."""
    cookies: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def log_in(count: int) -> None:
        for _ in range(count):
            client = app.test_client()
            assert client.get("/login").status_code == 200
            with lock:
                cookies.append(cookie_of(client))

    def list_sessions() -> None:
        with app.app_context():
            while not stop.is_set():
                Satchel.list_sessions(owner)

    listers = [threading.Thread(target=list_sessions) for _ in range(2)]
    for t in listers:
        t.start()
    try:
        run_together(*[lambda: log_in(logins // 6)] * 6)
    finally:
        stop.set()
        for t in listers:
            t.join()
    return cookies


def owner_app(store: Store, owner: str) -> Flask:
    app = Flask("owners")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=store)

    @app.get("/login")
    def login() -> str:
        session["seen"] = True
        current_session().regenerate(owner=owner)
        return "ok"

    @app.get("/read")
    def read() -> dict[str, Any]:
        return dict(session)

    return app
