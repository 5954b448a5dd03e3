"""Command lines: ``satchel demo`` runs the demo; ``flask satchel …`` administers sessions.

``flask satchel`` (added to every app that uses satchel) takes these commands;
each prints a readable table, or JSON with ``--json``:

==========================  ==============================================
``stats``                   counts of live sessions and owners (counted
                            by the store, no record is read), and of old
                            sessions imported (``SATCHEL_MIGRATE_FROM``)
``list [--owner X]``        live sessions, most recent first
``show REF``                one session: times, owner, client, its keys
``revoke REF``              end one session now
``revoke-owner X``          end every session of owner X (also
                            ``revoke-all X``)
``purge``                   remove expired records, batch by batch
==========================  ==============================================

``satchel check --store URL`` tries a store as an app will and says what fails and
what to do. ``satchel sessions --store URL [--prefix P] COMMAND`` takes the same commands
without an app, for ASGI and Quart apps and scripts: the store is the one the URL
names (``$SATCHEL_STORE`` and ``$SATCHEL_KEY_PREFIX`` work too).

A REF is a session's reference (shown by ``list``), or any unique start of it,
found through the store's key index. Owners and user agents are printed with
control characters escaped, so a hostile value cannot drive the terminal.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
from flask.cli import AppGroup

from . import __version__
from .flask import _manager as flask_manager

if TYPE_CHECKING:
    from ._manager import SessionManager

__all__ = ["admin", "main"]


@click.group()
@click.version_option(__version__, "--version", prog_name="satchel")
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
@click.option(
    "--asgi",
    is_flag=True,
    help="Serve the same pages as a FastAPI app under uvicorn (satchel.asgi).",
)
def demo(host: str, port: int, store: str | None, instance: str, asgi: bool) -> None:
    """Run the three-page questionnaire on a development server."""
    from .errors import ConfigError

    try:
        if asgi:
            import uvicorn

            from .demo.asgi import create_app as create_asgi_app

            asgi_app = create_asgi_app(store=store, instance_path=instance)
            key_file, where = asgi_app.state.secret_key_file, f"{asgi_app.state.store}"
            where += " (FastAPI on uvicorn)"
        else:
            from .demo import create_app

            app = create_app(store=store, instance_path=instance)
            key_file = app.config["DEMO_SECRET_KEY_FILE"]
            where = repr(app.extensions["satchel"].store)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    except ImportError as exc:
        raise click.ClickException(
            f"the demo needs {exc.name}: pip install 'satchel[demo]'"
        ) from exc
    if key_file:
        click.echo(f"No FLASK_SECRET_KEY set: using the random key kept in {key_file}")
    click.echo(f"Sessions are stored in {where}")
    click.echo(f"Open http://{host}:{port}/ in a browser (Ctrl+C to stop)")
    click.echo(f"A second, independent session: http://{host}:{port}/s/2/ in another tab")
    if asgi:
        uvicorn.run(asgi_app, host=host, port=port, log_level="warning")
    else:
        app.run(host=host, port=port, debug=False, load_dotenv=False)


admin = AppGroup("satchel", help="Inspect and revoke the app's satchel sessions.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")


class _Standalone:
    """A store named on the command line (``satchel sessions --store URL``), and a
    manager on it for the admin functions: no app, no secret key (nothing is signed)."""

    def __init__(self, url: str, prefix: str | None) -> None:
        self.url, self.prefix = url, prefix
        self._manager: SessionManager | None = None

    def manager(self) -> SessionManager:
        if self._manager is None:
            import secrets

            from ._config import DEFAULT_MAX_SIZE, make_settings
            from ._manager import SessionManager
            from .signing import CookieSigner
            from .stores import from_url

            store: Any = _run(lambda: from_url(self.url))
            if self.prefix is not None:
                with_prefix = getattr(store, "with_prefix", None)
                if with_prefix is None:
                    raise click.UsageError(f"{store!r} has no namespaces: drop --prefix")
                store = with_prefix(self.prefix)
            settings = make_settings(
                idle_timeout=3600, absolute_timeout=3600, max_size=DEFAULT_MAX_SIZE,
                locking=False, lock_timeout=5, lock_lease=30,
            )  # fmt: skip
            self._manager = SessionManager(store, CookieSigner(secrets.token_urlsafe(32)), settings)
        return self._manager

    def close(self) -> None:
        if self._manager is not None:
            self._manager.store.close()


def _manager() -> SessionManager:
    """The manager of ``satchel sessions --store URL``, or else of the Flask app."""
    context = click.get_current_context(silent=True)
    standalone = context.find_object(_Standalone) if context is not None else None
    if standalone is not None:
        return standalone.manager()
    return flask_manager(None)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _printable(text: object) -> str:
    """``text`` safe for a terminal: control, format and surrogate characters escaped.

    Owners and user agents come from users and browsers; printed raw, an
    escape sequence in one could rewrite the operator's screen.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def _width(text: str) -> int:
    """Columns ``text`` takes on a terminal: wide East Asian characters take two."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _table(rows: list[list[str]], header: list[str]) -> None:
    cells = [[_printable(c) for c in row] for row in [header, *rows]]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        line = "  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths, strict=True))
        click.echo(line.rstrip())


def _text(value: str, what: str) -> str:
    """An argument as text a store can file; bytes the terminal could not decode are refused."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise click.BadParameter(
            f"{_printable(value)!r} is not valid UTF-8 text", param_hint=what
        ) from None
    return value


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _run(action: Any) -> Any:
    from .errors import SatchelError

    try:
        return action()
    except SatchelError as exc:
        raise click.ClickException(str(exc)) from exc


