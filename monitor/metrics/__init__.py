"""Prometheus metrics: custom collectors that read the pipeline's state at scrape time.

``collectors`` exposes counts, lags, alerts and the merged equity snapshot; ``groups`` the
per-group coverage table (cached between scrapes). Labels are group names and reason codes,
never a patient or carer identifier. It may import :mod:`monitor.pipeline` (read-only), the
packages below it and ``prometheus_client``; never faust or :mod:`monitor.stream`, which
registers these collectors.
"""
