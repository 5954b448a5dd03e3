"""The app gunicorn serves in the end-to-end benchmark; the backend comes from E2E_BACKEND."""

from __future__ import annotations

import os
from pathlib import Path

from backends import all_backends
from flask import Flask


def create_app() -> Flask:
    backends = all_backends(
        os.environ.get("E2E_VALKEY", "redis://127.0.0.1:1/0"),
        Path(os.environ.get("E2E_DIR", "/tmp")),
        os.environ.get("E2E_POSTGRES"),
    )
    factory = backends[os.environ["E2E_BACKEND"]]
    app: Flask = factory()
    return app
