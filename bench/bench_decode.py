"""Benchmark of intake decoding: native JSON readings and FHIR Observations, per core.

Run: ``.venv/bin/python -m bench.bench_decode [--messages N] [--repeats R]``. Writes section
``decode`` of ``bench/results.json`` via :func:`bench.results.merge_section`:

* ``native_per_s`` / ``fhir_per_s``: messages per second through
  :func:`monitor.intake.formats.decode_items` (``fmt="auto"``, as the HTTP intake calls it): UTF-8 and
  JSON parsing, format detection, contract validation (pydantic for native, the FHIR mapping for
  FHIR), conversion to canonical units, plausibility and event-time checks;
* ``native_json_loads_per_s`` / ``fhir_json_loads_per_s``: plain ``json.loads`` of the same bytes in
  the same run (the floor any decoder pays);
* ``native_fast_per_s`` / ``native_fast_ratio``: the worker's readings-topic fast path
  (:mod:`monitor.intake.fastpath`: msgspec Structs and hand checks, same result) on the native
  messages;
* ``mixed_fast_per_s`` / ``mixed_fast_ratio``: :func:`monitor.intake.fastpath.fast_decode` with
  ``expected=None`` on an NDJSON-like mix of every native type (readings 70 %, carers' activities
  20 %, care links 5 %, patients 5 %, each with its ``"type"``), against ``json.loads`` of the same
  lines; ``mixed_full_per_s`` (printed) is the pydantic path on the same lines.
* ``native_columnar_per_s`` / ``native_columnar_ratio``: the worker's columnar intake of a whole
  fetch (:func:`monitor.intake.columnar.scan_readings`: one numba scan of every message, numpy
  checks; fetches of 1,000 messages) on the same native messages.
* ``native_ratio`` / ``fhir_ratio``: decode throughput divided by ``json.loads`` throughput (0.05
  means decoding costs 20 times a bare parse).

Workload (seeded, in memory): N distinct messages of each format (default 20,000), one reading per
message, from 2,000 patients; 80 % measured in the hour before receipt, 20 % backfilled up to 3 days
late (flagged ``late``); a realistic mix of kinds (glucose in mg/dL and mmol/L, blood pressure, heart
rate, SpO2, weight in kg and lb, temperature in Cel and degF). Every message is valid (checked before
timing), so this is the accept path. One process, one thread: the numbers are per core. Each figure
is the best of ``repeats`` passes over all messages; decode and ``json.loads`` alternate in the same
run so that a busy machine slows both.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from bench.results import merge_section
from monitor.intake.canonical import CanonicalReading
from monitor.intake.columnar import scan_readings
from monitor.intake.fastpath import Decoded, fast_canonical, fast_decode, full_decode
from monitor.intake.formats import decode_items
from monitor.intake.native import decode as native_decode

RECEIVED_AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
PATIENTS = 2_000

# kind, weight in the mix
KINDS = [("glucose", 35), ("blood_pressure", 25), ("heart_rate", 15), ("spo2", 10),
         ("body_weight", 10), ("body_temperature", 5)]

LOINC = {
    "glucose": ("2339-0", "Glucose [Mass/volume] in Blood"),
    "blood_pressure": ("85354-9", "Blood pressure panel with all children optional"),
    "heart_rate": ("8867-4", "Heart rate"),
    "spo2": ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
    "body_weight": ("29463-7", "Body weight"),
    "body_temperature": ("8310-5", "Body temperature"),
}


def _measurement(rng: random.Random, kind: str) -> dict[str, Any]:
    """Value(s) and UCUM unit of a plausible home measurement of ``kind``."""
    if kind == "glucose":
        if rng.random() < 0.5:
            return {"value": round(rng.uniform(70, 250)), "unit": "mg/dL"}
        return {"value": round(rng.uniform(3.9, 13.9), 1), "unit": "mmol/L"}
    if kind == "blood_pressure":
        sys = rng.randint(100, 175)
        return {"systolic": sys, "diastolic": rng.randint(55, sys - 25), "unit": "mm[Hg]"}
    if kind == "heart_rate":
        return {"value": rng.randint(48, 120), "unit": "/min"}
    if kind == "spo2":
        return {"value": rng.randint(88, 100), "unit": "%"}
    if kind == "body_weight":
        if rng.random() < 0.3:
            return {"value": round(rng.uniform(100, 300), 1), "unit": "[lb_av]"}
        return {"value": round(rng.uniform(45, 140), 1), "unit": "kg"}
    if rng.random() < 0.2:
        return {"value": round(rng.uniform(96.5, 101.5), 1), "unit": "[degF]"}
    return {"value": round(rng.uniform(35.8, 38.6), 1), "unit": "Cel"}


def _event(rng: random.Random) -> tuple[str, str, datetime, str]:
    kind = rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS])[0]
    patient = f"pat-{rng.randrange(PATIENTS):06d}"
    # live uploads arrive within the hour; a fifth are backfills (an uploader that was offline)
    backfill = rng.random() < 0.2
    measured = RECEIVED_AT - timedelta(seconds=rng.randrange(3 * 86400 if backfill else 3300))
    offset = timedelta(hours=rng.choice([0, 1, -5]))
    return kind, patient, measured, measured.astimezone(timezone(offset)).isoformat()


def native_messages(n: int, seed: int = 7) -> list[bytes]:
    """``n`` native contract readings, one JSON object per message, as a gateway would send them."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind, patient, _, stamp = _event(rng)
        doc: dict[str, Any] = {
            "reading_id": f"rd-{seed}-{i:08d}", "patient_id": patient,
            "device_id": f"dev-{rng.randrange(10_000):05d}", "kind": kind,
            **_measurement(rng, kind), "measured_at": stamp,
        }
        if rng.random() < 0.4:
            doc["gateway_id"] = f"hub-{rng.randrange(500):04d}"
        out.append(json.dumps(doc, separators=(",", ":")).encode())
    return out