def _store() -> Any:
    """The app's store, which must list (every built-in store does)."""
    from .admin import _listing

    return _run(lambda: _listing(_manager()))


def _resolve(ref: str) -> str:
    """The one live reference that starts with ``ref``, found by the store's key index."""
    ref = _text(ref, "REF")
    store = _store()
    finder = getattr(store, "references", None)
    if finder is not None:
        matches = _run(lambda: list(itertools.islice(finder(ref), 2)))
    else:
        matches = [k for k, _ in _run(lambda: list(store.records())) if k.startswith(ref)][:2]
    if len(matches) != 1:
        raise click.ClickException(
            f"{_printable(ref)!r} names {'no' if not matches else 'more than one'} live session"
        )
    return str(matches[0])


@admin.command("stats")
@json_option
def stats_command(as_json: bool) -> None:
    """Live sessions and owners in the store, and old sessions imported.

    Imported counts are the claims of old cookies still held: each lasts until
    its old cookie would have expired anyway. The request counters (loads,
    saves, errors...) belong to each app process: read them there, with
    ``Satchel.stats(app)``.
    """
    store = _store()
    counter = getattr(store, "count", None)
    if counter is not None:
        live, owners = _run(counter)
    else:
        found = _run(lambda: [r.owner for _, r in store.records()])
        live, owners = len(found), len({o for o in found if o is not None})
    result: dict[str, Any] = {"store": repr(store), "live_sessions": live, "owners": owners}
    rows = [["store", result["store"]], ["live sessions", str(live)], ["owners", str(owners)]]
    migration = _manager().migration
    if migration is not None:
        migrated = _run(migration.counts)
        result["migrated"] = migrated
        rows += [[f"migrated ({name})", str(count)] for name, count in migrated.items()]
    if as_json:
        _echo_json(result)
        return
    _table(rows, ["", ""])


@admin.command("list")
@click.option("--owner", default=None, help="Only this owner's sessions.")
@json_option
def list_command(owner: str | None, as_json: bool) -> None:
    """Live sessions, most recent first."""
    from .admin import list_sessions

    if owner is not None:
        owner = _text(owner, "--owner")
    found = _run(lambda: list_sessions(_manager(), owner))
    if as_json:
        _echo_json([_info(i) for i in found])
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
        raise click.ClickException(f"no live session {_printable(ref)!r}")
    info = _info(SessionInfo.of(reference, record))
    info["key_names"] = sorted(record.fields)
    if as_json:
        _echo_json(info)
        return
    rows = []
    for name, value in info.items():
        if name in ("created_at", "last_seen", "expires_at"):
            value = _when(value) + " UTC"
        elif name == "key_names":
            value = ", ".join(_printable(k) for k in value)
        rows.append([name, "-" if value is None else str(value)])
    _table(rows, ["", ""])


