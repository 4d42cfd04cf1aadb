"""The pure numerical core: numba kernels, the arrays they own, and plain references of both.

Here live the per-patient support state (:mod:`~monitor.core.state`: configuration, the
``SupportState`` logic object and its snapshot) with its kernels (:mod:`~monitor.core.support`),
the columnar batch it applies (:mod:`~monitor.core.batch`), the metrics and exactly mergeable
summaries it answers with (:mod:`~monitor.core.summary`), the event-id hash
(:mod:`~monitor.core.idhash`), the time conventions every package may share (epoch integers in
UTC, UTC days: :mod:`~monitor.core.timeutil`), the equity kernels (:mod:`~monitor.core.equity_kernels`),
the JIT policy (:mod:`~monitor.core.jit`) and the slow, obviously correct references the tests
and benchmarks compare with (:mod:`~monitor.core.reference`, :mod:`~monitor.core.equity_reference`).
Nothing here does I/O, logs, validates user input or knows Kafka, faust or pydantic; public
wrappers above it (e.g. :mod:`monitor.equity`, :mod:`monitor.pipeline`) validate and convert.
Modules here may import only the standard library, numpy, numba (with llvmlite for intrinsics),
:mod:`monitor.errors` and each other - never a package above, not even lazily.
"""
