"""The service's Prometheus metrics, in a registry of its own (one per app, so that two apps in
one process, e.g. tests, do not collide in the global registry)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..trace import STAGES

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServiceMetrics:
    """requests by status, request latency, per-stage seconds, queue depth, images in flight,
    images per model batch."""

    def __init__(
        self, queue_depth: Callable[[], float], in_flight: Callable[[], float], cancelled: Callable[[], float] = lambda: 0.0
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("int_engine_requests", "Segmentation requests by HTTP status", ["status"], registry=r)
        self.latency = Histogram(
            "int_engine_request_seconds", "Time from request to response", buckets=LATENCY_BUCKETS, registry=r
        )
        self.stage_seconds = Counter(
            "int_engine_stage_seconds", "Seconds spent per INT stage (from the traces)", ["stage"], registry=r
        )
        self.batch_images = Histogram(
            "int_engine_batch_images", "Images carried by one model batch", ["call"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Counter("int_engine_batch_seconds", "Seconds in model batches", ["call"], registry=r)
        queue = Gauge("int_engine_queue_depth", "Requests waiting for admission", registry=r)
        queue.set_function(queue_depth)
        flight = Gauge("int_engine_images_in_flight", "Images held by the scheduler", registry=r)
        flight.set_function(in_flight)
        gone = Gauge("int_engine_requests_cancelled", "Requests taken out of the scheduler (timeout, client gone)", registry=r)
        gone.set_function(cancelled)
        for stage in STAGES:  # present from the start, so a scrape sees every series
            self.stage_seconds.labels(stage)

    def observe_batch(self, call: str, images: int, seconds: float) -> None:
        self.batch_images.labels(call).observe(images)
        self.batch_seconds.labels(call).inc(seconds)

    def observe_stages(self, seconds: dict[str, float]) -> None:
        for stage, s in seconds.items():
            self.stage_seconds.labels(stage).inc(s)
