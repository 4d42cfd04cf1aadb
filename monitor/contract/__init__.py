"""The event contract: pydantic models, UCUM units and JSON Schema export."""

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
