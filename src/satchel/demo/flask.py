"""The questionnaire demo on Flask (``satchel demo``); :mod:`satchel.demo` tells what it shows."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Request,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from ..flask import FlaskSession, Satchel
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

__all__ = ["create_app", "slot_cookie"]

pages = Blueprint("pages", __name__, url_prefix="/s/<int:slot>")


def slot_cookie(request: Request) -> str:
    """Each slot's pages (``/s/N/…``) use cookie ``session-N``; anything else ``session``."""
    parts = request.path.split("/", 3)
    if len(parts) > 2 and parts[1] == "s" and parts[2].isdigit():
        return f"session-{int(parts[2])}"
    return "session"


@pages.url_defaults
def _add_slot(endpoint: str, values: dict[str, Any]) -> None:
    if "slot" not in values and "slot" in g:
        values["slot"] = g.slot


@pages.url_value_preprocessor
def _pull_slot(endpoint: str | None, values: dict[str, Any] | None) -> None:
    g.slot = (values or {}).pop("slot", 1)


@pages.before_request
def _check_slot() -> Response | None:
    if not 1 <= g.slot <= SLOTS:
        return redirect(url_for("pages.home", slot=1), 303)
    return None


@pages.get("/")
def home() -> str:
    return render_template("home.html")


@pages.route("/page1", methods=["GET", "POST"])
def page1() -> str | Response:
    if request.method == "GET":
        return render_template("page1.html")
    first = request.form.get("firstName", "").strip()
    last = request.form.get("lastName", "").strip()
    if not (first and last):
        # Redirect even on error, so that no page in the history is a POST
        # result that reload or Back would send again.
        flash("Please fill in both your first and last name.", "error")
        return redirect(url_for(".page1"), 303)
    session["firstName"] = first
    session["lastName"] = last
    return redirect(url_for(".page2"), 303)


@pages.route("/page2", methods=["GET", "POST"])
def page2() -> str | Response:
    if "firstName" not in session:
        return render_template("missing.html", step="your name", target=".page1")
    if request.method == "GET":
        return render_template("page2.html")
    color = request.form.get("favoriteColor", "").strip()
    if not color:
        flash("Please tell us your favourite colour.", "error")
        return redirect(url_for(".page2"), 303)
    session["favoriteColor"] = color
    return redirect(url_for(".page3"), 303)


@pages.get("/page3")
def page3() -> str:
    if "firstName" not in session:
        return render_template("missing.html", step="your name", target=".page1")
    if "favoriteColor" not in session:
        return render_template("missing.html", step="your favourite colour", target=".page2")
    return render_template("page3.html")


@pages.route("/start-over", methods=["GET", "POST"])
def start_over() -> str | Response:
    if request.method == "GET":
        return render_template("start_over.html")
    current = session
    assert isinstance(current, FlaskSession)
    old_cookie = request.cookies.get(current.cookie_name)
    had_session = current.session_id is not None and not current.new
    current.clear()
    response = redirect(url_for(".home"), 303)
    if had_session and old_cookie:
        # Kept only so the session page can show that replaying it finds nothing.
        response.set_cookie(
            DEAD_COOKIE.format(slot=g.slot), old_cookie, httponly=True, samesite="Lax"
        )
    return response


@pages.get("/session")
def inspect() -> str:
    return render_template("session.html", info=describe(), dead=replay_dead_cookie())


@pages.route("/tamper", methods=["GET", "POST"])
def tamper() -> Response:
    """Change one character of the cookie's ID part, as an attacker guessing IDs might."""
    if request.method == "GET":  # a typed or bookmarked URL: nothing to do
        return redirect(url_for(".inspect"), 303)
    current = session
    assert isinstance(current, FlaskSession)
    value = request.cookies.get(current.cookie_name, "")
    response = redirect(url_for(".inspect", tampered=1), 303)
    if value:
        flipped = value[:5] + ("A" if value[5] != "A" else "B") + value[6:]
        response.set_cookie(current.cookie_name, flipped, httponly=True, samesite="Lax")
    return response


def _fresh_seconds() -> float:
    from flask import current_app

    return float(current_app.config["DEMO_FRESH_LOGIN_SECONDS"])


@pages.route("/login", methods=["GET", "POST"])
def login() -> str | Response:
    """A pretend login (a name, no password); asked again by the sensitive action."""
    current = session
    assert isinstance(current, FlaskSession)
    wanted = request.args.get("next")
    target = ".sensitive" if wanted == "sensitive" else ".devices"
    stale = wanted == "sensitive" and current.owner is not None
    if request.method == "GET":
        owner = current.owner if stale else None
        return render_template(
            "login.html", owner=owner, next=wanted, fresh_seconds=_fresh_seconds()
        )
    name = request.form.get("name", "").strip()
    if not name:
        flash("Please type a name.", "error")
        return redirect(url_for(".login", next=wanted) if wanted else url_for(".login"), 303)
    if current.owner == name:
        current.reauthenticated()  # the same person, again: a fresh login, a new ID
    else:
        current.regenerate(owner=name)
    return redirect(url_for(target), 303)


