"""One partition's carers' state (ledger + fragility + registry), replay helpers and the file ledger.

:class:`CarersState` is what a pipeline partition keeps next to the support state: it is fed the
same validated contract documents (``CarerActivity``, ``CareLink``, ``Patient``; anything else is
ignored), answers per-partition questions and snapshots to versioned bytes. Questions whose answer
spans partitions (a carer's week total, overload, participation by group) are answered at the
merge point from per-partition rows / summaries: :func:`monitor.carers.ledger.merge_rows`,
:func:`monitor.carers.ledger.notifications_from_rows`,
:meth:`monitor.carers.participation.ParticipationSummary.merge`.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import islice
from os import PathLike
from typing import Any

from monitor.carers._common import (
    CarersInputError,
    day_of_instant,
    pack_snapshot,
    parse_week,
    unpack_snapshot,
    week_index_of_day,
    week_label,
)
from monitor.carers.fragility import FragilityState
from monitor.carers.ledger import (
    DEFAULT_RETENTION_WEEKS,
    OVERLOAD_MINUTES,
    CarerLedger,
    CarerNotification,
    to_csv,
    to_json,
)
from monitor.carers.participation import ParticipationSummary, participation_summary
from monitor.contract.models import CareLink, CarerActivity, Patient
from monitor.core.batch import patient_record
from monitor.core.state import SnapshotError

__all__ = [
    "CarersConfig",
    "CarersState",
    "ledger_from_file",
    "ledger_rows_from_lines",
    "replay_carers",
    "replay_carers_state",
]

_MAGIC = b"CMCARERS"
_VERSION = 1
_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class CarersConfig:
    """Thresholds and windows (defaults: 8 weeks of ledger, 35 h overload, 28-day window,
    14-day network loss, 90 % single point of failure)."""

    retention_weeks: int = DEFAULT_RETENTION_WEEKS
    overload_minutes: float = OVERLOAD_MINUTES
    window_days: int = 28
    lost_days: int = 14
    spof_percent: int = 90


class CarersState:
    """The carers' side of one partition. See the module docstring and the submodules."""

    def __init__(self, config: CarersConfig | None = None) -> None:
        self.config = config or CarersConfig()
        c = self.config
        self.ledger = CarerLedger(c.retention_weeks, c.overload_minutes)
        self.fragility = FragilityState(c.window_days, c.lost_days, c.spof_percent)
        self.patients: dict[str, Patient] = {}
        self._versions: dict[str, tuple[int, int]] = {}
        self.latest_event: datetime | None = None

    def apply(self, docs: Iterable[Any]) -> dict[str, int]:
        """Apply a batch of validated documents; returns the ledger's and fragility's counts
        (``ledger_*``, ``fragility_*``) and ``patients`` (registry upserts seen)."""
        batch = list(docs)
        n_patients = 0
        for d in batch:
            if isinstance(d, Patient):
                n_patients += 1
                # the support core's rule: the larger (registered_at, content hash) wins
                version = patient_record(0, d).version
                if version > self._versions.get(d.patient_id, (-(2**63), 0)):
                    self._versions[d.patient_id] = version
                    self.patients[d.patient_id] = d
            elif isinstance(d, CarerActivity | CareLink):
                t = d.started_at if isinstance(d, CarerActivity) else d.effective_at
                if self.latest_event is None or t > self.latest_event:
                    self.latest_event = t
        out = {f"ledger_{k}": v for k, v in self.ledger.apply(batch).items()}
        out.update({f"fragility_{k}": v for k, v in self.fragility.apply(batch).items()})
        out["patients"] = n_patients
        return out

    def patient_flags(self, as_of: datetime) -> dict[str, list[str]]:
        """``{patient_id: ["network_lost", "single_point_of_failure"] (subset, sorted)}``.

        Incremental (:meth:`~monitor.carers.fragility.FragilityState.flags`): cheap enough to ask
        at every tick; the cost follows the changes since the last call, not the patients."""
        return self.fragility.flags(as_of)

    def overloaded_carers(self, as_of: datetime) -> list[CarerNotification]:
        """Overload notifications from this partition alone (exact with one partition)."""
        return self.ledger.overloaded_carers(as_of)

    def participation(self, as_of: datetime | int) -> ParticipationSummary:
        """This partition's participation summary (merge the partitions' summaries)."""
        return participation_summary(self.fragility, self.patients, as_of)

    def carer_report(self, as_of: datetime) -> dict[str, dict[str, Any]]:
        """``{carer_id: {"minutes_by_week": {"YYYY-Www": minutes}, "flags": [...]}}``.

        Every retained week up to ``as_of``'s ISO week is listed; ``flags`` holds
        ``"overloaded:YYYY-Www"`` for each of those weeks in which the carer reached the overload
        threshold (sorted, so oldest first). Sorted by carer id.
        """
        last = week_index_of_day(day_of_instant(as_of))
        overloaded: set[tuple[str, str]] = set()
        for w in self.ledger.weeks():
            if parse_week(w) <= last:
                # decided on integer milliseconds, exactly as the rows do
                overloaded.update((r["carer_id"], w) for r in self.ledger.week_rows(w) if r["overload"])
        out: dict[str, dict[str, Any]] = {}
        for carer, weeks in self.ledger.minutes_by_week().items():
            kept = {w: m for w, m in weeks.items() if parse_week(w) <= last}
            if kept:
                flags = [f"overloaded:{w}" for w in kept if (carer, w) in overloaded]
                out[carer] = {"minutes_by_week": kept, "flags": flags}
        return out

    def snapshot(self) -> bytes:
        """Versioned bytes (``b"CMCARERS"`` + uint16 version + zlib JSON; no pickle)."""
        body = {
            "config": asdict(self.config),
            "patients": [self.patients[p].model_dump_json() for p in sorted(self.patients)],
            "latest_event": self.latest_event.isoformat() if self.latest_event else None,
            "ledger": base64.b64encode(self.ledger.snapshot()).decode("ascii"),
            "fragility": base64.b64encode(self.fragility.snapshot()).decode("ascii"),
        }
        return pack_snapshot(_MAGIC, _VERSION, body)

    @classmethod
    def restore(cls, data: bytes) -> CarersState:
        """Rebuild from :meth:`snapshot` bytes; :class:`~monitor.core.state.SnapshotError` if
        invalid."""
        body = unpack_snapshot(_MAGIC, _VERSION, data, "carers state")
        try:
            st = cls(CarersConfig(**body["config"]))
            for text in body["patients"]:
                p = Patient.model_validate_json(text)
                st.patients[p.patient_id] = p
                st._versions[p.patient_id] = patient_record(0, p).version
            if body["latest_event"]:
                st.latest_event = datetime.fromisoformat(body["latest_event"])
            st.ledger = CarerLedger.restore(base64.b64decode(body["ledger"]))
            st.fragility = FragilityState.restore(base64.b64decode(body["fragility"]))
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"corrupt carers state snapshot: {exc}") from None
        return st


