"""The oldest Flask satchel supports (3.0.0) runs the adapter's tests too.

The rest of the suite runs on the newest Flask the install resolves; this builds
a second environment, once, in ``build/flask-oldest``, and runs the Flask,
hardening, config, signals, merge and Flask-Login tests there (memory and
SQLite), so a change that needs a newer Flask fails here, not for a user.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLDEST = "3.0.0"


def oldest_python() -> Path:
    """A virtual environment with Flask OLDEST and satchel's test dependencies."""
    home = ROOT / "build" / "flask-oldest"
    python = home / "bin" / "python"
    stamp = home / f".flask-{OLDEST}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    if not (stamp.exists() and stamp.read_text() == pyproject):
        venv.create(home, with_pip=True, clear=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]",
             f"flask=={OLDEST}", "werkzeug<3.1"],
            check=True, timeout=900,
        )  # fmt: skip
        stamp.write_text(pyproject)
    return python


def test_the_adapter_passes_its_tests_on_the_oldest_flask() -> None:
    """Flask 3.0.0: every selected test passes (no SECRET_KEY_FALLBACKS, no Partitioned)."""
    python = oldest_python()
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('flask'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert version == OLDEST
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_flask.py", "tests/test_hardening.py", "tests/test_config.py",
         "tests/test_signals.py", "tests/test_merge.py", "tests/test_flask_login.py",
         "-k", "not redis and not postgres and not cluster"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
    )  # fmt: skip
    tail = result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout.splitlines()[-1], tail
    assert sys.executable != str(python)
