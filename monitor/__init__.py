"""coproduction-monitor: a streaming monitor for care coproduced with patients and informal carers.

Packages, lowest first (each imports only from those before it): ``core`` (numba kernels, no I/O)
and ``contract`` (the event models); ``intake`` (decoders, ``decode_fetch``); ``equity`` and
``latency``; ``alerts`` and ``carers`` (pure logic); ``operators``, ``pending`` and ``pipeline``
(the driver-agnostic pipeline); the two drivers ``replay`` (offline) and ``stream`` (the faust
worker, with ``kafka`` and ``metrics``); ``simulate``, ``report``, ``demo`` and ``cli`` on top.
"""

__version__ = "0.1.0"
