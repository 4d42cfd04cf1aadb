"""The event contract: what crosses a topic, a file or the HTTP intake, and nothing else.

Here live the pydantic models of every document (``models``: readings, gateway batches, carers'
activities, care links, patients, flag events, dead letters), the UCUM units of each reading kind
with the one table of conversions to canonical units (``units``) and the JSON Schema export
(``schema_export``). It is the bottom of the package graph: it imports only pydantic and the
standard library, never another ``monitor`` package, so every layer (intake, core, alerts, carers,
stream, replay) may import it.
"""

from monitor.contract.models import (
    DOCUMENT_TYPES,
    ActivityKind,
    CareLink,
    CarerActivity,
    DeadLetter,
    FlagEvent,
    GatewayBatch,
    LinkAction,
    Patient,
    Reading,
    ReadingKind,
    Relationship,
    to_json_dict,
    type_of,
)

__all__ = [
    "DOCUMENT_TYPES",
    "ActivityKind",
    "CareLink",
    "CarerActivity",
    "DeadLetter",
    "FlagEvent",
    "GatewayBatch",
    "LinkAction",
    "Patient",
    "Reading",
    "ReadingKind",
    "Relationship",
    "to_json_dict",
    "type_of",
]
