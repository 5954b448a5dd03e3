"""The questionnaire demo on ASGI: the same pages as the Flask demo, served by FastAPI.

``satchel demo --asgi`` runs it under uvicorn. It renders the Flask demo's
templates, keeps flash messages where Flask keeps them (``session["_flashes"]``)
and CSRF tokens in the session as the Flask demo does, and gives each slot its
own cookie through :class:`satchel.asgi.SessionMiddleware`'s ``cookie_name`` hook.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..asgi import Scope, SessionMiddleware, get_session, list_sessions, revoke, revoke_all
from ..signing import store_key
from ..stores import MemoryStore, Store
from ._shared import (
    DEAD_COOKIE,
    FRESH_LOGIN_SECONDS,
    SLOTS,
    describe_session,
    device_rows,
    fingerprint,
    footer_rows,
    load_secret_key,
)

__all__ = ["create_app"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
IDLE = timedelta(minutes=30)
ABSOLUTE = timedelta(hours=8)
#: The Flask demo's endpoint names, as its templates use them, and their paths in a slot.
PATHS = {
    "home": "/",
    "page1": "/page1",
    "page2": "/page2",
    "page3": "/page3",
    "start_over": "/start-over",
    "inspect": "/session",
    "tamper": "/tamper",
    "login": "/login",
    "devices": "/devices",
    "end_device": "/devices/end",
    "end_others": "/devices/others",
    "logout": "/logout",
    "sensitive": "/sensitive",
}
#: The endpoints that only take a posted form: a typed or bookmarked URL does nothing.
POST_ONLY = {
    "tamper": "inspect",
    "end_device": "devices",
    "end_others": "devices",
    "logout": "devices",
}
EXPIRED_FORM = "That form had expired (its session ended), so nothing was saved. Please try again."


def slot_cookie(scope: Scope) -> str:
    """Each slot's pages (``/s/N/…``) use cookie ``session-N``; anything else ``session``."""
    parts = str(scope.get("path", "")).split("/", 3)
    if len(parts) > 2 and parts[1] == "s" and parts[2].isdigit():
        return f"session-{int(parts[2])}"
    return "session"


class _Page:
    """What the templates read as ``request``: the endpoint and the query arguments."""

    def __init__(self, endpoint: str, request: Request) -> None:
        self.endpoint = f"pages.{endpoint}"
        self.args = request.query_params


def _flash(request: Request, message: str, category: str = "message") -> None:
    """Flask's ``flash()``: kept in the session under the key Flask uses."""
    request.session["_flashes"] = [*request.session.get("_flashes", []), (category, message)]


def _flashes(request: Request) -> list[tuple[str, str]]:
    if "_flashes" not in request.session:
        return []
    return [(str(category), str(message)) for category, message in request.session.pop("_flashes")]


def _csrf_token(request: Request) -> str:
    token = request.session.get("csrf_token")
    if not isinstance(token, str):
        token = request.session["csrf_token"] = secrets.token_hex(20)
    return token


def _form_is_genuine(request: Request, form: dict[str, str]) -> bool:
    token = request.session.get("csrf_token")
    sent = form.get("csrf_token", "")
    return isinstance(token, str) and hmac.compare_digest(token, sent)


async def _form(request: Request) -> dict[str, str]:
    """The posted form fields (``application/x-www-form-urlencoded``)."""
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace")))


