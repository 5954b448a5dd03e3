"""Helpers for load and fault tests: gunicorn on 127.0.0.1 and a bounded HTTP load loop."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .valkey import free_port

ROOT = Path(__file__).resolve().parent.parent
CLIENT_TIMEOUT = 10.0


class Server:
    """An app server on 127.0.0.1, started as a subprocess with ``env`` added to its environment."""

    #: What the readiness check asks for.
    ready_path = "/read"

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        #: Requests :meth:`get` sent again after a reset.
        self.resets = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        # Its log (503 warnings, mostly) goes to a file, not the test output.
        self.log = tempfile.NamedTemporaryFile(prefix="server-", suffix=".log", delete=False)  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.command()[:3]} exited: {Path(self.log.name).read_text()}"
                )
            try:
                status, _, _ = request(self.port, self.ready_path)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{type(self).__name__} did not answer")

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> None:
        """Stops the server; a failure inside the block carries the end of its log."""
        if error is not None:
            error.add_note(f"{type(self).__name__} log (last 4,000 characters):\n{self.log_tail()}")
        self.stop()

    def log_tail(self, size: int = 4000) -> str:
        """The end of what the server wrote to its log: warnings, tracebacks, worker exits."""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-size:]

    def troubles(self) -> list[str]:
        """Lines of the server's log that say a worker or a request failed."""
        signs = ("Traceback", "exited", "was sent", "TIMEOUT", "Error", "error")
        return [
            line for line in self.log_tail(1 << 20).splitlines() if any(s in line for s in signs)
        ]

    def get(self, path: str, cookie: str | None = None) -> tuple[int, str | None, bytes]:
        """:func:`request` to this server, sent again once if the connection was reset before
        any answer while the server logged no failure (a loaded machine's transport hiccup;
        a worker that crashed or timed out fails here, with its log)."""
        try:
            return request(self.port, path, cookie)
        except (ConnectionResetError, http.client.RemoteDisconnected) as reset:
            troubles = self.troubles()
            if troubles:
                reset.add_note("\n".join(troubles[-20:]))
                raise
            self.resets += 1
            return request(self.port, path, cookie)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None
            self.log.close()
            os.unlink(self.log.name)


class Gunicorn(Server):
    """``gunicorn -w WORKERS --threads THREADS tests.apps.loadapp:create_app()``."""

    def __init__(self, env: dict[str, str], workers: int = 4, threads: int = 4) -> None:
        super().__init__(env)
        self.workers = workers
        self.threads = threads

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn",
            "-w", str(self.workers), "--threads", str(self.threads),
            "-b", f"127.0.0.1:{self.port}", "--timeout", "60",
            "--log-level", "warning",
            "tests.apps.loadapp:create_app()",
        ]  # fmt: skip


class Uvicorn(Server):
    """``uvicorn --factory APP --workers WORKERS``: an app of tests/apps/asgiapp.py."""

    def __init__(self, env: dict[str, str], app: str = "create_fastapi", workers: int = 2) -> None:
        super().__init__(env)
        self.app = app
        self.workers = workers

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "--factory", f"tests.apps.asgiapp:{self.app}",
            "--workers", str(self.workers), "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip


class Hypercorn(Server):
    """``hypercorn "tests.apps.asgiapp:APP()"``: the same apps on another ASGI server."""

    def __init__(self, env: dict[str, str], app: str = "create_quart") -> None:
        super().__init__(env)
        self.app = app

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "hypercorn", f"tests.apps.asgiapp:{self.app}()",
            "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning",
        ]  # fmt: skip


def request(port: int, path: str, cookie: str | None = None) -> tuple[int, str | None, bytes]:
    """One GET; returns status, the session cookie it set (if any) and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", path, headers={"Cookie": f"session={cookie}"} if cookie else {})
        response = conn.getresponse()
        body = response.read()
        set_cookie = None
        for header in response.headers.get_all("Set-Cookie") or []:
            if header.startswith("session="):
                set_cookie = header.split(";", 1)[0].split("=", 1)[1]
        return response.status, set_cookie, body
    finally:
        conn.close()


def start_session(port: int, marker: str) -> str:
    status, cookie, _ = request(port, f"/start/{marker}")
    assert status == 200 and cookie
    return cookie


def read_session(port: int, cookie: str) -> dict[str, Any]:
    status, _, body = request(port, "/read", cookie)
    assert status == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


@dataclass
class LoadResult:
    """What a load loop saw: statuses, slowest answer, and requests that never answered."""

    statuses: dict[int, int] = field(default_factory=dict)
    #: The status each job got, in job order (-1: no answer).
    each: list[int] = field(default_factory=list)
    slowest: float = 0.0
    slowest_503: float = 0.0
    no_answer: int = 0

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)


def load(
    port: int,
    jobs: Iterable[tuple[str, str | None]],
    clients: int = 16,
    answered: Callable[[int], None] | None = None,
) -> LoadResult:
    """Send each (path, cookie) job once from ``clients`` threads; bounded by the job list.

    ``answered``, if given, is called with how many jobs have ended so far each time
    one ends (from the client's thread), so a test can act in the middle of the load.
    """
    result = LoadResult()
    ended = itertools.count(1)

    def one(job: tuple[str, str | None]) -> tuple[int, float]:
        start = time.monotonic()
        try:
            status, _, _ = request(port, *job)
        except OSError:
            status = -1
        if answered is not None:
            answered(next(ended))  # itertools.count: one C call, safe across threads
        return status, time.monotonic() - start

    with ThreadPoolExecutor(clients) as pool:
        for status, elapsed in pool.map(one, list(jobs)):
            result.each.append(status)
            if status == -1:
                result.no_answer += 1
                continue
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.slowest = max(result.slowest, elapsed)
            if status == 503:
                result.slowest_503 = max(result.slowest_503, elapsed)
    return result
