"""OpenTelemetry spans and metrics, and the Prometheus collector and scrape (issue 25, part 2).

The SDK's in-memory exporter and reader are given to satchel with ``telemetry.use``
(OpenTelemetry's global providers can be set once per process), on every store and
adapter.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from flask import Flask, session
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from satchel import Satchel, telemetry
from satchel.stores import MemoryStore, Store

from .conftest import SECRET

KINDS = {"memory": "memory", "sqlite": "sqlite", "redis": "redis", "redis_cached": "redis",
         "postgres": "postgresql", "cluster": "redis-cluster"}  # fmt: skip


class Sink:
    """Where satchel's spans and metrics go in a test."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        tracer = TracerProvider()
        tracer.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        telemetry.use(tracer, MeterProvider(metric_readers=[self.reader]))

    def finished(self) -> list[Any]:
        return list(self.spans.get_finished_spans())

    def metrics(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


@pytest.fixture
def sink() -> Iterator[Sink]:
    made = Sink()
    yield made
    telemetry.use()


def app_on(store: Store) -> Flask:
    app = Flask("telemetry")
    app.config["SECRET_KEY"] = SECRET
    Satchel(app, store=store)

    @app.get("/set/<value>")
    def set_value(value: str) -> str:
        session["v"] = value
        return "ok"

    @app.get("/read")
    def read() -> str:
        return str(session.get("v"))

    return app


def test_spans_and_metrics_on_every_store(store: Store, request: pytest.FixtureRequest) -> None:
    sink = request.getfixturevalue("sink")
    app = app_on(store)
    client = app.test_client()
    client.get("/set/secret-value-123")
    client.get("/read")
    client.set_cookie("session", "forged")
    client.get("/read")
    spans = sink.finished()
    saves = [s for s in spans if s.name == "satchel save"]
    loads = [s for s in spans if s.name == "satchel load"]
    assert saves and loads
    kind = KINDS[request.node.callspec.params["store"]]
    assert saves[0].attributes["satchel.store"] == kind
    assert saves[0].attributes["satchel.outcome"] == "saved"
    assert saves[0].attributes["satchel.bytes"] > len("secret-value-123")
    assert loads[0].attributes["satchel.outcome"] == "found"
    for span in spans:  # never an ID, a reference or a value in any attribute
        for value in span.attributes.values():
            assert "secret-value-123" not in str(value)
            assert len(str(value)) < 40  # no 43-character ID, no 64-character reference
    metrics = sink.metrics()
    assert metrics["satchel.loads"][0].value == 1
    assert metrics["satchel.rejected_cookies"][0].value == 1
    assert metrics["satchel.creates"][0].attributes == {"satchel.store": kind}
    durations = {
        p.attributes["satchel.operation"]: p.count for p in metrics["satchel.store.duration"]
    }
    assert durations["save"] >= 1 and durations["load"] == 1


def test_a_merge_shows_as_a_conflict_then_its_retry(sink: Sink) -> None:
    store = MemoryStore()
    app = app_on(store)
    barrier = threading.Barrier(2)

    @app.get("/append/<item>")
    def append(item: str) -> str:
        items = session.setdefault("items", [])
        barrier.wait()  # both loaded before either saves
        items.append(item)
        return "ok"

    client = app.test_client()
    client.get("/set/x")
    cookie = client.get_cookie("session")
    assert cookie is not None
    threads = []
    for item in ("a", "b"):
        other = app.test_client()
        other.set_cookie("session", cookie.value)
        threads.append(threading.Thread(target=other.get, args=(f"/append/{item}",)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = [
        s.attributes["satchel.outcome"] for s in sink.finished() if s.name == "satchel save"
    ]
    assert "conflict" in outcomes  # the overlap happened, and its retry followed
    assert outcomes[-1] == "saved" and Satchel.stats(app)["merges"] == 1


def test_spans_on_the_asgi_middleware_and_quart(sink: Sink) -> None:
    from quart import Quart
    from quart import session as quart_session
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from satchel.asgi import SessionMiddleware
    from satchel.quart import Satchel as QuartSatchel

    async def write(request: Request) -> PlainTextResponse:
        request.session["v"] = 1
        return PlainTextResponse("ok")

    starlette = SessionMiddleware(
        Starlette(routes=[Route("/", write)]), secret_key=SECRET, store="memory://"
    )
    quart = Quart("telemetry")
    quart.config["SECRET_KEY"] = SECRET
    QuartSatchel(quart, store=MemoryStore())

    @quart.get("/")
    async def quart_write() -> str:
        quart_session["v"] = 1
        return "ok"

    async def visit(app: Any) -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/")
            await client.get("/")

    asyncio.run(visit(starlette))
    asyncio.run(visit(quart))
    names = [s.name for s in sink.finished()]
    assert names.count("satchel save") == 2 and names.count("satchel load") == 2


def test_nothing_is_recorded_without_an_sdk() -> None:
    telemetry.use()
    app = app_on(MemoryStore())
    manager = app.extensions["satchel"]
    assert manager.telemetry is not None and manager.telemetry.recording() is False
    app.test_client().get("/set/x")


def test_the_prometheus_collector_and_scrape(tmp_path: Any) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from satchel.cli import main
    from satchel.errors import ConfigError

    app = app_on(MemoryStore())
    client = app.test_client()
    client.get("/set/x")
    client.get("/read")
    registry = CollectorRegistry()
    registry.register(telemetry.PrometheusCollector(app.extensions["satchel"]))
    text = generate_latest(registry).decode()
    assert 'satchel_loads_total{store="memory"} 1.0' in text
    assert 'satchel_creates_total{store="memory"} 1.0' in text
    with pytest.raises(ConfigError):
        telemetry.PrometheusCollector(object())
    url = f"sqlite:///{tmp_path}/s.sqlite3"
    sqlite_app = app_on(url)  # type: ignore[arg-type]
    sqlite_app.test_client().get("/set/x")
    sqlite_app.extensions["satchel"].store.close()
    result = CliRunner().invoke(
        main, ["sessions", "--store", url, "stats", "--format", "prometheus"]
    )
    assert result.exit_code == 0, result.output
    assert 'satchel_live_sessions{store="sqlite"} 1\n' in result.output
    assert "# TYPE satchel_owners gauge" in result.output
