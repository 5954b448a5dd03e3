"""A pytest plugin that runs Flask's own tests with every Flask app on satchel.

Loaded by ``tests/test_flask_suite.py`` with ``-p flask_suite_plugin`` in a
subprocess that runs the tests of Flask's sdist. Each Flask app whose session
interface is Flask's default gets satchel (on a memory store) installed on its
first session use, after the test has set its ``SECRET_KEY``; apps with a
session interface of their own keep it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import _pytest.monkeypatch
import flask
import pytest
from flask.sessions import SecureCookieSessionInterface, SessionInterface

if not hasattr(_pytest.monkeypatch, "notset"):  # Flask's conftest predates pytest 9
    _pytest.monkeypatch.notset = _pytest.monkeypatch.NOTSET  # type: ignore[attr-defined]


class _InstallSatchel(SessionInterface):
    """Installs satchel on the app at its first request, then hands over to it."""

    def _satchel(self, app: flask.Flask) -> SessionInterface:
        if "satchel" not in app.extensions:
            from satchel import Satchel
            from satchel.stores import MemoryStore

            Satchel(app, store=MemoryStore())
        return app.session_interface

    def open_session(self, app: flask.Flask, request: Any) -> Any:
        return self._satchel(app).open_session(app, request)

    def save_session(self, app: flask.Flask, session: Any, response: Any) -> None:
        self._satchel(app).save_session(app, session, response)


@pytest.fixture(autouse=True)
def _satchel_everywhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    original = flask.Flask.__init__

    def init(self: flask.Flask, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if type(self.session_interface) is SecureCookieSessionInterface:
            self.session_interface = _InstallSatchel()

    monkeypatch.setattr(flask.Flask, "__init__", init)
    yield
