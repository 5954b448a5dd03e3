"""Driving a WSGI app in process, with or without its cookie: the clients the
benchmark's in-process runs (run.py) and its instruction counts (instructions.py) share."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from flask import Flask

__all__ = ["WSGIClient", "make_clients"]


class WSGIClient:
    """Calls a WSGI app directly with a minimal environ, carrying its cookie along.

    Cheaper than Flask's test client, so the harness hides less of what the
    session layer costs.
    """

    def __init__(self, app: Flask, keep_cookies: bool = True) -> None:
        self.app = app.wsgi_app
        self.keep = keep_cookies
        self.cookie = ""
        self.base = {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "localhost",
            "wsgi.url_scheme": "http",
            "wsgi.input": None,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "REMOTE_ADDR": "127.0.0.1",
        }
        self.status = ""
        self.headers: list[tuple[str, str]] = []

    def _start(self, status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
        self.status, self.headers = status, headers

    def get(self, path: str) -> bytes:
        environ = dict(self.base, PATH_INFO=path)
        if self.cookie:
            environ["HTTP_COOKIE"] = self.cookie
        body = b"".join(self.app(environ, self._start))
        if self.keep:
            for name, value in self.headers:
                if name == "Set-Cookie" and value.startswith("session="):
                    cookie = value.split(";", 1)[0]
                    self.cookie = "" if cookie == "session=" else cookie
        assert self.status.startswith(("200", "30")), (path, self.status, body[:200])
        return body


def make_clients(factory: Callable[[], Flask], size: int) -> tuple[WSGIClient, WSGIClient]:
    """A client holding a session with a ``size``-byte payload, and a cookie-less one.

    Bare Flask's client holds no cookie: its requests are the baseline.
    """
    app = factory()
    holder = WSGIClient(app)
    if factory.__name__ != "bare":
        holder.get(f"/create/{size}")
        assert holder.cookie
    return holder, WSGIClient(app, keep_cookies=False)