# ------------------------------------------------------------------------------------------
# offline drivers
# ------------------------------------------------------------------------------------------


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _until(docs: Iterable[Any], as_of: datetime | None) -> Iterator[Any]:
    """Leave out activities and links on a UTC day after ``as_of``'s day (as replay does)."""
    if as_of is None:
        yield from docs
        return
    last = day_of_instant(as_of)
    for d in docs:
        if isinstance(d, CarerActivity) and day_of_instant(d.started_at) > last:
            continue
        if isinstance(d, CareLink) and day_of_instant(d.effective_at) > last:
            continue
        yield d


def replay_carers_state(docs: Iterable[Any], as_of: datetime | None = None,
                        config: CarersConfig | None = None) -> CarersState:
    """A :class:`CarersState` fed validated documents (in batches of 10,000); with ``as_of``,
    activities and links on a UTC day after its day are left out."""
    state = CarersState(config)
    for chunk in _chunks(_until(docs, as_of), _BATCH):
        state.apply(chunk)
    return state


def replay_carers(docs: Iterable[Any], as_of: datetime | None = None,
                  config: CarersConfig | None = None) -> dict[str, dict[str, Any]]:
    """Replay validated documents; returns :meth:`CarersState.carer_report` as of ``as_of``
    (default: the latest activity or link time; ``{}`` when there is none).

    For both the carers' report and the patient flags, build the state once with
    :func:`replay_carers_state` and call ``carer_report(as_of)`` / ``patient_flags(as_of)``.
    """
    state = replay_carers_state(docs, as_of, config)
    when = as_of or state.latest_event
    return state.carer_report(when) if when is not None else {}


def ledger_rows_from_lines(lines: Iterable[bytes | str], week: str,
                           overload_minutes: float = OVERLOAD_MINUTES) -> list[dict[str, Any]]:
    """Ledger rows of one ISO week from NDJSON contract lines (every partition at once).

    Lines that do not decode are skipped (replay counts them; the ledger does not need to);
    only activities of ``week`` are applied, so no retention horizon can hide the week.
    """
    from monitor.intake.native import decode

    wk = parse_week(week)
    ledger = CarerLedger(overload_minutes=overload_minutes)
    batch: list[Any] = []
    for line in lines:
        raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
        if not raw.strip():
            continue
        doc = decode(raw, expected=None)
        if isinstance(doc, CarerActivity) and week_index_of_day(day_of_instant(doc.started_at)) == wk:
            batch.append(doc)
            if len(batch) >= _BATCH:
                ledger.apply(batch)
                batch = []
    ledger.apply(batch)
    return ledger.week_rows(week_label(wk))


def ledger_from_file(path: str | PathLike[str], week: str, fmt: str = "csv") -> str:
    """The ledger of ``week`` (``"YYYY-Www"``) from an NDJSON replay file (``"-"`` = stdin), as
    CSV (:func:`~monitor.carers.ledger.to_csv`) or JSON (:func:`~monitor.carers.ledger.to_json`).

    Raises :class:`~monitor.carers._common.CarersInputError` (a ``ValueError``) for a bad week or
    format, ``OSError`` if the file cannot be read.
    """
    if fmt not in ("csv", "json"):
        raise CarersInputError(f"format must be csv or json, got {fmt!r}")
    parse_week(week)
    if str(path) == "-":
        rows = ledger_rows_from_lines(sys.stdin.buffer, week)
    else:
        with open(path, "rb") as handle:
            rows = ledger_rows_from_lines(handle, week)
    return to_csv(rows) if fmt == "csv" else to_json(rows) + "\n"
