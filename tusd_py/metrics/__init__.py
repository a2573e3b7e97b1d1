"""Monitoring: the core's figures (core.ports.Meter) and their Prometheus exposition.

- `prometheus.py`: PrometheusMeter, one CollectorRegistry per application, the series of
  GET /metrics, the scrape-time readings (cache counters, database pool) and the
  multiprocess mode of `serve --workers N`;
- `instrumented.py`: thin wrappers that time the store's calls and the lock waits, so the
  core's own code carries only the events it alone can see.

docs/operations.md lists every series with the alerts we suggest.
"""
