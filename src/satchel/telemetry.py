"""satchel in the monitoring an app already runs: OpenTelemetry spans and metrics, Prometheus.

**OpenTelemetry** (``pip install satchel[otel]``, the ``opentelemetry-api``
package): every session manager reports each store call as a span named
``satchel <operation>`` (``load``, ``save``, ``touch``, ``delete``, ``lock``,
``unlock``, ``list``, ``revoke``, and ``import`` for an old session's), with the
store's kind, the outcome (``found``/``missing``, a save's result such as
``saved`` or ``conflict``, the error's name) and the bytes moved as attributes,
never an ID, a reference or a value; a save answered ``conflict`` is followed by
its merge's retry. Metrics: every counter of :data:`satchel.signals.COUNTED` as
``satchel.<name>`` (an observable counter per manager) and a histogram of each
store call's duration, ``satchel.store.duration`` (seconds). Nothing is recorded
until the app configures the OpenTelemetry SDK, and without the API installed
none of this runs. :func:`use` gives satchel providers of its own (tests do).

**Prometheus** (``pip install satchel[prometheus]``): register
:class:`PrometheusCollector` in the app's registry for the same counters, and
``satchel sessions stats --format prometheus`` (or ``flask satchel stats``)
prints a one-off scrape of a store's live sessions.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ._ops import (
    Acquire,
    Delete,
    Fetch,
    Forget,
    Load,
    LoadClaim,
    Records,
    Release,
    Revoke,
    Save,
    SaveClaim,
    Touch,
)
from .errors import ConfigError
from .signals import COUNTED, Counters
from .stores.base import Record, SaveResult, size_of

try:
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - the API is the otel extra
    _metrics = _trace = None  # type: ignore[assignment]

__all__ = ["PrometheusCollector", "Telemetry", "prometheus_text", "store_kind", "use"]

#: The span name's operation for each kind of store call.
OPERATIONS: dict[type, str] = {
    Load: "load", Save: "save", Touch: "touch", Delete: "delete", Acquire: "lock",
    Release: "unlock", Records: "list", Revoke: "revoke", LoadClaim: "import",
    SaveClaim: "import", Fetch: "import", Forget: "import",
}  # fmt: skip

_providers: dict[str, Any] = {}
#: How long (seconds) the answer to "is an OpenTelemetry SDK configured?" is kept.
RECHECK_SECONDS = 1.0


def use(tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Report to these providers rather than OpenTelemetry's global ones (``None``: the
    global again). Call it before the app builds its session layer."""
    _providers["tracer"], _providers["meter"] = tracer_provider, meter_provider


def store_kind(store: Any) -> str:
    """The kind a span names: ``memory``, ``sqlite``, ``redis``, ``redis-cluster``,
    ``postgresql``, or the class name of any other store."""
    inner = getattr(store, "wrapped", store)
    name = type(inner).__name__
    kinds = {"MemoryStore": "memory", "SQLiteStore": "sqlite", "PostgresStore": "postgresql",
             "AsyncPostgresStore": "postgresql"}  # fmt: skip
    if name in ("RedisStore", "AsyncRedisStore"):
        return "redis-cluster" if getattr(inner, "moves_in_two_steps", False) else "redis"
    return kinds.get(name, name)


def _outcome(answer: Any) -> str:
    if isinstance(answer, SaveResult):
        return answer.name.lower()
    if isinstance(answer, Record):
        return "found"
    if answer is None:
        return "missing"
    if isinstance(answer, bool):
        return "ok" if answer else "refused"
    return "ok"


def _bytes(op: Any, answer: Any) -> int:
    if isinstance(op, Save):
        return size_of(op.change.set)
    if isinstance(answer, Record):
        return size_of(answer.fields)
    return 0


