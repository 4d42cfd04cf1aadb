"""What a tick must visit, kept in heaps: a tick costs what is due, not what is known (pure, no I/O).

A tick (:meth:`monitor.alerts.engine.AlertEngine.tick`) opens ``missed_readings`` episodes whose
gap began, resolves those of kinds that left the plan, escalates firing episodes of patients who
are unsupported and re-notifies episodes last notified ``repeat_interval`` ago (when set). The reference
engine (:mod:`monitor.alerts.reference`) visits every patient, planned kind and open episode on
every tick; :class:`TimedLifecycle` visits only what is due, with the same events in the same order
and the same state (property tests hold one to the other):

Missed deadlines
    For each ``(patient, kind)`` planned without an open ``missed_readings`` episode: the moment it
    becomes missed, ``reference + allowed gap``, in a heap (``missed_at`` holds each key's live
    entry; an entry that differs from it is stale and skipped). A stream's latest time only moves
    forward, so a deadline computed before a newer reading is early, never late: a popped entry is
    recomputed and pushed again if it moved. What can move a deadline earlier (or a gap's
    reference) marks the key or patient dirty, recomputed at the next tick: a patient update
    (plan, thresholds, ``registered_at``), a stream's first latest time (it replaces
    ``registered_at`` or ``plan_seen_at`` as the reference), a ``missed_readings`` episode
    resolving, a restore.
Re-notification
    For each open episode ``last_notified_at + repeat_interval`` (``renotify_at``: the live
    entries), bucketed by that time (ticks come at round times, so most episodes share a few
    deadlines) with a heap of the bucket times; ``last_notified_at`` only moves forward while an
    episode is open.
Escalation
    ``calm``: patient -> keys of its open episodes not (yet) unsupported. Only those patients'
    support flags are looked up (through the flags mapping's keys when it has fewer), so an
    episode opened between ticks without flags still escalates on the next tick.
``missed_readings`` values
    The reference engine writes the gap into every open ``missed_readings`` episode on every tick.
    Here ``missed_ref`` keeps, per open episode, the reference time its gap is measured from as of
    the latest tick, and the value is written when read (an event, :meth:`settle` before
    ``snapshot``, ``episodes``, ``firing``): ``hours(watermark - reference)``, the same number.
Forgetting resolved episodes
    Deferred: ``cut`` is ``(horizon, count)`` of the latest tick (the first ``count`` resolved
    episodes, those present then, are dropped if older than ``horizon``), applied when the list is
    read or has doubled since it was last pruned.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from heapq import heappop, heappush
from typing import TYPE_CHECKING

from monitor.alerts.episodes import (
    MISSED,
    AlertEvent,
    Episode,
    EpisodeLifecycle,
    PatientInfo,
    SupportFlags,
    hours,
    missed_episode,
)
from monitor.alerts.rules import is_unsupported

if TYPE_CHECKING:
    from collections.abc import Mapping

Key = tuple[str, str, str]
"""An episode's key: ``(patient_id, rule, kind)``."""
StreamKey = tuple[str, str]
"""``(patient_id, kind)``."""


