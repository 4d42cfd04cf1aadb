"""Events of patients not (yet) registered: held for a grace period, then dead-lettered.

A reading, carer activity or care link can arrive before its patient's registration (the topics
are read independently), and junk or mistyped patient ids never get one. Each patient the support
core knows costs a permanent slot (~1 KB of state and checkpoint), so an event is applied only
once its patient is registered in the partition; until then it waits here:

* **released** in arrival order, just before the next batch's events, once the registration is in
  (:meth:`PendingEvents.release`);
* **dead-lettered** ``unknown_patient`` when it has waited longer than the grace period (receive
  time, UTC, against the pipeline's clock: :meth:`PendingEvents.expire`), or when the partition
  holds more than ``cap`` events (the patients held longest go first: :meth:`PendingEvents.evict`).

Memory is bounded by ``cap`` events per partition (~0.5 KB each); the store is part of the
partition checkpoint (:meth:`snapshot`/:meth:`restore`), so a restart neither loses nor repeats a
held event. Nothing here logs or raises on an event's content; patient ids stay in the held events
and in the dead letters' originals, never in a detail text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from monitor.contract.models import DOCUMENT_TYPES, type_of
from monitor.intake.canonical import CanonicalReading


@dataclass(slots=True)
class Held:
    """One held event: its document (a contract document or a :class:`CanonicalReading`), the
    receive time of its record (integer microseconds since the epoch, UTC) and its record's
    position (topic, offset) for the dead letter."""

    doc: Any
    received_us: int
    topic: str
    offset: int

    def original(self) -> bytes:
        """The event as JSON bytes (the dead letter's original)."""
        if type(self.doc) is CanonicalReading:
            return json.dumps(self.doc.to_json(), sort_keys=True).encode()
        return self.doc.model_dump_json().encode()

    def to_state(self) -> list[Any]:
        kind = "canonical" if type(self.doc) is CanonicalReading else type_of(self.doc)
        return [kind, self.original().decode(), self.received_us, self.topic, self.offset]

    @classmethod
    def from_state(cls, row: list[Any]) -> Held:
        kind, text, received_us, topic, offset = row
        if kind == "canonical":
            fields = json.loads(text)
            fields["measured_at"] = datetime.fromisoformat(fields["measured_at"])
            doc: Any = CanonicalReading(**fields)
        else:
            doc = DOCUMENT_TYPES[kind].model_validate_json(text)
        return cls(doc, int(received_us), str(topic), int(offset))


class PendingEvents:
    """Held events of one partition, by patient id, in arrival order (see the module docstring)."""

    def __init__(self) -> None:
        self._by_patient: dict[str, list[Held]] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @property
    def patients(self) -> int:
        """Distinct patient ids with held events."""
        return len(self._by_patient)

    def hold(self, patient_id: str, held: Held) -> None:
        self._by_patient.setdefault(patient_id, []).append(held)
        self.count += 1

    def release(self, known: Any) -> list[Held]:
        """Remove and return, in arrival order per patient, the events of patients in ``known``."""
        if not self.count:
            return []
        out: list[Held] = []
        for pid in [p for p in self._by_patient if p in known]:
            out.extend(self._by_patient.pop(pid))
        self.count -= len(out)
        out.sort(key=lambda h: h.received_us)  # stable: arrival order within one receive time
        return out

    def expire(self, before_us: int) -> list[Held]:
        """Remove and return the events received before ``before_us`` (epoch microseconds)."""
        if not self.count:
            return []
        out: list[Held] = []
        for pid in list(self._by_patient):
            events = self._by_patient[pid]
            if events[0].received_us >= before_us:
                continue
            keep = [h for h in events if h.received_us >= before_us]
            out.extend(h for h in events if h.received_us < before_us)
            if keep:
                self._by_patient[pid] = keep
            else:
                del self._by_patient[pid]
        self.count -= len(out)
        return out

    def evict(self, cap: int) -> list[Held]:
        """Remove and return events until at most ``cap`` are held, the patients held longest first
        (the first patient to be held loses its oldest event first)."""
        out: list[Held] = []
        if self.count <= cap:
            return out
        # one pass in holding order (next(iter(dict)) after deletions rescans the deleted slots:
        # quadratic, 56 s for 200,000 junk ids)
        for pid in list(self._by_patient):
            if self.count <= cap:
                break
            events = self._by_patient[pid]
            take = min(len(events), self.count - cap)
            out.extend(events[:take])
            if take == len(events):
                del self._by_patient[pid]
            else:
                self._by_patient[pid] = events[take:]
            self.count -= take
        return out

    def snapshot(self) -> list[Any]:
        """JSON-ready rows ``[patient_id, [held...]]`` in holding order."""
        return [[pid, [h.to_state() for h in events]] for pid, events in self._by_patient.items()]

    @classmethod
    def restore(cls, rows: list[Any]) -> PendingEvents:
        out = cls()
        for pid, events in rows:
            out._by_patient[str(pid)] = [Held.from_state(e) for e in events]
            out.count += len(events)
        return out


def detail_for(held: Held, why: str) -> str:
    """The dead letter's detail: why, and a hash of the event (which tells apart the dead letters
    of several events of one record, e.g. a gateway batch); never the patient id."""
    return f"{why}; event {hashlib.sha256(held.original()).hexdigest()[:16]}"
