"""Plain-Python reference implementation of the support state: the test oracle and bench baseline.

It keeps every distinct event (dicts and lists, no windows, no bounded tables) and evaluates the
definitions of :mod:`monitor.core.state` literally, so it is slow and obviously correct. It takes
the same :class:`~monitor.core.batch.EventBatch` input as the numba state and returns, per patient
slot, the same values as :meth:`monitor.core.summary.Evaluation.patient` plus the raw integers.

Duplicates are recognised exactly by (patient slot, kind, event-id hash) - an activity by
(patient, id), a reading by (patient, reading kind, id) - the first delivery wins; care links by
their full content (a set), registry upserts by the larger ``version``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from monitor.core.batch import MICRO, EventBatch, PatientRecord, minutes_to_ms
from monitor.core.state import StaleAsOfError, SupportConfig
from monitor.core.summary import UNKNOWN_GROUP, GroupCounts
from monitor.core.timeutil import day_of

__all__ = ["ReferenceSupport"]


class ReferenceSupport:
    """The obviously-correct support state (unbounded memory; for tests and benchmarks only)."""

    def __init__(self, config: SupportConfig | None = None) -> None:
        self.config = config or SupportConfig()
        # (p, id hash) -> (p, c, t, ms)
        self.activities: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self.readings: dict[tuple[int, int, int], tuple[int, int]] = {}  # (p, kind, hash) -> (p, t)
        self.links: set[tuple[int, int, int, int]] = set()  # (p, c, t, action)
        self.registry: dict[int, PatientRecord] = {}
        self.contact_times: dict[int, list[int]] = defaultdict(list)  # incl. re-deliveries
        self.reading_times: dict[int, list[int]] = defaultdict(list)
        self.patients_seen: set[int] = set()
        self.watermark_s: int | None = None

    def apply(self, batch: EventBatch) -> None:
        """Record every event of the batch (the first delivery of a (patient, kind, id) wins)."""
        for rec in batch.patients:
            self.patients_seen.add(rec.patient_slot)
            old = self.registry.get(rec.patient_slot)
            if old is None or rec.version > old.version:
                self.registry[rec.patient_slot] = rec
        times: list[int] = []
        for p, c, t, m, h in zip(
            batch.activity_patient.tolist(), batch.activity_carer.tolist(),
            batch.activity_start_s.tolist(), batch.activity_minutes.tolist(),
            batch.activity_id_hash.tolist(), strict=True,
        ):
            self.patients_seen.add(p)
            self.contact_times[p].append(t)
            times.append(t)
            if (p, h) not in self.activities:
                self.activities[(p, h)] = (p, c, t, minutes_to_ms(m))
        for p, c, t, a in zip(
            batch.link_patient.tolist(), batch.link_carer.tolist(), batch.link_t.tolist(),
            batch.link_action.tolist(), strict=True,
        ):
            self.patients_seen.add(p)
            self.links.add((p, c, t, a))
            times.append(t)
        for p, k, t, h in zip(
            batch.reading_patient.tolist(), batch.reading_kind.tolist(),
            batch.reading_t.tolist(), batch.reading_id_hash.tolist(), strict=True,
        ):
            self.patients_seen.add(p)
            self.reading_times[p].append(t)
            times.append(t)
            if (p, k, h) not in self.readings:
                self.readings[(p, k, h)] = (p, t)
        if times:
            t_max = max(times)
            if self.watermark_s is None or t_max > self.watermark_s:
                self.watermark_s = t_max

    def evaluate(self, as_of_s: int | None = None) -> dict[int, dict[str, Any]]:
        """Per patient slot: flags (sorted names) and metrics as of ``as_of_s`` (epoch seconds)."""
        cfg = self.config
        t = as_of_s if as_of_s is not None else (self.watermark_s or 0)
        today = day_of(t)
        if self.watermark_s is not None and today < day_of(self.watermark_s):
            raise StaleAsOfError("as_of before the watermark day")

        def within(day: int, n_days: int) -> bool:
            return 0 <= today - day <= n_days - 1

        acts: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        for p, c, at, ms in self.activities.values():
            acts[p].append((c, day_of(at), ms))
        reads: dict[int, list[int]] = defaultdict(list)
        for p, rt in self.readings.values():
            reads[p].append(day_of(rt))
        latest_link: dict[tuple[int, int], tuple[int, int]] = {}
        for p, c, lt, a in self.links:
            if day_of(lt) > today:
                continue
            cur = latest_link.get((p, c))
            # latest effective_at wins; at the same instant a leave (-1) wins over a join (+1)
            if cur is None or (lt, -a) > (cur[0], -cur[1]):
                latest_link[(p, c)] = (lt, a)
        registered: dict[int, int] = defaultdict(int)
        for (p, _c), (_lt, a) in latest_link.items():
            if a == 1:
                registered[p] += 1

        out: dict[int, dict[str, Any]] = {}
        for p in sorted(self.patients_seen):
            mine = acts.get(p, [])
            active = {c for c, d, _ in mine if within(d, cfg.active_days)}
            recent = any(within(d, cfg.lapse_days) for _, d, _ in mine)
            covered = any(within(d, cfg.coverage_days) for _, d, _ in mine)
            ever = bool(mine)
            care_ms = sum(ms for _, d, ms in mine if within(d, cfg.coverage_days))
            contact_days = len({d for _, d, _ in mine if within(d, cfg.coverage_days)})
            received = sum(1 for d in reads.get(p, []) if within(d, cfg.coverage_days))
            rec = self.registry.get(p)
            expected_micro = rec.expected_micro_per_day * cfg.coverage_days if rec else 0
            flags = []
            if registered[p] == 0 and not active:
                flags.append("no_support_network")
            if len(active) == 1:
                flags.append("single_carer")
            if (registered[p] > 0 or ever) and not recent:
                flags.append("support_lapsed")
            out[p] = {
                "flags": sorted(flags),
                "active_carers_28d": len(active),
                "care_minutes_7d": care_ms / 60_000,
                "contact_days_7d": contact_days,
                "readings_expected_7d": expected_micro / MICRO,
                "readings_received_7d": received,
                "covered": covered,
                "registered_carers": registered[p],
                "care_ms": care_ms,
                "readings_expected_micro": expected_micro,
                "last_contact_s": max(self.contact_times[p], default=None),
                "last_reading_s": max(self.reading_times[p], default=None),
            }
        return out

    def group_counts(self, as_of_s: int | None = None) -> dict[str, dict[str, GroupCounts]]:
        """Per dimension and group, the integer sums of :class:`GroupCounts`."""
        ev = self.evaluate(as_of_s)
        out: dict[str, dict[str, GroupCounts]] = {}
        for dim in self.config.dimensions:
            per: dict[str, GroupCounts] = {}
            for p, m in ev.items():
                rec = self.registry.get(p)
                g = rec.group(dim) if rec else UNKNOWN_GROUP
                capped = min(m["readings_received_7d"] * MICRO, m["readings_expected_micro"])
                one = GroupCounts(
                    1, int(m["covered"]), int("no_support_network" in m["flags"]),
                    int("support_lapsed" in m["flags"]), int("single_carer" in m["flags"]),
                    m["care_ms"], m["readings_received_7d"], capped, m["readings_expected_micro"],
                )
                per[g] = per.get(g, GroupCounts()) + one
            out[dim] = dict(sorted(per.items()))
        return out
