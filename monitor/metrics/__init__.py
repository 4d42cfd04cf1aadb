"""Prometheus metrics: custom collectors that read the pipeline's state at scrape time."""