@admin.command("revoke")
@click.argument("ref")
@json_option
def revoke_command(ref: str, as_json: bool) -> None:
    """End one session now: its cookie opens nothing afterwards."""
    from .admin import revoke

    reference = _resolve(ref)
    if not _run(lambda: revoke(_manager(), reference)):
        raise click.ClickException(f"no live session {_printable(ref)!r}")
    if as_json:
        _echo_json({"revoked": [reference]})
        return
    click.echo(f"revoked {reference[:12]}")


@admin.command("revoke-owner")
@click.argument("owner")
@json_option
def revoke_owner_command(owner: str, as_json: bool) -> None:
    """End every session of OWNER."""
    from .admin import revoke_all

    owner = _text(owner, "OWNER")
    ended = _run(lambda: revoke_all(_manager(), owner))
    if as_json:
        _echo_json({"owner": owner, "revoked": ended})
        return
    click.echo(f"revoked {ended} session(s) of {_printable(owner)}")


@admin.command("purge")
@json_option
def purge_command(as_json: bool) -> None:
    """Remove expired records now (a store that expires keys itself has none)."""
    store = _manager().store
    batches = getattr(store, "purge_in_batches", None)
    if batches is None or as_json:
        removed = _run(store.purge_expired)
    else:
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
    if as_json:
        _echo_json({"removed": removed})
        return
    click.echo(f"removed {removed} expired record(s)")


@main.group("sessions")
@click.option(
    "--store",
    "url",
    required=True,
    envvar="SATCHEL_STORE",
    metavar="URL",
    help="The store's URL, as the app names it (or $SATCHEL_STORE).",
)
@click.option(
    "--prefix",
    default=None,
    envvar="SATCHEL_KEY_PREFIX",
    help="The app's key prefix, if it sets one (or $SATCHEL_KEY_PREFIX).",
)
@click.pass_context
def sessions(context: click.Context, url: str, prefix: str | None) -> None:
    """Inspect and revoke the sessions in a store, without an app (ASGI, Quart, cron).

    The same commands, output and safety as ``flask satchel``: sessions are named
    by their references, never their IDs.
    """
    standalone = _Standalone(url, prefix)
    context.obj = standalone
    context.call_on_close(standalone.close)
    # The commands are flask satchel's, which run in an app context: an empty one
    # here (they take the store from the command line, never from an app).
    from flask import Flask

    context.with_resource(Flask("satchel-sessions").app_context())


for _command in (
    stats_command, list_command, show_command, revoke_command, revoke_owner_command,
    purge_command,
):  # fmt: skip
    sessions.add_command(_command)
sessions.add_command(revoke_owner_command, "revoke-all")
admin.add_command(revoke_owner_command, "revoke-all")


@main.command("check")
@click.option(
    "--store", "url", required=True, envvar="SATCHEL_STORE", metavar="URL",
    help="The store's URL, as the app names it (or $SATCHEL_STORE).",
)  # fmt: skip
@click.option("--prefix", default=None, envvar="SATCHEL_KEY_PREFIX", help="The app's key prefix.")
@json_option
def check_command(url: str, prefix: str | None, as_json: bool) -> None:
    """Try a store as an app will: write, read back and delete a record; its server,
    configuration and latency. Exits 1, with the cause and what to do, if it fails."""
    from .check import check, failures

    standalone = _Standalone(url, prefix)
    try:
        store = standalone.manager().store
        findings = check(store)
    finally:
        standalone.close()
    failed = failures(findings)
    if as_json:
        _echo_json(
            {
                "store": repr(store),
                "ok": not failed,
                "findings": [{"what": f.what, "ok": f.ok, "detail": f.detail} for f in findings],
            }
        )
    else:
        click.echo(f"store: {_printable(repr(store))}")
        _table(
            [[f.what, "ok" if f.ok else "FAILED", f.detail] for f in findings],
            ["CHECK", "RESULT", "DETAIL"],
        )
    if failed:
        raise SystemExit(1)
