"""The app the load and fault tests run under gunicorn, configured by environment.

``LOADAPP_BACKEND`` picks the session layer: ``satchel`` (store from
``LOADAPP_STORE``), ``flask-cookie`` (Flask's built-in session) or
``flask-session-redis`` (Flask-Session on ``LOADAPP_STORE``, for comparisons).
``LOADAPP_MIGRATE_FROM`` (``flask-cookie`` or ``flask-session``) makes the satchel
app import the sessions of the app it replaces; ``LOADAPP_OLD_STORE`` is the
Valkey URL Flask-Session used.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from flask import Flask, flash, get_flashed_messages, request, session

SECRET = "load-test-secret-key-0123456789abcdef-xyz"


def create_app() -> Flask:
    app = Flask("loadapp")
    app.config["SECRET_KEY"] = SECRET
    backend = os.environ.get("LOADAPP_BACKEND", "satchel")
    store = os.environ.get("LOADAPP_STORE", "memory://")
    if backend == "satchel":
        from satchel import Satchel

        app.config["SATCHEL_STORE"] = store
        app.config["SATCHEL_LOCK_TIMEOUT"] = 20
        app.config["SATCHEL_MAX_SESSIONS_PER_OWNER"] = (
            int(os.environ.get("LOADAPP_MAX_SESSIONS", 0)) or None
        )
        app.config["SATCHEL_RENEWAL_INTERVAL"] = float(os.environ.get("LOADAPP_RENEWAL", 0)) or None
        if os.environ.get("LOADAPP_MIGRATE_FROM"):
            app.config["SATCHEL_MIGRATE_FROM"] = os.environ["LOADAPP_MIGRATE_FROM"]
            app.config["SATCHEL_MIGRATE_FLASK_SESSION_STORE"] = os.environ.get("LOADAPP_OLD_STORE")
        Satchel(app)
    elif backend == "flask-session-redis":
        import redis
        from flask_session import Session

        app.config.update(SESSION_TYPE="redis", SESSION_REDIS=redis.Redis.from_url(store))
        Session(app)
    elif backend != "flask-cookie":
        raise ValueError(f"unknown LOADAPP_BACKEND {backend!r}")

    @app.get("/start/<marker>")
    def start(marker: str) -> str:
        session["owner"] = marker
        session["count"] = 0
        return "ok"

    @app.get("/write/<key>")
    def write(key: str) -> str:
        session[key] = True
        return "ok"

    @app.get("/incr")
    def incr() -> str:
        session["count"] = session.get("count", 0) + 1
        return "ok"

    if backend == "satchel":
        from satchel import locked

        app.add_url_rule("/incr-locked", "incr_locked", locked(incr))

    @app.get("/read")
    def read() -> dict[str, Any]:
        return dict(session)

    @app.get("/read-slowly")
    def read_slowly() -> dict[str, Any]:
        # Holds the request open after the session loaded, so that others overlap it.
        data = dict(session)
        time.sleep(0.5)
        return data

    @app.get("/cart/<item>")
    def add_to_cart(item: str) -> str:
        session.setdefault("cart", []).append(item)  # the README's example, no lock
        return "ok"

    @app.get("/pref/<name>/<value>")
    def set_preference(name: str, value: str) -> str:
        session.setdefault("prefs", {}).setdefault("ui", {})[name] = value
        return "ok"

    if backend == "satchel":
        from satchel import Satchel, current_session

        @app.get("/login/<user>")
        def login(user: str) -> str:
            current_session().regenerate(owner=user)
            return "ok"

        @app.get("/logout-everywhere")
        def logout_everywhere() -> dict[str, int]:
            owner = current_session().owner
            assert owner is not None
            return {"ended": Satchel.revoke_all(owner, keep_current=False)}

        @app.get("/stats")
        def stats() -> dict[str, int]:
            return {**Satchel.stats(), "pid": os.getpid()}  # which worker answered

    @app.get("/clear")
    def clear() -> str:
        session.clear()
        return "ok"

    @app.get("/flash/<message>")
    def flash_message(message: str) -> str:
        flash(message)
        return "ok"

    @app.get("/show-flashes-slowly")
    def show_flashes_slowly() -> str:
        # Popping the only flash empties this request's view of the session; the
        # pause lets an overlapping request store something before this one saves.
        messages = get_flashed_messages()
        popped, go = request.args.get("popped"), request.args.get("go")
        if popped and go:  # the test says when: it writes between these two events
            Path(popped).touch()
            deadline = time.monotonic() + 10
            while not Path(go).exists() and time.monotonic() < deadline:
                time.sleep(0.001)
        else:
            time.sleep(0.05)
        return ",".join(messages)

    return app
