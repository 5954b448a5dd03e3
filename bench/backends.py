"""The session layers the benchmarks compare, each built into the same small Flask app."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, session

SECRET = "bench-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"
#: The benchmark's encryption key (32 bytes, URL-safe base64): a fixed one, for runs alike.
ENCRYPTION_KEY = "YmVuY2gtZW5jcnlwdGlvbi1rZXktMzItYnl0ZXMtISE"


def _views(app: Flask) -> Flask:
    @app.get("/bare")
    def bare() -> str:
        return "ok"

    @app.get("/read")
    def read() -> str:
        return str(len(session.get("payload", "")))

    @app.get("/write")
    def write() -> str:
        session["count"] = session.get("count", 0) + 1
        return "ok"

    @app.get("/create/<int:size>")
    def create(size: int) -> str:
        session["payload"] = "x" * size
        session["count"] = 0
        return "ok"

    return app


def bare() -> Flask:
    app = Flask("bare")
    app.config["SECRET_KEY"] = SECRET
    return _views(app)


def flask_cookie() -> Flask:
    return bare()


def satchel(store_url: str, **config: Any) -> Callable[[], Flask]:
    def build() -> Flask:
        from satchel import Satchel

        app = Flask("satchel")
        app.config.update(SECRET_KEY=SECRET, SATCHEL_STORE=store_url, **config)
        Satchel(app)
        return _views(app)

    return build


def flask_session_redis(url: str) -> Callable[[], Flask]:
    def build() -> Flask:
        import redis
        from flask_session import Session

        app = Flask("fs-redis")
        app.config.update(
            SECRET_KEY=SECRET, SESSION_TYPE="redis", SESSION_REDIS=redis.Redis.from_url(url)
        )
        Session(app)
        return _views(app)

    return build


def flask_session_sqlalchemy(database: str) -> Callable[[], Flask]:
    """Flask-Session's SQLAlchemy store on ``database`` (an SQLAlchemy URL)."""

    def build() -> Flask:
        from flask_session import Session
        from flask_sqlalchemy import SQLAlchemy

        app = Flask("fs-sqlalchemy")
        app.config.update(
            SECRET_KEY=SECRET,
            SQLALCHEMY_DATABASE_URI=database,
            SESSION_TYPE="sqlalchemy",
        )
        app.config["SESSION_SQLALCHEMY"] = SQLAlchemy(app)
        Session(app)
        return _views(app)

    return build


def flask_session_cachelib(directory: Path) -> Callable[[], Flask]:
    def build() -> Flask:
        from cachelib import FileSystemCache
        from flask_session import Session

        app = Flask("fs-cachelib")
        app.config.update(
            SECRET_KEY=SECRET,
            SESSION_TYPE="cachelib",
            SESSION_CACHELIB=FileSystemCache(str(directory / "cachelib"), threshold=0),
        )
        Session(app)
        return _views(app)

    return build


def all_backends(
    valkey_url: str, directory: Path | None = None, postgres_url: str | None = None
) -> dict[str, Any]:
    """Name → app factory, in table order (bare Flask first: the ratios' baseline).

    With ``postgres_url`` (a ``postgresql://`` URL), Flask-Session's SQLAlchemy
    store and satchel both on that PostgreSQL are added.
    """
    directory = directory or Path(tempfile.mkdtemp(prefix="satchel-bench-"))
    backends: dict[str, Any] = {
        "bare Flask": bare,
        "Flask cookie session": flask_cookie,
        "Flask-Session Redis": flask_session_redis(valkey_url),
        "Flask-Session SQLAlchemy/SQLite": flask_session_sqlalchemy(
            f"sqlite:///{directory}/fs.sqlite3"
        ),
        "Flask-Session cachelib files": flask_session_cachelib(directory),
    }
    if postgres_url:
        backends["Flask-Session SQLAlchemy/PostgreSQL"] = flask_session_sqlalchemy(
            postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
        )
    backends.update({
        "satchel memory": satchel("memory://"),
        "satchel SQLite": satchel(f"sqlite:///{directory}/satchel.sqlite3"),
        # Renewal (not due) and an owner limit on: what a request pays for them.
        "satchel SQLite rules on": satchel(
            f"sqlite:///{directory}/satchel-rules.sqlite3",
            SATCHEL_RENEWAL_INTERVAL=3600,
            SATCHEL_MAX_SESSIONS_PER_OWNER=5,
        ),
        # Encryption at rest on (SATCHEL_ENCRYPTION_KEYS): what sealing costs a request.
        "satchel SQLite encrypted": satchel(
            f"sqlite:///{directory}/satchel-sealed.sqlite3",
            SATCHEL_ENCRYPTION_KEYS=[ENCRYPTION_KEY],
        ),
        "satchel Valkey": satchel(valkey_url.replace("/0", "/1")),
        "satchel Valkey encrypted": satchel(
            valkey_url.replace("/0", "/2"), SATCHEL_ENCRYPTION_KEYS=[ENCRYPTION_KEY]
        ),
        "satchel Valkey, cached": satchel(valkey_url.replace("/0", "/1") + "?cache=64MB"),
    })  # fmt: skip
    if postgres_url:
        backends["satchel PostgreSQL"] = satchel(postgres_url)
    return backends
