"""JSON Schema export of the contract: one ``<type>.schema.json`` per NDJSON document type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monitor.contract.models import DOCUMENT_TYPES, DeadLetter, FlagEvent

EXPORTED: dict[str, Any] = {**DOCUMENT_TYPES, "flag": FlagEvent, "dead_letter": DeadLetter}


def render_schemas() -> dict[str, str]:
    """File name -> schema text (stable key order, trailing newline)."""
    out: dict[str, str] = {}
    for name, model in EXPORTED.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://coproduction-monitor.example/schemas/{name}.schema.json"
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def export_schemas(directory: Path) -> list[Path]:
    """Write every schema into ``directory`` (created if needed); returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, text in render_schemas().items():
        path = directory / fname
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
