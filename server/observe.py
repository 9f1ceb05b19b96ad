"""What the server tells operators: Prometheus metrics (`GET /metrics`) and one JSON log line per
request.

    metrics = Metrics(store)              # its own CollectorRegistry (several apps per process in tests)
    metrics.step(tenant_id, seconds)      # after a committed evaluation step
    app.add_middleware(AccessLog, metrics=metrics)

Metrics: `emirax_requests_total{method,route,status}`, `emirax_request_seconds{route}`,
`emirax_steps_total{tenant}`, `emirax_step_seconds`, `emirax_commit_group_steps` (the steps that
shared a transaction, server/committer.py), and `emirax_queue_depth{tenant}` (invocations
queued, read from the store when scraped, so every server process reports the same truth).
Routes are labelled by their template (`/v1/workflows/{workflow_id}`), never by raw path, so
label cardinality stays bounded.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

__all__ = ["AccessLog", "JsonFormatter", "Metrics"]

access = logging.getLogger("emirax.server.access")


class _QueueDepth:
    def __init__(self, store: Any) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("emirax_queue_depth", "Invocations queued, per tenant",
                                   labels=["tenant"])
        for tenant_id, count in sorted(self.store.queue_depths().items()):
            family.add_metric([str(tenant_id)], count)
        yield family


class Metrics:
    def __init__(self, store: Any) -> None:
        self.registry = CollectorRegistry()
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.requests = Counter("emirax_requests_total", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("emirax_request_seconds", "HTTP request latency", ["route"],
                                 registry=self.registry)
        self.steps = Counter("emirax_steps_total", "Committed evaluation steps", ["tenant"],
                             registry=self.registry)
        self.step_latency = Histogram("emirax_step_seconds", "Evaluation step latency (engine and store)",
                                      registry=self.registry)
        self.invocations = Counter("emirax_invocations_total",
                                   "Invocations leased and settled, by outcome",
                                   ["tenant", "outcome"], registry=self.registry)
        self.groups = Histogram("emirax_commit_group_steps",
                                "Steps per transaction of the committer (group commit)",
                                buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.registry.register(_QueueDepth(store))

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count and time one request (its labelled series are looked up once, then kept)."""
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (self.requests.labels(method, route, str(status)),
                                          self.latency.labels(route))
        series[0].inc()
        series[1].observe(seconds)

    def step(self, tenant_id: int, seconds: float) -> None:
        self.steps.labels(str(tenant_id)).inc()
        self.step_latency.observe(seconds)

    def steps_of(self, tenant_id: int, durations: list[float]) -> None:
        """After a commit: the engine steps of one transaction."""
        for seconds in durations:
            self.step(tenant_id, seconds)

    def invocation(self, tenant_id: int, outcome: str, n: int = 1) -> None:
        if n:
            self.invocations.labels(str(tenant_id), outcome).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class AccessLog:
    """Counts and times every request, and logs it as one JSON line."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.request(scope["method"], route, status, seconds)
            access.info("request", extra={"fields": {
                "method": scope["method"], "path": scope["path"], "route": route,
                "status": status, "ms": round(seconds * 1000, 2)}})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage(),
               **getattr(record, "fields", {})}
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)
