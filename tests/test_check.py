"""satchel check and SATCHEL_CHECK_STORE: a misconfigured store is found before users find it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask import Flask

from satchel import ConfigError, Satchel
from satchel.check import check, failures
from satchel.cli import main
from satchel.stores import Store, from_url

from .conftest import SECRET, stored_keys
from .postgres import PostgresServer
from .valkey import ValkeyServer, free_port


def test_every_store_passes_and_is_left_as_it_was(store: Store) -> None:
    """On every store: written, read back and deleted (nothing left), a latency, a server."""
    findings = check(store)
    assert failures(findings) == []
    assert [f.what for f in findings][:2] == ["write and read", "latency"]
    assert any(f.what == "server" and f.detail for f in findings)
    assert stored_keys(store) == []


def test_a_database_that_does_not_exist_is_named_with_what_to_do(postgres: PostgresServer) -> None:
    """The real cause, not a 503 at the first request: the CLI exits 1, an app will not start."""
    url = postgres.url.rsplit("/", 1)[0] + "/nosuch"
    store = from_url(url)
    try:
        (failed,) = failures(check(store))
    finally:
        store.close()
    assert 'database "nosuch" does not exist' in failed.detail
    assert "fix the name in the store URL" in failed.detail
    result = CliRunner().invoke(main, ["check", "--store", url, "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False and "nosuch" in report["findings"][0]["detail"]
    app = Flask("checked")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_STORE=url, SATCHEL_CHECK_STORE=True)
    with pytest.raises(ConfigError, match=r'SATCHEL_CHECK_STORE.*"nosuch" does not exist'):
        Satchel(app)
    unchecked = Flask("unchecked")  # off by default: the app starts, as it always did
    unchecked.config.update(SECRET_KEY=SECRET, SATCHEL_STORE=url)
    Satchel(unchecked)
    unchecked.extensions["satchel"].store.close()


def test_an_unreachable_server_refuses_an_asgi_app_with_check_store() -> None:
    """check_store=True: the middleware's constructor says the server is not there."""
    from starlette.applications import Starlette

    from satchel.asgi import SessionMiddleware

    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(
        ConfigError, match=r"check_store.*Connection refused.*is the server running"
    ):
        SessionMiddleware(Starlette(), secret_key=SECRET, store=url, check_store=True)
    result = CliRunner().invoke(main, ["check", "--store", url])
    assert result.exit_code == 1 and "FAILED" in result.output


def test_an_evicting_valkey_fails_the_configuration_check(own_valkey: ValkeyServer) -> None:
    """A maxmemory-policy that can evict sessions is a failed finding, with the reason."""
    client = redis.Redis.from_url(own_valkey.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    result = CliRunner().invoke(main, ["check", "--store", own_valkey.url])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("configuration")]
    assert lines and "FAILED" in lines[0] and "allkeys-lru" in lines[0]
    assert "Valkey" in result.output  # the server finding names it


def test_the_check_command_reads_the_environment(tmp_path: Any) -> None:
    """$SATCHEL_STORE names the store as --store does; a good store exits 0."""
    url = f"sqlite:///{tmp_path / 'env.sqlite3'}"
    result = CliRunner().invoke(main, ["check"], env={"SATCHEL_STORE": url})
    assert result.exit_code == 0, result.output
    assert "write and read  ok" in result.output
