"""The wheel and sdist a release would upload: built from this tree, checked as an index would."""

from __future__ import annotations

import email
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import satchel

from .support import background

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and sdist, built without network (the build backend is installed)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


def test_twine_finds_nothing_wrong(dist: Path) -> None:
    """`twine check` passes on both: the README renders and the metadata is complete."""
    files = sorted(str(p) for p in dist.iterdir())
    assert len(files) == 2
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheel_metadata(dist: Path) -> None:
    """Version, licence, Python, dependencies, extras and classifiers are declared."""
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(archive.read(name))
    assert meta["Name"] == "satchel" and meta["Version"] == satchel.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    requires = meta.get_all("Requires-Dist") or []
    assert not any(r.startswith("flask") and "extra ==" not in r for r in requires), requires
    assert any(r.startswith("flask>=") and "extra == 'flask'" in r for r in requires)
    assert {"flask", "asgi", "quart", "redis", "postgres", "demo"} <= set(
        meta.get_all("Provides-Extra") or []
    )
    classifiers = set(meta.get_all("Classifier") or [])
    assert {"Framework :: Flask", "Typing :: Typed", "Development Status :: 3 - Alpha"} <= (
        classifiers
    )
    assert "Programming Language :: Python :: 3.11" in classifiers


def test_wheel_contents(dist: Path) -> None:
    """The package, its types marker, the demo's templates and the licence; nothing else."""
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "satchel/py.typed" in names
    assert "satchel/stores/postgres.py" in names and "satchel/testing.py" in names
    assert any(n.startswith("satchel/demo/templates/") and n.endswith(".html") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert all(n.startswith(("satchel/", "satchel-")) for n in names), names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_sdist_contents(dist: Path) -> None:
    """Sources, tests, docs and licence; no virtual environment, caches or results."""
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = [n.split("/", 1)[1] for n in archive.getnames() if "/" in n]
    for wanted in ("LICENSE", "README.md", "CHANGELOG.md", "src/satchel/py.typed",
                   "tests/conftest.py", "docs/reliability.md", "pyproject.toml"):  # fmt: skip
        assert wanted in names, wanted
    forbidden = (".venv", ".hypothesis", "__pycache__", ".pytest_cache", ".mypy_cache",
                 ".ruff_cache", "instance/", "bench/results", "build/", ".git/")  # fmt: skip
    assert not [n for n in names if any(f in n for f in forbidden)]
    assert not [n for n in names if n.endswith((".sqlite3", ".db", ".pyc"))]


def _fresh(tmp_path: Path, name: str, target: str) -> Path:
    """A new virtual environment with ``pip install target``; its python."""
    import venv

    env = tmp_path / name
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", target],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    return python


def test_the_readme_install_line_works_in_a_fresh_environment(tmp_path: Path, dist: Path) -> None:
    """`pip install '<checkout>[flask]'` (the README's line until satchel is on the index) in
    a new virtual environment: satchel imports, its command runs, and Flask is there."""
    python = background.result("fresh-flask", lambda: _fresh(tmp_path, "fresh", f"{ROOT}[flask]"))
    version = subprocess.run(
        [str(python.parent / "satchel"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and satchel.__version__ in version.stdout, version.stderr
    check = subprocess.run(
        [str(python), "-c", "import satchel, flask; print(satchel.Satchel.__module__)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.stdout.strip() == "satchel.flask", check.stderr


#: Run in an ASGI-only environment: the middleware serves two requests of one session,
#: the admin command reads the store, and Flask is neither installed nor imported.
ASGI_ONLY = """
import asyncio, importlib.util, subprocess, sys
assert importlib.util.find_spec("flask") is None, "flask is installed"
import satchel, satchel.asgi, satchel.stores.aio
from satchel.asgi import SessionMiddleware
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def count(request):
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse(str(request.session["n"]))

store = sys.argv[1]
app = SessionMiddleware(Starlette(routes=[Route("/", count)]), secret_key="k" * 40, store=store)

async def call(cookie):
    sent = []
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        sent.append(message)
    headers = [(b"cookie", cookie)] if cookie else []
    scope = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "headers": headers,
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("t", 80), "client": ("127.0.0.1", 1), "asgi": {"version": "3.0"}}
    await app(scope, receive, send)
    start = sent[0]
    cookies = [v for k, v in start["headers"] if k == b"set-cookie"]
    return sent[1]["body"], cookies

async def main():
    body, cookies = await call(None)
    assert body == b"1", body
    cookie = cookies[0].split(b";")[0]
    body, _ = await call(cookie)
    assert body == b"2", body

asyncio.run(main())
assert "flask" not in sys.modules and "werkzeug" not in sys.modules, "flask was imported"
import os
command = os.path.join(os.path.dirname(sys.executable), "satchel")
listing = subprocess.run([command, "sessions", "--store", store, "list", "--json"],
                         capture_output=True, text=True)
assert listing.returncode == 0 and '"keys": 1' in listing.stdout, listing.stdout + listing.stderr
print("ok")
"""


def test_an_asgi_only_install_has_no_flask(tmp_path: Path, dist: Path) -> None:
    """`pip install '<checkout>[asgi]'`: no Flask is installed, `import satchel.asgi` imports
    none, and a Starlette app and `satchel sessions` work on the default store."""
    python = background.result("fresh-asgi", lambda: _fresh(tmp_path, "asgi-only", f"{ROOT}[asgi]"))
    script = tmp_path / "asgi_only.py"
    script.write_text(ASGI_ONLY)
    store = f"sqlite:///{tmp_path / 'asgi-only.sqlite3'}"
    run = subprocess.run(
        [str(python), str(script), store], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
