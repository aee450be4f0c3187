"""Prometheus text exposition of the staging service's own figures."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from aiohttp import web

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Counters and a request-latency histogram (per process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes_moved = 0
        self.jobs_finished: dict[str, int] = defaultdict(int)
        self.webhook_attempts: dict[str, int] = defaultdict(int)
        self.site_errors: dict[tuple[str, str], int] = defaultdict(int)
        self.hist: dict[tuple[str, str], list[int]] = {}
        self.hist_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.hist_count: dict[tuple[str, str], int] = defaultdict(int)
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route)
        with self.lock:
            counts = self.hist.setdefault(key, [0] * len(BUCKETS))
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    counts[i] += 1
            self.hist_sum[key] += seconds
            self.hist_count[key] += 1
            self.requests[(method, route, status)] += 1

    def job_finished(self, status: str, bytes_done: int, sites: list[str]) -> None:
        with self.lock:
            self.jobs_finished[status] += 1
            self.bytes_moved += int(bytes_done or 0)
            if status == "failed":
                for s in sites:
                    self.site_errors[(s, "copy")] += 1

    def webhook_attempt(self, result: str) -> None:
        with self.lock:
            self.webhook_attempts[result] += 1

    def site_error(self, site: str, op: str) -> None:
        with self.lock:
            self.site_errors[(site, op)] += 1

    def render(self, job_counts: dict[str, int], catalogue_entries: int) -> str:
        out: list[str] = []
        out += ["# HELP fedgate_jobs Copy jobs in the state store by status.",
                "# TYPE fedgate_jobs gauge"]
        for st in ("queued", "running", "succeeded", "failed", "cancelled"):
            out.append(f'fedgate_jobs{{status="{st}"}} {job_counts.get(st, 0)}')
        with self.lock:
            out += ["# HELP fedgate_jobs_finished_total Jobs finished by this process.",
                    "# TYPE fedgate_jobs_finished_total counter"]
            for st, n in sorted(self.jobs_finished.items()):
                out.append(f'fedgate_jobs_finished_total{{status="{st}"}} {n}')
            out += ["# HELP fedgate_bytes_moved_total Bytes copied by this process's jobs.",
                    "# TYPE fedgate_bytes_moved_total counter",
                    f"fedgate_bytes_moved_total {self.bytes_moved}",
                    "# HELP fedgate_webhook_attempts_total Webhook delivery attempts.",
                    "# TYPE fedgate_webhook_attempts_total counter"]
            for r in ("delivered", "failed"):
                out.append(f'fedgate_webhook_attempts_total{{result="{r}"}} '
                           f"{self.webhook_attempts.get(r, 0)}")
            out += ["# HELP fedgate_site_errors_total Failed crawls and copies per site.",
                    "# TYPE fedgate_site_errors_total counter"]
            for (site, op), n in sorted(self.site_errors.items()):
                out.append(f'fedgate_site_errors_total{{site="{_esc(site)}",op="{op}"}} {n}')
            out += ["# HELP fedgate_catalogue_entries Entries in the catalogue.",
                    "# TYPE fedgate_catalogue_entries gauge",
                    f"fedgate_catalogue_entries {catalogue_entries}",
                    "# HELP fedgate_http_requests_total Requests answered.",
                    "# TYPE fedgate_http_requests_total counter"]
            for (m, route, code), n in sorted(self.requests.items()):
                out.append(f'fedgate_http_requests_total{{method="{m}",route="{_esc(route)}",'
                           f'status="{code}"}} {n}')
            out += ["# HELP fedgate_http_request_duration_seconds Request latency.",
                    "# TYPE fedgate_http_request_duration_seconds histogram"]
            for (m, route), counts in sorted(self.hist.items()):
                lab = f'method="{m}",route="{_esc(route)}"'
                for b, c in zip(BUCKETS, counts, strict=True):
                    out.append(f'fedgate_http_request_duration_seconds_bucket{{{lab},le="{b}"}}'
                               f" {c}")
                cnt = self.hist_count[(m, route)]
                out.append(f'fedgate_http_request_duration_seconds_bucket{{{lab},le="+Inf"}} '
                           f"{cnt}")
                out.append(f"fedgate_http_request_duration_seconds_sum{{{lab}}} "
                           f"{self.hist_sum[(m, route)]:.6f}")
                out.append(f"fedgate_http_request_duration_seconds_count{{{lab}}} {cnt}")
        return "\n".join(out) + "\n"


def metrics_middleware(metrics: Metrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                         ) -> web.StreamResponse:
        t0 = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        finally:
            info = request.match_info.route.resource
            route = info.canonical if info is not None else "unmatched"
            metrics.observe_request(request.method, route, status, time.perf_counter() - t0)
    return middleware
