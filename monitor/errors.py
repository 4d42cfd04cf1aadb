"""The root exception type of coproduction-monitor; each sub-package adds small marker subclasses."""


class MonitorError(Exception):
    """Base class of every error this package raises on purpose."""
