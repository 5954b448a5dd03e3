"""CPU instructions per request, counted by valgrind: a cost that noise cannot move.

    python bench/instructions.py BACKEND VALKEY_URL DIRECTORY REQUESTS [POSTGRES_URL]

runs one backend's three workloads (a Flask backend of bench/backends.py, or an
ASGI one of bench/asgi_backends.py named ``asgi:NAME``) on a 2 KB session under ``valgrind
--tool=callgrind`` (``bench/run.py --instructions`` starts it). Each workload
runs twice, a warm-up then the measured pass, each inside its own call through
:mod:`ctypes`, and callgrind counts only inside those calls and writes one
dump per call, so start-up and set-up are never counted.

What it counts is the user-space work of the Python process: not the kernel's
share of system calls, not time spent waiting for a disk or a server, and not
the work of the Valkey server itself. It is a repeatable measure of the CPU a
session layer spends in the app, to set beside the wall-clock figures.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backends import all_backends  # noqa: E402
from clients import make_clients  # noqa: E402

WORKLOADS = ["read-only", "read-modify-write", "first request"]
WARM_UP = 20
# The valgrind options that make the counting work as described above.
CALLGRIND = [
    "valgrind",
    "--tool=callgrind",
    "--collect-atstart=no",
    "--toggle-collect=ffi_call",
    "--dump-after=ffi_call",
]


def counted(call: Callable[[], Any], n: int) -> None:
    """Run ``call`` n times inside one C call (libffi's ffi_call), which callgrind watches."""

    def loop() -> None:
        for _ in range(n):
            call()

    ctypes.CFUNCTYPE(None)(loop)()


def flask_calls(name: str, factory: Any, size: int) -> list[Callable[[], Any]]:
    """One call per workload of the Flask backend ``name`` (bare Flask: ``/bare`` each)."""
    holder, fresh = make_clients(factory, size)
    if name == "bare Flask":
        return [lambda: holder.get("/bare")] * len(WORKLOADS)
    return [
        lambda: holder.get("/read"),
        lambda: holder.get("/write"),
        lambda: fresh.get(f"/create/{size}"),
    ]


#: How an ASGI backend's name starts (``asgi:satchel Valkey``): its app is a Starlette one
#: from bench/asgi_backends.py, called directly as ASGI on one event loop.
ASGI = "asgi:"


def asgi_calls(
    name: str, valkey_url: str, directory: Path, size: int
) -> tuple[list[Callable[[], Any]], Callable[[], None]]:
    """One call per workload of the ASGI backend ``name`` (bare Starlette: ``/bare`` each),
    and what closes its store and event loop afterwards."""
    import asyncio

    from asgi_backends import ASGIClient, build

    loop = asyncio.new_event_loop()
    closers: list[Callable[[], Any]] = []
    app = build(name, valkey_url, directory, closers)
    holder, fresh = ASGIClient(app), ASGIClient(app, keep_cookies=False)

    def run(client: ASGIClient, path: str) -> Callable[[], Any]:
        # The loop runs its other callbacks once after each request, as a server's does.
        async def request() -> None:
            await client.get(path)
            await asyncio.sleep(0)

        return lambda: loop.run_until_complete(request())

    def close() -> None:
        for closer in closers:
            loop.run_until_complete(closer())
        loop.close()

    if name == "bare Starlette":
        return [run(holder, "/bare")] * len(WORKLOADS), close
    run(holder, f"/create/{size}")()
    return [run(holder, "/read"), run(holder, "/rmw"), run(fresh, f"/create/{size}")], close


def main() -> None:
    name, valkey_url, directory, requests = sys.argv[1:5]
    postgres_url = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] else None
    size = int(sys.argv[6]) if len(sys.argv) > 6 else 2_000  # the session's payload, bytes
    close: Callable[[], None] = lambda: None  # noqa: E731
    if name.startswith(ASGI):
        calls, close = asgi_calls(name[len(ASGI) :], valkey_url, Path(directory), size)
    else:
        factory = all_backends(valkey_url, Path(directory), postgres_url)[name]
        calls = flask_calls(name, factory, size)
    for call in calls:
        counted(call, WARM_UP)
        gc.collect()  # start each pass with the same garbage behind it
        counted(call, int(requests))
    close()


if __name__ == "__main__":
    main()