def fhir_messages(n: int, seed: int = 11) -> list[bytes]:
    """``n`` FHIR R4 vital-signs Observations (as a PHD gateway or an app posts them)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind, patient, _, stamp = _event(rng)
        m = _measurement(rng, kind)
        code, display = LOINC[kind]
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "id": f"obs-{seed}-{i:08d}",
            "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
            "status": "final",
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs", "display": "Vital Signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}],
                     "text": display},
            "subject": {"reference": f"Patient/{patient}"},
            "device": {"reference": f"Device/dev-{rng.randrange(10_000):05d}"},
            "effectiveDateTime": stamp,
        }
        if kind == "blood_pressure":
            obs["component"] = [
                {"code": {"coding": [{"system": "http://loinc.org", "code": c, "display": d}]},
                 "valueQuantity": {"value": m[f], "unit": "mmHg",
                                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
                for c, d, f in (("8480-6", "Systolic blood pressure", "systolic"),
                                ("8462-4", "Diastolic blood pressure", "diastolic"))
            ]
        else:
            obs["valueQuantity"] = {"value": m["value"], "unit": m["unit"],
                                    "system": "http://unitsofmeasure.org", "code": m["unit"]}
        out.append(json.dumps(obs, separators=(",", ":")).encode())
    return out


def mixed_lines(n: int, seed: int = 13) -> list[bytes]:
    """``n`` NDJSON lines of every native document type, each with its ``"type"``."""
    rng = random.Random(seed)
    readings = native_messages(n, seed)
    kinds = ["visit", "phone_call", "meal", "personal_care", "shopping"]
    out = []
    for i in range(n):
        draw = rng.random()
        patient = f"pat-{rng.randrange(PATIENTS):06d}"
        stamp = (RECEIVED_AT - timedelta(seconds=rng.randrange(86400))).isoformat().replace("+00:00", "Z")
        if draw < 0.7:
            out.append(b'{"type":"reading",' + readings[i][1:])
            continue
        if draw < 0.9:
            doc: dict[str, Any] = {"type": "carer_activity", "activity_id": f"act-{seed}-{i:08d}",
                                   "patient_id": patient, "carer_id": f"car-{rng.randrange(3000):05d}",
                                   "kind": rng.choice(kinds), "started_at": stamp,
                                   "duration_minutes": rng.choice([15, 30, 45.5, 60, 120])}
        elif draw < 0.95:
            doc = {"type": "care_link", "patient_id": patient, "carer_id": f"car-{rng.randrange(3000):05d}",
                   "relationship": rng.choice(["partner", "child", "friend"]),
                   "action": rng.choice(["join", "leave"]), "effective_at": stamp}
        else:
            doc = {"type": "patient", "patient_id": patient, "region": rng.choice(["North", "South West"]),
                   "deprivation_quintile": rng.randint(1, 5), "age_band": rng.choice(["65-74", "75+"]),
                   "conditions": ["copd"], "monitoring_plan": {"glucose": 2, "blood_pressure": 1},
                   "registered_at": stamp}
        out.append(json.dumps(doc, separators=(",", ":")).encode())
    return out


def _best_rates(fns: list[Callable[[list[bytes]], object]], messages: list[bytes],
                repeats: int) -> list[float]:
    """Messages per second of each ``fn(messages)``: the best of ``repeats`` passes, the functions
    taking turns within each repeat."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(messages)
            best[i] = min(best[i], time.perf_counter() - t0)
    return [len(messages) / b for b in best]