def create_app(
    *,
    store: str | Store | None = None,
    instance_path: str | os.PathLike[str] | None = None,
    fresh_login_seconds: float = FRESH_LOGIN_SECONDS,
) -> FastAPI:
    """Build the demo on ``store`` (a URL or object; SQLite in the instance folder);
    the sensitive action asks for a login no older than ``fresh_login_seconds``."""
    instance = Path(os.path.abspath(instance_path or "instance"))
    key, key_file = load_secret_key(instance)
    chosen = (
        store or os.environ.get("SATCHEL_STORE") or f"sqlite:///{instance}/satchel-sessions.sqlite3"
    )
    app = FastAPI(title="satchel questionnaire", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        SessionMiddleware,
        secret_key=key,
        store=chosen,
        max_age=None,  # the cookie goes when the browser closes, as in the Flask demo
        idle_timeout=IDLE,
        absolute_timeout=ABSOLUTE,
        cookie_name=slot_cookie,
        track_client=True,  # the devices page names each browser
    )
    app.state.secret_key_file = key_file
    app.state.store = chosen
    templates = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"])
    )

    def url_for(current: int, endpoint: str, **values: Any) -> str:
        name = endpoint.rsplit(".", 1)[-1]
        where = values.pop("slot", current)
        query = f"?{urlencode(values)}" if values else ""
        return f"/s/{where}{PATHS[name]}{query}"

    def render(request: Request, slot: int, endpoint: str, template: str, **extra: Any) -> Response:
        session = get_session(request)
        manager = request.scope["satchel"]
        context = {
            "request": _Page(endpoint, request),
            "session": session,
            "url_for": lambda endpoint, **values: url_for(slot, endpoint, **values),
            "csrf_token": lambda: _csrf_token(request),
            "get_flashed_messages": lambda with_categories=False: (
                _flashes(request)
                if with_categories
                else [message for _, message in _flashes(request)]
            ),
            "held": footer_rows(session),
            "slot": slot,
            "slots": range(1, SLOTS + 1),
            "persistent": not isinstance(getattr(manager.store, "wrapped", None), MemoryStore),
            "idle_minutes": round(manager.settings.idle_timeout / 60),
            "absolute_hours": round(manager.settings.absolute_timeout / 3600),
            **extra,
        }
        return HTMLResponse(templates.get_template(template).render(context))

    def redirect(slot: int, endpoint: str, **values: Any) -> RedirectResponse:
        return RedirectResponse(url_for(slot, endpoint, **values), 303)

    @app.get("/")
    async def index() -> Response:
        return RedirectResponse("/s/1/", 303)

    @app.api_route("/s/{slot}/{page:path}", methods=["GET", "POST"])
    async def pages(slot: int, page: str, request: Request) -> Response:
        if not 1 <= slot <= SLOTS:
            return redirect(1, "home")
        path = "/" + page
        endpoint = next((name for name, known in PATHS.items() if known == path), None)
        if endpoint is None:
            return HTMLResponse("Not found", 404)
        form: dict[str, str] = {}
        if request.method == "POST":
            form = await _form(request)
            if not _form_is_genuine(request, form):
                _flash(request, EXPIRED_FORM)
                if endpoint == "tamper":
                    return redirect(slot, "inspect")
                return RedirectResponse(url_for(slot, endpoint), 303)
        elif endpoint in POST_ONLY:
            return redirect(slot, POST_ONLY[endpoint])  # a typed or bookmarked URL: nothing to do
        session = get_session(request)
        if endpoint in ("login", "devices", "end_device", "end_others", "logout", "sensitive"):
            return await devices(request, slot, endpoint, form)
        if endpoint == "home":
            return render(request, slot, endpoint, "home.html")
        if endpoint == "page1":
            if request.method == "GET":
                return render(request, slot, endpoint, "page1.html")
            first, last = form.get("firstName", "").strip(), form.get("lastName", "").strip()
            if not (first and last):
                _flash(request, "Please fill in both your first and last name.", "error")
                return redirect(slot, "page1")
            session["firstName"], session["lastName"] = first, last
            return redirect(slot, "page2")
        if endpoint in ("page2", "page3") and "firstName" not in session:
            return render(
                request, slot, endpoint, "missing.html", step="your name", target=".page1"
            )
        if endpoint == "page2":
            if request.method == "GET":
                return render(request, slot, endpoint, "page2.html")
            color = form.get("favoriteColor", "").strip()
            if not color:
                _flash(request, "Please tell us your favourite colour.", "error")
                return redirect(slot, "page2")
            session["favoriteColor"] = color
            return redirect(slot, "page3")
        if endpoint == "page3":
            if "favoriteColor" not in session:
                return render(
                    request, slot, endpoint, "missing.html",
                    step="your favourite colour", target=".page2",
                )  # fmt: skip
            return render(request, slot, endpoint, "page3.html")
        if endpoint == "start_over":
            if request.method == "GET":
                return render(request, slot, endpoint, "start_over.html")
            return start_over(request, slot)
        if endpoint == "tamper":
            return tamper(request, slot)
        info = describe(request)
        dead = await replay_dead_cookie(request, slot)
        return render(request, slot, endpoint, "session.html", info=info, dead=dead)

    async def devices(request: Request, slot: int, endpoint: str, form: dict[str, str]) -> Response:
        """The pretend login, "Your devices" and the sensitive action (see the Flask demo)."""
        session = get_session(request)
        owner = session.owner
        fresh = fresh_login_seconds
        if endpoint == "login":
            wanted = request.query_params.get("next")
            if request.method == "GET":
                stale = owner if wanted == "sensitive" else None
                return render(
                    request, slot, endpoint, "login.html",
                    owner=stale, next=wanted, fresh_seconds=fresh,
                )  # fmt: skip
            name = form.get("name", "").strip()
            if not name:
                _flash(request, "Please type a name.", "error")
                return redirect(slot, "login", **({"next": wanted} if wanted else {}))
            if owner == name:
                session.reauthenticated()  # the same person, again: a fresh login, a new ID
            else:
                await session.regenerate(owner=name)
            return redirect(slot, "sensitive" if wanted == "sensitive" else "devices")
        if endpoint == "end_device":
            mine = {i.reference for i in await list_sessions(request, owner)} if owner else set()
            if form.get("reference") in mine:  # only a device of the visitor's own
                await revoke(request, form["reference"])
                _flash(request, "That device is logged out: its next request starts anew.")
            return redirect(slot, "devices")
        if endpoint == "end_others":
            if owner is not None:
                ended = await revoke_all(request, owner, keep_current=True)
                _flash(request, f"Logged out {ended} other device(s).")
            return redirect(slot, "devices")
        if endpoint == "logout":
            session.clear()
            return redirect(slot, "devices")
        if endpoint == "sensitive":
            if not session.authenticated_within(fresh):
                if owner is None:
                    return redirect(slot, "login")
                _flash(request, "This action needs a recent login: please confirm it is you.")
                return redirect(slot, "login", next="sensitive")
            age = time.time() - (session.authenticated_at or 0.0)
            return render(
                request, slot, endpoint, "sensitive.html", fresh_seconds=fresh, login_age=age
            )
        rows = device_rows(await list_sessions(request, owner)) if owner is not None else []
        return render(
            request, slot, endpoint, "devices.html",
            owner=owner, devices=rows, fresh_seconds=fresh,
        )  # fmt: skip

    def start_over(request: Request, slot: int) -> Response:
        session = get_session(request)
        name = slot_cookie(request.scope)
        old_cookie = request.cookies.get(name)
        had_session = session.session_id is not None and not session.new
        session.clear()
        response = redirect(slot, "home")
        if had_session and old_cookie:
            # Kept only so the session page can show that replaying it finds nothing.
            response.set_cookie(
                DEAD_COOKIE.format(slot=slot), old_cookie, httponly=True, samesite="lax"
            )
        return response

    def tamper(request: Request, slot: int) -> Response:
        """Change one character of the cookie's ID part, as an attacker guessing IDs might."""
        name = slot_cookie(request.scope)
        value = request.cookies.get(name, "")
        response = redirect(slot, "inspect", tampered=1)
        if value:
            flipped = value[:5] + ("A" if value[5] != "A" else "B") + value[6:]
            response.set_cookie(name, flipped, httponly=True, samesite="lax")
        return response

    def describe(request: Request) -> dict[str, Any]:
        name = slot_cookie(request.scope)
        return describe_session(
            get_session(request),
            request.scope["satchel"],
            name,
            request.cookies.get(name),
            permanent=False,  # max_age=None: the cookie ends with the browser
            lifetime=None,
            samesite="Lax",
            secure=False,
        )

    async def replay_dead_cookie(request: Request, slot: int) -> dict[str, Any] | None:
        """Replay the cookie "Start over" ended against the store, to show it is dead."""
        value = request.cookies.get(DEAD_COOKIE.format(slot=slot))
        if not value:
            return None
        manager = request.scope["satchel"]
        session_id = manager.signer.unsign(value)
        if session_id is None:
            return None
        found = await manager.store.load(store_key(session_id))
        return {"fingerprint": fingerprint(session_id), "found": found is not None}

    return app
