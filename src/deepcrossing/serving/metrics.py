"""Prometheus metrics of one app instance (its own ``CollectorRegistry``: no process-global state).

With several worker processes (``deepcrossing serve --workers N``), the serve command sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start; prometheus_client then keeps every value in files
there, and :meth:`ServiceMetrics.render` sums the counters and histograms of all workers (gauges carry a
``pid`` label per live worker), whichever worker answers the scrape.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# Latency buckets in seconds, dense around the 1-10 ms the ranking path takes.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5)


class ServiceMetrics:
    """Request counts, latency histograms, model and store versions.

    Example:
        >>> m = ServiceMetrics()
        >>> m.observe("/recommend/{user_id}", "GET", 200, 0.002)
        >>> b"deepcrossing_requests_total" in m.render()
        True
    """

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self._model_labels: tuple[str, str] | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("deepcrossing_requests", "HTTP requests by route, method and status",
                                ("route", "method", "status"), registry=self.registry)
        self.latency = Histogram("deepcrossing_request_latency_seconds", "HTTP request latency by route",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.model_info = Gauge("deepcrossing_model_info", "The model being served (value 1)",
                                ("model_dir", "model_version"), registry=self.registry,
                                multiprocess_mode="liveall")
        self.model_loads = Counter("deepcrossing_model_loads", "Models loaded (start and reloads)",
                                   registry=self.registry)
        self.store_version = Gauge("deepcrossing_store_version", "Feature store version being served (0: none)",
                                   registry=self.registry, multiprocess_mode="liveall")
        self.store_errors = Counter("deepcrossing_store_errors", "Store calls that failed (503 answers)",
                                    registry=self.registry)
        self.candidates = Histogram("deepcrossing_candidates_scored", "Candidates scored per request",
                                    buckets=(10, 50, 100, 200, 400, 800, 1600, 3200, 5000, 10000),
                                    registry=self.registry)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request and record its latency."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def set_model(self, model_dir: str, model_version: str) -> None:
        """Point the model-info gauge at the model now served."""
        if self.multiprocess_dir is None:
            self.model_info.clear()
        elif self._model_labels is not None:  # the file keeps a cleared sample: zero it instead
            self.model_info.labels(*self._model_labels).set(0)
        self._model_labels = (model_dir, model_version)
        self.model_info.labels(model_dir, model_version).set(1)
        self.model_loads.inc()

    def render(self) -> bytes:
        """The text exposition format (all workers' values in multiprocess mode)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def worker_exit(self) -> None:
        """Drop this process's live gauges from the multiprocess files (call when a worker stops)."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]
