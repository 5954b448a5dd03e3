"""Every Python block in the README and in docs/ runs as written."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from .support import background
from .support.docs import BLOCKS, ROOT


def test_the_documents_have_python_blocks() -> None:
    """The extraction finds the README's examples (a broken pattern would pass vacuously)."""
    assert sum(where.startswith("README.md") for where, _ in BLOCKS) >= 3


@pytest.mark.parametrize("where,code", BLOCKS, ids=[where for where, _ in BLOCKS])
def test_block_runs_as_written(
    where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block runs in a fresh module, in an empty folder, with FLASK_SECRET_KEY set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLASK_SECRET_KEY", os.urandom(32).hex())
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    runpy.run_path(str(script), run_name="example")


def test_the_first_example_runs_and_says_what_to_do_without_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's first example serves its pages (home, login, logout), and without
    FLASK_SECRET_KEY it stops with a message that says what to set, not a KeyError."""
    where, code = next(block for block in BLOCKS if block[0].startswith("README.md"))
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    monkeypatch.delenv("FLASK_SECRET_KEY", raising=False)
    with pytest.raises(SystemExit, match="FLASK_SECRET_KEY"):
        runpy.run_path(str(script), run_name="example")
    monkeypatch.setenv("FLASK_SECRET_KEY", os.urandom(32).hex())
    app = runpy.run_path(str(script), run_name="example")["app"]
    client = app.test_client()
    assert client.get("/").text == "Not logged in."
    login = client.post("/login", data={"username": "ada", "password": "correct horse"})
    assert login.status_code == 302 and login.headers["Location"] == "/"
    assert client.get("/").text == "Logged in as user 1."
    assert client.post("/logout").status_code == 302
    assert client.get("/").text == "Not logged in.", where


def build_site(out: Path) -> subprocess.CompletedProcess[str]:
    """Sphinx, warnings as errors, on docs/ into ``out`` (a background job: see conftest)."""
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-b", "html",
         str(ROOT / "docs"), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_documentation_site_builds_without_a_warning(tmp_path: Path) -> None:
    """docs/ (the guides, read by MyST, and the API reference from the docstrings) builds
    with warnings as errors: a link to a missing page or section fails it."""
    out = tmp_path / "html"
    result, out = background.result("docs-site", lambda: (build_site(out), out))
    assert result.returncode == 0, result.stderr[-3000:]
    page = (out / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("Satchel", "PostgresStore", "StoreContract", "SaveResult", "LockLost"):
        assert name in page, name
    for guide in sorted((ROOT / "docs").glob("*.md")):  # every guide is a page of the site
        assert (out / f"{guide.stem}.html").exists(), guide.name


def test_the_readme_is_short_and_its_links_lead_somewhere() -> None:
    """The README stays a front page (about 200 lines: what, why, install, the demo, one
    example per framework, links), and every file it links to exists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 210
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert len(local) >= 10
    for link in local:
        assert (ROOT / link).exists(), link


def test_every_test_the_asvs_table_cites_exists() -> None:
    """docs/asvs.md names a test for each requirement satchel owns: each file exists and
    each ``file::name`` (or ``::name`` after it, in the same file) is a test there."""
    text = (ROOT / "docs" / "asvs.md").read_text(encoding="utf-8")
    cited = re.findall(r"`(tests/[\w/]+\.py)((?:::\w+)?)`((?:, `::\w+`)*)", text)
    assert len(cited) >= 20
    for path, first, more in cited:
        source = (ROOT / path).read_text(encoding="utf-8")
        names = [first, *re.findall(r"::\w+", more)]
        for name in filter(None, names):
            assert f"def {name[2:]}(" in source, f"{path}{name}"
