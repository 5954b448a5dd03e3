"""The ASGI section of the benchmark: Starlette apps on each session layer, in-process and
under uvicorn.

Backends: bare Starlette (no session), Starlette's own cookie ``SessionMiddleware``,
starsessions on Redis (Valkey), and satchel's ``SessionMiddleware`` on memory, SQLite
and Valkey. Every app has the same routes: ``/bare`` (no session), ``/create/<size>``
(a new session holding ``size`` bytes), ``/read`` (read it), ``/rmw`` (read, change,
write). uvicorn workers under gunicorn serve :func:`create_app` with the backend named
by ``ASGI_BACKEND``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

SECRET = "bench-secret-key-0123456789-abcdefghijklmnop"
#: starsessions in each configuration a user picks: a fixed lifetime (the cookie's
#: Max-Age counts down from the session's start), a rolling one (every response
#: sends a full Max-Age again), and its default, a browser-session cookie (no
#: Max-Age). Each saves the session on every response that loaded it.
STARSESSIONS = {
    "starsessions Redis": {"lifetime": 3600},
    "starsessions Redis, rolling": {"lifetime": 3600, "rolling": True},
    "starsessions Redis, browser-session cookie": {"lifetime": 0},
}
BACKENDS = [
    "bare Starlette",
    "Starlette cookie session",
    *STARSESSIONS,
    "satchel memory",
    "satchel SQLite",
    "satchel Valkey",
]
WORKLOADS = ["read-only", "read-modify-write", "first request"]
SIZE = 2_000


async def _bare(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _create(request: Request) -> PlainTextResponse:
    request.session["blob"] = "x" * int(request.path_params["size"])
    request.session["n"] = 0
    return PlainTextResponse("ok")


async def _read(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(request.session.get("blob", ""))))


async def _rmw(request: Request) -> PlainTextResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse("ok")


ROUTES = [
    Route("/bare", _bare),
    Route("/create/{size}", _create),
    Route("/read", _read),
    Route("/rmw", _rmw),
]


def build(
    name: str, valkey_url: str, directory: Path, closers: list[Callable[[], Any]] | None = None
) -> Any:
    """The Starlette app of backend ``name``; what to close afterwards goes to ``closers``."""
    middleware: list[Middleware] = []
    closers = [] if closers is None else closers
    if name == "Starlette cookie session":
        from starlette.middleware.sessions import SessionMiddleware as CookieSessions

        middleware = [Middleware(CookieSessions, secret_key=SECRET)]
    elif name in STARSESSIONS:
        import redis.asyncio
        from starsessions import SessionAutoloadMiddleware
        from starsessions import SessionMiddleware as StarSessions
        from starsessions.stores.redis import RedisStore

        client = redis.asyncio.Redis.from_url(valkey_url)
        closers.append(client.aclose)
        store = RedisStore(connection=client)
        middleware = [
            Middleware(StarSessions, store=store, cookie_https_only=False, **STARSESSIONS[name]),
            Middleware(SessionAutoloadMiddleware),
        ]
    elif name.startswith("satchel"):
        from satchel.asgi import SessionMiddleware

        stores = {
            "satchel memory": "memory://",
            "satchel SQLite": f"sqlite:///{directory}/asgi-bench.sqlite3",  # every worker's
            "satchel Valkey": valkey_url + ("&" if "?" in valkey_url else "?") + "prefix=asgi:",
        }
        from satchel.stores import from_url
        from satchel.stores.aio import to_async

        async_store = to_async(from_url(stores[name]))
        closers.append(async_store.close)
        middleware = [Middleware(SessionMiddleware, secret_key=SECRET, store=async_store)]
    elif name != "bare Starlette":
        raise ValueError(name)
    return Starlette(routes=ROUTES, middleware=middleware)


def create_app() -> Any:
    """What uvicorn serves: the backend ``ASGI_BACKEND`` names."""
    return build(
        os.environ["ASGI_BACKEND"],
        os.environ.get("ASGI_VALKEY", "redis://127.0.0.1:1/0"),
        Path(os.environ.get("ASGI_DIR", "/tmp")),
    )


class ASGIClient:
    """Calls an ASGI app directly with a minimal scope, carrying its session cookie along."""

    def __init__(self, app: Any, keep_cookies: bool = True) -> None:
        self.app = app
        self.keep = keep_cookies
        self.cookie = b""

    async def get(self, path: str) -> bytes:
        headers = [(b"host", b"bench")]
        if self.cookie:
            headers.append((b"cookie", self.cookie))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("bench", 80),
        }  # fmt: skip
        body: list[bytes] = []
        sent = {"type": "http.request", "body": b"", "more_body": False}

        async def receive() -> dict[str, Any]:
            return sent

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                assert message["status"] == 200, message
                if self.keep:
                    for name, value in message.get("headers", ()):
                        if name == b"set-cookie" and value.startswith(b"session="):
                            self.cookie = value.split(b";", 1)[0]
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return b"".join(body)


async def _sample(call: Callable[[], Any], seconds: float) -> float:
    """Seconds per call, over about ``seconds`` of calls.

    Between two calls the loop runs its other callbacks once, as a server's loop
    does between requests (what a store handed to a thread reports back then).
    """
    await call()  # warm
    n, start = 0, time.perf_counter()
    while True:
        await call()
        await asyncio.sleep(0)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 20:
            return elapsed / n


async def in_process(
    valkey_url: str, directory: Path, rounds: int, sample: float
) -> dict[str, dict[str, float]]:
    """Median µs per request of each backend and workload, in interleaved rounds."""
    closers: list[Callable[[], Any]] = []
    apps = {name: build(name, valkey_url, directory, closers) for name in BACKENDS}
    samples: dict[str, dict[str, list[float]]] = {
        name: {w: [] for w in WORKLOADS} for name in BACKENDS
    }
    clients = {}
    for name, app in apps.items():
        client = ASGIClient(app)
        if name != "bare Starlette":
            await client.get(f"/create/{SIZE}")
        clients[name] = client
    for _ in range(rounds):
        for name, app in apps.items():
            client = clients[name]
            if name == "bare Starlette":
                for workload in WORKLOADS:
                    samples[name][workload].append(
                        await _sample(lambda c=client: c.get("/bare"), sample)
                    )
                continue
            samples[name]["read-only"].append(
                await _sample(lambda c=client: c.get("/read"), sample)
            )
            samples[name]["read-modify-write"].append(
                await _sample(lambda c=client: c.get("/rmw"), sample)
            )
            fresh = ASGIClient(app, keep_cookies=False)
            samples[name]["first request"].append(
                await _sample(lambda c=fresh: c.get(f"/create/{SIZE}"), sample)
            )
    for close in closers:
        await close()
    bare = statistics.median(v for runs in samples["bare Starlette"].values() for v in runs)
    table = {}
    for name in BACKENDS:
        if name == "bare Starlette":
            table[name] = {w: bare * 1e6 for w in WORKLOADS}
        else:
            table[name] = {w: statistics.median(samples[name][w]) * 1e6 for w in WORKLOADS}
    return table


def commands_per_read(valkey_url: str, directory: Path) -> dict[str, float]:
    """Commands the server ran per read-only request, by its own INFO commandstats."""
    import redis

    server = redis.Redis.from_url(valkey_url)

    def total() -> int:
        stats: Any = server.info("commandstats")
        return sum(
            int(v["calls"])
            for k, v in stats.items()
            if k not in ("cmdstat_info", "cmdstat_config|resetstat")
        )

    found = {}
    for name in ("starsessions Redis", "satchel Valkey"):

        async def run(name: str = name) -> int:
            closers: list[Callable[[], Any]] = []
            client = ASGIClient(build(name, valkey_url, directory, closers))
            await client.get(f"/create/{SIZE}")
            await client.get("/read")
            before = total()
            for _ in range(200):
                await client.get("/read")
            after = total()
            for close in closers:
                await close()
            return after - before

        found[name] = asyncio.run(run()) / 200
    server.close()
    return found


def end_to_end(
    valkey_url: str,
    directory: Path,
    seconds: int,
    rounds: int,
    measure: Callable[..., dict[str, dict[str, float]]],
) -> dict[str, dict[str, float]]:
    """Requests per second under gunicorn's uvicorn workers (2) and wrk, read-only 2 KB.

    ``measure`` is the benchmark's ``serve_and_measure``. uvicorn's own --workers
    hands its children a listening socket whose connections keep Nagle's algorithm
    on (43 ms a response here); gunicorn's socket has TCP_NODELAY, so its uvicorn
    workers do not. The memory store has no row: each worker's memory is its own.
    """
    command = [
        sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker",
        "-w", "2", "-b", "127.0.0.1:{port}", "--log-level", "warning",
        "asgi_backends:create_app()",
    ]  # fmt: skip
    env = {"ASGI_VALKEY": valkey_url, "ASGI_DIR": str(directory)}
    launch = {
        name: (command, {**env, "ASGI_BACKEND": name})
        for name in BACKENDS
        if name != "satchel memory"
    }
    return measure(launch, "bare Starlette", seconds, rounds)


def targets(
    table: dict[str, dict[str, float]],
    commands: dict[str, float],
    e2e: dict[str, dict[str, float]] | None = None,
) -> list[tuple[bool, str]]:
    """The ASGI targets of the ASGI issue, each PASS or FAIL with its figures.

    In process, a request's added cost is its time less bare Starlette's; end to
    end, the server's time per request (1 / requests per second) less bare's.
    """
    base = table["bare Starlette"]["read-only"]

    def added(name: str, workload: str) -> float:
        return table[name][workload] - base

    checks = []
    for workload in WORKLOADS:
        mine, theirs = (
            added("satchel SQLite", workload),
            added("Starlette cookie session", workload),
        )
        checks.append(
            (
                mine <= theirs,
                f"ASGI {workload}: satchel on SQLite adds {mine:.0f} us, no more than "
                f"Starlette's cookie session ({theirs:.0f} us)",
            )
        )
        mine = added("satchel Valkey", workload)
        # The peer at its fastest: whichever configuration costs least in this cell.
        # Reads and writes: at most half of it; a first request: ahead of it.
        peer = min(STARSESSIONS, key=lambda name: added(name, workload))
        theirs = added(peer, workload)
        share = 1.0 if workload == "first request" else 0.5
        checks.append(
            (
                mine <= share * theirs,
                f"ASGI {workload}: satchel on Valkey adds {mine:.0f} us, at most "
                f"{share:g}x {peer} ({theirs:.0f} us; {mine / theirs:.2f}x)",
            )
        )
    if e2e:

        def per_request(name: str) -> float:
            return 1e6 / e2e[name]["rps"] - 1e6 / e2e["bare Starlette"]["rps"]

        mine, theirs = per_request("satchel SQLite"), per_request("Starlette cookie session")
        checks.append(
            (
                mine <= theirs,
                f"ASGI end to end, read-only: satchel on SQLite adds {mine:.0f} us a request, "
                f"no more than Starlette's cookie session ({theirs:.0f} us)",
            )
        )
        peer = min((name for name in STARSESSIONS if name in e2e), key=per_request)
        mine, theirs = per_request("satchel Valkey"), per_request(peer)
        checks.append(
            (
                mine <= 0.5 * theirs,
                f"ASGI end to end, read-only: satchel on Valkey adds {mine:.0f} us a request, "
                f"at most half of {peer} ({theirs:.0f} us; {mine / theirs:.2f}x)",
            )
        )
    rt = commands["satchel Valkey"]
    checks.append(
        (
            rt <= 1.0,
            f"ASGI: one round trip to load a session on Valkey ({rt:.2f} commands per read; "
            f"starsessions: {commands['starsessions Redis']:.2f})",
        )
    )
    return checks
