"""The source distribution of an installed package, for running its own tests on satchel."""

from __future__ import annotations

import fcntl
import importlib.metadata
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def unpacked_sdist(package: str) -> Path:
    """The unpacked sdist of the installed ``package`` (its tests included), downloaded
    with pip once and kept in ``build/``."""
    version = importlib.metadata.version(package)
    cache = ROOT / "build" / f"{package}-sdist"
    unpacked = cache / f"{package}-{version}"
    cache.mkdir(parents=True, exist_ok=True)
    # Two pytest-xdist workers may ask at once: one downloads, the other waits for it.
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (unpacked / "tests").is_dir():
            _download(package, version, cache)
    return unpacked


def _download(package: str, version: str, cache: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--no-binary", ":all:", f"{package}=={version}", "--dest", str(cache)],
        check=True, timeout=300,
    )  # fmt: skip
    with tarfile.open(cache / f"{package}-{version}.tar.gz") as sdist:
        sdist.extractall(cache, filter="data")
