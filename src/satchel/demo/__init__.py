"""The questionnaire demo: three pages that remember a visitor between requests.

Home explains sessions; Page 1 asks for ``firstName`` and ``lastName``; Page 2
for ``favoriteColor``; Page 3 shows all three. Every page's footer shows what
the session holds, and "Start over" discards it on the server. Run it with
``satchel demo``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from ..flask import Satchel
from ..stores import Store

__all__ = ["create_app", "load_secret_key"]

FIELDS = {"firstName": "First name", "lastName": "Last name", "favoriteColor": "Favourite colour"}


def load_secret_key(instance_path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """Return the secret key and, when one was made or read from a file, its path.

    ``FLASK_SECRET_KEY`` wins; otherwise a random key is kept in the instance
    folder, so sessions survive a restart of the demo.
    """
    from_env = os.environ.get("FLASK_SECRET_KEY")
    if from_env:
        return from_env, None
    path = Path(instance_path) / "demo-secret-key"
    if path.exists():
        return path.read_text().strip(), str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, str(path)


def create_app(
    *,
    store: str | Store | None = None,
    instance_path: str | os.PathLike[str] | None = None,
    config: dict[str, Any] | None = None,
) -> Flask:
    """Build the demo app on ``store`` (a URL or object; SQLite in the instance folder).

    ``instance_path`` defaults to ``./instance``; ``config`` overrides settings.
    """
    instance = os.path.abspath(instance_path or "instance")
    app = Flask(__name__, instance_path=instance)
    key, key_file = load_secret_key(instance)
    app.config["SECRET_KEY"] = key
    app.config["DEMO_SECRET_KEY_FILE"] = key_file
    app.config["SATCHEL_STORE"] = store
    app.config.update(config or {})
    Satchel(app)

    @app.context_processor
    def footer() -> dict[str, Any]:
        held = dict(session)
        ordered = [(key, held.pop(key)) for key in FIELDS if key in held]
        return {
            "fields": FIELDS,
            "held": ordered + sorted(held.items()),
            "store": app.extensions["satchel"].store,
        }

    @app.get("/")
    def home() -> str:
        return render_template("home.html")

    @app.route("/page1", methods=["GET", "POST"])
    def page1() -> str | Response:
        error = None
        if request.method == "POST":
            first = request.form.get("firstName", "").strip()
            last = request.form.get("lastName", "").strip()
            if first and last:
                session["firstName"] = first
                session["lastName"] = last
                return redirect(url_for("page2"), 303)
            error = "Please fill in both your first and last name."
        return render_template("page1.html", error=error)

    @app.route("/page2", methods=["GET", "POST"])
    def page2() -> str | Response:
        if "firstName" not in session:
            return render_template("missing.html", step="your name", target="page1")
        error = None
        if request.method == "POST":
            color = request.form.get("favoriteColor", "").strip()
            if color:
                session["favoriteColor"] = color
                return redirect(url_for("page3"), 303)
            error = "Please tell us your favourite colour."
        return render_template("page2.html", error=error)

    @app.get("/page3")
    def page3() -> str:
        if "firstName" not in session:
            return render_template("missing.html", step="your name", target="page1")
        if "favoriteColor" not in session:
            return render_template("missing.html", step="your favourite colour", target="page2")
        return render_template("page3.html")

    @app.get("/start-over")
    def start_over() -> Response:
        session.clear()
        return redirect(url_for("home"), 303)

    return app