class Timers:
    """The deadlines and indexes of one engine (derived state: rebuilt on restore, never saved).

    The engine calls :meth:`opened`, :meth:`closed` and :meth:`escalated` on every episode
    transition, :meth:`touch` when a stream gets its first latest time or advances under an open
    ``missed_readings`` episode, and :meth:`patient_changed` on every patient update.
    """

    __slots__ = ("calm", "cut", "dirty_keys", "dirty_patients", "kept", "missed_at", "missed_heap",
                 "missed_kinds", "missed_ref", "renotify_at", "renotify_buckets", "renotify_heap", "repeat",
                 "unsettled")

    def __init__(self, repeat: timedelta | None) -> None:
        self.repeat = repeat
        self.missed_heap: list[tuple[datetime, str, str]] = []
        self.missed_at: dict[StreamKey, datetime] = {}
        self.renotify_heap: list[datetime] = []
        self.renotify_buckets: dict[datetime, list[Key]] = {}
        self.renotify_at: dict[Key, datetime] = {}
        self.calm: dict[str, set[Key]] = {}
        self.missed_ref: dict[StreamKey, datetime] = {}
        self.missed_kinds: dict[str, set[str]] = {}
        self.dirty_patients: set[str] = set()
        self.dirty_keys: set[StreamKey] = set()
        self.unsettled = False
        self.cut: tuple[datetime, int] | None = None
        self.kept = 0

    # --- hooks -------------------------------------------------------------------------------

    def opened(self, key: Key, ep: Episode) -> None:
        """An episode was inserted into the open episodes under ``key``."""
        patient_id = key[0]
        if not ep.unsupported:
            calm = self.calm.get(patient_id)
            if calm is None:
                self.calm[patient_id] = {key}
            else:
                calm.add(key)
        self.schedule(key, ep.last_notified_at)
        if key[1] == MISSED:
            kinds = self.missed_kinds.get(patient_id)
            if kinds is None:
                self.missed_kinds[patient_id] = {key[2]}
            else:
                kinds.add(key[2])

    def closed(self, ep: Episode) -> None:
        """An open episode resolved (and left the open episodes)."""
        patient_id, kind = ep.patient_id, ep.kind
        key = (patient_id, ep.rule, kind)
        self._uncalm(patient_id, key)
        self.renotify_at.pop(key, None)  # its heap entries are stale from now on
        if ep.rule == MISSED:
            self.missed_ref.pop((patient_id, kind), None)
            kinds = self.missed_kinds.get(patient_id)
            if kinds is not None:
                kinds.discard(kind)
                if not kinds:
                    del self.missed_kinds[patient_id]
            self.dirty_keys.add((patient_id, kind))  # the kind may become missed again

    def escalated(self, ep: Episode) -> None:
        """An open episode became unsupported."""
        self._uncalm(ep.patient_id, (ep.patient_id, ep.rule, ep.kind))

    def touch(self, key: StreamKey) -> None:
        """The stream ``key`` got its first latest time, or advanced under an open
        ``missed_readings`` episode: its reference time changed."""
        self.dirty_keys.add(key)

    def patient_changed(self, patient_id: str) -> None:
        """A patient's plan, thresholds or ``registered_at`` may have changed."""
        self.dirty_patients.add(patient_id)

    def rebuild(self, open_eps: Mapping[Key, Episode], patients: Collection[str]) -> None:
        """Index restored state: every open episode, every patient and open missed kind dirty."""
        for key, ep in open_eps.items():
            self.opened(key, ep)
            if key[1] == MISSED:
                self.dirty_keys.add((key[0], key[2]))
        self.dirty_patients.update(patients)

    # --- helpers -----------------------------------------------------------------------------

    def _uncalm(self, patient_id: str, key: Key) -> None:
        calm = self.calm.get(patient_id)
        if calm is not None:
            calm.discard(key)
            if not calm:
                del self.calm[patient_id]

    def schedule(self, key: Key, last_notified_at: datetime) -> None:
        """The re-notification deadline of the open episode ``key`` (none without a repeat)."""
        if self.repeat is None:
            return
        try:
            due = last_notified_at + self.repeat
        except OverflowError:  # never: no tick comes that late
            self.renotify_at.pop(key, None)
            return
        if self.renotify_at.get(key) != due:
            self.renotify_at[key] = due
            bucket = self.renotify_buckets.get(due)
            if bucket is None:
                self.renotify_buckets[due] = [key]
                heappush(self.renotify_heap, due)
            else:
                bucket.append(key)

    def deadline(self, key: StreamKey, reference: datetime, allowed: timedelta) -> None:
        """The moment the planned kind ``key`` (no open ``missed_readings`` episode) becomes missed."""
        try:
            due = reference + allowed
        except OverflowError:  # never
            self.missed_at.pop(key, None)
            return
        if self.missed_at.get(key) != due:
            self.missed_at[key] = due
            heappush(self.missed_heap, (due, key[0], key[1]))

    def forget(self, horizon: datetime, count: int) -> bool:
        """Defer dropping the first ``count`` resolved episodes older than ``horizon`` (a tick);
        whether the list has grown enough since it was last pruned to prune it now."""
        self.cut = (horizon, count)
        return count > 2 * self.kept + 64

    def pruned(self, resolved: list[Episode]) -> list[Episode]:
        """``resolved`` without the episodes the latest tick forgot."""
        cut = self.cut
        if cut is None:
            return resolved
        self.cut = None
        horizon, count = cut
        head = [e for e in resolved[:count] if e.resolved_at is not None and e.resolved_at >= horizon]
        if len(head) < count:
            resolved = head + resolved[count:]
        self.kept = len(resolved)
        return resolved


