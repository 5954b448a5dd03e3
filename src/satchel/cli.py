"""The ``satchel`` command: ``satchel demo`` runs the questionnaire demo."""

from __future__ import annotations

import click

__all__ = ["main"]


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
