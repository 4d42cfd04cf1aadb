"""The single place that fixes the JIT policy of every numba kernel in the monitor.

Every kernel is compiled with the same options so that behaviour is uniform across the code base:

- ``cache=True``: compiled machine code is cached on disk next to the module, so a fresh process
  (a worker restart, a test run) does not pay the compilation again;
- ``error_model="numpy"``: division by zero gives ``inf``/``nan`` as in NumPy instead of raising
  ``ZeroDivisionError``; kernels signal "undefined" with ``nan`` and the public wrappers turn it
  into ``None``;
- ``nogil=True``: kernels release the GIL so several batches can be processed by threads;
- ``fastmath=False``: IEEE semantics are kept, results must match reference implementations to
  floating-point precision.

Usage::

    from monitor.core.jit import kernel

    @kernel
    def total(x):  # lazily compiled on first call, per argument types
        ...

    @kernel("float64(float64[::1])")  # eager compilation for a signature
    def total_eager(x):
        ...

    @kernel(parallel=True)  # override or add options for one kernel
    def total_parallel(x):
        ...

Setting the environment variable ``NUMBA_DISABLE_JIT=1`` runs every kernel as plain Python
(useful for coverage and debugging).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numba

__all__ = ["JIT_OPTIONS", "kernel"]

F = TypeVar("F", bound=Callable[..., Any])

#: Options applied to every kernel; a kernel may override one with keyword arguments.
JIT_OPTIONS: dict[str, Any] = {
    "cache": True,
    "error_model": "numpy",
    "nogil": True,
    "fastmath": False,
}


def kernel(*args: Any, **overrides: Any) -> Any:
    """Compile a function in nopython mode with the monitor's JIT policy.

    Works as a bare decorator (``@kernel``), with signatures (``@kernel("f8(f8[::1])")``) and
    with option overrides (``@kernel(parallel=True)``). Returns a numba dispatcher, or a decorator
    producing one.
    """
    options = {**JIT_OPTIONS, **overrides}
    if len(args) == 1 and callable(args[0]) and not isinstance(args[0], str | list | tuple):
        return numba.njit(**options)(args[0])
    return numba.njit(*args, **options)
