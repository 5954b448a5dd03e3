"""satchel.flask_login with the real Flask-Login: every login owned, remember-me too."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, request, session
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user

from satchel import ConfigError, Satchel
from satchel.flask_login import logout, track_logins
from satchel.stores import Store

from .conftest import SECRET, stored_keys

#: The app's user table: a stable ID and a session version (the alternative token).
USERS: dict[int, dict[str, Any]] = {}


class User(UserMixin):
    def __init__(self, user_id: int) -> None:
        self.id = user_id

    def get_id(self) -> str:
        # ID and version: bumping the version makes every remember cookie worthless.
        return f"{self.id}:{USERS[self.id]['version']}"


def make_app(store: Store) -> Flask:
    app = Flask("login")
    app.config.update(SECRET_KEY=SECRET, TESTING=True)
    Satchel(app, store=store)
    manager = LoginManager(app)

    @manager.user_loader
    def load(token: str) -> User | None:
        user_id, _, version = token.partition(":")
        record = USERS.get(int(user_id))
        if record is None or str(record["version"]) != version:
            return None  # a token from before "log out everywhere"
        return User(int(user_id))

    track_logins(app, owner=lambda user: user.id)

    @app.post("/login/<int:user_id>")
    def log_in(user_id: int) -> str:
        login_user(User(user_id), remember=request.args.get("remember") == "1")
        return "ok"

    @app.get("/me")
    def me() -> dict[str, Any]:
        return {"user": current_user.id if current_user.is_authenticated else None}

    @app.post("/logout")
    def log_out() -> str:
        logout()
        return "ok"

    @app.post("/logout-everywhere")
    @login_required
    def log_out_everywhere() -> str:
        USERS[current_user.id]["version"] += 1
        Satchel.revoke_all(current_user.id, keep_current=False)
        logout()
        return "ok"

    return app


@pytest.fixture
def app(store: Store) -> Flask:
    USERS.clear()
    USERS.update({1: {"version": 0}, 2: {"version": 0}})
    return make_app(store)


def owners(app: Flask, user_id: int) -> int:
    with app.app_context():
        return len(Satchel.list_sessions(user_id))


def test_a_login_is_owned_by_its_user(app: Flask) -> None:
    """login_user() regenerates the session with the user as owner."""
    client = app.test_client()
    client.get("/me")
    client.post("/login/1")
    assert client.get("/me").json == {"user": 1}
    assert owners(app, 1) == 1 and owners(app, 2) == 0


def test_a_remember_me_login_is_owned_and_revocable(app: Flask) -> None:
    """After a revocation, the remember cookie logs back in: into an owned, listed session."""
    client = app.test_client()
    client.post("/login/1?remember=1")
    assert client.get_cookie("remember_token") is not None
    with app.app_context():
        assert Satchel.revoke_all(1, keep_current=False) == 1
    assert owners(app, 1) == 0
    assert client.get("/me").json == {"user": 1}  # remembered: logged in again...
    assert owners(app, 1) == 1  # ...into a session that can be listed and revoked
    with app.app_context():
        assert Satchel.revoke_all(1, keep_current=False) == 1


def test_logout_deletes_the_remember_cookie_and_the_session(app: Flask, store: Store) -> None:
    """satchel.flask_login.logout(): no record left, no remember cookie, not logged back in."""
    client = app.test_client()
    client.post("/login/1?remember=1")
    response = client.post("/logout")
    assert any(h.startswith("remember_token=;") for h in response.headers.getlist("Set-Cookie"))
    assert client.get_cookie("remember_token") is None
    assert client.get("/me").json == {"user": None}
    assert stored_keys(store) == []


def test_a_plain_clear_after_logout_user_would_log_the_user_back_in(app: Flask) -> None:
    """Why logout() exists: session.clear() wipes Flask-Login's order to delete its cookie."""
    from flask_login import logout_user

    @app.post("/naive-logout")
    def naive_logout() -> str:
        logout_user()
        session.clear()
        return "ok"

    client = app.test_client()
    client.post("/login/1?remember=1")
    client.post("/naive-logout")
    assert client.get("/me").json == {"user": 1}  # the remember cookie survived


