"""coproduction-monitor: a streaming monitor for care coproduced with patients and informal carers."""

__version__ = "0.1.0"
