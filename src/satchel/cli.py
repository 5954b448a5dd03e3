"""Command lines: ``satchel demo`` runs the demo; ``flask satchel …`` administers sessions.

``flask satchel`` (added to every app that uses satchel) takes these commands;
each prints a readable table, or JSON with ``--json``:

==========================  ==============================================
``stats``                   counts of live sessions and owners, and the
                            counters of this process
``list [--owner X]``        live sessions, most recent first
``show REF``                one session: times, owner, client, its keys
``revoke REF``              end one session now
``revoke-owner X``          end every session of owner X
``purge``                   remove expired records, batch by batch
==========================  ==============================================

A REF is a session's reference (shown by ``list``), or any unique start of it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
from flask.cli import AppGroup

from .flask import _manager as flask_manager

if TYPE_CHECKING:
    from ._manager import SessionManager

__all__ = ["admin", "main"]


@click.group()
def main() -> None:
    """satchel: server-side sessions for Flask."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--store",
    default=None,
    metavar="URL",
    help="Store URL, e.g. redis://127.0.0.1:6379/0 [default: SQLite file in ./instance]",
)
@click.option(
    "--instance",
    default="instance",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the secret key and the SQLite file.",
)
def demo(host: str, port: int, store: str | None, instance: str) -> None:
    """Run the three-page questionnaire on a development server."""
    from .errors import ConfigError

    try:
        from .demo import create_app

        app = create_app(store=store, instance_path=instance)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    except ImportError as exc:
        raise click.ClickException(
            f"the demo needs {exc.name}: pip install 'satchel[demo]'"
        ) from exc
    key_file = app.config["DEMO_SECRET_KEY_FILE"]
    if key_file:
        click.echo(f"No FLASK_SECRET_KEY set: using the random key kept in {key_file}")
    click.echo(f"Sessions are stored in {app.extensions['satchel'].store!r}")
    click.echo(f"Open http://{host}:{port}/ in a browser (Ctrl+C to stop)")
    click.echo(f"A second, independent session: http://{host}:{port}/s/2/ in another tab")
    app.run(host=host, port=port, debug=False, load_dotenv=False)


admin = AppGroup("satchel", help="Inspect and revoke the app's satchel sessions.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")


def _manager() -> SessionManager:
    return flask_manager(None)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _run(action: Any) -> Any:
    from .errors import SatchelError

    try:
        return action()
    except SatchelError as exc:
        raise click.ClickException(str(exc)) from exc


def _resolve(ref: str) -> str:
    from .admin import records

    if len(ref) == 64:
        return ref
    matches = [key for key, _ in _run(lambda: list(records(_manager())))]
    matches = [key for key in matches if key.startswith(ref)]
    if len(matches) != 1:
        raise click.ClickException(
            f"{ref!r} names {'no' if not matches else 'more than one'} live session"
        )
    return str(matches[0])


@admin.command("stats")
@json_option
def stats_command(as_json: bool) -> None:
    """Live sessions and owners in the store, and this process's counters."""
    from .admin import records

    live = _run(lambda: list(records(_manager())))
    owners = {record.owner for _, record in live if record.owner is not None}
    counters = _manager().counters.snapshot()
    result: dict[str, Any] = {
        "store": repr(_manager().store),
        "live_sessions": len(live),
        "owners": len(owners),
        "counters": counters,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"store          {result['store']}")
    click.echo(f"live sessions  {result['live_sessions']}")
    click.echo(f"owners         {result['owners']}")
    for name, value in counters.items():
        click.echo(f"{name:<15}{value}")


@admin.command("list")
@click.option("--owner", default=None, help="Only this owner's sessions.")
@json_option
def list_command(owner: str | None, as_json: bool) -> None:
    """Live sessions, most recent first."""
    from .admin import list_sessions

    found = _run(lambda: list_sessions(_manager(), owner))
    if as_json:
        click.echo(json.dumps([_info(i) for i in found], indent=2))
        return
    rows = [
        [i.reference[:12], i.owner or "-", _when(i.created_at), _when(i.last_seen),
         _when(i.expires_at), str(i.keys), (i.user_agent or "-")[:40], i.ip or "-"]
        for i in found
    ]  # fmt: skip
    header = ["REF", "OWNER", "CREATED", "LAST SEEN", "EXPIRES", "KEYS", "USER AGENT", "IP"]
    _table(rows, header)
    click.echo(f"{len(found)} session(s)")


def _info(info: Any) -> dict[str, Any]:
    return {
        "reference": info.reference,
        "owner": info.owner,
        "created_at": info.created_at,
        "last_seen": info.last_seen,
        "expires_at": info.expires_at,
        "keys": info.keys,
        "user_agent": info.user_agent,
        "ip": info.ip,
    }


@admin.command("show")
@click.argument("ref")
@json_option
def show_command(ref: str, as_json: bool) -> None:
    """One session: its times, owner, client and the keys it holds."""
    from .admin import SessionInfo

    reference = _resolve(ref)
    record = _run(lambda: _manager().store.load(reference))
    if record is None:
        raise click.ClickException(f"no live session {ref!r}")
    info = _info(SessionInfo.of(reference, record))
    info["key_names"] = sorted(record.fields)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for name, value in info.items():
        if name in ("created_at", "last_seen", "expires_at"):
            value = _when(value) + " UTC"
        click.echo(f"{name:<11}{value}")


@admin.command("revoke")
@click.argument("ref")
def revoke_command(ref: str) -> None:
    """End one session now: its cookie opens nothing afterwards."""
    from .admin import revoke

    reference = _resolve(ref)
    if not _run(lambda: revoke(_manager(), reference)):
        raise click.ClickException(f"no live session {ref!r}")
    click.echo(f"revoked {reference[:12]}")


@admin.command("revoke-owner")
@click.argument("owner")
def revoke_owner_command(owner: str) -> None:
    """End every session of OWNER."""
    from .admin import revoke_all

    ended = _run(lambda: revoke_all(_manager(), owner))
    click.echo(f"revoked {ended} session(s) of {owner}")


@admin.command("purge")
def purge_command() -> None:
    """Remove expired records now (a store that expires keys itself has none)."""
    store = _manager().store
    batches = getattr(store, "purge_in_batches", None)
    if batches is None:
        removed = _run(store.purge_expired)
        click.echo(f"removed {removed} expired record(s)")
        return
    from .errors import SatchelError

    done = removed = 0
    try:
        with click.progressbar(length=1, label="purging", show_pos=True) as bar:
            for walked, total, batch_removed in batches():
                bar.length = max(total, 1)
                bar.update(walked - done)
                done = walked
                removed += batch_removed
    except SatchelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"removed {removed} expired record(s)")
