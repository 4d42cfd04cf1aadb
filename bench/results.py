"""Merge one benchmark's numbers into ``bench/results.json`` (one section per benchmark)."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"


def merge_section(name: str, values: dict[str, Any], path: Path = RESULTS) -> dict[str, Any]:
    """Replace section ``name`` of the results file with ``values`` (plus when and where it ran)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data[name] = {
        **values,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, python {platform.python_version()}",
    }
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data[name]
