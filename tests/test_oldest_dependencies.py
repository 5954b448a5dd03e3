"""The oldest dependencies satchel supports run its tests too.

The rest of the suite runs on the newest versions the install resolves (the
upper bounds in pyproject.toml are what it has been tested with). This builds a
second environment, once, in ``build/oldest``, with each lower bound exactly:
Flask 3.0.0 (and the blinker 1.6.2 it needs), itsdangerous 2.2.0, click 8.1.3,
MarkupSafe 2.1.2, redis-py
5.0.0, whose connection classes and ``send_command`` the Redis store drives,
Starlette 0.40.0 (with the FastAPI of its day), Quart 0.19.0 and cryptography 42.0.0. It runs the
Flask, saves, security, locking, config, signals, merge, Flask-Login, migration, ASGI and Quart
tests there, and the sync and async stores' tests against a real Valkey, so a
change that needs a newer version fails here, not for a user.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

from .support import background

ROOT = Path(__file__).resolve().parent.parent
OLDEST = "3.0.0"
#: Every lower bound of pyproject.toml that the code could outgrow unnoticed.
PINS = [
    f"flask=={OLDEST}",
    "werkzeug==3.0.0",
    "blinker==1.6.2",
    "itsdangerous==2.2.0",
    "click==8.1.3",
    "markupsafe==2.1.2",
    "redis[hiredis]==5.0.0",
    "starlette==0.40.0",
    "fastapi==0.115.2",
    "quart==0.19.0",
    "cryptography==42.0.0",
]


def oldest_python() -> Path:
    """A virtual environment with the PINS and satchel's test dependencies."""
    home = ROOT / "build" / "oldest"
    python = home / "bin" / "python"
    stamp = home / ".pins"
    wanted = (ROOT / "pyproject.toml").read_text() + "\n".join(PINS)
    if not (stamp.exists() and stamp.read_text() == wanted):
        venv.create(home, with_pip=True, clear=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]", *PINS],
            check=True, timeout=900,
        )  # fmt: skip
        stamp.write_text(wanted)
    return python


#: The tests run there (not those that need PostgreSQL or a Cluster, nor the
#: end-to-end switch-overs, which the main run covers).
SELECTED = [
    "tests/test_flask.py", "tests/test_saves.py", "tests/test_config.py",
    "tests/test_signals.py", "tests/test_merge.py", "tests/test_flask_login.py",
    "tests/test_migration.py", "tests/stores/test_redis.py", "tests/stores/test_contract.py",
    "tests/stores/test_aio.py", "tests/test_asgi.py", "tests/test_quart.py",
    "tests/test_encryption.py", "tests/test_security.py", "tests/test_locking.py",
    "-k", "not postgres and not cluster and not switches",
]  # fmt: skip


def run_selected(base: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Build the environment and run the selected tests in it: two minutes of pip and
    pytest in subprocesses (a background job: see conftest)."""
    python = oldest_python()
    result = subprocess.run(
        # Its own --basetemp: a pytest given none tightens /tmp/pytest-of-<user> to 0o700,
        # which cuts this run's servers (another user) off from their folders.
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--basetemp", str(base / "nested"), *SELECTED],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
        # Its servers take ports apart from the outer run's (tests/valkey.py).
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
             "PYTEST_XDIST_WORKER": "gw3"},
    )  # fmt: skip
    return python, result


def test_the_tests_pass_on_the_oldest_dependencies(tmp_path: Path) -> None:
    """Every selected test passes on each lower bound (Flask 3.0.0: no SECRET_KEY_FALLBACKS)."""
    python, result = background.result("oldest-dependencies", lambda: run_selected(tmp_path))
    versions = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; "
         "print(*(m.version(n) for n in "
         "('flask', 'blinker', 'itsdangerous', 'redis', 'starlette', 'quart',"
         " 'cryptography')))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert versions == [OLDEST, "1.6.2", "2.2.0", "5.0.0", "0.40.0", "0.19.0", "42.0.0"]
    tail = result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    summary = result.stdout.splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    # Every selected test ran and passed (no failure, error or silent shrink of the run).
    assert passed is not None and int(passed.group(1)) >= 800, tail  # 902 selected now
    assert "failed" not in summary and "error" not in summary, tail
    assert sys.executable != str(python)
