"""The OpenAPI 3.1 description of the HTTP intake, served at ``/openapi.json`` and printed by
``coproduction-monitor openapi``. Built from one table of routes (:data:`ROUTES`), which the tests
hold to the application's router: every route described answers, every route answering is
described. Payload schemas point at the contract's JSON Schemas in ``schemas/`` by name."""

from __future__ import annotations

from typing import Any

BEARER = [{"bearer": []}]
NIGHTSCOUT = [{"apiSecret": []}]
OPEN: list[dict[str, list[str]]] = []

_ANSWER = {"description": "accepted items and a result per item (request_id, accepted, rejected, "
                          "reasons, items, items_omitted)",
           "content": {"application/json": {"schema": {"type": "object"}}}}
_COMMON = {
    "400": {"description": "nothing acceptable (reasons per item) or a bad query parameter"},
    "401": {"description": "missing or wrong credentials"},
    "413": {"description": "body over 1 MiB or over MONITOR_INTAKE_MAX_ITEMS items"},
    "415": {"description": "not JSON"},
    "503": {"description": "Kafka did not acknowledge: nothing accepted, retry"},
}
_FHIR = {"content": {"application/fhir+json": {"schema": {"type": "object"}}}}
_JSON_BODY = {"required": True, "content": {"application/json": {"schema": {"type": ["object", "array"]}}}}
_SITE = [{"name": "site", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "a Nightscout site of MONITOR_NIGHTSCOUT_SITES_FILE (bound to one patient)"}]

ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("post", "/v1/readings", {
        "summary": "Readings: native, a gateway batch, FHIR, Nightscout (with patient_id), Open mHealth",
        "security": BEARER, "requestBody": _JSON_BODY,
        "parameters": [{"name": "format", "in": "query", "schema": {
                            "enum": ["auto", "native", "fhir", "nightscout", "openmhealth"]}},
                       {"name": "patient_id", "in": "query", "schema": {"type": "string"}}],
        "responses": {"202": _ANSWER, **_COMMON}}),
    ("post", "/v1/carer-activities", {"summary": "Carer activities (schemas/carer_activity.schema.json)",
                                      "security": BEARER, "requestBody": _JSON_BODY,
                                      "responses": {"202": _ANSWER, **_COMMON}}),
    ("post", "/v1/care-links", {"summary": "Care-network changes (schemas/care_link.schema.json)",
                                "security": BEARER, "requestBody": _JSON_BODY,
                                "responses": {"202": _ANSWER, **_COMMON}}),
    ("get", "/fhir/metadata", {"summary": "FHIR CapabilityStatement", "security": OPEN,
                               "responses": {"200": {"description": "CapabilityStatement", **_FHIR}}}),
    ("post", "/fhir/Observation", {
        "summary": "Create one FHIR R4 Observation (the patient from subject.reference)",
        "security": BEARER, "requestBody": {"required": True, **_FHIR},
        "responses": {"201": {"description": "created; Location: the Observation"},
                      "422": {"description": "refused: OperationOutcome with the reason code", **_FHIR},
                      **_COMMON}}),
    ("post", "/fhir", {
        "summary": "A batch or transaction Bundle of Observations",
        "security": BEARER, "requestBody": {"required": True, **_FHIR},
        "responses": {"200": {"description": "batch-response Bundle: one entry per Observation", **_FHIR},
                      **_COMMON}}),
    ("post", "/ns/{site}/api/v1/entries", {
        "summary": "Nightscout API v1 entries (sgv, mbg) of the site's patient", "security": NIGHTSCOUT,
        "parameters": _SITE, "requestBody": _JSON_BODY,
        "responses": {"200": _ANSWER, "404": {"description": "no such site"}, **_COMMON}}),
    ("post", "/ns/{site}/api/v1/entries.json", {
        "summary": "The same as /entries (uploaders use both)", "security": NIGHTSCOUT,
        "parameters": _SITE, "requestBody": _JSON_BODY,
        "responses": {"200": _ANSWER, "404": {"description": "no such site"}, **_COMMON}}),
    ("get", "/ns/{site}/api/v1/status.json", {
        "summary": "Nightscout status (uploaders check it first)", "security": OPEN, "parameters": _SITE,
        "responses": {"200": {"description": "status ok"}, "404": {"description": "no such site"}}}),
    ("get", "/healthz", {"summary": "Liveness (never touches Kafka)", "security": OPEN,
                         "responses": {"200": {"description": "serving"}}}),
    ("get", "/readyz", {"summary": "Readiness: the broker answered for the intake's topics", "security": OPEN,
                        "responses": {"200": {"description": "ready"},
                                      "503": {"description": "not ready, with a reason code"}}}),
    ("get", "/metrics", {"summary": "Prometheus metrics (refused requests by reason and role; no ids)",
                         "security": OPEN, "responses": {"200": {"description": "text exposition"}}}),
    ("get", "/openapi.json", {"summary": "This document", "security": OPEN,
                              "responses": {"200": {"description": "OpenAPI 3.1"}}}),
]
"""(method, path, operation) of every intake route."""


def openapi_document(version: str = "0.1.0") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, operation in ROUTES:
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "coproduction-monitor intake", "version": version,
                 "description": "Readings, carer activity and care-network changes into the monitor's "
                                "Kafka topics. See docs/gateways.md for examples."},
        "paths": paths,
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "MONITOR_API_TOKEN"},
            "apiSecret": {"type": "apiKey", "in": "header", "name": "api-secret",
                          "description": "Nightscout: SHA-1 hex digest of the site's secret"}}},
    }
