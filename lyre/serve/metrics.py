"""Prometheus metrics of one app, served at GET /metrics in the text exposition format.

    lyre_http_requests_total{route, method, status}        requests answered
    lyre_http_request_duration_seconds{route, method}      until the last byte (streams too)
    lyre_time_to_first_token_seconds{route}                request arrival -> first new token
    lyre_prompt_tokens_total                               prompt tokens of accepted requests
    lyre_generated_tokens_total, lyre_decode_steps_total   from the scheduler
    lyre_queue_depth, lyre_active_rows                     now, from the scheduler

A classifier's app has no scheduler (and no first token): its metrics are the requests' and
lyre_prompt_tokens_total, the tokens the classifier read.

Each app has its own CollectorRegistry (never prometheus_client's global one), so several apps
in one process (tests, notebooks) keep separate counts and never clash over metric names. The
scheduler's numbers are read when /metrics is scraped, so the worker thread does no extra work.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Whole requests run from milliseconds (/health) to minutes (long streamed answers).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _SchedulerCollector:
    """Reads the scheduler's counters at scrape time."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler

    def collect(self):
        st = self.scheduler.stats()
        yield GaugeMetricFamily("lyre_queue_depth", "Requests waiting for free rows", value=st["queued"])
        yield GaugeMetricFamily("lyre_active_rows", "Rows (choices) being generated", value=st["active"])
        yield GaugeMetricFamily("lyre_max_batch", "Rows decoded together at most", value=st["max_batch"])
        yield CounterMetricFamily("lyre_generated_tokens", "Tokens generated since start",
                                  value=st["generated_tokens"])
        yield CounterMetricFamily("lyre_decode_steps", "Batched decode steps since start",
                                  value=st["steps"])


class ServeMetrics:
    def __init__(self, scheduler=None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lyre_http_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("lyre_http_request_duration_seconds",
                                 "Time from request to the last byte of its response",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("lyre_time_to_first_token_seconds",
                              "Time from request to its first generated token", ["route"],
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter("lyre_prompt_tokens", "Prompt tokens of accepted requests",
                                     registry=self.registry)
        if scheduler is not None:
            self.registry.register(_SchedulerCollector(scheduler))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
