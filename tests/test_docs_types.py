"""Every Python example in the README and docs/ passes mypy --strict, as an app's would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .support import background
from .support.docs import BLOCKS


def run_mypy(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """mypy --strict on every block (a background job: see conftest)."""
    package = tmp_path / "examples"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    for n, (where, code) in enumerate(BLOCKS):
        name = where.replace("/", "_").replace(".", "_").replace(":", "_")
        (package / f"example_{n:02d}_{name}.py").write_text(code, encoding="utf-8")
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\nstrict = True\n"
        "[mypy-flask_login.*]\nignore_missing_imports = True\n"
        "[mypy-examples.*]\ndisallow_subclassing_any = False\ndisallow_untyped_decorators = False\n"
        "[mypy-prometheus_client.*]\nignore_missing_imports = True\n",
        encoding="utf-8",
    )
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
         str(tmp_path / ".mypy_cache"), "-p", "examples"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip


def test_every_example_type_checks_strictly(tmp_path: Path) -> None:
    """mypy --strict on each block as its own module. Flask-Login ships no types, so
    subclassing its UserMixin and its untyped decorators are allowed, and nothing else."""
    result = background.result("docs-mypy", lambda: run_mypy(tmp_path))
    assert result.returncode == 0, result.stdout[-4000:]


def run_pyright(tmp_path: Path) -> list[subprocess.CompletedProcess[str]]:
    """basedpyright, strict, on every block (a background job: see conftest)."""
    import json
    import shutil

    pyright = shutil.which("basedpyright", path=str(Path(sys.executable).parent))
    assert pyright is not None, "basedpyright is in the dev extra"
    typed, untyped = tmp_path / "typed", tmp_path / "flask_login_users"
    for folder in (typed, untyped):
        folder.mkdir()
    for n, (_where, code) in enumerate(BLOCKS):
        folder = untyped if "flask_login" in code else typed
        (folder / f"example_{n:02d}.py").write_text(code, encoding="utf-8")
    relaxed = dict.fromkeys(
        ["reportMissingTypeStubs", "reportUnknownMemberType", "reportUnknownVariableType",
         "reportUntypedFunctionDecorator", "reportUntypedBaseClass", "reportUnknownArgumentType"],
        False,
    )  # fmt: skip
    results = []
    for folder, rules in ((typed, {}), (untyped, relaxed)):
        (folder / "pyrightconfig.json").write_text(
            json.dumps({"typeCheckingMode": "strict", "pythonVersion": "3.11", **rules}),
            encoding="utf-8",
        )
        results.append(subprocess.run(
            [pyright, "--pythonpath", sys.executable, "--project", str(folder), str(folder)],
            capture_output=True, text=True, timeout=600, cwd=folder,
        ))  # fmt: skip
    return results


def test_every_example_passes_pyright_strict(tmp_path: Path) -> None:
    """basedpyright in strict mode on each block. Flask-Login ships no types: the blocks
    that import it are checked strictly too, but for the rules about its unknown types."""
    results = background.result("docs-pyright", lambda: run_pyright(tmp_path))
    assert len(results) == 2
    for result in results:
        assert result.returncode == 0, result.stdout[-4000:]