class Telemetry:
    """One manager's spans and metrics; made only when the OpenTelemetry API is installed."""

    def __init__(self, store: Any, counters: Counters) -> None:
        self.kind = store_kind(store)
        tracer_provider = _providers.get("tracer")
        meter_provider = _providers.get("meter")
        self._own_tracer = tracer_provider is not None
        self._recording = False
        self._recheck = 0.0
        self.tracer = (tracer_provider or _trace.get_tracer_provider()).get_tracer("satchel")
        meter = (meter_provider or _metrics.get_meter_provider()).get_meter("satchel")
        self.duration = meter.create_histogram(
            "satchel.store.duration", unit="s", description="How long each store call took."
        )
        attributes = {"satchel.store": self.kind}
        for name, description in COUNTED.items():
            meter.create_observable_counter(
                f"satchel.{name}",
                callbacks=[_observe(counters, name, attributes)],
                description=description,
            )

    @classmethod
    def create(cls, store: Any, counters: Counters) -> Telemetry | None:
        """A manager's telemetry, or ``None`` without the OpenTelemetry API."""
        if _trace is None:
            return None
        return cls(store, counters)

    def recording(self) -> bool:
        """Whether spans go anywhere: an SDK is configured (or :func:`use` gave one).

        Asked before every store call, so the answer is kept for a second (asking
        OpenTelemetry costs microseconds): an SDK configured after the app started
        is seen within a second.
        """
        if self._own_tracer:
            return True
        now = time.monotonic()
        if now >= self._recheck:
            self._recheck = now + RECHECK_SECONDS
            provider = _trace.get_tracer_provider()
            self._recording = not isinstance(provider, _trace.ProxyTracerProvider)
        return self._recording

    @contextmanager
    def _span(self, operation: str) -> Iterator[dict[str, Any]]:
        """A span for one store call and its duration; the caller fills in the outcome."""
        attributes: dict[str, Any] = {"satchel.store": self.kind, "satchel.operation": operation}
        with self.tracer.start_as_current_span(f"satchel {operation}") as span:
            start = time.perf_counter()
            try:
                yield attributes
            except Exception as exc:
                attributes["satchel.outcome"] = type(exc).__name__
                raise
            finally:
                self.duration.record(time.perf_counter() - start, {
                    "satchel.store": self.kind, "satchel.operation": operation,
                })  # fmt: skip
                span.set_attributes(attributes)

    def call(self, op: Any, perform: Callable[[Any], Any]) -> Any:
        """``perform(op)`` inside a span, its duration recorded (a pause: no span)."""
        operation = OPERATIONS.get(type(op))
        if operation is None:
            return perform(op)
        with self._span(operation) as attributes:
            answer = perform(op)
            _answered(attributes, op, answer)
            return answer

    async def call_async(self, op: Any, perform: Callable[[Any], Any]) -> Any:
        """As :meth:`call`, awaiting ``perform(op)``."""
        operation = OPERATIONS.get(type(op))
        if operation is None:
            return await perform(op)
        with self._span(operation) as attributes:
            answer = await perform(op)
            _answered(attributes, op, answer)
            return answer


def _answered(attributes: dict[str, Any], op: Any, answer: Any) -> None:
    attributes["satchel.outcome"] = _outcome(answer)
    attributes["satchel.bytes"] = _bytes(op, answer)


def _observe(counters: Counters, name: str, attributes: dict[str, str]) -> Callable[..., Any]:
    def observe(_options: Any) -> Iterator[Any]:
        yield _metrics.Observation(getattr(counters, name), attributes)

    return observe


class PrometheusCollector:
    """A ``prometheus_client`` collector of a manager's counters (``Satchel.stats``):
    ``satchel_<name>_total`` for each, labelled with the store's kind::

        from prometheus_client import REGISTRY
        REGISTRY.register(PrometheusCollector(app.extensions["satchel"]))

    ``manager`` is the app's session manager (Flask and Quart:
    ``app.extensions["satchel"]``; ASGI: the middleware's ``manager``).
    """

    def __init__(self, manager: Any) -> None:
        if not isinstance(getattr(manager, "counters", None), Counters):
            raise ConfigError(f"{manager!r} is not a satchel session manager")
        self.manager = manager

    def collect(self) -> Iterator[Any]:
        """One counter family per satchel counter (prometheus_client calls this)."""
        from prometheus_client.core import CounterMetricFamily

        kind = store_kind(self.manager.store)
        for name, value in self.manager.counters.snapshot().items():
            family = CounterMetricFamily(f"satchel_{name}", COUNTED[name], labels=["store"])
            family.add_metric([kind], value)
            yield family


def prometheus_text(gauges: dict[str, int], kind: str) -> str:
    """A store's figures (``stats``: live sessions, owners) in Prometheus' text format."""
    lines = []
    for name, value in gauges.items():
        metric = "satchel_" + re.sub(r"\W", "_", name)
        lines += [
            f"# HELP {metric} {name.replace('_', ' ')} in the store, at this scrape",
            f"# TYPE {metric} gauge",
            f'{metric}{{store="{kind}"}} {value}',
        ]
    return "\n".join(lines) + "\n"
