"""Observability: request ids, structured logs and Prometheus metrics.

Low in the layers (below ``vault.audit``), so the web views, the refresh engine and the audit
trail can all report into it; it reads the database only for the scrape-time gauges.
"""
