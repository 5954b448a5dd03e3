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

from typing import TYPE_CHECKING, Any

import click

from . import __version__
from ._commands import COMMANDS, MANAGER, Standalone, echo_json, json_option, printable, table

if TYPE_CHECKING:
    from ._flask_cli import admin

__all__ = ["admin", "main"]


def __getattr__(name: str) -> Any:
    # ``flask satchel`` needs Flask, which an ASGI-only install does not have: it is
    # built on first use of ``satchel.cli.admin``, never by ``satchel`` itself.
    if name == "admin":
        from ._flask_cli import admin

        return admin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@click.group()
@click.version_option(__version__, "--version", prog_name="satchel")
def main() -> None:
    """satchel: server-side sessions for Flask, FastAPI/Starlette and Quart."""


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
            from .demo.flask import create_app

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
    standalone = Standalone(url, prefix)
    context.meta[MANAGER] = standalone.manager
    context.call_on_close(standalone.close)


for _name, _command in COMMANDS:
    sessions.add_command(_command, _name)


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

    standalone = Standalone(url, prefix)
    try:
        store = standalone.manager().store
        findings = check(store)
    finally:
        standalone.close()
    failed = failures(findings)
    if as_json:
        echo_json(
            {
                "store": repr(store),
                "ok": not failed,
                "findings": [{"what": f.what, "ok": f.ok, "detail": f.detail} for f in findings],
            }
        )
    else:
        click.echo(f"store: {printable(repr(store))}")
        table(
            [[f.what, "ok" if f.ok else "FAILED", f.detail] for f in findings],
            ["CHECK", "RESULT", "DETAIL"],
        )
    if failed:
        raise SystemExit(1)
