"""The worker's web views (``MONITOR_WEB_HOST:MONITOR_WEB_PORT``).

Aggregates, open to anyone who reaches the port: ``/metrics`` (Prometheus), ``/health`` (liveness
and checkpoint counters), ``/summary`` and ``/equity``. Patient- and carer-level, behind the
bearer token (:mod:`monitor.auth`; 401 without it, 403 when ``MONITOR_API_TOKEN`` is unset):
``/patients/unsupported``, ``/patients/alerts``, ``/patients/state`` and ``/carers/ledger``
(``?week=YYYY-Www&format=json|csv``). Readiness (``/readyz``) is :mod:`monitor.stream.health`.
``GET /alerts/<alert_id>`` (bearer token): the alert's timeline (:mod:`monitor.kafka.history`),
the link of every page. ``POST /alerts/<alert_id>/ack`` (bearer token; JSON ``{"by": ...,
"note": ...}``): a clinician takes the alert on; published to the ``alert-actions`` topic (202),
the notifier silences it.
``/runbooks/<rule>``: the runbook of an alert rule (``docs/runbooks/<rule>.md``, Markdown, open:
no patient data), the ``runbook_url`` of every page; 404 for a rule without one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry, generate_latest

from monitor.alerts.actions import AlertAction
from monitor.auth import configured_token
from monitor.carers.ledger import to_csv, to_json
from monitor.credentials import Credential, CredentialRegistry, resolve
from monitor.pipeline import Pipeline
from monitor.settings import Settings
from monitor.stream.merge import MergePoint
from monitor.stream.partitions import PartitionManager

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks"
"""Where the runbooks are (the checkout, or /app/docs/runbooks in the image)."""
_RULE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")  # no path separators, no dots


def runbook(rule: str) -> str | None:
    """The Markdown runbook of ``rule``, ``None`` when there is none (or the name is not a rule's)."""
    if not _RULE_NAME.match(rule):
        return None
    path = RUNBOOKS / f"{rule}.md"
    return path.read_text(encoding="utf-8") if path.is_file() else None


PROM_CONTENT_TYPE = "text/plain; version=0.0.4"  # aiohttp wants the charset separately
_DENIED = {
    403: "patient-level endpoints are disabled: set MONITOR_API_TOKEN",
    401: "a valid bearer token is required",
}


def summary(pipe: Pipeline) -> dict[str, Any]:
    """Aggregate counts for the demo and for humans: no identifiers."""
    wm = pipe.watermark
    counts = pipe.counts
    return {
        "inputs": counts.inputs,
        "processed": dict(counts.processed),
        "readings": counts.readings,
        "dead_letters": dict(counts.dead_letters),
        "patients_by_quintile": pipe.patients_by_quintile(),
        "without_support_by_quintile": pipe.unsupported_by_quintile(),
        "flags_published": dict(counts.flags_published),
        "alerts_published": dict(counts.alerts_published),
        "duplicates": counts.duplicates,
        "watermark": wm.isoformat() if wm else None,
    }


def health(pipe: Pipeline, mgr: PartitionManager) -> dict[str, Any]:
    return {"status": "ok", "inputs": pipe.counts.inputs,
            "partitions": sorted(mgr.owned),
            "checkpoints_written": mgr.checkpoints_written,
            "dirty_partitions": len(mgr.dirty & mgr.owned),
            "restoring_partitions": len(mgr.assigned - mgr.owned),
            "restored": mgr.restored, "rebuilt": mgr.rebuilt}


def add_views(app: faust.App, settings: Settings, pipe: Pipeline, mgr: PartitionManager,
              merge: MergePoint, registry: CollectorRegistry,
              send_action: Callable[[AlertAction], Awaitable[Any]] | None = None,
              credentials: CredentialRegistry | None = None) -> None:
    """Register the views on ``app``. Patient-level views take the admin token or a credential
    (:mod:`monitor.credentials`, followed from its topic into ``credentials``): coordinators and
    clinicians read them; only a clinician (or the admin token) acknowledges."""
    token = configured_token(settings.api_token)
    readers = ("coordinator", "clinician")

    def who(request: Request, roles: tuple[str, ...]) -> tuple[int | None, Credential | None]:
        """(None: allowed, or the status to answer; the credential used, None for the admin token)."""
        status, cred = resolve(request.headers.get("Authorization", ""), token, credentials)
        if cred is None:
            return status, None
        return (None if cred.role in roles else 403), cred

    def denied(view: View, request: Request, roles: tuple[str, ...] = readers) -> Response | None:
        status, _ = who(request, roles)
        if status is None:
            return None
        return view.json({"error": _DENIED.get(status, "this credential's role may not use this view")},
                         status=status)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(registry), content_type=PROM_CONTENT_TYPE)

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json(health(pipe, mgr))

    @app.page("/alerts/{alert_id}")
    class AlertTimeline(View):
        async def get(self, request: Request, alert_id: str) -> Response:
            refused = denied(self, request)
            if refused:
                return refused
            from monitor.kafka.history import timeline

            loop = asyncio.get_running_loop()  # two topics read from the start: off the event loop
            entries = await loop.run_in_executor(None, lambda: timeline(settings, alert_id, timeout_s=1.0))
            if not entries:
                return self.json({"error": "no such alert"}, status=404)
            return self.json({"alert_id": alert_id, "timeline": entries})

    @app.page("/alerts/{alert_id}/ack")
    class Ack(View):
        async def post(self, request: Request, alert_id: str) -> Response:
            status, cred = who(request, ("clinician",))
            if status is not None:
                return self.json({"error": _DENIED.get(status, "only a clinician acknowledges")},
                                 status=status)
            if send_action is None:
                return self.json({"error": "acknowledgements are not configured"}, status=503)
            try:
                body = await request.json()
                # a clinician's credential names who answered; "by" is taken only with the admin token
                by = cred.name or cred.credential_id if cred is not None else str(body["by"])
                action = AlertAction("ack", alert_id, datetime.now(UTC), by=by,
                                     note=str(body.get("note") or ""))
            except (ValueError, TypeError, KeyError, AttributeError):
                return self.json({"error": 'a JSON body {"by": "<name>", "note": "<text>"} is required'},
                                 status=400)
            await send_action(action)
            known = any(a.get("alert_id") == alert_id for a in pipe.open_alerts())
            return self.json({"action_id": action.action_id, "open_here": known}, status=202)

    @app.page("/runbooks/{rule}")
    class Runbook(View):
        async def get(self, request: Request, rule: str) -> Response:
            text = runbook(rule)
            if text is None:
                return self.json({"error": "no runbook for that rule"}, status=404)
            return self.text(text, content_type="text/markdown")

    @app.page("/summary")
    class Summary(View):
        async def get(self, request: Request) -> Response:
            return self.json(summary(pipe))

    @app.page("/equity")
    class Equity(View):
        async def get(self, request: Request) -> Response:
            return self.json(merge.snapshot or {})

    @app.page("/patients/unsupported")
    class Unsupported(View):
        async def get(self, request: Request) -> Response:
            return denied(self, request) or self.json({"patients": pipe.flagged_patients()})

    @app.page("/patients/alerts")
    class OpenAlerts(View):
        async def get(self, request: Request) -> Response:
            return denied(self, request) or self.json({"alerts": pipe.open_alerts()})

    @app.page("/patients/state")
    class PatientState(View):
        async def get(self, request: Request) -> Response:
            return denied(self, request) or self.json({"patients": pipe.patient_report()})

    @app.page("/carers/ledger")
    class CarerLedgerView(View):
        async def get(self, request: Request) -> Response:
            refused = denied(self, request)
            if refused:
                return refused
            week = request.query.get("week", "")
            fmt = request.query.get("format", "json")
            rows = merge.ledger_rows(pipe, week)
            if rows is None:
                return self.json({"error": f"not a retained ISO week: {week!r}"}, status=400)
            if fmt == "csv":
                return self.text(to_csv(rows), content_type="text/csv")
            return self.text(to_json(rows), content_type="application/json")
