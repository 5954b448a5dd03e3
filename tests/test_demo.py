"""The questionnaire demo, driven through Flask's test client and as a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from satchel.demo import create_app
from satchel.stores import Store

from .valkey import free_port


@pytest.fixture
def demo(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.delenv("FLASK_SECRET_KEY", raising=False)
    return create_app(store=store, instance_path=tmp_path / "instance")


def text(response: object) -> str:
    return response.get_data(as_text=True)  # type: ignore[attr-defined,no-any-return]


def footer(client: FlaskClient) -> str:
    page = text(client.get("/"))
    return page[page.index("What the session holds") :]


def test_whole_flow(demo: Flask) -> None:
    """Home → Page 1 → Page 2 → Page 3 shows all answers; the footer follows along."""
    client = demo.test_client()
    home = client.get("/")
    assert home.status_code == 200 and "session" in text(home)
    assert "Nothing yet" in text(home)
    assert "Set-Cookie" not in home.headers  # reading creates nothing

    page1 = client.get("/page1")
    assert 'name="firstName"' in text(page1) and 'name="lastName"' in text(page1)
    response = client.post("/page1", data={"firstName": "Ada", "lastName": "Lovelace"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/page2")
    assert "Set-Cookie" in response.headers
    assert "Ada" in footer(client) and "Lovelace" in footer(client)

    page2 = client.get("/page2")
    assert 'name="favoriteColor"' in text(page2) and "Hello, Ada" in text(page2)
    response = client.post("/page2", data={"favoriteColor": "green"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/page3")

    page3 = text(client.get("/page3"))
    summary = re.sub(r"\s+", " ", page3[page3.index('id="summary"') :])
    assert "Ada Lovelace" in summary and "green" in summary
    held = footer(client)
    assert held.index("First name") < held.index("Last name") < held.index("Favourite colour")


def test_start_over_forgets_everything(demo: Flask) -> None:
    """Start over clears the session on the server; the old cookie is dead."""
    client = demo.test_client()
    client.post("/page1", data={"firstName": "Ada", "lastName": "Lovelace"})
    old = client.get_cookie("session")
    assert old is not None
    response = client.get("/start-over")
    assert response.status_code == 303
    assert "Nothing yet" in footer(client)
    replay = demo.test_client()
    replay.set_cookie("session", old.value)
    assert "Nothing yet" in footer(replay)


@pytest.mark.parametrize("path", ["/page2", "/page3"])
def test_skipping_ahead_is_friendly(demo: Flask, path: str) -> None:
    """Going straight to Page 2 or 3 explains what is missing, with a link back."""
    response = demo.test_client().get(path)
    assert response.status_code == 200
    assert "needs your name first" in text(response)
    assert 'href="/page1"' in text(response)


def test_page3_without_colour_points_to_page2(demo: Flask) -> None:
    """With a name but no colour, Page 3 sends the visitor to Page 2."""
    client = demo.test_client()
    client.post("/page1", data={"firstName": "Ada", "lastName": "Lovelace"})
    response = client.get("/page3")
    assert "favourite colour first" in text(response) and 'href="/page2"' in text(response)


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/page1", {}),
        ("/page1", {"firstName": "Ada"}),
        ("/page1", {"firstName": "  ", "lastName": "  "}),
    ],
)
def test_empty_forms_show_the_form_again(demo: Flask, path: str, form: dict[str, str]) -> None:
    """An empty or half-empty form comes back with a message, never an error status."""
    client = demo.test_client()
    response = client.post(path, data=form)
    assert response.status_code == 200
    assert 'role="alert"' in text(response) and 'name="firstName"' in text(response)
    assert "Set-Cookie" not in response.headers


def test_empty_colour_shows_the_form_again(demo: Flask) -> None:
    """An empty colour comes back with a message."""
    client = demo.test_client()
    client.post("/page1", data={"firstName": "Ada", "lastName": "Lovelace"})
    response = client.post("/page2", data={"favoriteColor": ""})
    assert response.status_code == 200 and 'role="alert"' in text(response)


def test_html_in_answers_is_escaped(demo: Flask) -> None:
    """Answers are shown escaped: a stored script tag is text, not markup."""
    client = demo.test_client()
    client.post("/page1", data={"firstName": "<script>x</script>", "lastName": "L"})
    assert "<script>x</script>" not in footer(client)
    assert "&lt;script&gt;" in footer(client)


def test_secret_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FLASK_SECRET_KEY is used when set, and no key file is written."""
    monkeypatch.setenv("FLASK_SECRET_KEY", "from-the-environment-" + "x" * 20)
    app = create_app(store="memory://", instance_path=tmp_path)
    assert app.secret_key == "from-the-environment-" + "x" * 20
    assert not (tmp_path / "demo-secret-key").exists()


def test_random_secret_key_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without FLASK_SECRET_KEY a random key is made once, kept private, and reused."""
    monkeypatch.delenv("FLASK_SECRET_KEY", raising=False)
    first = create_app(store="memory://", instance_path=tmp_path)
    key_file = tmp_path / "demo-secret-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(str(first.secret_key)) == 64
    second = create_app(store="memory://", instance_path=tmp_path)
    assert second.secret_key == first.secret_key


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``satchel demo`` run as a new user would, on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FLASK_SECRET_KEY"}
    script = Path(sys.executable).with_name("satchel")
    process = subprocess.Popen(
        [str(script), "demo", "--port", str(port), "--instance", str(tmp_path / "inst")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            time.sleep(0.1)
    yield url, process
    process.terminate()
    process.wait(10)


def test_satchel_demo_command_serves_the_questionnaire(
    served: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    """`satchel demo` serves the questionnaire over HTTP on the SQLite default."""
    url, process = served
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert "satchel questionnaire" in response.read().decode()
    assert (tmp_path / "inst" / "satchel-sessions.sqlite3").exists()
    process.terminate()
    output = process.communicate(timeout=10)[0]
    assert "No FLASK_SECRET_KEY set" in output
    assert "SQLiteStore" in output