def _json_loads_all(messages: list[bytes]) -> None:
    loads = json.loads
    for m in messages:
        loads(m)


def _decode_all(messages: list[bytes]) -> None:
    for m in messages:
        decode_items(m, received_at=RECEIVED_AT)


def _native_contract_all(messages: list[bytes]) -> None:
    for m in messages:
        native_decode(m, "reading")


def _fast_all(messages: list[bytes]) -> None:
    for m in messages:
        fast_canonical(m, received_at=RECEIVED_AT)


def _mixed_fast_all(lines: list[bytes]) -> None:
    for m in lines:
        fast_decode(m, None, RECEIVED_AT)


def _mixed_full_all(lines: list[bytes]) -> None:
    for m in lines:
        full_decode(m, None, RECEIVED_AT)


def _columnar_all(messages: list[bytes]) -> None:
    for i in range(0, len(messages), 1000):
        scan_readings(messages[i : i + 1000], received_at=RECEIVED_AT)


def _check_all_accepted(messages: list[bytes], label: str) -> None:
    for m in messages:
        (result,) = decode_items(m, received_at=RECEIVED_AT)
        if not isinstance(result, CanonicalReading):
            raise AssertionError(f"{label}: the workload must be valid, got {result}")


def run(messages: int, repeats: int) -> dict[str, Any]:
    native = native_messages(messages)
    fhir = fhir_messages(messages)
    _check_all_accepted(native, "native")
    _check_all_accepted(fhir, "fhir")
    values: dict[str, Any] = {}
    for name, msgs in (("native", native), ("fhir", fhir)):
        decoded, parsed = _best_rates([_decode_all, _json_loads_all], msgs, repeats)
        values[f"{name}_per_s"] = round(decoded)
        values[f"{name}_json_loads_per_s"] = round(parsed)
        values[f"{name}_ratio"] = round(decoded / parsed, 4)
        size = sum(map(len, msgs)) / len(msgs)
        print(f"{name:>6}: {decoded:>10,.0f} msg/s decode+validate, {parsed:>10,.0f} msg/s json.loads, "
              f"ratio {decoded / parsed:.3f} ({size:.0f} bytes/message)", flush=True)
    # The worker's readings-topic path: the fast path for clean native readings (no pydantic).
    if any(fast_canonical(m, received_at=RECEIVED_AT) is None for m in native):
        raise AssertionError("native: every message of the workload must take the fast path")
    fast, parsed = _best_rates([_fast_all, _json_loads_all], native, repeats)
    values["native_fast_per_s"] = round(fast)
    values["native_fast_ratio"] = round(fast / parsed, 4)
    print(f"  fast: {fast:>10,.0f} msg/s (monitor.intake.fastpath), ratio {fast / parsed:.3f}", flush=True)
    # Every native type, as in an offline NDJSON file: msgspec fast decoder against pydantic.
    mixed = mixed_lines(messages)
    if any(not isinstance(fast_decode(m, None, RECEIVED_AT), Decoded) for m in mixed):
        raise AssertionError("mixed: every line of the workload must be accepted")
    fast_mixed, full_mixed, parsed = _best_rates([_mixed_fast_all, _mixed_full_all, _json_loads_all], mixed,
                                                 repeats)
    values["mixed_fast_per_s"] = round(fast_mixed)
    values["mixed_fast_ratio"] = round(fast_mixed / parsed, 4)
    print(f"  mixed: {fast_mixed:>10,.0f} lines/s (fast_decode), ratio {fast_mixed / parsed:.3f}; "
          f"pydantic {full_mixed:,.0f} lines/s, ratio {full_mixed / parsed:.3f}", flush=True)
    # The worker's columnar intake of whole fetches (what the worker runs first).
    spans, _ = scan_readings(native, received_at=RECEIVED_AT)
    if any(span is None for span in spans):
        raise AssertionError("native: every message of the workload must take the columnar path")
    columnar, parsed = _best_rates([_columnar_all, _json_loads_all], native, repeats)
    values["native_columnar_per_s"] = round(columnar)
    values["native_columnar_ratio"] = round(columnar / parsed, 4)
    print(f"  columnar: {columnar:>10,.0f} msg/s (monitor.intake.columnar), ratio {columnar / parsed:.3f}",
          flush=True)
    # For context only (not written): the pydantic contract step alone (no canonical step).
    (contract,) = _best_rates([_native_contract_all], native, repeats)
    print(f"native contract only (monitor.intake.native.decode): {contract:,.0f} msg/s", flush=True)
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000, help="messages of each format")
    parser.add_argument("--repeats", type=int, default=3, help="passes; the best one counts")
    args = parser.parse_args(argv if argv is not None else [])
    values = run(args.messages, args.repeats)
    merge_section("decode", values)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
