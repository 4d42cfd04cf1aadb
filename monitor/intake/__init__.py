"""Intake: everything that turns what gateways, carers' apps and files send into checked documents.

Here live the native contract decoder (``native``: pydantic, reason codes), the canonical reading
and its validation (``canonical``), the one table of intake rules shared by the three native reading
parsers (``rules``: plausibility ranges, the event-time limits and the scanner's lookup tables), the
msgspec fast decoder of every native document type (``fastpath.fast_decode``), the columnar scan of a
whole readings fetch (``columnar`` driving the numba kernel ``scan_kernel``), the foreign formats
(``fhir``, ``nightscout``, ``openmhealth``, detected by ``formats``), the decoding of a whole fetch
(``fetch``) and the HTTP intake (``http``, ``serve``). Nothing here raises on bad input or logs a
payload. It may import :mod:`monitor.contract`, :mod:`monitor.core.jit`, :mod:`monitor.core.idhash` (numba
helpers), :mod:`monitor.core.timeutil` and :class:`monitor.core.batch.ReadingColumnsView` (the base
class of a slice of reading columns), and for the HTTP intake :mod:`monitor.settings`, :mod:`monitor.auth` and
:mod:`monitor.kafka`, plus :mod:`monitor.alerts.rules` lazily for threshold ranges; never the
pipeline, the stream worker, the operators or the support core's state.
"""
