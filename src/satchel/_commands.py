"""The session administration commands, shared by ``flask satchel`` and ``satchel sessions``.

Each command finds its :class:`~satchel._manager.SessionManager` through the
click context (``context.meta[MANAGER]``, a function its group sets): the Flask
app's, or one on the store a URL names (:class:`Standalone`). So this module
knows no framework, and both groups run the very same commands.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ._manager import SessionManager

__all__ = [
    "COMMANDS",
    "MANAGER",
    "Standalone",
    "echo_json",
    "json_option",
    "printable",
    "table",
]

#: The click context's ``meta`` key of the function that gives the commands their manager.
MANAGER = "satchel.manager"

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")


class Standalone:
    """A store named on the command line (``satchel sessions --store URL``), and a
    manager on it for the admin functions: no app, no secret key (nothing is signed)."""

    def __init__(self, url: str, prefix: str | None) -> None:
        self.url, self.prefix = url, prefix
        self._manager: SessionManager | None = None

    def manager(self) -> SessionManager:
        if self._manager is None:
            import secrets

            from ._config import DEFAULT_MAX_SIZE, encrypted_from_environment, make_settings
            from ._manager import SessionManager
            from .signing import CookieSigner
            from .stores import from_url

            store: Any = _run(lambda: from_url(self.url))
            if self.prefix is not None:
                with_prefix = getattr(store, "with_prefix", None)
                if with_prefix is None:
                    raise click.UsageError(f"{store!r} has no namespaces: drop --prefix")
                store = with_prefix(self.prefix)
            store = _run(lambda: encrypted_from_environment(store))
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
    """The manager the running group chose: the app's (``flask satchel``) or the
    command line's store (``satchel sessions --store URL``)."""
    context = click.get_current_context()
    find = context.meta.get(MANAGER)
    if find is None:
        raise click.UsageError("run this command through 'flask satchel' or 'satchel sessions'")
    manager: SessionManager = find()
    return manager


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def printable(text: object) -> str:
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


def table(rows: list[list[str]], header: list[str]) -> None:
    cells = [[printable(c) for c in row] for row in [header, *rows]]
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
            f"{printable(value)!r} is not valid UTF-8 text", param_hint=what
        ) from None
    return value


def echo_json(value: Any) -> None:
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
            f"{printable(ref)!r} names {'no' if not matches else 'more than one'} live session"
        )
    return str(matches[0])


@click.command("stats")
@json_option
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "json", "prometheus"]),
    default=None,
    help="table (the default), json (as --json) or prometheus (a one-off scrape).",
)
def stats_command(as_json: bool, output: str | None) -> None:
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
    if output == "prometheus":
        from .telemetry import prometheus_text, store_kind

        gauges = {"live_sessions": live, "owners": owners}
        gauges.update({f"migrated_{n}": c for n, c in result.get("migrated", {}).items()})
        click.echo(prometheus_text(gauges, store_kind(store)), nl=False)
        return
    if as_json or output == "json":
        echo_json(result)
        return
    table(rows, ["", ""])


@click.command("list")
@click.option("--owner", default=None, help="Only this owner's sessions.")
@json_option
def list_command(owner: str | None, as_json: bool) -> None:
    """Live sessions, most recent first."""
    from .admin import list_sessions

    if owner is not None:
        owner = _text(owner, "--owner")
    found = _run(lambda: list_sessions(_manager(), owner))
    if as_json:
        echo_json([_info(i) for i in found])
        return
    rows = [
        [i.reference[:12], i.owner or "-", _when(i.created_at), _when(i.last_seen),
         _when(i.expires_at), str(i.keys), (i.user_agent or "-")[:40], i.ip or "-"]
        for i in found
    ]  # fmt: skip
    header = ["REF", "OWNER", "CREATED", "LAST SEEN", "EXPIRES", "KEYS", "USER AGENT", "IP"]
    table(rows, header)
    click.echo(f"{len(found)} session(s)")


def _info(info: Any) -> dict[str, Any]:
    return {
        "reference": info.reference,
        "owner": info.owner,
        "created_at": info.created_at,
        "last_seen": info.last_seen,
        "expires_at": info.expires_at,
        "authenticated_at": info.authenticated_at,
        "keys": info.keys,
        "user_agent": info.user_agent,
        "ip": info.ip,
    }


