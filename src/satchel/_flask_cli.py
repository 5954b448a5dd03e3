"""``flask satchel``: the session administration commands, run in the Flask app's context.

The commands are :mod:`satchel._commands`'s; this group only pushes the app's
context (as every Flask command does) and hands them the app's manager.
"""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from ._commands import COMMANDS, MANAGER
from ._manager import SessionManager

__all__ = ["admin"]


def _app_manager() -> SessionManager:
    manager = current_app.extensions.get("satchel")
    if not isinstance(manager, SessionManager):
        raise click.UsageError("this app does not use satchel: call Satchel(app) first")
    return manager


@with_appcontext
def _use_app() -> None:
    click.get_current_context().meta[MANAGER] = _app_manager


#: The ``flask satchel`` group, added to every app that uses satchel.
admin = AppGroup(
    "satchel", help="Inspect and revoke the app's satchel sessions.", callback=_use_app
)
for _name, _command in COMMANDS:
    admin.add_command(_command, _name)