@pages.get("/devices")
def devices() -> str:
    current = session
    assert isinstance(current, FlaskSession)
    owner = current.owner
    rows = device_rows(Satchel.list_sessions(owner)) if owner is not None else []
    return render_template(
        "devices.html", owner=owner, devices=rows, fresh_seconds=_fresh_seconds()
    )


@pages.post("/devices/end")
def end_device() -> Response:
    current = session
    assert isinstance(current, FlaskSession)
    owner, reference = current.owner, request.form.get("reference", "")
    mine = {info.reference for info in Satchel.list_sessions(owner)} if owner else set()
    if reference in mine:  # only a device of the visitor's own
        Satchel.revoke(reference)
        flash("That device is logged out: its next request starts anew.")
    return redirect(url_for(".devices"), 303)


@pages.post("/devices/others")
def end_others() -> Response:
    current = session
    assert isinstance(current, FlaskSession)
    if current.owner is not None:
        ended = Satchel.revoke_all(current.owner, keep_current=True)
        flash(f"Logged out {ended} other device(s).")
    return redirect(url_for(".devices"), 303)


@pages.post("/logout")
def logout() -> Response:
    session.clear()
    return redirect(url_for(".devices"), 303)


@pages.get("/sensitive")
def sensitive() -> str | Response:
    current = session
    assert isinstance(current, FlaskSession)
    if not current.authenticated_within(_fresh_seconds()):
        if current.owner is None:
            return redirect(url_for(".login"), 303)
        flash("This action needs a recent login: please confirm it is you.")
        return redirect(url_for(".login", next="sensitive"), 303)
    when = current.authenticated_at or 0.0
    return render_template(
        "sensitive.html", fresh_seconds=_fresh_seconds(), login_age=time.time() - when
    )


def describe() -> dict[str, Any]:
    """The Flask demo's :func:`describe_session`."""
    from flask import current_app

    current = session
    assert isinstance(current, FlaskSession)
    return describe_session(
        current,
        current_app.extensions["satchel"],
        current.cookie_name,
        request.cookies.get(current.cookie_name),
        permanent=current.permanent,
        lifetime=current_app.permanent_session_lifetime,
        samesite=current_app.session_interface.get_cookie_samesite(current_app),
        secure=current_app.config["SESSION_COOKIE_SECURE"],
    )


def replay_dead_cookie() -> dict[str, Any] | None:
    """Replay the cookie "Start over" ended against the store, to show it is dead."""
    from flask import current_app

    value = request.cookies.get(DEAD_COOKIE.format(slot=g.slot))
    if not value:
        return None
    manager = current_app.extensions["satchel"]
    session_id = manager.signer.unsign(value)
    if session_id is None:
        return None
    found = manager.store.load(store_key(session_id))
    return {"fingerprint": fingerprint(session_id), "found": found is not None}


def create_app(
    *,
    store: str | Store | None = None,
    instance_path: str | os.PathLike[str] | None = None,
    config: dict[str, Any] | None = None,
) -> Flask:
    """Build the demo app on ``store`` (a URL or object; SQLite in the instance folder).

    Without ``store``, the ``SATCHEL_STORE`` environment variable may name one
    (handy under gunicorn). ``instance_path`` defaults to ``./instance``;
    ``config`` overrides settings.
    """
    from flask_wtf.csrf import CSRFError, CSRFProtect

    instance = os.path.abspath(instance_path or "instance")
    app = Flask(__name__, instance_path=instance)
    key, key_file = load_secret_key(instance)
    app.config.update(
        SECRET_KEY=key,
        DEMO_SECRET_KEY_FILE=key_file,
        SATCHEL_STORE=store or os.environ.get("SATCHEL_STORE") or None,
        SATCHEL_IDLE_TIMEOUT=timedelta(minutes=30),
        SATCHEL_ABSOLUTE_TIMEOUT=timedelta(hours=8),
        SATCHEL_TRACK_CLIENT=True,  # the devices page names each browser
        DEMO_FRESH_LOGIN_SECONDS=FRESH_LOGIN_SECONDS,
    )
    app.config.update(config or {})
    Satchel(app, cookie_name=slot_cookie)
    CSRFProtect(app)
    app.register_blueprint(pages)

    @app.context_processor
    def footer() -> dict[str, Any]:
        return {
            "held": footer_rows(session),
            "slot": g.get("slot", 1),
            "slots": range(1, SLOTS + 1),
            "persistent": not isinstance(app.extensions["satchel"].store, MemoryStore),
            "idle_minutes": round(app.extensions["satchel"].settings.idle_timeout / 60),
            "absolute_hours": round(app.extensions["satchel"].settings.absolute_timeout / 3600),
        }

    @app.errorhandler(CSRFError)
    def expired_form(error: CSRFError) -> Response:
        # Most often an old tab after "Start over" or an expired session: not
        # an attack worth a 400 page, so explain and let the visitor go on.
        flash("That form had expired (its session ended), so nothing was saved. Please try again.")
        if request.endpoint == "pages.tamper":
            return redirect(url_for("pages.inspect"), 303)
        return redirect(request.path, 303)

    @app.get("/")
    def index() -> Response:
        return redirect(url_for("pages.home", slot=1), 303)

    return app
