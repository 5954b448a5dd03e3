"""``__Host-`` and ``__Secure-`` cookie names: they work on every adapter and store, and a
configuration the browser would reject for the prefix is a ConfigError at start-up."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from flask import Flask, session
from quart import Quart
from quart import session as quart_session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import satchel.quart
from satchel import Satchel
from satchel.asgi import SessionMiddleware
from satchel.errors import ConfigError
from satchel.stores import MemoryStore, Store

SECRET = "a long and random secret for the cookie prefix tests 93be"
HTTPS = "https://example.test"


def flask_app(store: Store, **config: Any) -> Flask:
    app = Flask("prefixes")
    app.config.update(SECRET_KEY=SECRET, **config)
    Satchel(app, store=store)

    @app.get("/count")
    def count() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    return app


def quart_app(store: Store, **config: Any) -> Quart:
    app = Quart("prefixes")
    app.config.update(SECRET_KEY=SECRET, **config)
    satchel.quart.Satchel(app, store=store)

    @app.get("/count")
    async def count() -> str:
        quart_session["n"] = quart_session.get("n", 0) + 1
        return str(quart_session["n"])

    return app


def asgi_app(store: Store, **options: Any) -> SessionMiddleware:
    async def count(request: Request) -> PlainTextResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return PlainTextResponse(str(request.session["n"]))

    return SessionMiddleware(
        Starlette(routes=[Route("/count", count)]), secret_key=SECRET, store=store, **options
    )


@pytest.mark.parametrize(
    "config,why",
    [
        ({"SESSION_COOKIE_NAME": "__Host-session"}, "Secure: set SESSION_COOKIE_SECURE"),
        ({"SESSION_COOKIE_NAME": "__secure-s"}, "unless it is Secure"),
        (
            {"SESSION_COOKIE_NAME": "__Host-s", "SESSION_COOKIE_SECURE": True,
             "SESSION_COOKIE_DOMAIN": "example.test"},
            "names a Domain",
        ),
        (
            {"SESSION_COOKIE_NAME": "__Host-s", "SESSION_COOKIE_SECURE": True,
             "SESSION_COOKIE_PATH": "/app"},
            "unless its Path is '/'",
        ),
        (
            {"SESSION_COOKIE_NAME": "__Host-s", "SESSION_COOKIE_SECURE": True,
             "APPLICATION_ROOT": "/app"},
            "unless its Path is '/'",
        ),
    ],
)  # fmt: skip
@pytest.mark.parametrize("factory", [flask_app, quart_app])
def test_flask_and_quart_refuse_a_prefix_the_browser_would_drop(
    factory: Any, config: dict[str, Any], why: str
) -> None:
    """Each rule of the prefix, in the config's own words, at Satchel(app)."""
    with pytest.raises(ConfigError, match=why):
        factory(MemoryStore(), **config)


@pytest.mark.parametrize(
    "options,why",
    [
        ({"session_cookie": "__Host-session"}, "unless it is Secure: set https_only"),
        ({"session_cookie": "__Secure-session"}, "unless it is Secure"),
        ({"session_cookie": "__Host-s", "https_only": True, "domain": "example.test"}, "Domain"),
        ({"session_cookie": "__Host-s", "https_only": True, "path": "/app"}, "Path is '/'"),
    ],
)
def test_the_asgi_middleware_refuses_a_prefix_the_browser_would_drop(
    options: dict[str, Any], why: str
) -> None:
    """The same rules, in the middleware's argument names, at construction."""
    with pytest.raises(ConfigError, match=why):
        asgi_app(MemoryStore(), **options)


def test_a_secure_prefix_may_share_the_cookie_across_subdomains() -> None:
    """__Secure- with a Domain is what a browser accepts: no error, on every adapter."""
    flask_app(
        MemoryStore(), SESSION_COOKIE_NAME="__Secure-s", SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_DOMAIN="example.test",
    )  # fmt: skip
    asgi_app(MemoryStore(), session_cookie="__Secure-s", https_only=True, domain="example.test")


def _cookie(headers: list[str], name: str) -> tuple[str, str]:
    """The value and the attributes (lower-cased) of cookie ``name`` in Set-Cookie headers."""
    for header in headers:
        if header.startswith(name + "="):
            value, _, attributes = header.partition(";")
            return value[len(name) + 1 :], attributes.lower()
    raise AssertionError(f"no {name} cookie in {headers}")


def _check_host_cookie(attributes: str) -> None:
    parts = [part.strip() for part in attributes.split(";")]
    assert "secure" in parts and "path=/" in parts, attributes
    assert not any(part.startswith("domain") for part in parts), attributes


@pytest.mark.parametrize("adapter", ["flask", "quart", "asgi"])
def test_a_host_prefixed_session_works_on_every_adapter_and_store(
    store: Store, adapter: str
) -> None:
    """__Host-session: Secure, Path=/, no Domain; the next request reads the session."""
    name = "__Host-session"
    if adapter == "flask":
        app = flask_app(store, SESSION_COOKIE_NAME=name, SESSION_COOKIE_SECURE=True)
        client = app.test_client(use_cookies=False)
        first = client.get("/count", base_url=HTTPS)
        value, attributes = _cookie(first.headers.getlist("Set-Cookie"), name)
        second = client.get("/count", base_url=HTTPS, headers={"Cookie": f"{name}={value}"})
        answers = [first.text, second.text]
    elif adapter == "quart":
        qapp = quart_app(store, SESSION_COOKIE_NAME=name, SESSION_COOKIE_SECURE=True)

        async def quart_run() -> tuple[list[str], str]:
            client = qapp.test_client(use_cookies=False)
            first = await client.get("/count", scheme="https")
            value, attributes = _cookie(first.headers.getlist("Set-Cookie"), name)
            second = await client.get(
                "/count", scheme="https", headers={"Cookie": f"{name}={value}"}
            )
            await qapp.extensions["satchel"].store.close()
            return [await first.get_data(as_text=True), await second.get_data(as_text=True)], (
                attributes
            )

        answers, attributes = asyncio.run(quart_run())
    else:
        middleware = asgi_app(store, session_cookie=name, https_only=True)

        async def asgi_run() -> tuple[list[str], str]:
            transport = httpx.ASGITransport(app=middleware)
            async with httpx.AsyncClient(transport=transport, base_url=HTTPS) as client:
                first = await client.get("/count")
                value, attributes = _cookie(first.headers.get_list("set-cookie"), name)
                client.cookies.clear()
                second = await client.get("/count", headers={"Cookie": f"{name}={value}"})
            await middleware.store.close()
            return [first.text, second.text], attributes

        answers, attributes = asyncio.run(asgi_run())
    assert answers == ["1", "2"]
    _check_host_cookie(attributes)
