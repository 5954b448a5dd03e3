"""Flask-Login with satchel: every login owned, so it can be listed and revoked.

Flask-Login logs a user in two ways: :func:`flask_login.login_user`, and,
when a visitor's session is gone but their "remember me" cookie is not, from
that cookie. :func:`track_logins` ties the session to its user at both, with
``regenerate(owner=...)``, so :meth:`satchel.Satchel.list_sessions` and
:meth:`~satchel.Satchel.revoke_all` see remember-me logins too, and the session
ID changes at every privilege change. :func:`logout` ends the session on the
server without losing Flask-Login's order to delete its remember cookie (a plain
``session.clear()`` after ``logout_user()`` loses it, and the cookie logs the
visitor straight back in).

A remember cookie outlives any session, so "log out everywhere" must also make
the remember cookies already handed out worthless. Flask-Login's way is an
*alternative token*: ``get_id()`` returns the user's ID with a per-user version
the app stores, the user loader accepts only the current version, and logging
out everywhere bumps it, then revokes the user's sessions. The README shows it
whole; the owner stays the stable user ID (``owner=lambda user: user.id``).

Flask-Login is not a dependency of satchel: install it yourself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .flask import current_session

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["logout", "track_logins"]

OwnerOf = Callable[[Any], "str | int"]


def track_logins(app: Flask, *, owner: OwnerOf | None = None, existing: bool = False) -> None:
    """Regenerate the session with its user as owner at every Flask-Login login of ``app``.

    ``owner`` maps the user object to the owner to file the session under
    (``str`` or ``int``); by default ``user.get_id()``. Give the stable user ID
    when ``get_id()`` carries a version (an alternative token).

    With ``existing``, a session that already holds a login but no owner (imported
    by ``SATCHEL_MIGRATE_FROM``, or made before ``track_logins`` was set up) gets
    its owner too, on its first request: only once Flask-Login has accepted the
    user (so a remember cookie the user loader refuses never becomes a listed
    device), and under ``owner(user)``, never the raw token. That reads the session
    on each request, as views that use ``current_user`` do anyway.
    """
    try:
        from flask_login import current_user
        from flask_login.signals import user_loaded_from_cookie, user_logged_in
    except ImportError as exc:
        raise ConfigError("satchel.flask_login needs Flask-Login: pip install flask-login") from exc
    if "satchel" not in app.extensions:
        raise ConfigError("set up satchel on the app (Satchel(app)) before track_logins(app)")
    owner_of: OwnerOf = owner if owner is not None else (lambda user: user.get_id())

    def owned(sender: Flask, user: Any, **extra: Any) -> None:
        current_session().regenerate(owner=owner_of(user))

    # Kept on the app: blinker holds receivers weakly, and they live as long as it does.
    app.extensions["satchel.flask_login"] = owned
    user_logged_in.connect(owned, sender=app)
    user_loaded_from_cookie.connect(owned, sender=app)
    if not existing:
        return

    def own_existing_login() -> None:
        session = current_session()
        if "_user_id" not in session or session.owner is not None:
            return
        # Flask-Login's user loader accepted it (a remember-cookie login is owned
        # by the signal above while current_user loads).
        if current_user.is_authenticated and session.owner is None:
            session.regenerate(owner=owner_of(current_user._get_current_object()))

    app.before_request(own_existing_login)


def logout() -> None:
    """Log the user out: Flask-Login's ``logout_user()``, then end the session on the server.

    The old session ID is dead afterwards, and the remember cookie is deleted
    as ``logout_user()`` asked, so the visitor is not logged straight back in.
    """
    from flask_login import logout_user

    logout_user()
    session = current_session()
    remember = session.get("_remember")
    session.clear()
    if remember == "clear":
        # Flask-Login's after_request reads this, deletes its cookie and pops it,
        # leaving the session empty: nothing is stored.
        session["_remember"] = "clear"
