"""FHIR R4 REST answers of the intake: the CapabilityStatement, OperationOutcomes and the
batch-response Bundle. Pure builders of JSON documents; the routes are in :mod:`monitor.intake.http`.

* ``GET /fhir/metadata``: :func:`capability_statement` (no token: FHIR clients read it first).
* ``POST /fhir/Observation``: 201 with ``Location: <base>/Observation/<reading id>`` and an
  informational OperationOutcome; a refused Observation is 422 (400 for JSON that does not parse)
  with an OperationOutcome whose diagnostics hold the reason code and detail (never the patient).
* ``POST /fhir`` with a ``batch`` or ``transaction`` Bundle: 200 and a ``batch-response`` Bundle
  with one entry per Observation decoded, in order: ``201 Created`` with its location, or ``422``
  with the OperationOutcome. A transaction is processed as a batch (each Observation on its own:
  a refused one does not hold back the others; the answer says so per entry). Entries that are
  not Observations are not answered. Two Observations that carry the halves of one blood pressure
  (:func:`monitor.intake.fhir.decode`) are one reading: one answer entry.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

FHIR_VERSION = "4.0.1"
FHIR_JSON = "application/fhir+json"


def capability_statement(base: str, now_iso: str) -> dict[str, Any]:
    """What the intake's FHIR endpoint does: create Observations, alone or in batch/transaction."""
    return {
        "resourceType": "CapabilityStatement", "status": "active", "date": now_iso, "kind": "instance",
        "software": {"name": "coproduction-monitor intake"},
        "implementation": {"description": "Vital-sign Observations into coproduction-monitor", "url": base},
        "fhirVersion": FHIR_VERSION, "format": ["json", FHIR_JSON],
        "rest": [{
            "mode": "server",
            "security": {"description": "Authorization: Bearer <token>"},
            "resource": [{"type": "Observation", "interaction": [{"code": "create"}],
                          "documentation": "Vital signs by LOINC or IEEE 11073 MDC code; the patient "
                                           "from subject.reference"}],
            "interaction": [{"code": "batch"}, {"code": "transaction"}],
        }],
    }


def operation_outcome(severity: str, code: str, diagnostics: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics[:500]}]}


def refused(reason: str, detail: str) -> dict[str, Any]:
    """The OperationOutcome of a refused Observation (reason code first: machine-readable)."""
    code = "structure" if reason in ("malformed_json", "not_utf8", "not_an_object") else "processing"
    return operation_outcome("error", code, f"{reason}: {detail}")


def _location(base: str, record_value: bytes | None) -> str:
    reading_id = json.loads(record_value or b"{}").get("reading_id", "")
    return f"{base}/Observation/{reading_id}"


def entry_answers(base: str, outcomes: Sequence[Any]) -> list[dict[str, Any]]:
    """One batch-response entry per outcome (``record`` or ``rejection``)."""
    out = []
    for o in outcomes:
        if o.rejection is None:
            out.append({"response": {"status": "201 Created",
                                     "location": _location(base, o.record.value if o.record else None)}})
        else:
            out.append({"response": {"status": "422 Unprocessable Entity",
                                     "outcome": refused(o.rejection.reason, o.rejection.detail)}})
    return out


def batch_response(base: str, outcomes: Sequence[Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch-response", "entry": entry_answers(base, outcomes)}
