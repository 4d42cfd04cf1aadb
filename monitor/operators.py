"""The stateful operators of one input partition, behind one protocol.

In the spirit of bytewax's stateful operators, each operator owns one piece of a partition's state
and is driven by the pipeline in two ways only: :meth:`Operator.on_batch` with the partition's next
run of decoded documents (:class:`Documents`, in arrival order) and :meth:`Operator.on_tick` at an
evaluation time. What one operator tells the next travels in the :class:`Context` (the flag bits of
the latest evaluation, the alerts to publish), never through a callback. :meth:`Operator.snapshot`
and :meth:`Operator.restore` give the operator's bytes for the partition's checkpoint envelope
(:class:`monitor.pipeline.PartitionState`).

Three operators, in the order the pipeline runs them:

* :class:`SupportOperator` - the numba support core (coverage, support flags, equity statistics);
* :class:`CarersOperator` - the carers' ledger and network fragility (its flags are ORed into the
  support core's);
* :class:`AlertOperator` - the clinical alert engine (reads the flags of the latest evaluation for
  compound risk).

Time: evaluation times are epoch seconds (UTC) or aware UTC datetimes. Nothing here logs patient
identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from monitor.alerts.engine import AlertConfig, AlertEngine, AlertEvent
from monitor.carers.state import CarersState
from monitor.contract.models import Patient
from monitor.core.batch import batch_from_documents
from monitor.core.state import SupportConfig, SupportState
from monitor.core.summary import FLAG_NAMES
from monitor.intake.canonical import CanonicalReading
from monitor.intake.columnar import ReadingSlice
from monitor.intake.fetch import Document

CARER_FLAG_BITS = {"network_lost": 8, "single_point_of_failure": 16}
"""Flag bits from the carers' view (monitor.carers), above the support core's bits."""
FLAG_BITS: list[tuple[int, str]] = sorted(
    [(int(bit), name) for bit, name in FLAG_NAMES] + [(bit, name) for name, bit in CARER_FLAG_BITS.items()],
    key=lambda b: b[1])
"""Every flag (bit, name) a patient can carry, sorted by name."""


def flag_names(bits: int) -> list[str]:
    """The names of the flags set in ``bits``, sorted."""
    return [name for bit, name in FLAG_BITS if bits & bit]


NAMES_OF_BITS: tuple[tuple[str, ...], ...] = tuple(
    tuple(flag_names(b)) for b in range(2 * max(bit for bit, _ in FLAG_BITS)))
"""``flag_names`` of every bit pattern (index: the bits), built once: the alert engine looks up a
patient's flags at every tick for every patient with a calm open episode (343,000 lookups in a
2,000-patient, 30-day replay), and building the list each time was a third of the tick."""


@dataclass(slots=True)
class Documents:
    """One partition's run of accepted documents between two evaluations, in arrival order
    (``items``), and the same split in two lanes: the readings (single readings and columnar
    slices) and the other documents (registry entries, carers' activities, care-network changes)."""

    items: list[Document]
    readings: list[CanonicalReading | ReadingSlice] = field(default_factory=list)
    others: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        for d in self.items:
            if type(d) is ReadingSlice or type(d) is CanonicalReading:
                self.readings.append(d)
            else:
                self.others.append(d)

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def n_readings(self) -> int:
        return sum(len(r) if type(r) is ReadingSlice else 1 for r in self.readings)


@dataclass(slots=True)
class Context:
    """What the operators of one partition share while one batch or one tick runs.

    ``bits``: per patient slot of the support core, every flag bit of the latest evaluation
    (registered patients only); ``flags``: the same as patient id -> flag names, for patients with
    any flag (what the alert engine reads for compound risk). Both change only at a tick, so a
    batch's alerts never depend on which later events share the batch. ``alerts`` collects the
    alert events to publish; ``duplicates`` the re-delivered events the support core skipped.
    """

    bits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    flags: dict[str, list[str]] = field(default_factory=dict)
    alerts: list[AlertEvent] = field(default_factory=list)
    duplicates: int = 0


class Operator(Protocol):
    """One piece of a partition's state. ``name`` keys its bytes in the checkpoint envelope."""

    name: str

    def on_batch(self, docs: Documents, ctx: Context) -> None:
        """Apply the partition's next run of documents (arrival order)."""

    def on_tick(self, t: int, ctx: Context) -> None:
        """Evaluate as of ``t`` (epoch seconds, UTC; never earlier than the events applied)."""

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot's (``ValueError`` subclasses on bad bytes)."""


class SupportOperator:
    """The support core (:class:`monitor.core.state.SupportState`). At a tick it evaluates the
    support flags of every registered patient into ``ctx.bits``."""

    name = "support"

    def __init__(self, config: SupportConfig | None = None) -> None:
        self.state = SupportState(config)

    def on_batch(self, docs: Documents, ctx: Context) -> None:
        outcome = self.state.apply(batch_from_documents(self.state, docs.items))
        ctx.duplicates += int(outcome.get("duplicates", 0))

    def on_tick(self, t: int, ctx: Context) -> None:
        s = self.state
        n = s.n_patients
        ctx.bits = s.evaluate(t).flags[:n].astype(np.uint8) * self.registered_mask()

    def registered_mask(self) -> np.ndarray:
        """Per patient slot, 1 if registered (uint8)."""
        return self.state.registered.astype(np.uint8)

    def snapshot(self) -> bytes:
        return self.state.snapshot()

    def restore(self, data: bytes) -> None:
        self.state = SupportState.restore(data)


class CarersOperator:
    """The carers' ledger and network fragility (:class:`monitor.carers.state.CarersState`). At a
    tick it ORs the carers' flags (``network_lost``, ``single_point_of_failure``) into
    ``ctx.bits`` of the support core's registered slots; it must run after :class:`SupportOperator`,
    whose slots it reads (``slot_of``)."""

    name = "carers"

    def __init__(self, support: SupportOperator) -> None:
        self.state = CarersState()
        self._support = support

    def on_batch(self, docs: Documents, ctx: Context) -> None:
        if docs.others:
            self.state.apply(docs.others)

    def on_tick(self, t: int, ctx: Context) -> None:
        if self.state.latest_event is None:
            return
        sup = self._support.state
        index, n = sup.patient_index, sup.n_patients
        slots: list[int] = []
        bits: list[int] = []
        for pid, names in self.state.patient_flags(datetime.fromtimestamp(t, UTC)).items():
            slot = index.get(pid)
            if slot is not None and slot < n:
                slots.append(slot)
                bits.append(sum(CARER_FLAG_BITS[name] for name in names))
        if slots:  # one vector OR (numpy scalar updates cost ~1 us each): each patient once
            at = np.array(slots, dtype=np.intp)
            ctx.bits[at] |= np.array(bits, dtype=np.uint8) * self._support.registered_mask()[at]

    def snapshot(self) -> bytes:
        return self.state.snapshot()

    def restore(self, data: bytes) -> None:
        self.state = CarersState.restore(data)


class AlertOperator:
    """The clinical alert engine (:class:`monitor.alerts.engine.AlertEngine`): readings in order per
    (patient, kind), timers (missed readings, re-notification, escalation) at a tick. Compound
    risk reads ``ctx.flags``, the flags of the latest evaluation."""

    name = "alerts"

    def __init__(self, config: AlertConfig | None = None) -> None:
        self.engine = AlertEngine(config)

    def register(self, patient: Patient) -> None:
        """A registry entry: the patient's own thresholds (before any of its readings is judged)."""
        self.engine.on_patient(patient)

    def on_batch(self, docs: Documents, ctx: Context) -> None:
        if docs.readings:
            ctx.alerts.extend(self.engine.on_readings(docs.readings, ctx.flags))

    def on_tick(self, t: int, ctx: Context) -> None:
        ctx.alerts.extend(self.engine.tick(datetime.fromtimestamp(t, UTC), ctx.flags))

    def snapshot(self) -> bytes:
        return self.engine.snapshot()

    def restore(self, data: bytes) -> None:
        self.engine.restore(data)


__all__ = ["CARER_FLAG_BITS", "FLAG_BITS", "NAMES_OF_BITS", "AlertOperator", "CarersOperator", "Context",
           "Documents", "Operator", "SupportOperator", "flag_names"]