@click.command("show")
@click.argument("ref")
@json_option
def show_command(ref: str, as_json: bool) -> None:
    """One session: its times, owner, client and the keys it holds."""
    from .admin import SessionInfo

    reference = _resolve(ref)
    record = _run(lambda: _manager().store.load(reference))
    if record is None:
        raise click.ClickException(f"no live session {printable(ref)!r}")
    info = _info(SessionInfo.of(reference, record))
    info["key_names"] = sorted(record.fields)
    if as_json:
        echo_json(info)
        return
    rows = []
    for name, value in info.items():
        if name in ("created_at", "last_seen", "expires_at", "authenticated_at") and value:
            value = _when(value) + " UTC"
        elif name == "key_names":
            value = ", ".join(printable(k) for k in value)
        rows.append([name, "-" if value is None else str(value)])
    table(rows, ["", ""])


@click.command("revoke")
@click.argument("ref")
@json_option
def revoke_command(ref: str, as_json: bool) -> None:
    """End one session now: its cookie opens nothing afterwards."""
    from .admin import revoke

    reference = _resolve(ref)
    if not _run(lambda: revoke(_manager(), reference, by="admin")):
        raise click.ClickException(f"no live session {printable(ref)!r}")
    if as_json:
        echo_json({"revoked": [reference]})
        return
    click.echo(f"revoked {reference[:12]}")


@click.command("revoke-owner")
@click.argument("owner")
@json_option
def revoke_owner_command(owner: str, as_json: bool) -> None:
    """End every session of OWNER."""
    from .admin import revoke_all

    owner = _text(owner, "OWNER")
    ended = _run(lambda: revoke_all(_manager(), owner, by="admin"))
    if as_json:
        echo_json({"owner": owner, "revoked": ended})
        return
    click.echo(f"revoked {ended} session(s) of {printable(owner)}")


@click.command("purge")
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
    if removed:
        from .signals import sessions_purged

        sessions_purged.send(None, count=removed)
    if as_json:
        echo_json({"removed": removed})
        return
    click.echo(f"removed {removed} expired record(s)")


@click.command("rekey")
@click.option(
    "--batch", default=500, show_default=True, type=click.IntRange(min=1),
    help="Records rewritten between pauses.",
)  # fmt: skip
@click.option(
    "--pause", default=0.05, show_default=True, type=click.FloatRange(min=0),
    help="Seconds to rest between batches, so requests keep the store's attention.",
)  # fmt: skip
@json_option
def rekey_command(batch: int, pause: float, as_json: bool) -> None:
    """Seal every session under the first encryption key, while the app serves traffic.

    Needs SATCHEL_ENCRYPTION_KEYS (the new key first, the old ones after it).
    Records stored in clear are sealed too. Afterwards the old keys can go.
    """
    from .admin import rekey

    manager = _manager()
    if as_json:
        report = _run(lambda: rekey(manager, batch=batch, pause=pause))
    else:
        with click.progressbar(length=1, label="sealing", show_pos=True) as bar:
            done = 0

            def progress(walked: int, total: int) -> None:
                nonlocal done
                bar.length = max(total, 1)
                bar.update(walked - done)
                done = walked

            report = _run(lambda: rekey(manager, batch=batch, pause=pause, progress=progress))
    found = {
        "rewritten": report.rewritten,
        "current": report.current,
        "ended": report.ended,
        "unreadable": report.unreadable,
    }
    if as_json:
        echo_json(found)
        return
    click.echo(
        f"sealed {report.rewritten} session(s) under the first key; {report.current} already"
        f" were; {report.ended} ended meanwhile; {report.unreadable} unreadable (see the log)"
    )


#: Every command, under its name in both groups (``revoke-all`` is ``revoke-owner``).
COMMANDS: tuple[tuple[str, click.Command], ...] = (
    ("stats", stats_command),
    ("list", list_command),
    ("show", show_command),
    ("revoke", revoke_command),
    ("revoke-owner", revoke_owner_command),
    ("revoke-all", revoke_owner_command),
    ("purge", purge_command),
    ("rekey", rekey_command),
)