class TimedLifecycle(EpisodeLifecycle):
    """The timers of the episode lifecycle (a mixin of ``AlertEngine``): a tick visits only the
    dirty keys, the due deadlines and the patients with calm open episodes (see the module
    docstring)."""

    _timers: Timers

    def _new_timers(self) -> Timers:
        return Timers(self.config.repeat_interval)

    def _settle(self) -> None:
        """Write the gap of every open ``missed_readings`` episode as of the latest tick and drop
        the resolved episodes it forgot (before the state is read as a whole)."""
        t = self._timers
        if t.unsettled:
            t.unsettled = False
            watermark = self._watermark
            open_eps = self._open
            if watermark is not None:
                for (patient_id, kind), reference in t.missed_ref.items():
                    open_eps[(patient_id, MISSED, kind)].value = hours(watermark - reference)
        self._prune_resolved()

    def _prune_resolved(self) -> None:
        self._resolved = self._timers.pruned(self._resolved)

    def _forget_resolved(self, now: datetime) -> None:
        """Forget (deferred, see :class:`Timers`) resolved episodes older than ``retain_resolved``."""
        if self.config.retain_resolved is None:
            return
        if self._timers.forget(now - self.config.retain_resolved, len(self._resolved)):
            self._prune_resolved()

    def _reference(self, info: PatientInfo, key: StreamKey, now: datetime) -> datetime:
        """Where the gap of a planned kind is measured from: its latest reading, else the patient's
        ``registered_at``, else the first tick that saw it planned."""
        stream = self._streams.get(key)
        reference = stream.latest if stream and stream.latest else info.registered_at
        if reference is None:
            reference = info.plan_seen_at.setdefault(key[1], now)
        return reference

    def _run_timers(self, now: datetime, flags: SupportFlags) -> list[AlertEvent]:
        """The events of the timers due at ``now`` (the new watermark), in the reference engine's
        order: missed-readings episodes resolved (kind left the plan) and opened, each group by
        key, then escalations and re-notifications by key."""
        t = self._timers
        patients, open_eps = self._patients, self._open
        events: list[AlertEvent] = []
        status: dict[str, bool] = {}

        def unsupported(patient_id: str) -> bool:
            known = status.get(patient_id)
            if known is None:
                known = status[patient_id] = is_unsupported(flags.get(patient_id))
            return known

        # 1. keys whose reference or allowed gap may have moved; kinds that left the plan
        keys = t.dirty_keys
        t.dirty_keys = set()
        for patient_id in t.dirty_patients:
            info = patients.get(patient_id)
            if info is not None:
                keys.update([(patient_id, kind) for kind in info.plan])
            kinds = t.missed_kinds.get(patient_id)
            if kinds:
                keys.update([(patient_id, kind) for kind in kinds])
        t.dirty_patients = set()
        orphans = []
        for patient_id, kind in keys:
            key = (patient_id, MISSED, kind)
            if key in open_eps:
                info = patients.get(patient_id)
                if info is None or self._allowed_gap(info, kind) is None:
                    orphans.append(key)
        for key in sorted(orphans):
            events.append(self._resolve(open_eps[key], now, None))  # kind left the plan
        missed_at, missed_ref = t.missed_at, t.missed_ref
        for skey in keys:
            patient_id, kind = skey
            info = patients.get(patient_id)
            allowed = self._allowed_gap(info, kind) if info is not None else None
            if allowed is None:
                missed_at.pop(skey, None)
                continue
            reference = self._reference(info, skey, now)  # type: ignore[arg-type]
            if (patient_id, MISSED, kind) in open_eps:
                missed_ref[skey] = reference
                missed_at.pop(skey, None)
            else:
                t.deadline(skey, reference, allowed)

        # 2. planned kinds whose gap began
        heap = t.missed_heap
        due: list[tuple[str, str, datetime, timedelta]] = []
        while heap and heap[0][0] <= now:
            at, patient_id, kind = heappop(heap)
            skey = (patient_id, kind)
            if missed_at.get(skey) != at:
                continue  # stale
            del missed_at[skey]
            info = patients.get(patient_id)
            allowed = self._allowed_gap(info, kind) if info is not None else None
            if allowed is None or (patient_id, MISSED, kind) in open_eps:
                continue
            reference = self._reference(info, skey, now)  # type: ignore[arg-type]
            if now - reference < allowed:  # a newer reading came since
                t.deadline(skey, reference, allowed)
                continue
            due.append((patient_id, kind, reference, allowed))
        due.sort()
        for patient_id, kind, reference, allowed in due:
            key = (patient_id, MISSED, kind)
            ep = open_eps[key] = missed_episode(
                patient_id, kind, reference, allowed, now, unsupported(patient_id))
            t.opened(key, ep)
            missed_ref[(patient_id, kind)] = reference
            events.append(self._event(ep, "firing", now))

        # 3. escalations (calm episodes of unsupported patients) and re-notifications
        todo: set[Key] = set()
        renotify_at, rheap, buckets = t.renotify_at, t.renotify_heap, t.renotify_buckets
        while rheap and rheap[0] <= now:
            at = heappop(rheap)
            for key in buckets.pop(at):
                if renotify_at.get(key) == at and key in open_eps:
                    todo.add(key)
        calm = t.calm
        escalate: set[str] = set()
        if calm and flags:
            if len(flags) < len(calm):
                escalate = {p for p in flags if p in calm and unsupported(p)}
            else:
                escalate = {p for p in calm if unsupported(p)}
            for patient_id in escalate:
                todo.update(calm[patient_id])
        repeat = self.config.repeat_interval
        next_due: datetime | None = None
        if repeat is not None:
            try:
                next_due = now + repeat
            except OverflowError:
                pass
        rescheduled: list[Key] = []  # due at next_due (one bucket: most episodes end up here)
        for key in sorted(todo):
            ep = open_eps[key]
            if key[1] == MISSED:
                reference = missed_ref.get((key[0], key[2]))
                if reference is not None:
                    ep.value = hours(now - reference)
            ev = self._maybe_escalate(ep, key[0] in escalate, now)
            if ev is None and repeat is not None and now - ep.last_notified_at >= repeat:
                ep.last_notified_at = now
                ep.notifications += 1
                ev = self._event(ep, "renotify", now)
            if ev is not None:
                events.append(ev)
            last = ep.last_notified_at
            if (last is now or last == now) and next_due is not None:
                if renotify_at.get(key) != next_due:
                    renotify_at[key] = next_due
                    rescheduled.append(key)
            else:
                t.schedule(key, last)
        if rescheduled:
            bucket = buckets.get(next_due)  # type: ignore[arg-type]
            if bucket is None:
                buckets[next_due] = rescheduled  # type: ignore[index]
                heappush(rheap, next_due)  # type: ignore[arg-type]
            else:
                bucket.extend(rescheduled)
        t.unsettled = bool(missed_ref)
        return events
