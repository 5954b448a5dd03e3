#!/usr/bin/env python3
"""Set up a virtual environment and run satchel's demo or its checks.

    python3 tasks.py demo [ARGS...]   run the questionnaire demo (SQLite store)
    python3 tasks.py test [ARGS...]   ruff, mypy --strict and the whole pytest suite
    python3 tasks.py bench [ARGS...]  the benchmark (bench/run.py; wrk for end to end)
    python3 tasks.py docs             the documentation site, into build/docs
    python3 tasks.py mutation         the core's mutation score (mutmut; minutes)
    python3 tasks.py coverage         line and branch coverage per module

Only the standard library is used here, so this works on a fresh machine with
Python 3.11+. The environment lives in ``.venv`` and is reinstalled whenever
``pyproject.toml`` changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SATCHEL_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def run(*cmd: str | os.PathLike[str]) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT)
    if result.returncode:
        sys.exit(result.returncode)


def ensure_venv(extra: str) -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extra.encode()).hexdigest()
    stamp = VENV / f".installed-{extra}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(
        f"Setting up {VENV} with satchel[{extra}]: the first time this downloads and"
        " installs the dependencies (a minute or two); pip's progress follows.",
        flush=True,
    )
    if not PYTHON.exists():
        print(f"+ creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "--progress-bar", "off", "-e", f".[{extra}]")
    stamp.write_text(digest)
    print(f"{VENV} is ready.", flush=True)


def demo(args: list[str]) -> None:
    ensure_venv("demo,redis,postgres")
    os.execv(BIN / "satchel", [str(BIN / "satchel"), "demo", *args])


def test(args: list[str]) -> None:
    ensure_venv("dev")
    run(BIN / "ruff", "check", "src", "tests", "bench", "tasks.py")
    run(BIN / "ruff", "format", "--check", "src", "tests", "bench", "tasks.py")
    run(BIN / "mypy", "--strict", "src")
    # Two workers (pytest-xdist): most tests wait on servers, sockets and each other's
    # requests, so two use a 2-core machine's time better. "-n 0": one process.
    parallel = [] if any(a.startswith("-n") or a == "--numprocesses" for a in args) else WORKERS
    run(PYTHON, "-m", "pytest", *parallel, *args)


#: How tasks.py test runs pytest unless given "-n N" (tests/conftest.py runs the slow
#: subprocess work of a whole run in the controlling process, beside the workers).
WORKERS = ["-n", "2"]


def bench(args: list[str]) -> None:
    ensure_venv("dev,bench")
    run(PYTHON, "bench/run.py", *args)


def docs(args: list[str]) -> None:
    ensure_venv("dev")
    out = ROOT / "build" / "docs"
    run(PYTHON, "-m", "sphinx", "-W", "--keep-going", "-b", "html", ROOT / "docs", out, *args)
    print(f"The documentation site is in {out}: open {out / 'index.html'}", flush=True)


def mutation(args: list[str]) -> None:
    """mutmut over the framework-free core ([tool.mutmut] in pyproject.toml says which
    modules and which tests); the survivors are listed at the end."""
    ensure_venv("mutation")
    run(BIN / "mutmut", "run", "--max-children", str(os.cpu_count() or 2), *args)
    run(BIN / "mutmut", "results")  # the survivors; `mutmut show NAME` prints one's diff


def coverage(args: list[str]) -> None:
    """The whole suite under coverage.py, lines and branches, reported per module."""
    ensure_venv("mutation")
    run(
        PYTHON, "-m", "pytest", *WORKERS, "--cov=satchel", "--cov-branch",
        "--cov-report=term-missing:skip-covered", *args,
    )  # fmt: skip


def main() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - runs before anything is installed
        sys.exit(f"satchel needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    commands = {
        "demo": demo, "test": test, "bench": bench, "docs": docs,
        "mutation": mutation, "coverage": coverage,
    }  # fmt: skip
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
