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
    assert any(r.startswith("flask>=") for r in requires)
    assert {"redis", "postgres", "demo"} <= set(meta.get_all("Provides-Extra") or [])
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


def test_the_readme_install_line_works_in_a_fresh_environment(tmp_path: Path, dist: Path) -> None:
    """`pip install <checkout>` (the README's line until satchel is on the index) in a new
    virtual environment: satchel imports, its command runs, and Flask is there."""
    import venv

    env = tmp_path / "fresh"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    version = subprocess.run(
        [str(env / "bin" / "satchel"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and satchel.__version__ in version.stdout, version.stderr
    check = subprocess.run(
        [str(python), "-c", "import satchel, flask; print(satchel.__version__)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.stdout.strip() == satchel.__version__, check.stderr
