"""Pure numerical core of the monitor: numba kernels and their plain reference implementations.

Nothing in this package does I/O, validation of user input or talks to Kafka; public wrappers
(e.g. :mod:`monitor.equity`) validate, convert to float64 arrays and call the kernels here.
"""