def test_log_out_everywhere_ends_remember_me_logins_too(app: Flask) -> None:
    """Bumping the version and revoking: every device, remembered or not, is logged out."""
    phone, laptop, tablet = (app.test_client() for _ in range(3))
    phone.post("/login/1?remember=1")
    laptop.post("/login/1?remember=1")
    tablet.post("/login/1")
    other = app.test_client()
    other.post("/login/2?remember=1")
    assert owners(app, 1) == 3
    assert phone.post("/logout-everywhere").status_code == 200
    for device in (phone, laptop, tablet):
        assert device.get("/me").json == {"user": None}
    assert owners(app, 1) == 0
    assert other.get("/me").json == {"user": 2}  # another user is untouched


def test_track_logins_needs_satchel_first() -> None:
    """Calling it on an app without satchel is a clear ConfigError."""
    with pytest.raises(ConfigError, match="Satchel"):
        track_logins(Flask("bare"))


# -- the README's recipe, switched on under a live app ----------------------------------


def old_app() -> Flask:
    """The app before the switch: Flask's cookie session, get_id() without a version."""
    app = Flask("before")
    app.config.update(SECRET_KEY=SECRET, TESTING=True)
    manager = LoginManager(app)

    class OldUser(UserMixin):
        def __init__(self, user_id: int) -> None:
            self.id = user_id

    @manager.user_loader
    def load(token: str) -> OldUser | None:
        return OldUser(int(token))

    @app.post("/login/<int:user_id>")
    def log_in(user_id: int) -> str:
        login_user(OldUser(user_id), remember=True)
        return "ok"

    return app


def new_app(store: Store, versions: dict[int, int]) -> Flask:
    """The same app after the switch, as the README's Flask-Login section writes it."""
    app = Flask("after")
    app.config.update(SECRET_KEY=SECRET, TESTING=True, SATCHEL_MIGRATE_FROM="flask-cookie")
    Satchel(app, store=store)
    manager = LoginManager(app)

    class NewUser(UserMixin):
        def __init__(self, user_id: int) -> None:
            self.id = user_id

        def get_id(self) -> str:
            return f"{self.id}:{versions[self.id]}"

    @manager.user_loader
    def load(token: str) -> NewUser | None:
        user_id, _, version = token.partition(":")
        if not user_id.isdigit() or not (version.isdigit() or version == ""):
            return None
        if versions.get(int(user_id)) != int(version or 0):
            return None
        return NewUser(int(user_id))

    track_logins(app, owner=lambda user: user.id, existing=True)

    @app.get("/me")
    def me() -> dict[str, Any]:
        return {"user": current_user.id if current_user.is_authenticated else None}

    @app.post("/logout-everywhere")
    @login_required
    def everywhere() -> str:
        versions[current_user.id] += 1
        Satchel.revoke_all(current_user.id, keep_current=False)
        logout()
        return "ok"

    return app


def browser_of(app: Flask, cookies: dict[str, str]) -> Any:
    client = app.test_client()
    for name, value in cookies.items():
        client.set_cookie(name, value)
    return client


def test_the_recipe_switched_on_under_a_live_app_logs_nobody_out(store: Store) -> None:
    """Sessions and remember cookies the old app made ("42", no version) keep their
    users logged in, owned under the stable ID; none answers 500; a later "log out
    everywhere" ends them all, and a refused remember cookie lists no device."""
    before = old_app()
    client = before.test_client()
    assert client.post("/login/42").status_code == 200
    session_cookie, remember = client.get_cookie("session"), client.get_cookie("remember_token")
    assert session_cookie is not None and remember is not None
    versions = {42: 0}
    after = new_app(store, versions)
    # A browser with both cookies (its old session is imported) and one with only the
    # remember cookie (its session had expired): both logged in, both owned by 42.
    both = browser_of(after, {"session": session_cookie.value, "remember_token": remember.value})
    only_remember = browser_of(after, {"remember_token": remember.value})
    assert both.get("/me").get_json() == {"user": 42}
    assert only_remember.get("/me").get_json() == {"user": 42}
    with after.app_context():
        assert len(Satchel.list_sessions(42)) == 2
        assert Satchel.list_sessions("42:0") == []  # never the token as owner
    assert both.post("/logout-everywhere").status_code == 200
    assert only_remember.get("/me").get_json() == {"user": None}
    stale = browser_of(after, {"remember_token": remember.value})  # refused: version 0 < 1
    assert stale.get("/me").get_json() == {"user": None}
    with after.app_context():
        assert Satchel.list_sessions(42) == []  # no phantom device for a refused cookie
